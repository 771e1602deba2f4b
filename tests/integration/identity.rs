//! Identity that survives the CRM, through the local stack: people merge, restore and erase
//! contacts in the CRMs' sandboxes. HubSpot's and Pipedrive's post each vendor's events back;
//! Salesforce's merges are read by the merge scan, as Salesforce announces none.

use crm_sync::domain::contract::{ObjectKind, RecordRef};
use crm_sync::domain::sync::{RecordState, SyncStatus};
use crm_sync::ports::state::*;
use crm_sync_tests::app_changes::contact;
use crm_sync_tests::crms::{Crm, CrmStack};
use crm_sync_tests::eventually;
use crm_sync_tests::hubspot::now_ms;
use serde_json::{json, Value};

/// Every CRM merges: HubSpot and Pipedrive announce it, Salesforce's is read by the merge scan.
const MERGING: [Crm; 3] = Crm::ALL;

/// The CRMs whose erasures these tests cover (Salesforce's erasure is its delete).
const ERASING: [Crm; 2] = [Crm::HubSpot, Crm::Pipedrive];

fn contact_ref(id: &str) -> RecordRef {
    RecordRef {
        object: ObjectKind::Contact,
        record_id: id.into(),
    }
}

/// Syncs a contact and waits until the CRM's report of it is processed; returns its CRM id.
async fn synced(stack: &CrmStack, record_id: &str, at_ms: i64) -> String {
    stack
        .app
        .send_changes(&[contact(
            record_id,
            at_ms,
            json!({"email": format!("{record_id}@example.com"), "last_name": "Identity"}),
        )])
        .await;
    stack.app.applied(contact_ref(record_id), at_ms).await;
    stack.webhooks_settled().await;
    stack.contact_crm_id(record_id)
}

/// Waits until the record's state satisfies `check`.
async fn state_where(
    stack: &CrmStack,
    record_id: &str,
    what: &str,
    check: impl Fn(&RecordState) -> bool,
) -> RecordState {
    let store = stack.app.sync_state();
    eventually(60, what, || {
        let store = store.clone();
        let check = &check;
        async move {
            let (state, _) = store.record(&contact_ref(record_id), 1).await.ok().flatten()?;
            check(&state).then_some(state)
        }
    })
    .await
}

fn of_type<'a>(inbox: &'a [Value], kind: &str) -> Vec<&'a Value> {
    inbox.iter().filter(|m| m["type"] == kind).collect()
}

#[tokio::test]
async fn in_every_crm_a_merge_into_a_reps_contact_moves_the_app_record_and_its_next_write_creates_nothing() {
    for crm in MERGING {
        let stack = crm.looped_stack().await;
        let app = &stack.app;
        let at = now_ms();
        let loser = synced(&stack, "m-1", at).await;
        app.drain_app_inbox().await;
        let rep = stack.create_contact_as_a_person("m-1@work.example");

        let survivor = stack.merge_contacts_as_a_person(&loser, &rep);
        stack.merges_noticed().await;
        // Salesforce: the next scan reads the merge again (scans overlap); it is one event.
        stack.merges_noticed().await;
        let state = state_where(&stack, "m-1", "the record on the survivor", |s| {
            s.crm_id.as_deref() == Some(survivor.as_str())
        })
        .await;
        stack.webhooks_settled().await;

        assert!(
            state.identity_conflict.is_none(),
            "{crm:?}: one app record, no conflict"
        );
        let inbox = app.drain_app_inbox().await;
        let merged = of_type(&inbox, "crm.merged");
        assert_eq!(merged.len(), 1, "{crm:?}: told once: {inbox:?}");
        assert_eq!(merged[0]["version"], 2);
        assert_eq!(merged[0]["crm_id"], survivor.as_str(), "{crm:?}");
        assert_eq!(merged[0]["record_ids"], json!(["m-1"]), "{crm:?}");
        assert_eq!(merged[0]["identity_conflict"], false);
        assert!(
            merged[0]["merged_crm_ids"]
                .as_array()
                .unwrap()
                .contains(&json!(loser)),
            "{crm:?}: {}",
            merged[0]
        );
        app.timeline_says(contact_ref("m-1"), "merged in the CRM").await;

        let contacts = stack.contact_count();
        app.send_changes(&[contact(
            "m-1",
            at + 1_000,
            json!({"email": "m-1@new.example", "last_name": "Identity"}),
        )])
        .await;
        app.applied(contact_ref("m-1"), at + 1_000).await;
        assert_eq!(stack.contact_count(), contacts, "{crm:?}: no contact created");
        assert!(stack.contact_exists(&survivor), "{crm:?}");
        let (state, _) = app
            .sync_state()
            .record(&contact_ref("m-1"), 1)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(state.crm_id.as_deref(), Some(survivor.as_str()), "{crm:?}");
        assert!(
            stack
                .contact_emails()
                .values()
                .any(|email| email == "m-1@new.example"),
            "{crm:?}: the survivor holds the write: {:?}",
            stack.contact_emails()
        );
    }
}

#[tokio::test]
async fn in_every_crm_two_app_records_merged_into_one_are_an_identity_conflict_the_app_resolves_by_deleting_one(
) {
    for crm in MERGING {
        let stack = crm.looped_stack().await;
        let app = &stack.app;
        let at = now_ms();
        let kept = synced(&stack, "dup-a", at).await;
        let gone = synced(&stack, "dup-b", at).await;
        app.drain_app_inbox().await;

        let survivor = stack.merge_contacts_as_a_person(&gone, &kept);
        stack.merges_noticed().await;
        let held = state_where(&stack, "dup-b", "the duplicate held", |s| {
            s.identity_conflict.is_some()
        })
        .await;
        stack.webhooks_settled().await;

        assert_eq!(held.crm_id.as_deref(), Some(survivor.as_str()), "{crm:?}");
        let owner = state_where(&stack, "dup-a", "the owner on the survivor", |s| {
            s.crm_id.as_deref() == Some(survivor.as_str())
        })
        .await;
        assert!(
            owner.identity_conflict.is_none(),
            "{crm:?}: the primary's record writes on"
        );
        assert!(
            owner.open_conflicts && held.open_conflicts,
            "{crm:?}: both in the conflicts listing"
        );
        let inbox = app.drain_app_inbox().await;
        let merged = of_type(&inbox, "crm.merged");
        assert_eq!(merged.len(), 1, "{crm:?}: {inbox:?}");
        assert_eq!(merged[0]["identity_conflict"], true);
        assert_eq!(merged[0]["record_ids"], json!(["dup-a", "dup-b"]), "{crm:?}");

        // The duplicate's writes wait, with the reason, for the app or an operator.
        app.send_changes(&[contact(
            "dup-b",
            at + 1_000,
            json!({"email": "dup-b@example.com", "last_name": "Overwrite"}),
        )])
        .await;
        let (state, _) = app
            .timeline_says(contact_ref("dup-b"), "held: identity conflict")
            .await;
        assert_eq!(state.status, SyncStatus::Failed, "{crm:?}");

        // The app merges its own records and deletes the duplicate: unlinked, nothing archived.
        app.send_changes(&[
            json!({"version": 1, "type": "contact.delete", "record_id": "dup-b",
                                  "idempotency_id": format!("del-{}", at), "changed_at": at + 2_000}),
        ])
        .await;
        app.timeline_says(contact_ref("dup-b"), "unlinked: CRM record")
            .await;
        assert!(stack.contact_exists(&survivor), "{crm:?}: the survivor stays");
        let contacts = stack.contact_count();
        app.send_changes(&[contact(
            "dup-a",
            at + 3_000,
            json!({"email": "dup-a@example.com", "last_name": "Owner"}),
        )])
        .await;
        app.applied(contact_ref("dup-a"), at + 3_000).await;
        assert_eq!(stack.contact_count(), contacts, "{crm:?}");
    }
}

#[tokio::test]
async fn a_write_that_meets_an_id_merged_away_before_its_event_arrives_follows_the_merge_and_creates_nothing()
{
    for crm in MERGING {
        let stack = crm.looped_stack().await;
        let app = &stack.app;
        let at = now_ms();
        let loser = synced(&stack, "late-1", at).await;
        let rep = stack.create_contact_as_a_person("late-1@work.example");
        stack.webhooks_settled().await;
        // The merge's webhook leaves HubSpot seconds after the app's next write; Pipedrive's
        // sandbox posts it at once, and the write may still come first.
        if crm == Crm::HubSpot {
            let sandbox = app.sandbox();
            sandbox.set_webhooks(hubspot_sandbox::WebhookSettings {
                batch_window_ms: 3_000,
                ..sandbox.webhooks()
            });
        }
        let survivor = stack.merge_contacts_as_a_person(&loser, &rep);
        let contacts = stack.contact_count();

        app.send_changes(&[contact(
            "late-1",
            at + 1_000,
            json!({"email": "late-1@example.com", "last_name": "Late"}),
        )])
        .await;
        app.applied(contact_ref("late-1"), at + 1_000).await;
        state_where(&stack, "late-1", "the record on the survivor", |s| {
            s.crm_id.as_deref() == Some(survivor.as_str())
        })
        .await;

        assert_eq!(stack.contact_count(), contacts, "{crm:?}: not created anew");
        assert!(
            stack
                .contact_emails()
                .values()
                .any(|email| email == "late-1@example.com"),
            "{crm:?}: the survivor holds the write"
        );
        if crm != Crm::Pipedrive {
            // HubSpot reads the merged id as its survivor, Salesforce's queryAll names its
            // master: the write follows at once.
            let (_, timeline) = app
                .sync_state()
                .record(&contact_ref("late-1"), 10)
                .await
                .unwrap()
                .unwrap();
            assert!(
                timeline.iter().any(|e| e.detail.starts_with(&format!(
                    "updated CRM record {survivor}, into which the CRM merged CRM record {loser}"
                ))),
                "{timeline:?}"
            );
        }
        // The merge is noticed after the write followed it: the app is still told, once.
        stack.merges_noticed().await;
        stack.webhooks_settled().await;
        let told = eventually(60, "the app told of the merge", || async {
            let merged: Vec<Value> = app
                .drain_app_inbox()
                .await
                .into_iter()
                .filter(|m| m["type"] == "crm.merged")
                .collect();
            (!merged.is_empty()).then_some(merged)
        })
        .await;
        assert_eq!(told.len(), 1, "{crm:?}: {told:?}");
        assert_eq!(told[0]["record_ids"], json!(["late-1"]), "{crm:?}");
        assert_eq!(told[0]["crm_id"], survivor.as_str(), "{crm:?}");
    }
}

#[tokio::test]
async fn a_chain_of_merges_leaves_the_app_record_on_the_last_survivor() {
    for crm in MERGING {
        let stack = crm.looped_stack().await;
        let app = &stack.app;
        let at = now_ms();
        let first = synced(&stack, "chain-1", at).await;
        let middle = stack.create_contact_as_a_person("chain@middle.example");
        let last = stack.create_contact_as_a_person("chain@last.example");

        let once = stack.merge_contacts_as_a_person(&first, &middle);
        let twice = stack.merge_contacts_as_a_person(&once, &last);
        if crm == Crm::Salesforce {
            // The nightly run reads merges too, before it checks drift.
            let report = app.reconcile().await;
            assert_eq!(report.merges_read, 2, "{report:?}");
        }
        state_where(&stack, "chain-1", "the record on the last survivor", |s| {
            s.crm_id.as_deref() == Some(twice.as_str())
        })
        .await;
        stack.webhooks_settled().await;
        assert_eq!(
            of_type(&app.drain_app_inbox().await, "crm.merged").len(),
            2,
            "{crm:?}"
        );

        let contacts = stack.contact_count();
        app.send_changes(&[contact(
            "chain-1",
            at + 1_000,
            json!({"email": "chain-1@example.com", "last_name": "Chained"}),
        )])
        .await;
        app.applied(contact_ref("chain-1"), at + 1_000).await;
        assert_eq!(stack.contact_count(), contacts, "{crm:?}");
        assert!(stack.contact_exists(&twice), "{crm:?}");
    }
}

#[tokio::test]
async fn a_hubspot_restore_tells_the_app_and_a_privacy_deletion_erases_the_record_on_both_sides() {
    let stack = Crm::HubSpot.looped_stack().await;
    let app = &stack.app;
    let at = now_ms();
    let crm_id = synced(&stack, "gdpr-1", at).await;
    app.drain_app_inbox().await;
    let sandbox = app.sandbox();
    let id: u64 = crm_id.parse().unwrap();

    sandbox.archive("contacts", id);
    assert!(sandbox.restore("contacts", id));
    let restored = eventually(30, "the restore in the app inbox", || async {
        let inbox = app.drain_app_inbox().await;
        of_type(&inbox, "crm.restored").first().map(|m| (*m).clone())
    })
    .await;
    assert_eq!(restored["record_id"], "gdpr-1");
    assert_eq!(restored["crm_id"], crm_id.as_str());

    assert!(sandbox.privacy_delete("contacts", id));
    let erased = state_where(&stack, "gdpr-1", "the record erased", |s| {
        s.erased_at_ms.is_some()
    })
    .await;
    stack.webhooks_settled().await;
    assert_eq!(erased.status, SyncStatus::Deleted);
    assert!(erased.written.is_empty() && erased.last_change.is_none());
    let inbox = app.drain_app_inbox().await;
    assert_eq!(of_type(&inbox, "crm.erased").len(), 1, "{inbox:?}");
    let (_, timeline) = app
        .sync_state()
        .record(&contact_ref("gdpr-1"), 50)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(timeline.len(), 1, "only that it happened: {timeline:?}");
    assert!(!timeline[0].detail.contains("@example.com"));

    // The app's next change of the person is refused: the CRM never gets them back.
    app.send_changes(&[contact(
        "gdpr-1",
        at + 5_000,
        json!({"email": "gdpr-1@example.com", "last_name": "Again"}),
    )])
    .await;
    app.timeline_says(
        contact_ref("gdpr-1"),
        "refused: the record was erased for privacy",
    )
    .await;
    assert_eq!(stack.contact_count(), 0);
}

#[tokio::test]
async fn with_the_refuse_policy_a_contact_whose_email_a_crm_contact_holds_is_an_identity_conflict_not_an_adoption(
) {
    let stack = Crm::HubSpot
        .stack_with_env(&[("SHARED_EMAIL_POLICY", "refuse")])
        .await;
    let app = &stack.app;
    let existing = stack.create_contact_as_a_person("ivy@example.com");

    app.send_changes(&[contact(
        "ivy-1",
        now_ms(),
        json!({"email": "ivy@example.com", "first_name": "Ivy"}),
    )])
    .await;

    app.timeline_says(contact_ref("ivy-1"), "identity conflict: CRM record")
        .await;
    // The line is written before the state settles, under the record's lease.
    let (state, _) = app.settled(contact_ref("ivy-1"), SyncStatus::Failed).await;
    assert!(
        state
            .last_error
            .unwrap()
            .contains("SHARED_EMAIL_POLICY is refuse"),
        "the reason names the policy"
    );
    assert_eq!(state.crm_id, None);
    assert_eq!(stack.contact_count(), 1, "nothing created, nothing taken over");
    assert_eq!(
        stack.contact_emails().get(""),
        Some(&"ivy@example.com".to_string())
    );
    assert!(stack.contact_exists(&existing));
}

#[tokio::test]
async fn in_hubspot_and_pipedrive_an_erasure_the_app_sends_removes_the_contact_from_the_crm_and_its_values_from_crm_sync(
) {
    for crm in ERASING {
        let stack = crm.looped_stack().await;
        let app = &stack.app;
        let at = now_ms();
        let crm_id = synced(&stack, "erase-1", at).await;
        app.drain_app_inbox().await;

        app.send_changes(&[
            json!({"version": 1, "type": "contact.erase", "record_id": "erase-1",
                                  "idempotency_id": format!("erase-{at}"), "changed_at": at + 1_000}),
        ])
        .await;

        app.timeline_says(contact_ref("erase-1"), "erased at the app's request")
            .await;
        let (state, timeline) = app.settled(contact_ref("erase-1"), SyncStatus::Deleted).await;
        assert!(
            state.erased_at_ms.is_some() && state.written.is_empty(),
            "{crm:?}"
        );
        assert_eq!(timeline.len(), 1, "{crm:?}: only that it happened: {timeline:?}");
        assert!(!stack.contact_exists(&crm_id), "{crm:?}");
        if crm == Crm::HubSpot {
            let id: u64 = crm_id.parse().unwrap();
            assert!(
                !app.sandbox().all_records("contacts").iter().any(|r| r.id == id),
                "a GDPR delete keeps no archived copy"
            );
        }
        stack.webhooks_settled().await;
        let inbox = app.drain_app_inbox().await;
        assert!(
            of_type(&inbox, "crm.erased").is_empty(),
            "{crm:?}: the app's own erasure is not reported back: {inbox:?}"
        );
    }
}

#[tokio::test]
async fn an_operator_sees_an_identity_conflict_on_the_record_page_and_lets_the_held_record_share_its_crm_record(
) {
    use crm_sync_tests::dashboard::DashboardClient;
    let stack = Crm::HubSpot.looped_stack().await;
    let app = &stack.app;
    let at = now_ms();
    let kept = synced(&stack, "share-a", at).await;
    let gone = synced(&stack, "share-b", at).await;
    let survivor = stack.merge_contacts_as_a_person(&gone, &kept);
    state_where(&stack, "share-b", "the duplicate held", |s| {
        s.identity_conflict.is_some()
    })
    .await;
    app.send_changes(&[contact(
        "share-b",
        at + 1_000,
        json!({"email": "share-b@example.com", "last_name": "Shared"}),
    )])
    .await;
    app.timeline_says(contact_ref("share-b"), "held: identity conflict")
        .await;

    let operator = DashboardClient::signed_in(&app.stack.url(), crm_sync_tests::DASHBOARD_PASSWORD).await;
    let path = "/admin/record?object=contact&id=share-b";
    let page = operator.get(path).await.body;
    assert!(
        page.contains("app record share-a also holds"),
        "the reason is shown"
    );
    assert!(page.contains("Share the CRM record"));
    let csrf = operator.csrf(path).await;
    let answer = operator
        .post(
            "/admin/identity/share",
            &[("csrf", csrf.as_str()), ("record", "contact/share-b")],
        )
        .await;
    assert_eq!(answer.status, reqwest::StatusCode::SEE_OTHER);
    let page = operator.get(&format!("{path}&done=shared")).await.body;
    assert!(page.contains("now shares its CRM record"), "{page}");
    assert!(!page.contains("Share the CRM record"));

    let csrf = operator.csrf(path).await;
    operator
        .post(
            "/admin/resync",
            &[
                ("csrf", csrf.as_str()),
                ("record", "contact/share-b"),
                ("back", path),
                ("scope", "selected"),
            ],
        )
        .await;
    app.applied(contact_ref("share-b"), at + 1_000).await;
    let record = app
        .sandbox()
        .records("contacts")
        .into_iter()
        .find(|r| r.id.to_string() == survivor)
        .expect("the survivor");
    assert_eq!(
        record.properties["lastname"], "Shared",
        "written by id to the survivor"
    );
    assert_eq!(
        record.properties["crm_sync_app_id"], "share-a",
        "the owner's id stays on the CRM record"
    );
}

#[tokio::test]
async fn a_merge_recorded_again_with_another_survivor_leaves_no_entry_under_the_first_in_dynamodb() {
    let app = crm_sync_tests::spawn_app_with(crm_sync_tests::AppOptions::syncing()).await;
    let store = app.sync_state();
    let contact = ObjectKind::Contact;
    // HubSpot's read named the end of a chain first; the event then names the next record.
    store.record_merge(contact, &["5".into()], "12", 1).await.unwrap();
    assert_eq!(
        store.merged_from(contact, "12").await.unwrap(),
        vec!["5".to_string()]
    );
    store.record_merge(contact, &["5".into()], "9", 2).await.unwrap();

    assert!(store.merged_from(contact, "12").await.unwrap().is_empty());
    assert_eq!(
        store.merged_from(contact, "9").await.unwrap(),
        vec!["5".to_string()]
    );
    assert_eq!(store.merged_into(contact, &["5".into()]).await.unwrap()["5"], "9");
}

/// A HubSpot stack whose webhooks come back, with the shipped mapping but for a deal's contact
/// link owned by `owner`.
async fn linked_stack(owner: &str) -> crm_sync_tests::TestApp {
    let mapping = include_str!("../../shared/config/mapping.toml").replace(
        "[deal]\ncrm_object = \"deals\"\n",
        &format!("[deal]\ncrm_object = \"deals\"\ncontact_link = \"{owner}\"\n"),
    );
    let path = std::env::temp_dir().join(format!(
        "crm-sync-links-{owner}-{}-{}.toml",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::write(&path, mapping).unwrap();
    let app = crm_sync_tests::spawn_app_with(
        crm_sync_tests::AppOptions::syncing()
            .with_webhooks()
            .with_env("CRM_SYNC_MAPPING_FILE", &path.display().to_string()),
    )
    .await;
    let sandbox = app.sandbox();
    sandbox.set_webhooks(hubspot_sandbox::WebhookSettings {
        association_changes: true,
        ..sandbox.webhooks()
    });
    app
}

/// Syncs contacts `first` and `second` and a deal of `first`; returns the deal's and the
/// contacts' HubSpot ids.
async fn deal_of_first(
    app: &crm_sync_tests::TestApp,
    first: &str,
    second: &str,
    deal: &str,
) -> (u64, u64, u64) {
    let at = now_ms();
    app.send_changes(&[
        contact(first, at, json!({"email": format!("{first}@example.com")})),
        contact(second, at, json!({"email": format!("{second}@example.com")})),
        crm_sync_tests::app_changes::deal(deal, first, at, json!({"name": "Linked deal"})),
    ])
    .await;
    let deal_ref = RecordRef {
        object: ObjectKind::Deal,
        record_id: deal.into(),
    };
    app.applied(deal_ref, at).await;
    app.webhooks_settled(|| app.sandbox().pending_webhooks()).await;
    let id = |object: &str, key: &str| {
        app.sandbox()
            .find(object, "crm_sync_app_id", key)
            .expect("in HubSpot")
            .id
    };
    (id("deals", deal), id("contacts", first), id("contacts", second))
}

#[tokio::test]
async fn a_reps_change_of_an_app_owned_deal_contact_link_is_journaled_as_a_conflict_and_crm_syncs_own_is_an_echo(
) {
    let app = linked_stack("app").await;
    let (deal, first, second) = deal_of_first(&app, "link-a", "link-b", "link-deal").await;
    app.drain_app_inbox().await;
    // crm-sync's own link of the deal to its contact came back, and is an echo.
    let events = app.webhook_events().await;
    let own: Vec<_> = events
        .iter()
        .filter(|(key, ..)| key.contains("deal.associationChange"))
        .collect();
    assert!(!own.is_empty(), "HubSpot reported crm-sync's link");
    assert!(own.iter().all(|(_, status, ..)| status == "echo"), "{own:?}");

    assert!(app.sandbox().link_as_rep(deal, second, false));
    assert!(app.sandbox().link_as_rep(deal, first, true));
    app.webhooks_settled(|| app.sandbox().pending_webhooks()).await;

    let deal_ref = RecordRef {
        object: ObjectKind::Deal,
        record_id: "link-deal".into(),
    };
    let conflicts = app.sync_state().conflicts(&deal_ref, 10).await.unwrap();
    assert_eq!(conflicts.len(), 2, "{conflicts:?}");
    assert!(conflicts.iter().all(|c| c.field == "(link) contact"
        && c.app_value.as_deref() == Some("link-a")
        && c.resolution == "the app's link stands: the deal's next change links it again"));
    assert!(conflicts
        .iter()
        .any(|c| c.crm_value.starts_with("contact link-b linked")));
    assert!(conflicts
        .iter()
        .any(|c| c.crm_value.starts_with("contact link-a unlinked")));
    let inbox = app.drain_app_inbox().await;
    assert!(of_type(&inbox, "crm.link").is_empty(), "{inbox:?}");
}

#[tokio::test]
async fn a_reps_change_of_a_crm_owned_deal_contact_link_reaches_the_app_once_each() {
    let app = linked_stack("crm").await;
    let (deal, first, second) = deal_of_first(&app, "crm-link-a", "crm-link-b", "crm-link-deal").await;
    let before = app.drain_app_inbox().await;
    assert!(
        of_type(&before, "crm.link").is_empty(),
        "crm-sync's own first link is no person's: {before:?}"
    );

    assert!(app.sandbox().link_as_rep(deal, second, false));
    assert!(app.sandbox().link_as_rep(deal, first, true));
    app.webhooks_settled(|| app.sandbox().pending_webhooks()).await;

    let inbox = app.drain_app_inbox().await;
    let links = of_type(&inbox, "crm.link");
    assert_eq!(links.len(), 2, "{inbox:?}");
    assert!(links
        .iter()
        .all(|m| m["version"] == 2 && m["record_id"] == "crm-link-deal"));
    assert!(links
        .iter()
        .any(|m| m["linked_record_id"] == "crm-link-b" && m["removed"] == false));
    assert!(links
        .iter()
        .any(|m| m["linked_record_id"] == "crm-link-a" && m["removed"] == true));

    // The app's next change of the deal leaves the link the rep set.
    let at = now_ms() + 1_000;
    app.send_changes(&[crm_sync_tests::app_changes::deal(
        "crm-link-deal",
        "crm-link-a",
        at,
        json!({"name": "Renamed deal"}),
    )])
    .await;
    app.applied(
        RecordRef {
            object: ObjectKind::Deal,
            record_id: "crm-link-deal".into(),
        },
        at,
    )
    .await;
    let linked = app.sandbox().associations("deals", deal);
    assert!(linked.contains(&("contacts".to_string(), second)), "{linked:?}");
    assert!(!linked.contains(&("contacts".to_string(), first)), "{linked:?}");
}

#[tokio::test]
async fn in_every_crm_a_merge_of_a_declared_company_into_a_reps_moves_the_app_record_and_its_next_write_creates_nothing(
) {
    use crm_sync_tests::app_changes::object_upsert;
    for crm in MERGING {
        let stack = crm.looped_stack().await;
        let app = &stack.app;
        let company = app
            .synced_company("account-17", json!({"name": "Analytical Engines"}))
            .await;
        stack.webhooks_settled().await;
        app.drain_app_inbox().await;
        let store = app.sync_state();
        let (state, _) = store.record(&company, 1).await.unwrap().unwrap();
        let loser = state.crm_id.expect("in the CRM");
        let rep = stack.create_company_as_a_person("Engines (rep's entry)");

        let survivor = stack.merge_companies_as_a_person(&loser, &rep);
        stack.merges_noticed().await;
        let moved = eventually(60, &format!("{crm:?}: the company on the survivor"), || async {
            let (state, _) = store.record(&company, 1).await.ok().flatten()?;
            (state.crm_id.as_deref() == Some(survivor.as_str())).then_some(state)
        })
        .await;
        stack.webhooks_settled().await;
        assert!(moved.identity_conflict.is_none(), "{crm:?}");
        let inbox = app.drain_app_inbox().await;
        let merged = of_type(&inbox, "crm.merged");
        assert_eq!(merged.len(), 1, "{crm:?}: {inbox:?}");
        assert_eq!(merged[0]["object"], "company", "{crm:?}");
        assert_eq!(merged[0]["record_ids"], json!(["account-17"]), "{crm:?}");

        let before = stack.companies().len();
        let at = now_ms() + 1_000;
        app.send_changes(&[object_upsert(
            "company",
            "account-17",
            at,
            json!({"name": "Engines plc"}),
        )])
        .await;
        app.applied(company.clone(), at).await;
        let companies = stack.companies();
        assert_eq!(
            companies.len(),
            before,
            "{crm:?}: no company created: {companies:?}"
        );
        assert!(
            companies.contains(&(survivor.clone(), "Engines plc".to_string())),
            "{crm:?}: the survivor renamed: {companies:?}"
        );
    }
}
