//! The Pipedrive client over real HTTP against the Pipedrive sandbox: one record a call, upsert
//! by the app's id, the burst window and the daily budget read from Pipedrive's headers.

use std::collections::BTreeMap;
use std::time::Duration;

use crm_sync::adapters::pipedrive::PipedriveClient;
use crm_sync::domain::crm::{AssociationInput, CrmError, InputOutcome, ThrottlePolicy, UpsertInput};
use crm_sync::ports::Crm;
use pipedrive_sandbox::{Limits, Sandbox};
use secrecy::SecretString;

const TOKEN: &str = "pipedrive-test-token";
/// The custom field (by its hash key) that holds the app's record id.
const APP_ID_FIELD: &str = "9f3c1e0a";

async fn sandbox(limits: Limits) -> (Sandbox, PipedriveClient) {
    let sandbox = Sandbox::start("127.0.0.1:0", TOKEN, limits)
        .await
        .expect("the sandbox starts");
    sandbox.add_custom_field("persons", APP_ID_FIELD, "varchar");
    sandbox.add_custom_field("deals", APP_ID_FIELD, "varchar");
    let client = PipedriveClient::new(&sandbox.url(), SecretString::from(TOKEN), Duration::from_secs(5))
        .expect("a client");
    (sandbox, client)
}

fn input(key: &str, email: &str) -> UpsertInput {
    UpsertInput::new(
        key.to_string(),
        BTreeMap::from([
            ("email".to_string(), email.to_string()),
            ("name".to_string(), "Ada Lovelace".to_string()),
        ]),
    )
}

fn done(outcome: &InputOutcome) -> (String, bool) {
    match outcome {
        InputOutcome::Done { crm_id, created } => (crm_id.clone(), *created),
        other => panic!("expected success, got {other:?}"),
    }
}

#[tokio::test]
async fn an_upsert_creates_a_person_once_and_then_updates_it_by_the_apps_id() {
    let (sandbox, client) = sandbox(Limits::default()).await;
    assert_eq!(client.max_batch(), 1);

    let first = client
        .upsert("persons", APP_ID_FIELD, &[input("app-1", "ada@example.com")])
        .await
        .expect("created");
    let (id, created) = done(&first.outcomes[0]);
    assert!(created);
    // A search (20 tokens) and a create (5).
    assert_eq!(first.rate.daily_remaining, Some(30_000 - 25));

    let second = client
        .upsert("persons", APP_ID_FIELD, &[input("app-1", "ada@lovelace.example")])
        .await
        .expect("updated");
    assert_eq!(done(&second.outcomes[0]), (id, false));

    let persons = sandbox.records("persons");
    assert_eq!(persons.len(), 1, "{persons:?}");
    assert_eq!(persons[0]["emails"][0]["value"], "ada@lovelace.example");
    assert_eq!(persons[0]["custom_fields"][APP_ID_FIELD], "app-1");
    assert_eq!(
        sandbox.stats().calls,
        5,
        "a search and a create; then a search, a read of the hit and a write"
    );
}

#[tokio::test]
async fn a_person_reads_back_flat_and_reads_as_none_once_deleted() {
    let (_sandbox, client) = sandbox(Limits::default()).await;
    let created = client
        .upsert("persons", APP_ID_FIELD, &[input("app-2", "grace@example.com")])
        .await
        .expect("created");
    let (id, _) = done(&created.outcomes[0]);

    let read = client
        .read(
            "persons",
            std::slice::from_ref(&id),
            &["email".into(), APP_ID_FIELD.into()],
        )
        .await
        .expect("read");
    let record = read.records[0].clone().expect("the person exists");
    assert_eq!(record["email"], "grace@example.com");
    assert_eq!(record[APP_ID_FIELD], "app-2");
    assert!(!record.contains_key("owner_id"), "only the asked properties");
    assert_eq!(
        record["name"], "Ada Lovelace",
        "and a person's name, which its parts are read against"
    );

    let archived = client
        .archive("persons", std::slice::from_ref(&id))
        .await
        .expect("deleted");
    assert_eq!(done(&archived.outcomes[0]).0, id);
    let again = client
        .archive("persons", std::slice::from_ref(&id))
        .await
        .expect("gone already");
    assert!(matches!(again.outcomes[0], InputOutcome::Done { .. }));
    let read = client.read("persons", &[id], &[]).await.expect("read");
    assert_eq!(read.records, vec![None]);
}

#[tokio::test]
async fn a_full_burst_window_is_a_burst_throttle_with_the_reset_as_retry_after() {
    let (sandbox, client) = sandbox(Limits {
        burst_limit: 3,
        ..Limits::default()
    })
    .await;
    let first = client
        .upsert("persons", APP_ID_FIELD, &[input("app-3", "a@example.com")])
        .await
        .expect("two requests fit");
    let (id, _) = done(&first.outcomes[0]);
    client
        .read("persons", &[id], &[])
        .await
        .expect("the third request fits");
    // Another app on the same token knows nothing of this window: its request is refused.
    let other = PipedriveClient::new(&sandbox.url(), SecretString::from(TOKEN), Duration::from_secs(5))
        .expect("a client");
    let error = other
        .upsert("persons", APP_ID_FIELD, &[input("app-4", "b@example.com")])
        .await
        .expect_err("the fourth request of the window is refused");
    let CrmError::Throttled {
        policy,
        retry_after,
        rate,
        ..
    } = error
    else {
        panic!("expected a throttle, got {error:?}");
    };
    assert_eq!(policy, ThrottlePolicy::Burst);
    assert!(
        retry_after.is_some_and(|wait| wait <= Duration::from_secs(2)),
        "{retry_after:?}"
    );
    assert_eq!(rate.burst_remaining, Some(0));
    assert_eq!(rate.burst_max, Some(3));
}

#[tokio::test]
async fn the_client_waits_out_a_full_burst_window_instead_of_sending_into_it() {
    let (sandbox, client) = sandbox(Limits {
        burst_limit: 3,
        ..Limits::default()
    })
    .await;
    for (key, email) in [("app-5", "c@example.com"), ("app-6", "d@example.com")] {
        let result = client
            .upsert("persons", APP_ID_FIELD, &[input(key, email)])
            .await
            .expect("the upsert waits for room and succeeds");
        assert!(done(&result.outcomes[0]).1, "{key} was created");
    }
    assert_eq!(sandbox.stats().throttled, 0, "{:?}", sandbox.stats());
    assert_eq!(sandbox.records("persons").len(), 2);
}

#[tokio::test]
async fn a_spent_daily_budget_is_a_daily_throttle() {
    let (_sandbox, client) = sandbox(Limits {
        daily_tokens: 19,
        ..Limits::default()
    })
    .await;
    let error = client
        .upsert("persons", APP_ID_FIELD, &[input("app-5", "c@example.com")])
        .await
        .expect_err("a search costs 20 tokens, more than the day has left");
    assert!(
        matches!(
            error,
            CrmError::Throttled {
                policy: ThrottlePolicy::Daily,
                ..
            }
        ),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_wrong_token_is_an_authentication_failure_that_may_pass_after_a_rotation() {
    let (sandbox, _client) = sandbox(Limits::default()).await;
    let client = PipedriveClient::new(
        &sandbox.url(),
        SecretString::from("revoked"),
        Duration::from_secs(5),
    )
    .expect("a client");
    let error = client
        .upsert("persons", APP_ID_FIELD, &[input("app-6", "d@example.com")])
        .await
        .expect_err("refused");
    assert!(
        matches!(&error, CrmError::Transient { message, .. } if message.starts_with("authentication failed")),
        "{error:?}"
    );
    assert_eq!(sandbox.stats().unauthorized, 1);
    assert!(sandbox.records("persons").is_empty());
}

#[tokio::test]
async fn a_deal_is_linked_to_its_person_and_other_links_are_refused() {
    let (sandbox, client) = sandbox(Limits::default()).await;
    let person = client
        .upsert("persons", APP_ID_FIELD, &[input("app-7", "e@example.com")])
        .await
        .expect("person");
    let deal = client
        .upsert(
            "deals",
            APP_ID_FIELD,
            &[UpsertInput::new(
                "deal-7",
                BTreeMap::from([("title".to_string(), "Pilot".to_string())]),
            )],
        )
        .await
        .expect("deal");
    let (person_id, _) = done(&person.outcomes[0]);
    let (deal_id, _) = done(&deal.outcomes[0]);
    let linked = client
        .associate(
            "deals",
            "persons",
            &[AssociationInput {
                from_id: deal_id,
                to_id: person_id.clone(),
            }],
        )
        .await
        .expect("linked");
    assert!(matches!(linked.outcomes[0], InputOutcome::Done { .. }));
    assert_eq!(sandbox.records("deals")[0]["person_id"].to_string(), person_id);

    let refused = client
        .associate(
            "persons",
            "deals",
            &[AssociationInput {
                from_id: "1".into(),
                to_id: "2".into(),
            }],
        )
        .await;
    assert!(matches!(refused, Err(CrmError::Rejected { .. })), "{refused:?}");
}

fn note(body: &str, crm_id: Option<String>, person: Option<String>) -> UpsertInput {
    UpsertInput {
        crm_id,
        parent_crm_id: person,
        ..UpsertInput::new(
            "act-1",
            BTreeMap::from([("content".to_string(), body.to_string())]),
        )
    }
}

#[tokio::test]
async fn a_note_is_created_on_its_person_updated_by_its_id_and_written_anew_once_deleted() {
    let (sandbox, client) = sandbox(Limits::default()).await;
    let person = done(
        &client
            .upsert("persons", APP_ID_FIELD, &[input("app-9", "n@example.com")])
            .await
            .unwrap()
            .outcomes[0],
    )
    .0;

    // Without its person the note cannot be created yet: a retry may find the person.
    let orphan = client
        .upsert("notes", "unused", &[note("Call", None, None)])
        .await
        .unwrap();
    assert!(
        matches!(&orphan.outcomes[0], InputOutcome::Failed(error) if error.kind == crm_sync::domain::crm::FailureKind::Transient),
        "{orphan:?}"
    );
    assert!(sandbox.records("notes").is_empty());

    let created = client
        .upsert("notes", "unused", &[note("Call", None, Some(person.clone()))])
        .await
        .unwrap();
    let (note_id, was_created) = done(&created.outcomes[0]);
    assert!(was_created);
    assert_eq!(
        sandbox.records("notes")[0]["content"],
        "Call\n[crm-sync:act-1]",
        "its last line names the app's id"
    );
    let updated = client
        .upsert(
            "notes",
            "unused",
            &[note(
                "Call, rescheduled",
                Some(note_id.clone()),
                Some(person.clone()),
            )],
        )
        .await
        .unwrap();
    assert_eq!(done(&updated.outcomes[0]), (note_id.clone(), false));
    let notes = sandbox.records("notes");
    assert_eq!(notes.len(), 1, "updated in place: {notes:?}");
    assert_eq!(notes[0]["content"], "Call, rescheduled\n[crm-sync:act-1]");
    let read = client
        .read("notes", std::slice::from_ref(&note_id), &[])
        .await
        .unwrap();
    assert_eq!(
        read.records[0].as_ref().unwrap()["content"],
        "Call, rescheduled",
        "read back as the app wrote it"
    );
    assert_eq!(notes[0]["person_id"].to_string(), person);

    client
        .archive("notes", std::slice::from_ref(&note_id))
        .await
        .unwrap();
    assert!(sandbox.records("notes").is_empty());
    let again = client
        .upsert(
            "notes",
            "unused",
            &[note("Call", Some(note_id.clone()), Some(person))],
        )
        .await
        .unwrap();
    let (new_id, created) = done(&again.outcomes[0]);
    assert!(created && new_id != note_id, "a deleted note is written anew");
}

#[tokio::test]
async fn a_note_whose_creation_answer_was_lost_is_found_by_its_marker_and_not_written_twice() {
    let (sandbox, _) = sandbox(Limits::default()).await;
    let client = PipedriveClient::new(
        &sandbox.url(),
        SecretString::from(TOKEN),
        Duration::from_millis(300),
    )
    .expect("a client");
    let person = done(
        &client
            .upsert("persons", APP_ID_FIELD, &[input("app-10", "lost@example.com")])
            .await
            .unwrap()
            .outcomes[0],
    )
    .0;

    // The search for an earlier copy is answered; Pipedrive then writes the note, and that
    // answer never arrives in time (the dice's first two rolls with this seed).
    sandbox.set_faults(
        pipedrive_sandbox::Faults {
            timeout_rate: 0.5,
            timeout: Duration::from_secs(1),
            ..Default::default()
        },
        3,
    );
    let lost = client
        .upsert("notes", "unused", &[note("Call", None, Some(person.clone()))])
        .await;
    assert!(lost.is_err(), "{lost:?}");
    sandbox.set_faults(pipedrive_sandbox::Faults::default(), 1);
    let written = sandbox.records("notes");
    assert_eq!(written.len(), 1);
    assert!(written[0]["content"]
        .as_str()
        .unwrap()
        .contains("[crm-sync:act-1]"));

    let retry = client
        .upsert(
            "notes",
            "unused",
            &[note("Call, rescheduled", None, Some(person))],
        )
        .await
        .unwrap();
    let (id, _) = done(&retry.outcomes[0]);
    let notes = sandbox.records("notes");
    assert_eq!(notes.len(), 1, "found, not written twice: {notes:?}");
    assert_eq!(notes[0]["id"].to_string(), id);
    assert_eq!(
        notes[0]["content"], "Call, rescheduled\n[crm-sync:act-1]",
        "and brought up to date"
    );
}

#[tokio::test]
async fn a_persons_name_parts_are_written_as_its_name_and_a_deals_amount_as_a_number() {
    let (sandbox, client) = sandbox(Limits::default()).await;
    let parts = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let created = client
        .upsert(
            "persons",
            APP_ID_FIELD,
            &[UpsertInput::new(
                "app-20",
                parts(&[
                    ("first_name", "Grace"),
                    ("last_name", "Hopper"),
                    ("email", "g@example.com"),
                ]),
            )],
        )
        .await
        .unwrap();
    let (id, _) = done(&created.outcomes[0]);
    assert_eq!(sandbox.records("persons")[0]["name"], "Grace Hopper");

    // Only the first name changes: the last comes from Pipedrive.
    let renamed = client
        .upsert(
            "persons",
            APP_ID_FIELD,
            &[UpsertInput {
                crm_id: Some(id.clone()),
                ..UpsertInput::new("app-20", parts(&[("first_name", "Amazing Grace")]))
            }],
        )
        .await
        .unwrap();
    assert_eq!(done(&renamed.outcomes[0]), (id, false));
    let person = &sandbox.records("persons")[0];
    assert_eq!(person["name"], "Amazing Grace Hopper");
    assert_eq!(sandbox.stats().invalid, 0, "every request fit the v2 models");

    let deal = client
        .upsert(
            "deals",
            APP_ID_FIELD,
            &[UpsertInput::new(
                "deal-20",
                parts(&[("title", "Pilot"), ("value", "1200")]),
            )],
        )
        .await
        .unwrap();
    assert!(matches!(deal.outcomes[0], InputOutcome::Done { .. }), "{deal:?}");
    assert_eq!(sandbox.records("deals")[0]["value"], serde_json::json!(1200));
    let refused = client
        .upsert(
            "deals",
            APP_ID_FIELD,
            &[UpsertInput::new(
                "deal-21",
                parts(&[("title", "Pilot"), ("value", "lots")]),
            )],
        )
        .await;
    match refused {
        Err(CrmError::Rejected {
            status: 400, message, ..
        }) => assert!(message.contains("value"), "{message}"),
        other => panic!("text in a number field is Pipedrive's 400: {other:?}"),
    }
}

#[tokio::test]
async fn a_person_whose_creation_answer_was_lost_is_found_past_the_lagging_search_not_created_twice() {
    let (sandbox, _) = sandbox(Limits {
        search_lag: Duration::from_secs(120),
        ..Limits::default()
    })
    .await;
    let client = PipedriveClient::new(
        &sandbox.url(),
        SecretString::from(TOKEN),
        Duration::from_millis(300),
    )
    .expect("a client");
    // The person fields are read once, before the faults.
    client
        .upsert("persons", APP_ID_FIELD, &[input("app-30", "first@example.com")])
        .await
        .unwrap();

    // The search is answered; Pipedrive then creates the person, and that answer never arrives in
    // time (the dice's first two rolls with this seed).
    sandbox.set_faults(
        pipedrive_sandbox::Faults {
            timeout_rate: 0.5,
            timeout: Duration::from_secs(1),
            ..Default::default()
        },
        3,
    );
    let lost = client
        .upsert("persons", APP_ID_FIELD, &[input("app-31", "lost@example.com")])
        .await;
    assert!(lost.is_err(), "{lost:?}");
    sandbox.set_faults(pipedrive_sandbox::Faults::default(), 1);
    assert_eq!(sandbox.records("persons").len(), 2, "the create happened");

    // The same instance retries: the search cannot see the person yet, the newest persons can.
    let retry = client
        .upsert("persons", APP_ID_FIELD, &[input("app-31", "retry@example.com")])
        .await
        .unwrap();
    assert!(
        matches!(retry.outcomes[0], InputOutcome::Done { created: false, .. }),
        "{retry:?}"
    );
    // Another instance, told that an earlier attempt may have written it, finds it the same way.
    let other =
        PipedriveClient::new(&sandbox.url(), SecretString::from(TOKEN), Duration::from_secs(5)).unwrap();
    let hinted = other
        .upsert(
            "persons",
            APP_ID_FIELD,
            &[UpsertInput {
                may_exist: true,
                ..input("app-31", "hinted@example.com")
            }],
        )
        .await
        .unwrap();
    assert!(
        matches!(hinted.outcomes[0], InputOutcome::Done { created: false, .. }),
        "{hinted:?}"
    );
    let persons = sandbox.records("persons");
    assert_eq!(persons.len(), 2, "not created twice: {persons:?}");
    assert!(persons
        .iter()
        .any(|p| p["emails"][0]["value"] == "hinted@example.com"));

    // Without the hint the lagging search would have missed it: the hazard is real.
    let unhinted = other
        .upsert("persons", APP_ID_FIELD, &[input("app-31", "dup@example.com")])
        .await
        .unwrap();
    assert!(matches!(
        unhinted.outcomes[0],
        InputOutcome::Done { created: true, .. }
    ));
}

#[tokio::test]
async fn a_search_hit_whose_other_field_holds_the_app_id_is_not_taken_for_the_record() {
    let (sandbox, client) = sandbox(Limits::default()).await;
    sandbox.add_custom_field("persons", "referred_by", "varchar");
    let referrer = client
        .upsert(
            "persons",
            APP_ID_FIELD,
            &[UpsertInput::new(
                "app-40",
                BTreeMap::from([
                    ("name".to_string(), "Ann Referrer".to_string()),
                    ("referred_by".to_string(), "app-41".to_string()),
                ]),
            )],
        )
        .await
        .unwrap();
    let (referrer_id, _) = done(&referrer.outcomes[0]);

    let new = client
        .upsert("persons", APP_ID_FIELD, &[input("app-41", "new@example.com")])
        .await
        .unwrap();

    let (new_id, created) = done(&new.outcomes[0]);
    assert!(created && new_id != referrer_id, "{new:?}");
    let persons = sandbox.records("persons");
    let untouched = persons
        .iter()
        .find(|p| p["id"].as_u64().map(|id| id.to_string()).as_ref() == Some(&referrer_id))
        .unwrap();
    assert_eq!(untouched["custom_fields"][APP_ID_FIELD], "app-40");
    assert_eq!(untouched["name"], "Ann Referrer");
}

#[tokio::test]
async fn adoption_finds_persons_by_the_apps_id_and_by_any_of_their_emails_one_value_a_call() {
    use serde_json::json;
    let (sandbox, client) = sandbox(Limits::default()).await;
    assert_eq!(client.max_find(), 1);
    let ours = sandbox.create(
        "persons",
        json!({"name": "Ada Lovelace", "emails": [{"value": "ada@example.com", "primary": true}],
               "custom_fields": {APP_ID_FIELD: "app-1"}}),
    );
    // Another field holding the same text is no match by the app's id.
    sandbox.add_custom_field("persons", "referrer", "varchar");
    sandbox.create(
        "persons",
        json!({"name": "Referred", "emails": [{"value": "ref@example.com"}],
               "custom_fields": {"referrer": "app-1"}}),
    );
    let persons_one = sandbox.create(
        "persons",
        json!({"name": "Grace Hopper", "emails": [{"value": "work@example.com", "primary": true},
                                                  {"value": "Grace@Example.com", "primary": false}]}),
    );
    sandbox.create(
        "persons",
        json!({"name": "Twin A", "emails": [{"value": "twin@example.com"}]}),
    );
    sandbox.create(
        "persons",
        json!({"name": "Twin B", "emails": [{"value": "twin@example.com"}]}),
    );

    let found = |value: &str, by: &'static str| {
        let client = &client;
        let value = value.to_string();
        async move {
            client
                .find(
                    "persons",
                    by,
                    &[value],
                    &[APP_ID_FIELD.to_string(), "email".into()],
                )
                .await
                .expect("found")
                .matches
        }
    };
    let by_id = found("app-1", APP_ID_FIELD).await;
    assert_eq!(by_id.len(), 1);
    assert_eq!(
        by_id[0].len(),
        1,
        "the referrer's field is not the id field: {by_id:?}"
    );
    assert_eq!(by_id[0][0].crm_id, ours.to_string());
    assert_eq!(by_id[0][0].values[APP_ID_FIELD], "app-1");

    let by_email = found("grace@example.com", "email").await;
    assert_eq!(
        by_email[0].len(),
        1,
        "a secondary email, in another case: {by_email:?}"
    );
    assert_eq!(by_email[0][0].crm_id, persons_one.to_string());
    assert_eq!(
        by_email[0][0].values.get(APP_ID_FIELD),
        None,
        "no app id: free to link"
    );

    let twins = found("twin@example.com", "email").await;
    assert_eq!(
        twins[0].len(),
        2,
        "two persons share it: named, for a person to decide"
    );
    assert!(found("nobody@example.com", "email").await[0].is_empty());

    match client.find("notes", APP_ID_FIELD, &["n-1".into()], &[]).await {
        Err(CrmError::Rejected { message, .. }) => {
            assert!(message.contains("cannot search notes"), "{message}")
        }
        other => panic!("notes cannot be searched: {other:?}"),
    }
}

#[tokio::test]
async fn an_organizations_custom_fields_are_written_as_organization_fields_types_them() {
    let (sandbox, client) = sandbox(Limits::default()).await;
    const EMPLOYEES: &str = "e7d1a2b3";
    sandbox.add_custom_field("organizations", APP_ID_FIELD, "varchar");
    sandbox.add_custom_field("organizations", EMPLOYEES, "double");
    let company = UpsertInput::new(
        "acct-1".to_string(),
        BTreeMap::from([
            ("name".to_string(), "Analytical Engines".to_string()),
            (EMPLOYEES.to_string(), "120".to_string()),
        ]),
    );

    let written = client
        .upsert("organizations", APP_ID_FIELD, &[company])
        .await
        .expect("a call Pipedrive answers");

    let (id, created) = done(&written.outcomes[0]);
    assert!(created);
    let organization = sandbox
        .records("organizations")
        .into_iter()
        .find(|o| o["id"].as_u64() == id.parse().ok())
        .expect("the organization");
    assert_eq!(
        organization["custom_fields"][EMPLOYEES].as_f64(),
        Some(120.0),
        "a number, as the field's type says"
    );
    assert_eq!(organization["custom_fields"][APP_ID_FIELD], "acct-1");
}
