//! The dead-letter journal in the state table: `pk = LETTERS#{lane}`, `sk` = the letter's key
//! (`{at, 13 digits}#{message id}`), kept 15 days (a day past SQS's longest retention, 14). A
//! letter about an app record has a pointer beside the record (`sk = L#{lane}#{key}`), so that
//! forgetting the record (a privacy erasure) deletes its letters too.

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;

use super::{n, number, s, text, unavailable, Item};
use crate::domain::contract::{ObjectKind, RecordRef};
use crate::ports::{clip_bytes as clip, DeadLetterJournal, LetterEntry, ListError, StoreUnavailable};

const RETENTION_MS: i64 = 15 * 24 * 60 * 60 * 1000;
/// Pages a search reads at most to fill one page of letters.
const SEARCH_PAGES: usize = 10;

/// [`DeadLetterJournal`] over a DynamoDB table keyed by `pk` and `sk`.
#[derive(Debug, Clone)]
pub struct DynamoDbDeadLetterJournal {
    client: Client,
    table: String,
}

impl DynamoDbDeadLetterJournal {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }
}

fn lane_pk(lane: &str) -> String {
    format!("LETTERS#{lane}")
}

/// The sort-key prefix of a letter's pointer beside its record.
pub(super) const POINTER_PREFIX: &str = "L#";

/// The key of the letter a pointer (`L#{lane}#{letter key}`) names.
pub(super) fn letter_of_pointer(sk: &str) -> Option<Item> {
    let (lane, key) = sk.strip_prefix(POINTER_PREFIX)?.split_once('#')?;
    Some([("pk".to_string(), s(lane_pk(lane))), ("sk".to_string(), s(key))].into())
}

fn pointer_item(entry: &LetterEntry, record: &RecordRef) -> Item {
    [
        ("pk".to_string(), s(super::record_pk(record))),
        (
            "sk".to_string(),
            s(format!("{POINTER_PREFIX}{}#{}", entry.lane, entry.key)),
        ),
        ("expires_at".to_string(), n((entry.at_ms + RETENTION_MS) / 1000)),
    ]
    .into()
}

fn letter_item(entry: &LetterEntry) -> Item {
    let mut item: Item = [
        ("pk".to_string(), s(lane_pk(&entry.lane))),
        ("sk".to_string(), s(&entry.key)),
        ("at".to_string(), n(entry.at_ms)),
        ("reason".to_string(), s(clip(&entry.reason, 2_000))),
        ("body".to_string(), s(&entry.body)),
        // What a search reads: reason, record, subject and body, lower-cased.
        (
            "search".to_string(),
            s(format!(
                "{}\n{}\n{}\n{}",
                entry.reason,
                entry
                    .record
                    .as_ref()
                    .map(|record| format!("{}/{}", record.object, record.record_id))
                    .unwrap_or_default(),
                entry.subject.as_deref().unwrap_or_default(),
                searchable(&entry.body)
            )
            .to_lowercase()),
        ),
        ("expires_at".to_string(), n((entry.at_ms + RETENTION_MS) / 1000)),
    ]
    .into();
    if let Some(record) = &entry.record {
        item.insert("record_object".into(), s(record.object.as_str()));
        item.insert("record_id".into(), s(&record.record_id));
    }
    if let Some(subject) = &entry.subject {
        item.insert("subject".into(), s(subject));
    }
    item
}

/// A body as a person searches it: a JSON message's keys and values as they read (`é`, not
/// `\u00e9`; `"`, not `\"`), anything else as it is.
fn searchable(body: &str) -> String {
    fn walk(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::String(text) => out.push(text.clone()),
            serde_json::Value::Array(items) => items.iter().for_each(|item| walk(item, out)),
            serde_json::Value::Object(fields) => {
                for (key, value) in fields {
                    out.push(key.clone());
                    walk(value, out);
                }
            }
            other => out.push(other.to_string()),
        }
    }
    match serde_json::from_str::<serde_json::Value>(body) {
        Ok(value) => {
            let mut words = Vec::new();
            walk(&value, &mut words);
            words.join(" ")
        }
        Err(_) => body.to_string(),
    }
}

fn letter_from(lane: &str, item: &Item) -> Option<LetterEntry> {
    let record = match (text(item, "record_object"), text(item, "record_id")) {
        (Some(object), Some(record_id)) => Some(RecordRef {
            object: ObjectKind::stored(&object)?,
            record_id,
        }),
        _ => None,
    };
    Some(LetterEntry {
        lane: lane.to_string(),
        key: text(item, "sk")?,
        at_ms: number(item, "at")?,
        reason: text(item, "reason").unwrap_or_default(),
        record,
        subject: text(item, "subject"),
        body: text(item, "body").unwrap_or_default(),
        redriven_at_ms: number(item, "redriven_at"),
        redriven_by: text(item, "redriven_by"),
    })
}

/// A cursor is the key of the letter to continue after: `{13 digits}#{message id}`.
fn valid_cursor(cursor: &str) -> bool {
    cursor.len() > 14
        && cursor.len() <= 400
        && cursor.as_bytes()[..13].iter().all(u8::is_ascii_digit)
        && cursor.as_bytes()[13] == b'#'
}

#[async_trait]
impl DeadLetterJournal for DynamoDbDeadLetterJournal {
    async fn record_letters(&self, entries: &[LetterEntry]) -> Result<(), StoreUnavailable> {
        // The pointers first, with retries: a letter must never be kept without the pointer an
        // erasure finds it by (a pointer without its letter is harmless). Pointers spread over
        // the records' partitions, so a burst does not throttle them as it does the letters.
        let pointers: Vec<Item> = entries
            .iter()
            .filter_map(|entry| Some(pointer_item(entry, entry.record.as_ref()?)))
            .collect();
        for chunk in pointers.chunks(25) {
            super::batch_put(&self.client, &self.table, chunk.to_vec()).await?;
        }
        let items: Vec<Item> = entries.iter().map(letter_item).collect();
        let mut missed = 0;
        let mut failed = None;
        for chunk in items.chunks(25) {
            match super::batch_put_once(&self.client, &self.table, chunk.to_vec()).await {
                Ok(unprocessed) => missed += unprocessed,
                Err(error) => {
                    missed += chunk.len();
                    failed = Some(error);
                }
            }
        }
        if missed > 0 {
            tracing::warn!(
                missed,
                "dead letters left out of the journal (throttled or refused)"
            );
        }
        failed.map_or(Ok(()), Err)
    }

    async fn letters(
        &self,
        lane: &str,
        query: Option<&str>,
        limit: usize,
        cursor: Option<String>,
    ) -> Result<(Vec<LetterEntry>, Option<String>), ListError> {
        if cursor.as_deref().is_some_and(|cursor| !valid_cursor(cursor)) {
            return Err(ListError::BadCursor);
        }
        let query = query
            .map(str::trim)
            .filter(|query| !query.is_empty())
            .map(str::to_lowercase);
        let mut start: Option<Item> = cursor.map(|cursor| {
            [
                ("pk".to_string(), s(lane_pk(lane))),
                ("sk".to_string(), s(cursor)),
            ]
            .into()
        });
        let mut found = Vec::new();
        for _ in 0..SEARCH_PAGES {
            let mut request = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", s(lane_pk(lane)))
                .scan_index_forward(false)
                .limit(i32::try_from(limit - found.len()).unwrap_or(i32::MAX))
                .set_exclusive_start_key(start.take());
            if let Some(query) = &query {
                request = request
                    .filter_expression("contains(#search, :query)")
                    .expression_attribute_names("#search", "search")
                    .expression_attribute_values(":query", AttributeValue::S(query.clone()));
            }
            let output = request
                .send()
                .await
                .map_err(|error| ListError::Unavailable(unavailable(error)))?;
            found.extend(output.items().iter().filter_map(|item| letter_from(lane, item)));
            start = output.last_evaluated_key().cloned();
            if start.is_none() || found.len() >= limit {
                break;
            }
        }
        let next = start.and_then(|key| text(&key, "sk"));
        Ok((found, next))
    }

    async fn mark_redriven(
        &self,
        lane: &str,
        keys: &[String],
        at_ms: i64,
        by: &str,
    ) -> Result<Vec<RecordRef>, StoreUnavailable> {
        let mut records = Vec::new();
        for key in keys.iter().filter(|key| valid_cursor(key)) {
            // Only a letter the journal holds: a key that is not there adds nothing.
            let result = self
                .client
                .update_item()
                .table_name(&self.table)
                .key("pk", s(lane_pk(lane)))
                .key("sk", s(key))
                .update_expression("SET redriven_at = :at, redriven_by = :by")
                .condition_expression("attribute_exists(pk)")
                .expression_attribute_values(":at", n(at_ms))
                .expression_attribute_values(":by", s(by))
                .return_values(aws_sdk_dynamodb::types::ReturnValue::AllNew)
                .send()
                .await;
            match result {
                Ok(output) => {
                    let item = output.attributes().cloned().unwrap_or_default();
                    if let Some(record) = letter_from(lane, &item).and_then(|letter| letter.record) {
                        records.push(record);
                    }
                }
                Err(error) if super::condition_failed(&error) => {}
                Err(error) => return Err(super::unavailable(error)),
            }
        }
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_body_is_searched_as_it_reads_not_as_it_is_escaped() {
        let text = searchable(r#"{"data":{"name":"Ren\u00e9e \"Q\"","n":7},"note":"needle"}"#);
        assert!(text.contains("Renée \"Q\""), "{text}");
        assert!(
            text.contains("needle") && text.contains(" 7") && text.contains("name"),
            "{text}"
        );
        assert_eq!(searchable("not json {"), "not json {");
    }
}
