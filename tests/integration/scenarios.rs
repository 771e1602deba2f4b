//! Behaviours proven once for all three CRMs: the same scenario against HubSpot's, Pipedrive's
//! and Salesforce's sandboxes.

use crm_sync::domain::contract::{ObjectKind, RecordRef};
use crm_sync_tests::app_changes::contact;
use crm_sync_tests::crms::Crm;
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
