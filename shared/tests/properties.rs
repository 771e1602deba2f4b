//! Property tests of the rules every guarantee rests on: one change per record per batch, the
//! newest change wins whatever the delivery order, ownership decides what crosses, and backoff
//! stays within its bounds.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use crm_sync::domain::contract::{Change, FieldValue, ObjectKind, Operation, RecordRef};
use crm_sync::domain::inbound::{decide, CrmChange, FieldDecision};
use crm_sync::domain::mapping::Mapping;
use crm_sync::domain::sync::{
    backoff, freshness, newest_per_record, BatchPlan, Freshness, Queued, RecordState,
};
use proptest::prelude::*;

fn change(record: u8, at: i64, id: u16, delete: bool) -> Change {
    Change {
        object: ObjectKind::Contact,
        operation: if delete {
            Operation::Delete
        } else {
            Operation::Upsert
        },
        record_id: format!("r{record}"),
        idempotency_id: format!("c{id:05}"),
        changed_at_ms: at,
        data: BTreeMap::new(),
        contact_record_id: None,
        association: None,
    }
}

/// Up to 60 changes to at most 6 records, at few distinct times so that ties happen; idempotency
/// ids are unique, as the contract requires of distinct changes.
fn changes() -> impl Strategy<Value = Vec<Change>> {
    prop::collection::vec((0u8..6, 0i64..8, any::<bool>()), 0..60).prop_map(|specs| {
        specs
            .into_iter()
            .enumerate()
            .map(|(n, (record, at, delete))| change(record, at, n as u16, delete))
            .collect()
    })
}

fn queued(changes: &[Change]) -> Vec<Queued> {
    changes
        .iter()
        .enumerate()
        .map(|(n, change)| Queued {
            message_id: format!("m{n}"),
            change: change.clone(),
            attempts: 0,
            body: String::new(),
        })
        .collect()
}

fn rank(change: &Change) -> (i64, bool, String) {
    (
        change.changed_at_ms,
        change.operation == Operation::Delete,
        change.idempotency_id.clone(),
    )
}

fn kept_ids(plan: BatchPlan) -> Vec<String> {
    plan.newest.into_iter().map(|q| q.message_id).collect()
}

proptest! {
    #[test]
    fn a_batch_plan_keeps_each_message_exactly_once_and_the_top_ranked_change_of_each_record(
        changes in changes()
    ) {
        let plan = newest_per_record(queued(&changes));
        let mut seen: Vec<String> = plan
            .newest
            .iter()
            .chain(plan.superseded.iter().map(|(q, _)| q))
            .map(|q| q.message_id.clone())
            .collect();
        seen.sort();
        let mut expected: Vec<String> = (0..changes.len()).map(|n| format!("m{n}")).collect();
        expected.sort();
        prop_assert_eq!(seen, expected, "every message is kept or superseded, once");

        let records: HashSet<RecordRef> = changes.iter().map(Change::record).collect();
        prop_assert_eq!(plan.newest.len(), records.len(), "one change per record");
        for kept in &plan.newest {
            let best = changes
                .iter()
                .filter(|c| c.record() == kept.change.record())
                .map(rank)
                .max()
                .unwrap();
            prop_assert_eq!(rank(&kept.change), best);
        }
        for (dropped, by) in &plan.superseded {
            let winner = changes.iter().find(|c| &c.idempotency_id == by).unwrap();
            prop_assert_eq!(winner.record(), dropped.change.record());
            prop_assert!(rank(winner) > rank(&dropped.change), "superseded only by a newer change");
        }
    }

    #[test]
    fn a_batch_plan_does_not_depend_on_the_order_of_the_batch(
        changes in changes(),
        seed in any::<u64>(),
    ) {
        let mut shuffled = queued(&changes);
        fastrand::Rng::with_seed(seed).shuffle(&mut shuffled);
        prop_assert_eq!(
            kept_ids(newest_per_record(queued(&changes))),
            kept_ids(newest_per_record(shuffled))
        );
    }

    /// Deliveries in any order, split into any batches, with duplicates: what ends up applied is
    /// the latest `changed_at` of each record, and no applied version ever goes back.
    #[test]
    fn whatever_the_delivery_order_and_batching_the_latest_change_ends_up_applied(
        changes in changes(),
        seed in any::<u64>(),
        duplicates in prop::collection::vec(any::<prop::sample::Index>(), 0..10),
        batch_sizes in prop::collection::vec(1usize..12, 1..20),
    ) {
        let mut deliveries = queued(&changes);
        if !changes.is_empty() {
            for index in &duplicates {
                deliveries.push(deliveries[index.index(changes.len())].clone());
            }
        }
        fastrand::Rng::with_seed(seed).shuffle(&mut deliveries);

        let mut states: HashMap<RecordRef, RecordState> = HashMap::new();
        let mut sizes = batch_sizes.iter().cycle();
        while !deliveries.is_empty() {
            let take = (*sizes.next().unwrap()).min(deliveries.len());
            let batch: Vec<Queued> = deliveries.drain(..take).collect();
            for queued in newest_per_record(batch).newest {
                let record = queued.change.record();
                let state = states
                    .entry(record.clone())
                    .or_insert_with(|| RecordState::new(record));
                let before = state.applied_version_ms;
                match freshness(&queued.change, state) {
                    // What a successful claim and settle record.
                    Freshness::Newer => {
                        state.applied_version_ms = Some(queued.change.changed_at_ms);
                        state.applied_idempotency_id = Some(queued.change.idempotency_id.clone());
                    }
                    Freshness::Duplicate => prop_assert_eq!(
                        state.applied_idempotency_id.as_deref(),
                        Some(queued.change.idempotency_id.as_str())
                    ),
                    Freshness::Stale => prop_assert!(before.unwrap() > queued.change.changed_at_ms),
                }
                prop_assert!(state.applied_version_ms >= before, "an applied version never goes back");
            }
        }
        for (record, state) in &states {
            let latest = changes
                .iter()
                .filter(|c| &c.record() == record)
                .map(|c| c.changed_at_ms)
                .max();
            prop_assert_eq!(state.applied_version_ms, latest);
            let applied = changes
                .iter()
                .find(|c| Some(&c.idempotency_id) == state.applied_idempotency_id.as_ref())
                .unwrap();
            prop_assert_eq!(&applied.record(), record);
            prop_assert_eq!(Some(applied.changed_at_ms), latest);
        }
    }

    #[test]
    fn backoff_stays_between_half_the_step_and_the_cap_and_never_shrinks_as_attempts_grow(
        attempt in 1u32..40,
        base_ms in 1u64..5_000,
        cap_ms in 1u64..900_000,
        jitter in 0.0f64..=1.0,
    ) {
        let base = Duration::from_millis(base_ms);
        let cap = Duration::from_millis(cap_ms);
        let delay = backoff(attempt, base, cap, jitter);
        prop_assert!(delay <= cap);
        let step = base.saturating_mul(1 << (attempt - 1).min(20)).min(cap);
        prop_assert!(delay >= step / 2);
        prop_assert!(backoff(attempt + 1, base, cap, jitter) >= delay);
    }
}

/// A contact mapping with one field `f{n}` per entry, mapped to the CRM property `p{n}` and owned
/// by the CRM where the entry is true.
fn mapping_with(crm_owned: &[bool]) -> Mapping {
    let mut text =
        String::from("[contact]\ncrm_object = \"contacts\"\nid_property = \"app_id\"\n[contact.fields]\n");
    for (n, crm) in crm_owned.iter().enumerate() {
        let owner = if *crm { "crm" } else { "app" };
        text.push_str(&format!("f{n} = {{ crm = \"p{n}\", owner = \"{owner}\" }}\n"));
    }
    Mapping::parse(&text).expect("a generated mapping parses")
}

proptest! {
    #[test]
    fn an_outbound_change_writes_exactly_the_app_owned_fields_it_carries(
        crm_owned in prop::collection::vec(any::<bool>(), 1..8),
        values in prop::collection::btree_map(0usize..10, "[a-z0-9 ]{0,12}", 0..10),
    ) {
        let mapping = mapping_with(&crm_owned);
        let mut outgoing = change(1, 1, 1, false);
        outgoing.data = values
            .iter()
            .map(|(n, value)| (format!("f{n}"), FieldValue::Text(value.clone())))
            .collect();
        let result = mapping.outbound(&outgoing);
        if values.keys().any(|n| *n >= crm_owned.len()) {
            let refused = result.unwrap_err().0;
            prop_assert!(refused.contains("is not a mapped contact field"), "{}", refused);
            return Ok(());
        }
        let out = result.unwrap();
        for (n, value) in &values {
            let theirs = crm_owned[*n];
            prop_assert_eq!(out.properties.get(&format!("p{n}")), (!theirs).then_some(value));
            prop_assert_eq!(out.crm_owned.contains(&format!("f{n}")), theirs);
        }
        prop_assert_eq!(out.properties.len() + out.crm_owned.len(), values.len());
    }

    /// The ownership rule for a CRM-side edit: an app-owned field is never delivered to the app,
    /// a CRM-owned one never journaled as a conflict, and crm-sync's own writes never come back.
    #[test]
    fn a_crm_edit_is_delivered_only_for_crm_owned_fields_and_journaled_only_for_app_owned_ones(
        crm_owned in any::<bool>(),
        written in prop::option::of("[ab]{0,2}"),
        received in prop::option::of("[ab]{0,2}"),
        value in "[ab]{0,2}",
        from_integration in any::<bool>(),
        last_inbound in prop::option::of(0i64..10),
        occurred in 0i64..10,
    ) {
        let mapping = mapping_with(&[crm_owned]);
        let object = mapping.object(ObjectKind::Contact).unwrap();
        let mut state = RecordState::new(RecordRef {
            object: ObjectKind::Contact,
            record_id: "r1".into(),
        });
        if let Some(written) = &written {
            state.written.insert("p0".into(), written.clone());
        }
        if let Some(received) = &received {
            state.received.insert("p0".into(), received.clone());
        }
        if let Some(at) = last_inbound {
            state.inbound_at.insert("p0".into(), at);
        }
        let edit = CrmChange {
            object: ObjectKind::Contact,
            crm_id: "1".into(),
            occurred_at_ms: occurred,
            source: if from_integration { "INTEGRATION" } else { "CRM_UI" }.into(),
            from_integration,
            created: false,
            properties: None,
        };
        let decision = decide(object, &state, &edit, "p0", &value);
        let ours = written.as_deref() == Some(value.as_str());
        if last_inbound.is_some_and(|at| at > occurred) {
            // Late: only a person's edit of an app-owned field still counts, as a conflict, unless
            // it leaves empty a field the app never wrote.
            if crm_owned || from_integration || ours || (written.is_none() && value.is_empty()) {
                prop_assert_eq!(decision, FieldDecision::Stale);
            } else {
                prop_assert!(matches!(decision, FieldDecision::Conflict { .. }), "{:?}", decision);
            }
            return Ok(());
        }
        match decision {
            FieldDecision::Deliver { field, value: delivered } => {
                prop_assert!(crm_owned, "an app-owned field was delivered");
                prop_assert_eq!(field, "f0");
                prop_assert_eq!(&delivered, &value);
                prop_assert!(received.as_deref() != Some(value.as_str()), "re-delivered what the app has");
                prop_assert!(!(from_integration && ours), "our own write delivered back");
            }
            FieldDecision::Conflict { app_value, crm_value, .. } => {
                prop_assert!(!crm_owned, "a CRM-owned field was journaled as a conflict");
                prop_assert!(!ours, "a conflict where both sides agree");
                prop_assert_eq!(app_value, written);
                prop_assert_eq!(crm_value, value);
            }
            FieldDecision::Echo => prop_assert!(
                ours || (crm_owned && received.as_deref() == Some(value.as_str()))
            ),
            // Nothing to act on: empty, and the side that owns nothing here never held a value.
            FieldDecision::Unmapped => {
                let held = if crm_owned { received.is_some() } else { written.is_some() };
                prop_assert!(value.is_empty() && !held, "nothing done with {:?}", value);
            }
            other => prop_assert!(false, "unexpected {:?}", other),
        }
    }
}
