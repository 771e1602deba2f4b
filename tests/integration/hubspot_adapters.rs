//! The HubSpot client against the sandbox over HTTP, the sandbox's limits as HubSpot enforces
//! them, and the shared rate limiter against DynamoDB (moto).

use std::collections::BTreeMap;
use std::time::Duration;

use crm_sync::adapters::dynamodb::{DynamoDbRateLimiter, LimiterSettings};
use crm_sync::adapters::hubspot::client::ApiVersion;
use crm_sync::adapters::hubspot::HubSpotClient;
use crm_sync::domain::crm::{
    AssociationInput, CrmError, FailureKind, InputOutcome, ThrottlePolicy, UpsertInput, ValueKind,
};
use crm_sync::ports::{Crm, Permit, RateLimiter};
use crm_sync_tests::hubspot::now_ms;
use crm_sync_tests::{spawn_app, TestApp};
use hubspot_sandbox::Faults;

fn client(app: &TestApp, token: &str) -> HubSpotClient {
    HubSpotClient::new(
        &app.sandbox().url(),
        token.to_string().into(),
        Duration::from_secs(2),
    )
    .unwrap()
}

fn input(key: &str, email: &str) -> UpsertInput {
    UpsertInput::new(
        key.to_string(),
        BTreeMap::from([("email".to_string(), email.to_string())]),
    )
}

#[tokio::test]
async fn a_batch_upsert_maps_each_result_and_error_back_to_its_input() {
    let app = spawn_app().await;
    let hubspot = client(&app, &app.sandbox().token());
    let inputs = [
        input("a", "a@example.com"),
        input("b", "broken"),
        input("c", "c@example.com"),
    ];

    let result = hubspot
        .upsert("contacts", "crm_sync_app_id", &inputs)
        .await
        .unwrap();

    assert!(
        result
            .call
            .ends_with("/crm/objects/2026-03/contacts/batch/upsert -> 207"),
        "{}",
        result.call
    );
    let a = app.sandbox().find("contacts", "crm_sync_app_id", "a").unwrap();
    assert_eq!(
        result.outcomes[0],
        InputOutcome::Done {
            crm_id: a.id.to_string(),
            created: true
        }
    );
    match &result.outcomes[1] {
        InputOutcome::Failed(error) => {
            assert_eq!(error.kind, FailureKind::Permanent);
            assert_eq!(error.code, "INVALID_EMAIL");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        result.outcomes[2],
        InputOutcome::Done { created: true, .. }
    ));
    assert_eq!(result.rate.burst_max, Some(190));
    assert_eq!(result.rate.burst_remaining, Some(189));

    let again = hubspot
        .upsert("contacts", "crm_sync_app_id", &inputs[..1])
        .await
        .unwrap();
    assert_eq!(
        again.outcomes[0],
        InputOutcome::Done {
            crm_id: a.id.to_string(),
            created: false
        }
    );
}

#[tokio::test]
async fn an_email_held_by_a_record_without_our_id_refuses_the_whole_batch_and_alone_is_a_conflict_to_adopt() {
    let app = spawn_app().await;
    let hubspot = client(&app, &app.sandbox().token());
    let existing = app
        .sandbox()
        .create(
            "contacts",
            [("email".to_string(), "ivy@example.com".to_string())].into(),
        )
        .unwrap();

    // HubSpot refuses such a batch as a whole (409), so nothing of it is written.
    match hubspot
        .upsert(
            "contacts",
            "crm_sync_app_id",
            &[
                input("new-1", "new@example.com"),
                input("ivy-1", "ivy@example.com"),
            ],
        )
        .await
    {
        Err(CrmError::Rejected {
            status: 409, message, ..
        }) => {
            assert!(
                message.contains(&format!("Existing ID: {}", existing.id)),
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(app
        .sandbox()
        .find("contacts", "crm_sync_app_id", "new-1")
        .is_none());

    let alone = hubspot
        .upsert(
            "contacts",
            "crm_sync_app_id",
            &[input("ivy-1", "ivy@example.com")],
        )
        .await
        .unwrap();
    match &alone.outcomes[..] {
        [InputOutcome::Failed(error)] => {
            assert_eq!(error.kind, FailureKind::Conflict);
            assert_eq!(error.existing_id, Some(existing.id.to_string()));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn an_association_the_results_do_not_name_is_failed_not_counted_as_done() {
    let app = spawn_app().await;
    let hubspot = client(&app, &app.sandbox().token());
    let contact = app
        .sandbox()
        .create(
            "contacts",
            [("email".to_string(), "a@example.com".to_string())].into(),
        )
        .unwrap();
    let deal = app
        .sandbox()
        .create("deals", [("dealname".to_string(), "Plan".to_string())].into())
        .unwrap();
    let pairs = [
        AssociationInput {
            from_id: deal.id.to_string(),
            to_id: contact.id.to_string(),
        },
        AssociationInput {
            from_id: deal.id.to_string(),
            to_id: "987654".to_string(),
        },
    ];

    let result = hubspot.associate("deals", "contacts", &pairs).await.unwrap();

    assert!(
        result
            .call
            .ends_with("/crm/associations/2026-03/deals/contacts/batch/associate/default -> 200"),
        "{}",
        result.call
    );
    assert!(
        matches!(result.outcomes[0], InputOutcome::Done { .. }),
        "{:?}",
        result.outcomes
    );
    assert!(
        matches!(&result.outcomes[1], InputOutcome::Failed(_)),
        "{:?}",
        result.outcomes
    );
    assert_eq!(
        app.sandbox().associations("deals", deal.id),
        vec![("contacts".to_string(), contact.id)]
    );
}

#[tokio::test]
async fn the_configured_api_version_is_the_one_called_and_one_hubspot_does_not_serve_is_refused() {
    let app = spawn_app().await;
    let on = |version: &str| {
        client(&app, &app.sandbox().token()).with_api_version(ApiVersion::parse(version).unwrap())
    };

    let result = on("2026-09")
        .upsert("contacts", "crm_sync_app_id", &[input("v-1", "v1@example.com")])
        .await
        .unwrap();
    assert!(
        result.call.contains("/crm/objects/2026-09/contacts/batch/upsert"),
        "{}",
        result.call
    );
    match on("2030-03")
        .upsert("contacts", "crm_sync_app_id", &[input("v-2", "v2@example.com")])
        .await
    {
        Err(CrmError::Rejected { status: 404, .. }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(ApiVersion::DEFAULT.end_of_support(), (2027, 9));
    assert!(ApiVersion::parse("2026-04").is_err());
    assert!(ApiVersion::parse("v3").is_err());
}

#[tokio::test]
async fn property_kinds_are_read_from_hubspot_properties_and_dates_read_back_as_iso_text() {
    let app = spawn_app().await;
    let hubspot = client(&app, &app.sandbox().token());

    let deals = hubspot.property_kinds("deals").await.unwrap();
    assert_eq!(deals.kinds.get("closedate"), Some(&ValueKind::DateTime));
    assert_eq!(deals.kinds.get("amount"), Some(&ValueKind::Number));
    assert_eq!(deals.kinds.get("dealname"), Some(&ValueKind::Text));

    let written = hubspot
        .upsert(
            "deals",
            "crm_sync_app_id",
            &[UpsertInput::new(
                "deal-1",
                BTreeMap::from([("closedate".to_string(), "1798675200000".to_string())]),
            )],
        )
        .await
        .unwrap();
    let InputOutcome::Done { crm_id, .. } = &written.outcomes[0] else {
        panic!("{written:?}");
    };
    let read = hubspot
        .read("deals", std::slice::from_ref(crm_id), &["closedate".to_string()])
        .await
        .unwrap();
    assert_eq!(
        read.records[0].as_ref().unwrap()["closedate"],
        "2026-12-31T00:00:00.000Z"
    );
}

#[tokio::test]
async fn without_the_schemas_scope_the_standard_properties_still_compare_by_their_known_types() {
    let app = spawn_app().await;
    let hubspot = client(&app, &app.sandbox().token());
    app.sandbox().set_faults(Faults {
        schemas_scope_missing: true,
        ..Faults::default()
    });

    let deals = hubspot.property_kinds("deals").await.unwrap();

    assert_eq!(deals.kinds.get("closedate"), Some(&ValueKind::DateTime));
    assert_eq!(deals.kinds.get("amount"), Some(&ValueKind::Number));
    assert_eq!(deals.kinds.get("dealname"), None, "the rest compares as text");
    assert_eq!(
        app.sandbox()
            .stats()
            .calls
            .get("GET /crm/properties/2026-03/deals"),
        Some(&1)
    );
}

#[tokio::test]
async fn throttles_outages_and_bad_tokens_are_told_apart() {
    let app = spawn_app().await;
    let hubspot = client(&app, &app.sandbox().token());
    let inputs = [input("a", "a@example.com")];

    app.sandbox().set_faults(Faults {
        throttle_next: 1,
        ..Faults::default()
    });
    match hubspot.upsert("contacts", "crm_sync_app_id", &inputs).await {
        Err(CrmError::Throttled {
            policy: ThrottlePolicy::Burst,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    app.sandbox().set_faults(Faults {
        daily_limit: 1,
        daily_used: 1,
        ..Faults::default()
    });
    match hubspot.upsert("contacts", "crm_sync_app_id", &inputs).await {
        Err(CrmError::Throttled {
            policy: ThrottlePolicy::Daily,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    app.sandbox().set_faults(Faults {
        error_rate: 1.0,
        error_status: 502,
        ..Faults::default()
    });
    assert!(matches!(
        hubspot.upsert("contacts", "crm_sync_app_id", &inputs).await,
        Err(CrmError::Transient { .. })
    ));
    app.sandbox().set_faults(Faults {
        timeout_rate: 1.0,
        timeout_ms: 5_000,
        ..Faults::default()
    });
    match hubspot.upsert("contacts", "crm_sync_app_id", &inputs).await {
        Err(CrmError::Transient { message, .. }) => assert_eq!(message, "timed out"),
        other => panic!("{other:?}"),
    }
    app.sandbox().set_faults(Faults::default());
    match client(&app, "wrong-token")
        .upsert("contacts", "crm_sync_app_id", &inputs)
        .await
    {
        Err(CrmError::Transient { message, .. }) => assert!(message.starts_with("authentication failed")),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_whole_call_the_crm_refuses_is_a_rejection_naming_the_reason() {
    let app = spawn_app().await;
    let hubspot = client(&app, &app.sandbox().token());
    let too_many: Vec<_> = (0..101)
        .map(|i| input(&i.to_string(), &format!("{i}@example.com")))
        .collect();
    match hubspot.upsert("contacts", "crm_sync_app_id", &too_many).await {
        Err(CrmError::Rejected {
            status: 400, message, ..
        }) => assert!(message.contains("at most 100")),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn the_sandbox_enforces_the_rolling_burst_window_and_the_daily_budget() {
    let app = spawn_app().await;
    app.sandbox().set_faults(Faults {
        burst_limit: 5,
        burst_window_ms: 1_000,
        daily_limit: 8,
        ..Faults::default()
    });
    let http = reqwest::Client::new();
    let url = format!("{}/crm/v3/objects/contacts/batch/read", app.sandbox().url());
    let call = || {
        http.post(&url)
            .bearer_auth(app.sandbox().token())
            .json(&serde_json::json!({"inputs": []}))
            .send()
    };
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(call().await.unwrap().status().as_u16());
    }
    assert_eq!(statuses, vec![200, 200, 200, 200, 200, 429]);
    let refused = call().await.unwrap();
    assert_eq!(refused.headers()["x-hubspot-ratelimit-remaining"], "0");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["policyName"], "TEN_SECONDLY_ROLLING");
    assert_eq!(body["errorType"], "RATE_LIMIT");

    tokio::time::sleep(Duration::from_millis(1_100)).await;
    for _ in 0..3 {
        assert_eq!(call().await.unwrap().status(), 200, "the window rolled on");
    }
    let daily = call().await.unwrap();
    assert_eq!(daily.status(), 429);
    assert_eq!(daily.headers()["x-hubspot-ratelimit-daily-remaining"], "0");
    let body: serde_json::Value = daily.json().await.unwrap();
    assert_eq!(body["policyName"], "DAILY");

    let anonymous = http
        .post(&url)
        .json(&serde_json::json!({"inputs": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
}

fn limiter(app: &TestApp, settings: LimiterSettings) -> DynamoDbRateLimiter {
    DynamoDbRateLimiter::new(
        app.dynamodb.clone(),
        app.stack.resources.table("RateLimitTable"),
        "hubspot",
        settings,
    )
}

#[tokio::test]
async fn concurrent_instances_never_get_more_slots_than_the_burst_limit_allows() {
    let app = spawn_app().await;
    let settings = LimiterSettings {
        burst_limit: 10,
        burst_window_ms: 1_000,
        headroom: 1.0,
        ..LimiterSettings::default()
    };
    let instances: Vec<_> = (0..4).map(|_| limiter(&app, settings.clone())).collect();
    let start = now_ms();
    let mut grants = Vec::new();
    for round in 0..5 {
        let now = start + round * 50;
        let permits = futures::future::join_all(instances.iter().map(|l| l.acquire(now))).await;
        for permit in permits {
            if let Permit::Granted { at_ms } = permit.unwrap() {
                grants.push(at_ms);
            }
        }
    }
    grants.sort();
    assert!(grants.len() >= 10, "{grants:?}");
    // Slots an interval apart, live calls up to their lead early: still no 1-second window
    // holds more than 10.
    for (i, first) in grants.iter().enumerate() {
        let in_window = grants[i..].iter().take_while(|at| **at < first + 1_000).count();
        assert!(in_window <= 10, "{in_window} slots in one window: {grants:?}");
    }
}

#[tokio::test]
async fn the_limiter_keeps_the_daily_reserve_and_honours_a_daily_429() {
    let app = spawn_app().await;
    let settings = LimiterSettings {
        daily_limit: 5,
        daily_reserve: 2,
        burst_limit: 1000,
        ..LimiterSettings::default()
    };
    let limiter = limiter(&app, settings.clone());
    let now = now_ms();
    let mut granted = 0;
    for i in 0..6 {
        match limiter.acquire(now + i * 100).await.unwrap() {
            Permit::Granted { .. } => granted += 1,
            Permit::Denied { policy, until_ms } => {
                assert_eq!(policy, ThrottlePolicy::Daily);
                assert_eq!(until_ms, settings.next_day_start_ms(now + i * 100));
            }
        }
    }
    assert_eq!(granted, 3, "5 a day, 2 kept in reserve");

    let fresh = DynamoDbRateLimiter::new(
        app.dynamodb.clone(),
        app.stack.resources.table("RateLimitTable"),
        "other",
        LimiterSettings::default(),
    );
    fresh
        .throttled(ThrottlePolicy::Daily, Duration::from_secs(60), now)
        .await
        .unwrap();
    match fresh.acquire(now + 1_000).await.unwrap() {
        Permit::Denied {
            until_ms,
            policy: ThrottlePolicy::Daily,
        } => assert_eq!(until_ms, now + 60_000),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn background_work_stops_at_the_live_reserve_and_live_changes_spend_it() {
    let app = spawn_app().await;
    let settings = LimiterSettings {
        daily_limit: 10,
        daily_reserve: 2,
        live_reserve: 3,
        burst_limit: 1000,
        ..LimiterSettings::default()
    };
    let limiter = limiter(&app, settings);
    let now = now_ms();
    let mut background = 0;
    for i in 0..8 {
        if let Permit::Granted { .. } = limiter.acquire_idle(now + i * 100).await.unwrap() {
            background += 1;
        }
    }
    assert_eq!(
        background, 5,
        "10 a day: 2 never spent, 3 more kept for live changes"
    );
    let mut live = 0;
    for i in 8..12 {
        if let Permit::Granted { .. } = limiter.acquire(now + i * 100).await.unwrap() {
            live += 1;
        }
    }
    assert_eq!(live, 3, "live changes spend the live reserve, not the reserve");
}

#[tokio::test]
async fn a_token_budget_is_spent_by_each_calls_cost_and_corrected_by_the_crms_own_count() {
    let app = spawn_app().await;
    // Pipedrive's: a day of 100 tokens, 20 kept back, 25 a granted call.
    let settings = LimiterSettings {
        daily_limit: 100,
        daily_reserve: 20,
        daily_cost_per_call: 25,
        burst_limit: 1000,
        ..LimiterSettings::default()
    };
    let limiter = limiter(&app, settings);
    let now = now_ms();
    let mut granted = 0;
    for i in 0..5 {
        if let Permit::Granted { .. } = limiter.acquire(now + i * 100).await.unwrap() {
            granted += 1;
        }
    }
    assert_eq!(
        granted, 3,
        "100, 75, 50 left before each grant; 25 would dip into the 20 kept back"
    );

    // Pipedrive says more is left (another app's spend came back, or our estimate was high).
    limiter
        .observe(
            &crm_sync::domain::crm::RateInfo {
                daily_remaining: Some(60),
                ..Default::default()
            },
            now + 1_000,
        )
        .await
        .unwrap();
    assert!(matches!(
        limiter.acquire(now + 1_100).await.unwrap(),
        Permit::Granted { .. }
    ));
    assert!(
        matches!(limiter.acquire(now + 1_200).await.unwrap(), Permit::Denied { .. }),
        "35 left, 20 kept back"
    );
}

#[tokio::test]
async fn the_low_priority_lane_only_takes_slots_live_work_leaves_idle() {
    let app = spawn_app().await;
    let settings = LimiterSettings {
        burst_limit: 10,
        burst_window_ms: 1_000,
        headroom: 1.0,
        ..LimiterSettings::default()
    };
    let live = limiter(&app, settings.clone());
    let low = limiter(&app, settings);
    let now = now_ms();
    assert!(
        matches!(low.acquire_idle(now).await.unwrap(), Permit::Granted { at_ms } if at_ms == now),
        "idle: granted"
    );
    // Live work reserves the next slots ahead.
    for _ in 0..3 {
        assert!(matches!(live.acquire(now).await.unwrap(), Permit::Granted { .. }));
    }
    match low.acquire_idle(now).await.unwrap() {
        Permit::Denied {
            policy: ThrottlePolicy::Burst,
            until_ms,
        } => assert!(until_ms > now + 200, "{until_ms}"),
        other => panic!("the low lane took a reserved slot: {other:?}"),
    }
}

#[tokio::test]
async fn a_live_call_goes_at_once_while_background_work_takes_every_slot_it_leaves() {
    let app = spawn_app().await;
    // 10 calls a second, two of them a live call's lead: slots 125 ms apart, a lead of 250 ms.
    let settings = LimiterSettings {
        burst_limit: 10,
        burst_window_ms: 1_000,
        headroom: 1.0,
        ..LimiterSettings::default()
    };
    let live = limiter(&app, settings.clone());
    let background = limiter(&app, settings);
    // A clock of our own, so that the run does not depend on the machine's pace.
    let start = now_ms();
    let (mut grants, mut waits) = (Vec::new(), Vec::new());
    let mut background_asks_at = start;
    let mut live_asks = (0..6).map(|k| start + 160 + k * 310).peekable();
    for now in (start..start + 2_000).step_by(5) {
        if live_asks.peek().is_some_and(|at| *at <= now) {
            live_asks.next();
            match live.acquire(now).await.unwrap() {
                Permit::Granted { at_ms } => {
                    waits.push(at_ms - now);
                    grants.push(at_ms);
                }
                denied => panic!("a live call was refused: {denied:?}"),
            }
        }
        if background_asks_at <= now {
            match background.acquire_idle(now).await.unwrap() {
                Permit::Granted { at_ms } => {
                    grants.push(at_ms);
                    background_asks_at = at_ms;
                }
                Permit::Denied { until_ms, .. } => background_asks_at = until_ms,
            }
        }
    }
    assert_eq!(waits, vec![0; 6], "live calls waited behind background work");
    grants.sort();
    for (i, first) in grants.iter().enumerate() {
        let in_window = grants[i..].iter().take_while(|at| **at < first + 1_000).count();
        assert!(in_window <= 10, "{in_window} calls in one second: {grants:?}");
    }
    // The pace is 8 a second: in 2 s background work gets what the 6 live calls leave.
    assert!(
        grants.len() >= 16,
        "only {} slots were used: {grants:?}",
        grants.len()
    );
}
