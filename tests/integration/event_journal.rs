//! The event journal in DynamoDB (moto): each event's outcome is recorded once, whatever number of
//! copies of the event race to record it; the consumer's dedupe rests on this write.

use crm_sync::adapters::dynamodb::DynamoDbEventJournal;
use crm_sync::domain::inbound::InboundMessage;
use crm_sync::ports::{EventJournal, EventOutcome};
use crm_sync_tests::{attr, spawn_app};

const DAY_MS: i64 = 86_400_000;

fn event(key: &str) -> InboundMessage {
    InboundMessage {
        provider: "hubspot".into(),
        event_key: key.into(),
        delivery_id: Some("d-1".into()),
        received_at_ms: Some(1_000),
        kind: "deal.propertyChange".into(),
        object_type: Some("deal".into()),
        object_id: Some("7".into()),
        occurred_at_ms: 900,
        event: serde_json::json!({"eventId": 1, "propertyValue": "closedwon"}),
    }
}

#[tokio::test]
async fn of_ten_copies_recording_an_outcome_at_once_exactly_one_is_recorded_and_it_stands() {
    let app = spawn_app().await;
    let journal = DynamoDbEventJournal::new(app.dynamodb.clone(), app.table(), 90 * DAY_MS);
    let copy = event("race-1");
    let outcomes = [EventOutcome::Applied, EventOutcome::Echo, EventOutcome::Ignored];

    let recorded = futures::future::join_all((0..10).map(|i| {
        let (journal, copy) = (&journal, &copy);
        async move {
            let outcome = outcomes[i % outcomes.len()];
            (
                outcome,
                journal
                    .record_outcome(copy, outcome, "copy", 5_000 + i as i64)
                    .await
                    .unwrap(),
            )
        }
    }))
    .await;

    let winners: Vec<_> = recorded.iter().filter(|(_, won)| *won).collect();
    assert_eq!(winners.len(), 1, "{recorded:?}");
    let items = app.stored("event").await;
    assert_eq!(items.len(), 1);
    assert_eq!(
        attr(&items[0], "status"),
        winners[0].0.as_str(),
        "the first write stands"
    );
    assert_eq!(attr(&items[0], "delivery_id"), "d-1");
    assert!(
        attr(&items[0], "payload").contains("closedwon"),
        "the event is kept with it"
    );
    let processed = journal
        .processed("hubspot", &["race-1".to_string()])
        .await
        .unwrap();
    assert!(processed.contains("race-1"));
}

#[tokio::test]
async fn an_event_the_earlier_ingest_left_waiting_is_not_processed_until_its_outcome_is_recorded() {
    let app = spawn_app().await;
    let journal = DynamoDbEventJournal::new(app.dynamodb.clone(), app.table(), 90 * DAY_MS);
    // What the ingest wrote before outcomes were recorded by the consumer alone.
    app.dynamodb
        .put_item()
        .table_name(app.table())
        .item(
            "pk",
            aws_sdk_dynamodb::types::AttributeValue::S("EVENT#hubspot#old-1".into()),
        )
        .item("kind", aws_sdk_dynamodb::types::AttributeValue::S("event".into()))
        .item(
            "event_key",
            aws_sdk_dynamodb::types::AttributeValue::S("old-1".into()),
        )
        .item(
            "status",
            aws_sdk_dynamodb::types::AttributeValue::S("enqueued".into()),
        )
        .send()
        .await
        .unwrap();
    let keys = ["old-1".to_string()];
    assert!(journal.processed("hubspot", &keys).await.unwrap().is_empty());

    assert!(journal
        .record_outcome(&event("old-1"), EventOutcome::Applied, "delivered", 5_000)
        .await
        .unwrap());
    assert!(!journal
        .record_outcome(&event("old-1"), EventOutcome::Echo, "again", 6_000)
        .await
        .unwrap());

    assert!(journal
        .processed("hubspot", &keys)
        .await
        .unwrap()
        .contains("old-1"));
    let items = app.stored("event").await;
    assert_eq!(attr(&items[0], "status"), "applied");
    let expires_at: i64 = items[0]["expires_at"].as_n().unwrap().parse().unwrap();
    assert_eq!(
        expires_at,
        (5_000 + 90 * DAY_MS) / 1000,
        "kept 90 days from its outcome"
    );
}
