//! Behaviours proven once for all three CRMs: the same scenario against HubSpot's, Pipedrive's
//! and Salesforce's sandboxes.

use crm_sync::domain::contract::{ObjectKind, RecordRef};
use crm_sync::domain::sync::TimelineKind;
use crm_sync::ports::state::*;
use crm_sync_tests::app_changes::{contact, deal};
use crm_sync_tests::crms::Crm;
use crm_sync_tests::eventually;
use crm_sync_tests::hubspot::now_ms;
use serde_json::json;

fn contact_ref(id: &str) -> RecordRef {
    RecordRef {
        object: ObjectKind::Contact,
        record_id: id.into(),
    }
}

#[tokio::test]
async fn in_every_crm_a_duplicate_writes_once_and_an_older_change_arriving_late_never_overwrites_a_newer_one()
{
    for crm in Crm::ALL {
        let stack = crm.stack().await;
        let app = &stack.app;
        let at = now_ms();
        let newer = contact(
            "order-1",
            at + 5_000,
            json!({"email": "new@example.com", "last_name": "Order"}),
        );
        app.send_changes(&[newer.clone(), newer]).await;
        app.applied(contact_ref("order-1"), at + 5_000).await;

        app.send_changes(&[contact(
            "order-1",
            at,
            json!({"email": "old@example.com", "last_name": "Order"}),
        )])
        .await;
        app.timeline_says(contact_ref("order-1"), "older than the change applied already")
            .await;

        assert_eq!(
            stack.contact_count(),
            1,
            "{crm:?}: the duplicate wrote nothing more"
        );
        assert_eq!(stack.contact_emails()["order-1"], "new@example.com", "{crm:?}");
    }
}

#[tokio::test]
async fn in_every_crm_crm_syncs_own_writes_come_back_as_echoes_and_reach_neither_the_app_nor_the_conflict_journal(
) {
    for crm in Crm::ALL {
        let stack = crm.looped_stack().await;
        let app = &stack.app;
        let at = now_ms();
        // A two-word first name: Pipedrive reports `name` split at its first space.
        app.send_changes(&[contact(
            "echo-1",
            at,
            json!({"email": "echo-1@example.com", "first_name": "Mary Ann", "last_name": "Echo"}),
        )])
        .await;
        app.applied(contact_ref("echo-1"), at).await;
        stack.webhooks_settled().await;

        let events = app.webhook_events().await;
        assert!(!events.is_empty(), "{crm:?}: the CRM reported crm-sync's write");
        for (_, status, detail, event) in &events {
            assert_eq!(status, "echo", "{crm:?}: {detail}: {event}");
        }
        assert!(app.drain_app_inbox().await.is_empty(), "{crm:?}");
        let conflicts = app
            .sync_state()
            .conflicts(&contact_ref("echo-1"), 10)
            .await
            .unwrap();
        assert!(conflicts.is_empty(), "{crm:?}: {conflicts:?}");
    }
}

#[tokio::test]
async fn in_every_crm_a_persons_edit_of_an_app_owned_email_is_journaled_as_a_conflict_and_the_app_is_untouched(
) {
    for crm in Crm::ALL {
        let stack = crm.looped_stack().await;
        let app = &stack.app;
        let at = now_ms();
        app.send_changes(&[contact(
            "rep-2",
            at,
            json!({"email": "rep-2@example.com", "last_name": "Rep"}),
        )])
        .await;
        app.applied(contact_ref("rep-2"), at).await;
        stack.webhooks_settled().await;

        stack.edit_email_as_a_person("rep-2", "typo@example.com");

        let conflicts = app.journaled_conflicts(contact_ref("rep-2")).await;
        stack.webhooks_settled().await;
        assert_eq!(conflicts.len(), 1, "{crm:?}: only the email: {conflicts:?}");
        let conflict = &conflicts[0];
        assert_eq!(conflict.field, "email", "{crm:?}");
        assert_eq!(
            conflict.app_value.as_deref(),
            Some("rep-2@example.com"),
            "{crm:?}"
        );
        assert_eq!(conflict.crm_value, "typo@example.com", "{crm:?}");
        assert_eq!(conflict.source, crm.person_source(), "{crm:?}");
        assert_eq!(conflict.resolution, "not applied: the app keeps its value, the CRM the person's until crm-sync writes the field again", "{crm:?}");
        assert!(
            app.drain_app_inbox().await.is_empty(),
            "{crm:?}: the app owns the email"
        );
        let (state, _) = app
            .sync_state()
            .record(&contact_ref("rep-2"), 1)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(state.conflicts, 1, "{crm:?}");
        assert_eq!(
            stack.contact_emails()["rep-2"],
            "typo@example.com",
            "{crm:?}: the CRM keeps it"
        );
    }
}

#[tokio::test]
async fn in_every_crm_a_persons_edits_of_a_company_reach_the_conflict_journal_or_the_app_inbox_as_version_2()
{
    for crm in Crm::ALL {
        let stack = crm.looped_stack().await;
        let app = &stack.app;
        let company = app
            .synced_company("account-17", json!({"name": "Analytical Engines"}))
            .await;
        stack.webhooks_settled().await;
        assert!(
            app.drain_app_inbox().await.is_empty(),
            "{crm:?}: its own write is an echo"
        );

        let industry = stack.edit_company_as_a_person("account-17", "Engines Ltd");
        let conflicts = app.journaled_conflicts(company.clone()).await;
        stack.webhooks_settled().await;
        assert_eq!(conflicts.len(), 1, "{crm:?}: only the name: {conflicts:?}");
        assert_eq!(
            (conflicts[0].field.as_str(), conflicts[0].crm_value.as_str()),
            ("name", "Engines Ltd"),
            "{crm:?}"
        );
        assert_eq!(
            conflicts[0].app_value.as_deref(),
            Some("Analytical Engines"),
            "{crm:?}"
        );
        let inbox = app.drain_app_inbox().await;
        match industry {
            Some(industry) => {
                assert_eq!(inbox.len(), 1, "{crm:?}: {inbox:?}");
                assert_eq!(
                    (&inbox[0]["version"], &inbox[0]["object"], &inbox[0]["record_id"]),
                    (&json!(2), &json!("company"), &json!("account-17")),
                    "{crm:?}"
                );
                assert_eq!(inbox[0]["changes"], json!({"industry": industry}), "{crm:?}");
            }
            None => assert!(inbox.is_empty(), "{crm:?}: {inbox:?}"),
        }
    }
}

#[tokio::test]
async fn in_every_crm_a_persons_move_of_a_crm_owned_deal_stage_reaches_the_app_inbox() {
    for crm in Crm::ALL {
        let stack = crm.looped_stack().await;
        let app = &stack.app;
        let at = now_ms();
        app.send_changes(&[
            contact(
                "buyer-1",
                at,
                json!({"email": "buyer-1@example.com", "last_name": "Buyer"}),
            ),
            deal(
                "order-1",
                "buyer-1",
                at,
                json!({"name": "Annual plan", "amount": 100}),
            ),
        ])
        .await;
        let order = RecordRef {
            object: ObjectKind::Deal,
            record_id: "order-1".into(),
        };
        app.applied(order.clone(), at).await;
        stack.webhooks_settled().await;
        // What the deal's creation told the app (Pipedrive gives a new deal a stage) is not news.
        app.drain_app_inbox().await;

        let stage = stack.move_deal_stage_as_a_person("order-1");

        let messages = eventually(60, "the app inbox message", || async {
            let messages = app.drain_app_inbox().await;
            (!messages.is_empty()).then_some(messages)
        })
        .await;
        assert_eq!(messages.len(), 1, "{crm:?}: {messages:?}");
        let message = &messages[0];
        assert_eq!(message["type"], "crm.change", "{crm:?}");
        assert_eq!(message["object"], "deal", "{crm:?}");
        assert_eq!(message["record_id"], "order-1", "{crm:?}");
        assert_eq!(
            message["changes"],
            json!({ "stage": stage }),
            "{crm:?}: only the changed field"
        );
        assert_eq!(message["source"], crm.person_source(), "{crm:?}");
        let (_, timeline) = app.timeline_says(order, "from the CRM").await;
        assert!(
            timeline
                .iter()
                .any(|e| e.kind == TimelineKind::Received && e.detail.contains(&format!("stage = {stage}"))),
            "{crm:?}: {timeline:?}"
        );
    }
}

#[tokio::test]
async fn in_every_crm_the_reconciliation_heals_an_app_owned_field_a_person_changed_unseen_and_leaves_the_rest(
) {
    for crm in Crm::ALL {
        let stack = crm.stack_with_env(&[("RECONCILE_CYCLE_NIGHTS", "1")]).await;
        let app = &stack.app;
        let at = now_ms();
        app.send_changes(&[
            contact(
                "drift-1",
                at,
                json!({"email": "drift@example.com", "last_name": "Drift"}),
            ),
            contact(
                "steady-1",
                at,
                json!({"email": "steady@example.com", "last_name": "Steady"}),
            ),
        ])
        .await;
        app.applied(contact_ref("drift-1"), at).await;
        app.applied(contact_ref("steady-1"), at).await;
        // A person edits the CRM and no webhook tells crm-sync (none reaches this stack).
        stack.edit_email_as_a_person("drift-1", "x@elsewhere.com");

        let report = app.reconcile().await;

        assert_eq!(report.checked, 2, "{crm:?}: {report:?}");
        assert_eq!(report.healed, 1, "{crm:?}: {report:?}");
        let emails = stack.contact_emails();
        assert_eq!(emails["drift-1"], "drift@example.com", "{crm:?}");
        assert_eq!(emails["steady-1"], "steady@example.com", "{crm:?}");
        assert_eq!(stack.contact_count(), 2, "{crm:?}: healed in place");
    }
}

#[tokio::test]
async fn in_every_crm_under_errors_and_timeouts_every_contact_ends_up_once_with_its_latest_email() {
    for crm in Crm::ALL {
        let stack = crm.stack_with(|options| options.with_patient_retries()).await;
        // Seed 41: the first call fails, the second times out, so both happen in any run.
        stack.inject_faults(0.2, 0.1, 41);
        let app = &stack.app;
        let records = 20;
        let at = now_ms();
        // Each version once the last is applied: every version costs calls, whatever the event
        // source batches together.
        for (version, label) in [(at, "v1"), (at + 1, "v2"), (at + 2, "v3")] {
            let changes: Vec<serde_json::Value> = (0..records)
                .map(|n| {
                    contact(
                        &format!("fault-{n}"),
                        version,
                        json!({"email": format!("{label}-{n}@example.com"), "last_name": "Faulty"}),
                    )
                })
                .collect();
            app.send_changes(&changes).await;
            for n in 0..records {
                app.applied(contact_ref(&format!("fault-{n}")), version).await;
            }
        }

        assert_eq!(
            stack.contact_count(),
            records,
            "{crm:?}: no contact twice, whatever was retried"
        );
        let emails = stack.contact_emails();
        for n in 0..records {
            assert_eq!(
                emails[&format!("fault-{n}")],
                format!("v3-{n}@example.com"),
                "{crm:?}"
            );
        }
        let (errors, timeouts) = stack.injected_faults();
        assert!(
            errors > 0 && timeouts > 0,
            "{crm:?}: the run proves little: {errors}, {timeouts}"
        );
        assert!(
            app.drain_dead_letters("OutboundDeadLetterQueue").await.is_empty(),
            "{crm:?}"
        );
    }
}

/// A link's own record in this CRM: a pair's, or, for a link the CRM holds in one field of the
/// `from` record (Pipedrive's org_id, an opportunity's AccountId), the `from` record's.
fn link_in(crm: Crm, from: (&str, &str), to: (&str, &str)) -> RecordRef {
    let in_a_field = crm == Crm::Pipedrive || (crm == Crm::Salesforce && from.0 == "deal");
    RecordRef {
        object: ObjectKind::Link,
        record_id: if in_a_field {
            format!("{}:{}|{}", from.0, from.1, to.0)
        } else {
            format!("{}:{}|{}:{}", from.0, from.1, to.0, to.1)
        },
    }
}

/// (kind, app id, company's app id, labels), as `CrmStack::company_links` reads them.
fn expected_links(
    links: &[(&str, &str, &[&str])],
) -> std::collections::BTreeSet<(String, String, String, Vec<String>)> {
    links
        .iter()
        .map(|(kind, id, labels)| {
            let mut labels: Vec<String> = labels.iter().map(|l| l.to_string()).collect();
            labels.sort();
            (kind.to_string(), id.to_string(), "acme".to_string(), labels)
        })
        .collect()
}

#[tokio::test]
async fn in_every_crm_a_company_its_contacts_and_deals_arriving_links_first_with_duplicates_and_a_crash_end_linked_once(
) {
    use crm_sync::domain::sync::SyncStatus;
    use crm_sync_tests::app_changes::{association, object_upsert};
    for crm in Crm::ALL {
        // A crashed invocation's leases lapse after 10 s, as in the chaos test.
        let stack = crm
            .stack_with(|options| {
                options
                    .with_patient_retries()
                    .with_env("SYNC_LEASE_SECONDS", "10")
            })
            .await;
        let app = &stack.app;
        let labelled = crm != Crm::Pipedrive;
        if crm == Crm::HubSpot {
            for label in ["Billing contact", "Decision maker"] {
                app.sandbox().define_label("contacts", "companies", label, label);
            }
        }
        let labels = |names: &'static [&'static str]| if labelled { names } else { &[] };
        let at = now_ms() - 60_000;
        let company = ("company", "acme");
        let contacts = [
            ("u-1", labels(&["Billing contact"])),
            ("u-2", labels(&["Decision maker"])),
            ("u-3", &[][..]),
        ];

        // The links and the deals first: neither end of a link is in the CRM yet.
        let mut first: Vec<serde_json::Value> = contacts
            .iter()
            .map(|(id, labels)| association(("contact", id), company, at + 10, Some(labels)))
            .collect();
        for id in ["d-1", "d-2"] {
            first.push(association(("deal", id), company, at + 10, Some(&[])));
            first.push(deal(id, "u-1", at, json!({"name": format!("Deal {id}")})));
        }
        first.push(first[0].clone());
        app.send_changes(&first).await;
        let store = app.sync_state();
        eventually(
            60,
            &format!("{crm:?}: the first link waits for its records"),
            || async {
                let state = store
                    .record(&link_in(crm, ("contact", "u-1"), company), 1)
                    .await
                    .ok()??
                    .0;
                state
                    .last_error
                    .filter(|e| e.contains("is not in the CRM yet"))
                    .map(|_| ())
            },
        )
        .await;

        // Then the records, twice over, with the next invocation crashing part-way: while its
        // CRM call is on its way (every call answers late for now; Pipedrive and Salesforce
        // still apply it).
        stack.inject_faults(0.0, 1.0, 7);
        app.stack.crashes.set(crm_sync_local::esm::Crashes {
            rate: 1.0,
            within: std::time::Duration::from_millis(300),
            return_after: std::time::Duration::from_secs(2),
        });
        let mut records: Vec<serde_json::Value> = contacts
            .iter()
            .map(|(id, _)| {
                contact(
                    id,
                    at,
                    json!({"email": format!("{id}@acme.example"), "last_name": "Acme"}),
                )
            })
            .collect();
        records.push(object_upsert("company", "acme", at, json!({"name": "Acme"})));
        records.extend(records.clone());
        app.send_changes(&records).await;
        eventually(60, &format!("{crm:?}: an invocation crashed"), || async {
            (app.stack.crashes.crashed() > 0).then_some(())
        })
        .await;
        app.stack.crashes.set(crm_sync_local::esm::Crashes::default());
        stack.inject_faults(0.0, 0.0, 7);

        for (id, _) in &contacts {
            app.settled(link_in(crm, ("contact", id), company), SyncStatus::Synced)
                .await;
        }
        for id in ["d-1", "d-2"] {
            app.settled(link_in(crm, ("deal", id), company), SyncStatus::Synced)
                .await;
        }
        let (companies, contacts_object, deals) = match crm {
            Crm::HubSpot => ("companies", "contacts", "deals"),
            Crm::Pipedrive => ("organizations", "persons", "deals"),
            Crm::Salesforce => ("Account", "Contact", "Opportunity"),
        };
        assert_eq!(
            (
                stack.count(companies),
                stack.count(contacts_object),
                stack.count(deals)
            ),
            (1, 3, 2),
            "{crm:?}: each record once"
        );
        assert_eq!(
            stack.company_links(),
            expected_links(&[
                ("contact", "u-1", labels(&["Billing contact"])),
                ("contact", "u-2", labels(&["Decision maker"])),
                ("contact", "u-3", &[]),
                ("deal", "d-1", &[]),
                ("deal", "d-2", &[]),
            ]),
            "{crm:?}"
        );

        // A new label set replaces the old; removed links go.
        app.send_changes(&[
            association(
                ("contact", "u-1"),
                company,
                at + 20,
                Some(labels(&["Decision maker"])),
            ),
            association(("contact", "u-3"), company, at + 20, None),
            association(("deal", "d-2"), company, at + 20, None),
        ])
        .await;
        app.applied(link_in(crm, ("contact", "u-1"), company), at + 20)
            .await;
        app.settled(link_in(crm, ("deal", "d-2"), company), SyncStatus::Deleted)
            .await;
        // Pipedrive's API v2 cannot clear a person's org_id: the removal is refused, with why.
        let u3_after = if labelled {
            SyncStatus::Deleted
        } else {
            SyncStatus::Failed
        };
        app.settled(link_in(crm, ("contact", "u-3"), company), u3_after)
            .await;
        let mut expected = vec![
            ("contact", "u-1", labels(&["Decision maker"])),
            ("contact", "u-2", labels(&["Decision maker"])),
            ("deal", "d-1", &[][..]),
        ];
        if !labelled {
            expected.push(("contact", "u-3", &[]));
        }
        assert_eq!(stack.company_links(), expected_links(&expected), "{crm:?}");
        let letters = app.drain_dead_letters("OutboundDeadLetterQueue").await;
        if labelled {
            assert!(letters.is_empty(), "{crm:?}: {letters:?}");
        } else {
            assert_eq!(letters.len(), 1, "{letters:?}");
            assert!(
                letters[0].1["crm_sync_error"]
                    .starts_with("NOT_CLEARABLE: Pipedrive's API v2 cannot clear a person's org_id"),
                "{letters:?}"
            );
        }

        if !labelled {
            // Pipedrive's org_id takes no labels: said so, and nothing is written.
            app.send_changes(&[association(
                ("contact", "u-2"),
                company,
                at + 30,
                Some(&["Owner"]),
            )])
            .await;
            let letters = eventually(30, "the labelled link dead-lettered", || async {
                let letters = app.drain_dead_letters("OutboundDeadLetterQueue").await;
                (!letters.is_empty()).then_some(letters)
            })
            .await;
            assert_eq!(
                letters[0].1["crm_sync_error"],
                "invalid message: labels from contact to company: the link is the lookup field `org_id`, which takes no labels"
            );
        }
    }
}
