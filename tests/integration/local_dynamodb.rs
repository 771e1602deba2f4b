//! The local stand-in for DynamoDB keeps the guarantee the sync relies on in AWS: one item's
//! update is seen whole or not at all. moto applies an update's actions one by one, so without
//! the guard's lock a reader saw a state already `synced` whose CRM id was not set yet.

use aws_sdk_dynamodb::types::AttributeValue;
use crm_sync_tests::spawn_app;

/// Attributes each update sets, all to the same number: a read that finds them differing saw
/// part of an update.
const FIELDS: usize = 30;
const UPDATES_PER_WRITER: usize = 150;

#[tokio::test]
async fn a_read_never_sees_half_of_a_concurrent_update_of_the_same_item() {
    let app = spawn_app().await;
    let table = app.stack.resources.table("SyncStateTable").to_string();
    let key = |client: &aws_sdk_dynamodb::Client| {
        client
            .update_item()
            .table_name(&table)
            .key("pk", AttributeValue::S("PROBE#torn-read".into()))
            .key("sk", AttributeValue::S("STATE".into()))
    };
    let names: Vec<String> = (0..FIELDS).map(|i| format!("f{i}")).collect();
    let expression = format!(
        "SET {}",
        names
            .iter()
            .map(|name| format!("{name} = :v"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    key(&app.dynamodb)
        .update_expression(&expression)
        .expression_attribute_values(":v", AttributeValue::N("0".into()))
        .send()
        .await
        .expect("the first write");

    let writers: Vec<_> = (0..2)
        .map(|writer| {
            let request = key(&app.dynamodb).update_expression(&expression);
            tokio::spawn(async move {
                for i in 0..UPDATES_PER_WRITER {
                    let value = (writer * UPDATES_PER_WRITER + i).to_string();
                    request
                        .clone()
                        .expression_attribute_values(":v", AttributeValue::N(value))
                        .send()
                        .await
                        .expect("an update");
                }
            })
        })
        .collect();
    let mut reads = 0;
    let mut torn = Vec::new();
    while writers.iter().any(|writer| !writer.is_finished()) {
        let item = app
            .dynamodb
            .get_item()
            .table_name(&table)
            .key("pk", AttributeValue::S("PROBE#torn-read".into()))
            .key("sk", AttributeValue::S("STATE".into()))
            .send()
            .await
            .expect("a read")
            .item
            .expect("the item");
        let values: std::collections::BTreeSet<&str> = names
            .iter()
            .filter_map(|name| item.get(name)?.as_n().ok().map(String::as_str))
            .collect();
        reads += 1;
        if values.len() != 1 {
            torn.push(values.len());
        }
    }
    for writer in writers {
        writer.await.expect("the writer finishes");
    }
    assert!(reads > 10, "the reads ran beside the writes: {reads}");
    assert!(
        torn.is_empty(),
        "{} of {reads} reads saw part of an update (distinct values per read: {torn:?})",
        torn.len()
    );
}
