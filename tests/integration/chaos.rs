//! The chaos scenario at the test suite's size (`cargo run -p crm-sync-tests --bin chaos` runs
//! it at full size).

use crm_sync_tests::chaos::{chaos_app, run, Plan};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_crm_faults_crashes_and_duplicate_webhooks_nothing_is_lost_doubled_or_stale() {
    let app = chaos_app().await;
    let plan = Plan::small();
    let tally = run(&app, &plan).await;
    println!("{tally}");
    assert!(tally.problems.is_empty(), "{tally}");
    assert!(
        tally.invocations_crashed > 0,
        "no invocation crashed: the run proves little\n{tally}"
    );
    assert!(
        tally.crm_errors_injected > 0 && tally.crm_throttled_burst > 0 && tally.crm_throttled_daily > 0,
        "{tally}"
    );
    assert_eq!(tally.conflicts_journaled, tally.rep_edits_app_owned);
    assert_eq!(tally.conflict_entries, tally.rep_edits_app_owned, "{tally}");
    assert!(tally.rep_drift_to_heal > 0, "the healing path ran: {tally}");
    assert_eq!(
        tally.reconcile_healed as usize, tally.rep_drift_to_heal,
        "{tally}"
    );
    assert!(
        tally.rep_edits_app_owned > 0 && tally.rep_edits_crm_owned > 0,
        "{tally}"
    );
    assert_eq!(tally.dead_letters_left, plan.invalid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_merges_chains_restores_and_crm_faults_every_app_record_ends_on_a_live_crm_record_none_created_twice(
) {
    let app = chaos_app().await;
    let plan = crm_sync_tests::identity_chaos::IdentityPlan::small();
    let tally = crm_sync_tests::identity_chaos::run(&app, &plan).await;
    println!("{tally}");
    assert!(tally.problems.is_empty(), "{tally}");
    assert!(tally.crm_errors_injected > 0, "the faults hit: {tally}");
    assert!(
        tally.chained > 0 && tally.app_pairs > 0 && tally.restores > 0,
        "{tally}"
    );
}
