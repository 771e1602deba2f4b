//! The CRM's merges as crm-sync recorded them: where a merged-away CRM id went (following
//! chains), and who holds a survivor. Both directions read them: a write follows a merge to its
//! survivor, an event about a survivor finds the app record that was on a merged-away id.

use std::collections::HashMap;

use crate::domain::contract::ObjectKind;
use crate::domain::identity::{MAX_HOLDERS, MAX_MERGE_HOPS};
use crate::domain::sync::RecordState;
use crate::ports::{RecordQueries, StoreUnavailable};

/// The survivor of each CRM id the CRM merged away (following chains of merges); ids never
/// merged are absent. A store that cannot answer, or a loop, leaves an id as it is: its write
/// then meets the dead id and waits.
pub async fn survivors(
    queries: &dyn RecordQueries,
    object: ObjectKind,
    crm_ids: &[String],
) -> HashMap<String, String> {
    let mut current: HashMap<String, String> = HashMap::new();
    let mut asking: Vec<String> = crm_ids.to_vec();
    asking.sort();
    asking.dedup();
    // Each id's path so far: a merge leading back into it is a loop, and is not followed.
    let mut paths: HashMap<String, Vec<String>> =
        crm_ids.iter().map(|id| (id.clone(), vec![id.clone()])).collect();
    for _ in 0..MAX_MERGE_HOPS {
        if asking.is_empty() {
            break;
        }
        let hops = match queries.merged_into(object, &asking).await {
            Ok(hops) => hops,
            Err(error) => {
                tracing::warn!(error = ?anyhow::Error::from(error), "could not read the CRM's merges");
                break;
            }
        };
        let mut next = Vec::new();
        for id in &asking {
            let Some(into) = hops.get(id) else { continue };
            // Every original id that had reached `id` moves on to `into`.
            let starts: Vec<String> = crm_ids
                .iter()
                .filter(|start| current.get(*start).unwrap_or(*start) == id)
                .cloned()
                .collect();
            let mut looped = false;
            for start in starts {
                let path = paths.entry(start.clone()).or_default();
                if path.contains(into) {
                    tracing::warn!(crm_id = %start, "the CRM's recorded merges loop; not followed");
                    current.remove(&start);
                    looped = true;
                    continue;
                }
                path.push(into.clone());
                current.insert(start, into.clone());
            }
            if !looped {
                next.push(into.clone());
            }
        }
        next.sort();
        next.dedup();
        asking = next;
    }
    current.retain(|from, into| from != into);
    current
}

/// The app records on `survivor` and on each CRM id merged straight into it: who a merge into
/// `survivor` concerns, whether its event has moved them yet or not.
pub async fn holders_of_merge(
    queries: &dyn RecordQueries,
    object: ObjectKind,
    survivor: &str,
) -> Result<Vec<RecordState>, StoreUnavailable> {
    let mut ids = vec![survivor.to_string()];
    ids.extend(queries.merged_from(object, survivor).await?);
    let mut holders: Vec<RecordState> = Vec::new();
    for id in ids {
        for state in queries.holders(object, &id, MAX_HOLDERS).await? {
            if !holders.iter().any(|known| known.record == state.record) {
                holders.push(state);
            }
        }
    }
    Ok(holders)
}
