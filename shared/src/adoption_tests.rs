//! The adoption plan against in-memory ports: app records sorted into creates, updates, links
//! and identity conflicts from what the CRM holds, with nothing written. The same is proven
//! against the HubSpot sandbox in `tests/integration/adoption.rs`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::json;

use super::{InputLine, PlanSink, Planner};
use crate::domain::adoption::{Action, PlanItem};
use crate::domain::mapping::{Mapping, DEFAULT_MAPPING};
use crate::ports::Crm;
use crate::testing::{deadline, worker, ManualClock, MemoryCrm, MemoryQueue};

#[derive(Default)]
struct Collected {
    items: Vec<PlanItem>,
    invalid: Vec<(u64, String)>,
}

impl PlanSink for Collected {
    fn item(&mut self, item: &PlanItem) -> anyhow::Result<()> {
        self.items.push(item.clone());
        Ok(())
    }

    fn invalid(&mut self, line: u64, reason: &str) -> anyhow::Result<()> {
        self.invalid.push((line, reason.to_string()));
        Ok(())
    }
}

fn contact(line: u64, id: &str, email: &str) -> InputLine {
    InputLine::Message {
        line,
        body: json!({"version": 1, "type": "contact.upsert", "record_id": id,
                     "idempotency_id": format!("adopt-{id}"), "changed_at": 1_796_000_000_000_i64,
                     "data": {"email": email, "first_name": "Ada"}})
        .to_string(),
    }
}

fn props(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn a_plan_sorts_app_records_into_creates_updates_links_and_conflicts_and_writes_nothing() {
    let crm = Arc::new(MemoryCrm::new(100));
    let synced = crm
        .upsert(
            "contacts",
            "crm_sync_app_id",
            &[crate::domain::crm::UpsertInput::new(
                "u1",
                props(&[("email", "u1@example.com"), ("firstname", "Old")]),
            )],
        )
        .await
        .unwrap();
    assert_eq!(synced.outcomes.len(), 1);
    let person = crm.put_record(
        "contacts",
        "ada",
        props(&[("email", "ada@example.com"), ("lifecyclestage", "lead")]),
    );
    crm.put_record("contacts", "dup-1", props(&[("email", "dup@example.com")]));
    crm.put_record("contacts", "dup-2", props(&[("email", "dup@example.com")]));
    let before = crm.count("contacts");

    let mapping = Arc::new(Mapping::parse(DEFAULT_MAPPING).unwrap());
    let clock = Arc::new(ManualClock::at(1_796_000_000_000));
    let planner = Planner::new(
        mapping,
        crm.clone(),
        worker(clock, Arc::new(MemoryQueue::default()), 0, true),
    );
    let input = vec![
        contact(1, "u1", "u1@example.com"),
        contact(2, "u2", "ADA@example.com"),
        contact(3, "u3", "dup@example.com"),
        contact(4, "u4", "new@example.com"),
        InputLine::Message {
            line: 5,
            body: "{not json".into(),
        },
        contact(6, "u5", "twin@example.com"),
        contact(7, "u6", "twin@example.com"),
    ];
    let shared = HashMap::from([(6, vec!["u6".to_string()]), (7, vec!["u5".to_string()])]);
    let mut sink = Collected::default();
    let counts = planner
        .plan(input.into_iter(), &shared, &mut sink, deadline())
        .await
        .unwrap();

    let actions: Vec<(&str, &str)> = sink
        .items
        .iter()
        .map(|item| (item.record_id.as_str(), item.action.name()))
        .collect();
    assert_eq!(
        actions,
        [
            ("u1", "update"),
            ("u2", "link"),
            ("u3", "conflict"),
            ("u4", "create"),
            ("u5", "conflict"),
            ("u6", "conflict")
        ]
    );
    let Action::Update { fields, .. } = &sink.items[0].action else {
        unreachable!()
    };
    assert_eq!(fields[0].field, "first_name", "field by field: {fields:?}");
    assert!(matches!(&sink.items[1].action, Action::Link { crm_id, .. } if *crm_id == person));
    assert_eq!(
        sink.items[1].crm_owned,
        BTreeMap::from([("lifecycle_stage".to_string(), "lead".to_string())]),
        "the CRM-owned value the app does not have"
    );
    assert_eq!(sink.invalid.len(), 1);
    assert_eq!(sink.invalid[0].0, 5);
    assert_eq!(
        (
            counts.create,
            counts.update,
            counts.link,
            counts.conflict,
            counts.invalid
        ),
        (1, 1, 1, 3, 1)
    );
    assert_eq!(crm.count("contacts"), before, "a plan writes nothing");
    assert_eq!(
        counts.plan_calls, 3,
        "property types, one lookup by id, one by email"
    );
}

#[test]
fn batches_of_mixed_objects_resume_before_the_first_item_still_waiting() {
    use super::Batches;
    use crate::domain::adoption::Action;
    use crate::domain::contract::ObjectKind;
    let item = |plan_line: u64, object: ObjectKind| {
        Ok(PlanItem {
            line: plan_line,
            plan_line,
            object,
            record_id: format!("r{plan_line}"),
            action: Action::Create,
            crm_owned: BTreeMap::new(),
            message: String::new(),
        })
    };
    // Contacts and deals alternate; two a batch.
    let items = (1..=8).map(|n| {
        item(
            n,
            if n % 2 == 1 {
                ObjectKind::Contact
            } else {
                ObjectKind::Deal
            },
        )
    });
    let lines: Vec<Option<u64>> = Batches::new(items, 2)
        .map(|batch| batch.unwrap().resume_line)
        .collect();
    // Contacts 1 and 3 go while deal 2 waits: done through line 1. Deals 2 and 4 go while
    // nothing waits: through 4. Contacts 5 and 7 while deal 6 waits: through 5. Then through 8.
    assert_eq!(lines, vec![Some(1), Some(4), Some(5), Some(8)]);
    let saved: Vec<u64> = lines.iter().flatten().copied().collect();
    assert!(
        saved.windows(2).all(|w| w[0] <= w[1]),
        "never backwards: {saved:?}"
    );
}

#[test]
fn refused_links_stop_a_backfill_once_they_would_not_fit_its_saved_progress() {
    use crate::adoption::too_many_refused;
    let short = |n: usize| (0..n).map(|i| format!("contact/u-{i}")).collect::<Vec<_>>();
    assert!(!too_many_refused(&short(5_000)), "at the count limit");
    assert!(too_many_refused(&short(5_001)), "one past it");
    // Record ids of 256 four-byte characters: far fewer fit in the item.
    let long = |n: usize| {
        (0..n)
            .map(|i| format!("contact/{i:04}{}", "語".repeat(252)))
            .collect::<Vec<_>>()
    };
    let fitting = 200_000 / (long(1)[0].len() + 3);
    assert!(!too_many_refused(&long(fitting)), "{fitting} long keys fit");
    assert!(too_many_refused(&long(fitting + 1)), "one more does not");
}

#[tokio::test]
async fn a_declared_company_is_planned_by_its_app_id_and_a_link_is_left_for_after_the_backfill() {
    // The built-in mapping declares [company] and [contact.links.company].
    let mapping = Arc::new(Mapping::parse(DEFAULT_MAPPING).unwrap());
    let crm = Arc::new(MemoryCrm::new(100));
    let clock = Arc::new(ManualClock::at(1_796_000_000_000));
    let planner = Planner::new(
        mapping,
        crm.clone(),
        worker(clock, Arc::new(MemoryQueue::default()), 0, true),
    );
    let company = InputLine::Message {
        line: 1,
        body: json!({"version": 2, "type": "object.upsert", "object_type": "company", "record_id": "acct-1",
                     "idempotency_id": "a-1", "changed_at": 1_796_000_000_000_i64, "data": {"name": "Engines"}})
        .to_string(),
    };
    let link = InputLine::Message {
        line: 2,
        body:
            json!({"version": 2, "type": "association.upsert", "object_type": "contact", "record_id": "u-1",
                     "to_object_type": "company", "to_record_id": "acct-1",
                     "idempotency_id": "l-1", "changed_at": 1_796_000_000_000_i64})
            .to_string(),
    };
    let mut sink = Collected::default();
    let counts = planner
        .plan(
            [company, link].into_iter(),
            &HashMap::new(),
            &mut sink,
            deadline(),
        )
        .await
        .unwrap();
    assert_eq!(
        (counts.records, counts.create, counts.invalid),
        (1, 1, 1),
        "{counts:?}"
    );
    assert_eq!(sink.items[0].object.as_str(), "company");
    assert_eq!(
        sink.invalid,
        vec![(
            2,
            "a link is not adopted: send it after the backfill, once both records are in the CRM".to_string()
        )]
    );
}
