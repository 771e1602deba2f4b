//! The dead-letter journal: every message crm-sync dead-letters is also journaled (its reason,
//! the record it is about, its body), so that the dashboard lists each one, pages and searches
//! them, links them to their records and marks those fixed since. The dead-letter queue stays
//! the source of truth for redrive; the journal is how people find their way in it.

use std::sync::Arc;

use async_trait::async_trait;

use crate::domain::clock::Clock;
use crate::ports::{
    clip_bytes as clip, DeadLetterJournal, LetterEntry, MessageQueue, OutgoingMessage, SendFailure,
    LETTER_BODY_BYTES,
};
use crate::worker::{ERROR_ATTRIBUTE, LETTER_ATTRIBUTE};

/// A dead-letter queue that journals what it is sent.
pub struct JournaledDeadLetters {
    queue: Arc<dyn MessageQueue>,
    journal: Arc<dyn DeadLetterJournal>,
    lane: &'static str,
    clock: Arc<dyn Clock>,
}

impl JournaledDeadLetters {
    pub fn new(
        queue: Arc<dyn MessageQueue>,
        journal: Arc<dyn DeadLetterJournal>,
        lane: &'static str,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            queue,
            journal,
            lane,
            clock,
        }
    }
}

#[async_trait]
impl MessageQueue for JournaledDeadLetters {
    async fn send(&self, messages: &[OutgoingMessage]) -> Vec<SendFailure> {
        let at_ms = self.clock.now_ms();
        let keyed: Vec<OutgoingMessage> = messages
            .iter()
            .map(|message| {
                let mut message = message.clone();
                message
                    .attributes
                    .push((LETTER_ATTRIBUTE.to_string(), letter_key(at_ms, &message.id)));
                message
            })
            .collect();
        let failures = self.queue.send(&keyed).await;
        let entries: Vec<LetterEntry> = keyed
            .iter()
            .filter(|message| !failures.iter().any(|failure| failure.id == message.id))
            .map(|message| entry(self.lane, at_ms, message))
            .collect();
        if let Err(error) = self.journal.record_letters(&entries).await {
            // The letters are in the queue; only the dashboard's list misses them (the Queues
            // page still shows each queue's depth and its oldest).
            tracing::error!(error = ?anyhow::Error::from(error), letters = entries.len(), "could not journal dead letters");
        }
        failures
    }
}

/// `{at, 13 digits}#{message id}`.
pub fn letter_key(at_ms: i64, message_id: &str) -> String {
    format!("{at_ms:013}#{message_id}")
}

fn entry(lane: &str, at_ms: i64, message: &OutgoingMessage) -> LetterEntry {
    let reason = message
        .attributes
        .iter()
        .find(|(name, _)| name == ERROR_ATTRIBUTE)
        .map(|(_, reason)| reason.clone())
        .unwrap_or_default();
    let (record, subject) = about(&message.body);
    LetterEntry {
        lane: lane.to_string(),
        key: letter_key(at_ms, &message.id),
        at_ms,
        reason,
        record,
        subject,
        body: clip(&message.body, LETTER_BODY_BYTES),
        redriven_at_ms: None,
        redriven_by: None,
    }
}

/// What a message is about: an app change names its record; a webhook event its CRM record.
fn about(body: &str) -> (Option<crate::domain::contract::RecordRef>, Option<String>) {
    if let Ok(change) = crate::domain::contract::parse_change(body) {
        return (Some(change.record()), None);
    }
    let event: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let subject = event.as_ref().and_then(|event| {
        let object = event.get("object_type")?.as_str()?;
        let id = event.get("object_id")?;
        let id = id.as_str().map(str::to_string).unwrap_or_else(|| id.to_string());
        Some(format!("CRM {object} {id}"))
    });
    (None, subject.map(|subject| clip(&subject, 300)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::contract::{ObjectKind, RecordRef};
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorded {
        sent: Mutex<Vec<OutgoingMessage>>,
        letters: Mutex<Vec<LetterEntry>>,
    }

    #[async_trait]
    impl MessageQueue for Recorded {
        async fn send(&self, messages: &[OutgoingMessage]) -> Vec<SendFailure> {
            self.sent.lock().unwrap().extend(messages.iter().cloned());
            messages
                .iter()
                .filter(|message| message.id == "refused")
                .map(|message| SendFailure {
                    id: message.id.clone(),
                    reason: "no".into(),
                })
                .collect()
        }
    }

    #[async_trait]
    impl DeadLetterJournal for Recorded {
        async fn record_letters(
            &self,
            entries: &[LetterEntry],
        ) -> Result<(), crate::ports::StoreUnavailable> {
            self.letters.lock().unwrap().extend(entries.iter().cloned());
            Ok(())
        }
        async fn letters(
            &self,
            _: &str,
            _: Option<&str>,
            _: usize,
            _: Option<String>,
        ) -> Result<(Vec<LetterEntry>, Option<String>), crate::ports::ListError> {
            Ok((Vec::new(), None))
        }
        async fn mark_redriven(
            &self,
            _: &str,
            _: &[String],
            _: i64,
            _: &str,
        ) -> Result<Vec<RecordRef>, crate::ports::StoreUnavailable> {
            Ok(Vec::new())
        }
    }

    struct At(i64);
    impl Clock for At {
        fn now_ms(&self) -> i64 {
            self.0
        }
    }

    fn letter(id: &str, body: &str) -> OutgoingMessage {
        OutgoingMessage {
            attributes: vec![(ERROR_ATTRIBUTE.to_string(), format!("reason of {id}"))],
            ..OutgoingMessage::new(id, body)
        }
    }

    #[tokio::test]
    async fn each_dead_letter_sent_is_journaled_with_its_reason_its_record_and_the_key_it_carries() {
        let recorded = Arc::new(Recorded::default());
        let queue =
            JournaledDeadLetters::new(recorded.clone(), recorded.clone(), "outbound", Arc::new(At(7)));
        let change = r#"{"version":1,"type":"contact.upsert","record_id":"u-1","idempotency_id":"i","changed_at":5,"data":{}}"#;
        let event = r#"{"object_type":"contact","object_id":1001,"event":{}}"#;
        let huge = "x".repeat(LETTER_BODY_BYTES + 10);
        let failures = queue
            .send(&[
                letter("m-1", change),
                letter("m-2", event),
                letter("m-3", &huge),
                letter("refused", change),
            ])
            .await;
        assert_eq!(failures.len(), 1, "a refused send is the caller's to handle");
        let letters = recorded.letters.lock().unwrap().clone();
        assert_eq!(letters.len(), 3, "only what reached the queue is journaled");
        assert_eq!(letters[0].key, "0000000000007#m-1");
        assert_eq!(letters[0].reason, "reason of m-1");
        assert_eq!(
            letters[0].record,
            Some(RecordRef {
                object: ObjectKind::Contact,
                record_id: "u-1".into()
            })
        );
        assert_eq!(letters[1].subject.as_deref(), Some("CRM contact 1001"));
        assert_eq!(letters[2].body.len(), LETTER_BODY_BYTES, "bodies are clipped");
        let sent = recorded.sent.lock().unwrap();
        assert!(sent[0]
            .attributes
            .contains(&(LETTER_ATTRIBUTE.to_string(), "0000000000007#m-1".to_string())));
    }
}
