//! The Salesforce client over real HTTP against the Salesforce sandbox: sObject Collections in
//! one call per 200 records, per-record results, the daily API limit, and OAuth refresh.

use std::collections::BTreeMap;
use std::time::Duration;

use crm_sync::adapters::salesforce::{OAuthRefresh, SalesforceClient};
use crm_sync::domain::crm::{
    AssociationInput, CrmError, FailureKind, InputOutcome, ThrottlePolicy, UpsertInput,
};
use crm_sync::ports::Crm;
use salesforce_sandbox::Sandbox;
use secrecy::SecretString;

const ACCESS: &str = "access-0";
const REFRESH: &str = "refresh-token-1";
const APP_ID: &str = "Crm_Sync_App_Id__c";

async fn org(daily_limit: u64, refresh_token: Option<&str>) -> (Sandbox, SalesforceClient) {
    let sandbox = Sandbox::start("127.0.0.1:0", ACCESS, REFRESH, daily_limit)
        .await
        .expect("the sandbox starts");
    let refresh = refresh_token.map(|token| OAuthRefresh {
        token_url: sandbox.token_url(),
        client_id: "connected-app".into(),
        client_secret: SecretString::from("client-secret"),
        refresh_token: SecretString::from(token.to_string()),
    });
    let client = SalesforceClient::new(
        &sandbox.instance_url(),
        SecretString::from(ACCESS),
        refresh,
        Duration::from_secs(5),
    )
    .expect("a client");
    (sandbox, client)
}

fn contacts(count: usize, email: impl Fn(usize) -> String) -> Vec<UpsertInput> {
    (0..count)
        .map(|i| {
            UpsertInput::new(
                format!("app-{i}"),
                BTreeMap::from([
                    ("Email".to_string(), email(i)),
                    ("LastName".to_string(), format!("L{i}")),
                ]),
            )
        })
        .collect()
}

fn done(outcome: &InputOutcome) -> (String, bool) {
    match outcome {
        InputOutcome::Done { crm_id, created } => (crm_id.clone(), *created),
        other => panic!("expected success, got {other:?}"),
    }
}

#[tokio::test]
async fn a_batch_upserts_in_one_call_and_a_second_one_updates_the_same_records_by_the_apps_id() {
    let (sandbox, client) = org(1_000, None).await;
    assert_eq!(client.max_batch(), 200);

    let first = client
        .upsert("Contact", APP_ID, &contacts(150, |i| format!("c{i}@example.com")))
        .await
        .expect("created");
    assert!(first.outcomes.iter().all(|o| done(o).1), "all created");
    assert_eq!(first.rate.daily_remaining, Some(999));
    let second = client
        .upsert("Contact", APP_ID, &contacts(150, |i| format!("c{i}@new.example")))
        .await
        .expect("updated");
    for (before, after) in first.outcomes.iter().zip(&second.outcomes) {
        assert_eq!(done(after), (done(before).0, false));
    }
    assert_eq!(sandbox.stats().calls, 2, "one call per batch");
    let records = sandbox.records("Contact");
    assert_eq!(records.len(), 150);
    assert!(records
        .iter()
        .all(|r| r["Email"].as_str().unwrap().ends_with("@new.example")));
}

#[tokio::test]
async fn one_invalid_record_fails_alone_and_the_rest_of_its_batch_is_written() {
    let (sandbox, client) = org(1_000, None).await;
    let result = client
        .upsert(
            "Contact",
            APP_ID,
            &contacts(3, |i| {
                if i == 1 {
                    "not-an-email".into()
                } else {
                    format!("ok{i}@example.com")
                }
            }),
        )
        .await
        .expect("the call succeeds");
    assert!(matches!(result.outcomes[0], InputOutcome::Done { .. }));
    let InputOutcome::Failed(error) = &result.outcomes[1] else {
        panic!("the invalid email fails: {:?}", result.outcomes[1]);
    };
    assert_eq!(error.code, "INVALID_EMAIL_ADDRESS");
    assert_eq!(error.kind, FailureKind::Permanent);
    assert!(matches!(result.outcomes[2], InputOutcome::Done { .. }));
    assert_eq!(sandbox.records("Contact").len(), 2);
}

#[tokio::test]
async fn an_expired_session_is_renewed_with_the_refresh_token_and_the_call_repeated() {
    let (sandbox, client) = org(1_000, Some(REFRESH)).await;
    sandbox.expire_session();
    let result = client
        .upsert("Contact", APP_ID, &contacts(2, |i| format!("r{i}@example.com")))
        .await
        .expect("renewed, then written");
    assert!(result.outcomes.iter().all(|o| done(o).1));
    let stats = sandbox.stats();
    assert_eq!((stats.refused_sessions, stats.refreshed), (1, 1));
    // The new token serves the next call without another renewal.
    client
        .read("Contact", &[done(&result.outcomes[0]).0], &[])
        .await
        .expect("read");
    assert_eq!(sandbox.stats().refreshed, 1);
}

#[tokio::test]
async fn a_refused_refresh_token_is_an_authentication_failure() {
    let (sandbox, client) = org(1_000, Some("revoked")).await;
    sandbox.expire_session();
    let error = client
        .upsert("Contact", APP_ID, &contacts(1, |_| "a@example.com".into()))
        .await
        .expect_err("cannot renew");
    assert!(
        matches!(&error, CrmError::Transient { message, .. } if message.starts_with("authentication failed")),
        "{error:?}"
    );
    assert!(sandbox.records("Contact").is_empty());
}

#[tokio::test]
async fn a_spent_daily_limit_is_a_daily_throttle() {
    let (_sandbox, client) = org(1, None).await;
    client
        .upsert("Contact", APP_ID, &contacts(1, |_| "a@example.com".into()))
        .await
        .expect("the day's one request");
    let error = client
        .upsert("Contact", APP_ID, &contacts(1, |_| "b@example.com".into()))
        .await
        .expect_err("no requests left today");
    assert!(
        matches!(&error, CrmError::Throttled { policy: ThrottlePolicy::Daily, rate, .. } if rate.daily_remaining == Some(0)),
        "{error:?}"
    );
}

#[tokio::test]
async fn records_read_back_by_id_and_deleted_ones_read_as_none() {
    let (_sandbox, client) = org(1_000, None).await;
    let written = client
        .upsert("Contact", APP_ID, &contacts(2, |i| format!("d{i}@example.com")))
        .await
        .expect("written");
    let ids: Vec<String> = written.outcomes.iter().map(|o| done(o).0).collect();
    let read = client
        .read("Contact", &ids, &["Email".into(), APP_ID.into()])
        .await
        .expect("read");
    let first = read.records[0].clone().expect("exists");
    assert_eq!(first["Email"], "d0@example.com");
    assert_eq!(first[APP_ID], "app-0");
    assert!(!first.contains_key("LastName"), "only the asked fields");

    let deleted = client.archive("Contact", &ids[..1]).await.expect("deleted");
    assert_eq!(done(&deleted.outcomes[0]).0, ids[0]);
    let again = client.archive("Contact", &ids[..1]).await.expect("gone already");
    assert!(matches!(again.outcomes[0], InputOutcome::Done { .. }));
    let read = client.read("Contact", &ids, &[]).await.expect("read");
    assert!(read.records[0].is_none());
    assert!(read.records[1].is_some());
}

#[tokio::test]
async fn an_opportunity_is_linked_to_its_contact_by_a_contact_role() {
    let (sandbox, client) = org(1_000, None).await;
    let contact = client
        .upsert("Contact", APP_ID, &contacts(1, |_| "o@example.com".into()))
        .await
        .expect("contact");
    let deal = client
        .upsert(
            "Opportunity",
            APP_ID,
            &[UpsertInput::new(
                "deal-1",
                BTreeMap::from([("Name".to_string(), "Pilot".to_string())]),
            )],
        )
        .await
        .expect("opportunity");
    let (contact_id, deal_id) = (done(&contact.outcomes[0]).0, done(&deal.outcomes[0]).0);
    let linked = client
        .associate(
            "Opportunity",
            "Contact",
            &[AssociationInput {
                from_id: deal_id.clone(),
                to_id: contact_id.clone(),
            }],
        )
        .await
        .expect("linked");
    assert!(matches!(linked.outcomes[0], InputOutcome::Done { .. }));
    let roles = sandbox.records("OpportunityContactRole");
    assert_eq!(roles.len(), 1);
    assert_eq!(
        (roles[0]["OpportunityId"].as_str(), roles[0]["ContactId"].as_str()),
        (Some(deal_id.as_str()), Some(contact_id.as_str()))
    );
}

#[tokio::test]
async fn merged_contacts_are_read_with_query_all_page_by_page_and_a_merged_id_names_its_last_master() {
    let (sandbox, client) = org(1_000, None).await;
    let written = client
        .upsert("Contact", APP_ID, &contacts(5, |i| format!("m{i}@example.com")))
        .await
        .unwrap();
    let ids: Vec<String> = written.outcomes.iter().map(|o| done(o).0).collect();
    let before_ms = crm_sync::domain::Clock::now_ms(&crm_sync::domain::SystemClock) - 2_000;
    // 1 and 2 into 0 at once (Salesforce merges three at most), then 0 into 3: a chain.
    sandbox.merge("Contact", &ids[0], &[&ids[1], &ids[2]]).unwrap();
    sandbox.merge("Contact", &ids[3], &[&ids[0]]).unwrap();
    // Deleted by a person, not merged: not a merge.
    sandbox.delete("Contact", &ids[4]);
    sandbox.set_query_batch_size(2);

    assert!(client.merges_are_read("Contact"));
    assert!(
        !client.merges_are_read("Opportunity"),
        "Salesforce does not merge opportunities"
    );
    let mut seen = Vec::new();
    let mut next: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = client
            .merges_since("Contact", before_ms, next.as_deref())
            .await
            .unwrap();
        pages += 1;
        assert!(page.merges.len() <= 2);
        seen.extend(page.merges);
        next = page.next;
        if next.is_none() {
            break;
        }
    }
    assert_eq!(pages, 2, "three merges in batches of two");
    let pairs: BTreeMap<String, String> = seen
        .iter()
        .map(|m| (m.merged.clone(), m.survivor.clone()))
        .collect();
    assert_eq!(
        pairs,
        BTreeMap::from([
            (ids[1].clone(), ids[0].clone()),
            (ids[2].clone(), ids[0].clone()),
            (ids[0].clone(), ids[3].clone()),
        ])
    );
    assert!(seen
        .iter()
        .all(|m| m.at_ms >= before_ms && m.by.as_deref() == Some(salesforce_sandbox::PERSON_USER_ID)));

    // Nothing merged after now.
    let later = client
        .merges_since(
            "Contact",
            crm_sync::domain::Clock::now_ms(&crm_sync::domain::SystemClock) + 2_000,
            None,
        )
        .await
        .unwrap();
    assert!(later.merges.is_empty() && later.next.is_none());

    // A write to a merged id meets ENTITY_IS_DELETED; asked, Salesforce names the last master.
    let lookup = client.survivor("Contact", &ids[1]).await.unwrap();
    assert_eq!(
        lookup.survivor.as_deref(),
        Some(ids[3].as_str()),
        "1 into 0 into 3"
    );
    assert_eq!(
        client.survivor("Contact", &ids[4]).await.unwrap().survivor,
        None,
        "deleted, not merged"
    );
    assert_eq!(
        client.survivor("Contact", &ids[3]).await.unwrap().survivor,
        None,
        "alive"
    );
    assert_eq!(
        client
            .survivor("Contact", "003' OR Id != '")
            .await
            .unwrap()
            .survivor,
        None,
        "an id that is no id is never put into a query"
    );
}

#[tokio::test]
async fn records_are_found_by_external_id_and_by_email_in_any_case_several_to_one_email() {
    let (sandbox, client) = org(1_000, None).await;
    client
        .upsert("Contact", APP_ID, &contacts(2, |i| format!("c{i}@example.com")))
        .await
        .unwrap();
    let person = sandbox.create_as_person(
        "Contact",
        serde_json::json!({"LastName": "P", "Email": "Ada@Example.com"}),
    );
    sandbox.create_as_person(
        "Contact",
        serde_json::json!({"LastName": "Q", "Email": "twin@example.com"}),
    );
    sandbox.create_as_person(
        "Contact",
        serde_json::json!({"LastName": "R", "Email": "twin@example.com"}),
    );
    let properties = vec!["Email".to_string(), APP_ID.to_string(), "LastName".to_string()];

    let by_id = client
        .find("Contact", APP_ID, &["app-1".into(), "app-9".into()], &properties)
        .await
        .unwrap();
    assert_eq!(by_id.matches[0].len(), 1);
    assert_eq!(by_id.matches[0][0].values["Email"], "c1@example.com");
    assert!(by_id.matches[1].is_empty());

    let by_email = client
        .find(
            "Contact",
            "Email",
            &[
                "ada@example.com".into(),
                "twin@example.com".into(),
                "o'brien\\@example.com".into(),
            ],
            &properties,
        )
        .await
        .unwrap();
    assert_eq!(by_email.matches[0].len(), 1, "case does not matter");
    assert_eq!(by_email.matches[0][0].crm_id, person);
    assert_eq!(
        by_email.matches[0][0].values.get(APP_ID).map(String::as_str),
        Some(""),
        "no app id"
    );
    assert_eq!(by_email.matches[1].len(), 2, "two records hold one email");
    assert!(
        by_email.matches[2].is_empty(),
        "a quote and a backslash are escaped, not injected"
    );
    // Long values make several queries (Salesforce's URL is capped); answers stay in input order.
    let mut long: Vec<String> = (0..60)
        .map(|i| format!("{}{i}@example.com", "l".repeat(230)))
        .collect();
    long.push("ada@example.com".into());
    let calls_before = sandbox.stats().calls;
    let spread = client.find("Contact", "Email", &long, &properties).await.unwrap();
    assert!(sandbox.stats().calls - calls_before >= 2, "more than one query");
    assert_eq!(spread.matches.len(), 61);
    assert!(spread.matches[..60].iter().all(Vec::is_empty));
    assert_eq!(spread.matches[60][0].crm_id, person);
    assert!(
        client
            .find("Contact", "Email) OR (Id", &["x".into()], &properties)
            .await
            .is_err(),
        "a name that is no field is refused before any query"
    );
}
