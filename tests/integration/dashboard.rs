//! The dashboard over real HTTP: sign-in, sign-in limits, server-side sessions and sign-out,
//! CSRF, listings and counts, search, re-sync, conflicts, and dead-letter redrive, against moto
//! and the HubSpot sandbox.

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_sqs::types::{MessageAttributeValue, QueueAttributeName};
use crm_sync::adapters::dynamodb::session_pk;
use crm_sync::dashboard::session::storage_key;
use crm_sync::domain::contract::{parse_change, ObjectKind, RecordRef};
use crm_sync::domain::sync::{SyncStatus, TimelineKind};
use crm_sync::ports::state::*;
use crm_sync_tests::app_changes::contact;
use crm_sync_tests::dashboard::DashboardClient;
use crm_sync_tests::hubspot::now_ms;
use crm_sync_tests::{drain, eventually, spawn_app, spawn_app_with, AppOptions, TestApp, DASHBOARD_PASSWORD};
use reqwest::StatusCode;
use serde_json::json;

fn contact_ref(id: &str) -> RecordRef {
    RecordRef {
        object: ObjectKind::Contact,
        record_id: id.to_string(),
    }
}

async fn signed_in(app: &TestApp) -> DashboardClient {
    DashboardClient::signed_in(&app.stack.url(), DASHBOARD_PASSWORD).await
}

/// The count a records page shows for a filter.
fn count_of(page: &str, filter: &str) -> String {
    let marker = format!("data-filter=\"{filter}\">");
    let start = page.find(&marker).expect("the page shows the count") + marker.len();
    page[start..start + page[start..].find('<').unwrap()].to_string()
}

async fn queue_depth(app: &TestApp, logical_id: &str) -> u64 {
    let attributes = app
        .sqs
        .get_queue_attributes()
        .queue_url(&app.stack.resources.queue(logical_id).url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .unwrap();
    let all = attributes.attributes().unwrap();
    [
        QueueAttributeName::ApproximateNumberOfMessages,
        QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
    ]
    .iter()
    .map(|name| all[name].parse::<u64>().unwrap())
    .sum()
}

/// The `pk` of every session item in the dashboard's table.
async fn stored_sessions(app: &TestApp) -> Vec<String> {
    let scanned = app
        .dynamodb
        .scan()
        .table_name(app.stack.resources.table("DashboardTable"))
        .send()
        .await
        .expect("scan works");
    scanned
        .items()
        .iter()
        .filter_map(|item| item.get("pk")?.as_s().ok().cloned())
        .filter(|pk| pk.starts_with("SESSION#"))
        .collect()
}

/// The value of a client's session cookie (after `crm_sync_session=`).
fn cookie_value(client: &DashboardClient) -> String {
    let cookie = client.session_cookie().expect("signed in");
    cookie.split_once('=').expect("name=value").1.to_string()
}

/// Waits, if need be, until the dashboard's current sign-in window (windows of `window_ms` start
/// at multiples of it since the epoch) has at least `room_ms` left, so that what a test does next
/// falls in one window.
async fn with_room_in_the_window(window_ms: i64, room_ms: i64) {
    let left = window_ms - now_ms().rem_euclid(window_ms);
    if left < room_ms {
        tokio::time::sleep(Duration::from_millis(u64::try_from(left).unwrap() + 20)).await;
    }
}

/// A contact's change the sync function has taken in but not written (the state a failure
/// leaves): its body and change.
async fn taken_in_not_written(app: &TestApp, id: &str) -> (String, crm_sync::domain::contract::Change) {
    let body = contact(id, now_ms(), json!({"email": format!("{id}@example.com")})).to_string();
    let change = parse_change(&body).unwrap();
    app.sync_state()
        .claim(&change, &body, &Default::default(), "t", now_ms(), now_ms())
        .await
        .unwrap();
    (body, change)
}

#[tokio::test]
async fn no_dashboard_page_or_action_is_reachable_without_signing_in() {
    let app = spawn_app().await;
    let url = app.stack.url();
    let anonymous = DashboardClient::new(&url);
    for path in [
        "/admin",
        "/admin/queues",
        "/admin/record?object=contact&id=x",
        "/admin/nope",
    ] {
        let answer = anonymous.get(path).await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER, "{path}");
        assert!(
            answer
                .location
                .as_deref()
                .unwrap()
                .starts_with("/admin/login?next=%2Fadmin"),
            "{path}: {:?}",
            answer.location
        );
    }
    for path in [
        "/admin/resync",
        "/admin/failures/resync",
        "/admin/queues/redrive",
        "/admin/conflicts/dismiss",
        "/admin/logout",
    ] {
        let answer = anonymous
            .post(path, &[("lane", "outbound"), ("record", "contact/x")])
            .await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{path}");
    }

    let mut wrong = DashboardClient::new(&url);
    let answer = wrong.sign_in("not-the-password").await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert!(answer.set_cookie.is_none() && wrong.session_cookie().is_none());
    assert!(answer.body.contains("That password is not right."));

    let forged = DashboardClient::new(&url).with_cookie("crm_sync_session=99999999999999.n.forged");
    assert_eq!(forged.get("/admin").await.status, StatusCode::SEE_OTHER);

    let mut operator = DashboardClient::new(&url);
    let answer = operator.sign_in(DASHBOARD_PASSWORD).await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER);
    let cookie = answer.set_cookie.unwrap();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/admin"] {
        assert!(cookie.contains(attribute), "{cookie} lacks {attribute}");
    }
    assert_eq!(operator.get("/admin").await.status, StatusCode::OK);
    assert_eq!(operator.get("/admin/queues").await.status, StatusCode::OK);

    let csrf = operator.csrf("/admin").await;
    let out = operator.post("/admin/logout", &[("csrf", &csrf)]).await;
    assert!(out.set_cookie.unwrap().contains("Max-Age=0"));
}

#[tokio::test]
async fn a_re_sync_is_queued_only_for_a_same_site_post_carrying_the_session_token() {
    let app = spawn_app().await;
    let (body, _) = taken_in_not_written(&app, "csrf-1").await;
    let store = app.sync_state();

    let operator = signed_in(&app).await;
    let other = signed_in(&app).await;
    let token = operator.csrf("/admin").await;
    let foreign_token = other.csrf("/admin").await;
    assert_ne!(token, foreign_token, "each session has its own token");

    let fields = |csrf: &'static str| {
        vec![
            ("csrf", csrf),
            ("record", "contact/csrf-1"),
            ("scope", "selected"),
        ]
    };
    let refused = [
        operator.post("/admin/resync", &fields("")).await,
        operator
            .post(
                "/admin/resync",
                &[("csrf", foreign_token.as_str()), ("record", "contact/csrf-1")],
            )
            .await,
        operator
            .post_from(
                "/admin/resync",
                &[("csrf", token.as_str()), ("record", "contact/csrf-1")],
                Some("https://evil.example"),
            )
            .await,
    ];
    for answer in &refused {
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{}", answer.body);
    }
    assert_eq!(
        queue_depth(&app, "ResyncQueue").await,
        0,
        "a refused post queues nothing"
    );

    let answer = operator
        .post(
            "/admin/resync",
            &[("csrf", token.as_str()), ("record", "contact/csrf-1")],
        )
        .await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER);
    assert_eq!(
        answer.location.as_deref(),
        Some("/admin?done=resync&queued=1&skipped=0")
    );
    let queued = drain(&app.sqs, &app.stack.resources.queue("ResyncQueue").url).await;
    assert_eq!(
        queued,
        vec![serde_json::from_str::<serde_json::Value>(&body).unwrap()]
    );
    let (_, timeline) = store.record(&contact_ref("csrf-1"), 10).await.unwrap().unwrap();
    assert!(timeline
        .iter()
        .any(|entry| entry.kind == TimelineKind::Note && entry.detail.contains("dashboard")));
}

#[tokio::test]
async fn records_are_counted_by_status_and_found_by_app_id_email_or_crm_id() {
    let app = spawn_app_with(AppOptions::syncing()).await;
    let at = now_ms();
    app.send_changes(&[
        contact("find-1", at, json!({"email": "Find.One@Example.com"})),
        contact("find-2", at, json!({"email": "broken"})),
        contact("<b>find-3</b>", at, json!({"email": "find-3@example.com"})),
    ])
    .await;
    let (failed, _) = app.settled(contact_ref("find-2"), SyncStatus::Failed).await;
    let (synced, _) = app.settled(contact_ref("find-1"), SyncStatus::Synced).await;
    app.settled(contact_ref("<b>find-3</b>"), SyncStatus::Synced)
        .await;

    let operator = signed_in(&app).await;
    let home = operator.get("/admin").await;
    assert_eq!(home.status, StatusCode::OK);
    assert_eq!(count_of(&home.body, "failed"), "1");
    assert_eq!(count_of(&home.body, "synced"), "2");
    assert_eq!(count_of(&home.body, "pending"), "0");
    assert!(
        home.body.contains("contact/find-2"),
        "the failed listing is the default"
    );
    let error = failed.last_error.unwrap();
    let shown: String = error.chars().take(40).collect();
    assert!(
        home.body.contains(&maud::html! { (shown) }.into_string()),
        "the CRM's message is shown"
    );

    let synced_page = operator.get("/admin?filter=synced").await.body;
    assert!(synced_page.contains("contact/&lt;b&gt;find-3&lt;/b&gt;"));
    assert!(
        !synced_page.contains("<b>find-3</b>"),
        "a record id is never markup"
    );

    let crm_id = synced.crm_id.unwrap();
    for query in ["find.one@example.COM", "find-1", crm_id.as_str()] {
        let page = operator
            .get(&format!(
                "/admin?q={}",
                crm_sync::dashboard::html::url_part(query)
            ))
            .await
            .body;
        assert!(page.contains("contact/find-1"), "searching {query}");
        assert!(!page.contains("contact/find-2"), "searching {query}");
    }
    let page = operator.get("/admin?q=nobody%40example.com").await.body;
    assert!(page.contains("No records."));

    let bad = operator.get("/admin?filter=synced&cursor=eyJ4IjoiMSJ9").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.body.contains("cursor is not valid"));
}

#[tokio::test]
async fn a_synced_record_re_synced_from_the_dashboard_is_written_to_the_crm_again() {
    let app = spawn_app_with(AppOptions::syncing()).await;
    app.send_changes(&[contact(
        "again-1",
        now_ms(),
        json!({"email": "again-1@example.com"}),
    )])
    .await;
    let (before, _) = app.settled(contact_ref("again-1"), SyncStatus::Synced).await;
    let inputs_before = app.sandbox().stats().batch_inputs;

    let operator = signed_in(&app).await;
    let record_path = "/admin/record?object=contact&id=again-1";
    let csrf = operator.csrf(record_path).await;
    let answer = operator
        .post(
            "/admin/resync",
            &[
                ("csrf", csrf.as_str()),
                ("record", "contact/again-1"),
                ("back", record_path),
            ],
        )
        .await;
    assert_eq!(
        answer.location.as_deref(),
        Some("/admin/record?object=contact&id=again-1&done=resync&queued=1&skipped=0")
    );
    let store = app.sync_state();
    let state = eventually(30, "the re-sync to be applied", || async {
        let state = store.record(&contact_ref("again-1"), 10).await.ok()??.0;
        state
            .applied_idempotency_id
            .as_deref()
            .is_some_and(|id| id.starts_with("resync-"))
            .then_some(state)
    })
    .await;
    assert_eq!(state.status, SyncStatus::Synced);
    assert_eq!(state.crm_id, before.crm_id, "the same CRM record");
    assert!(
        app.sandbox().stats().batch_inputs > inputs_before,
        "written again"
    );
    assert_eq!(app.sandbox().records("contacts").len(), 1, "no duplicate");
    let page = operator.get(&answer.location.unwrap()).await.body;
    assert!(page.contains("Queued 1 record for re-sync."));
    assert!(page.contains("re-sync requested from the dashboard"));
}

#[tokio::test]
async fn a_conflict_stays_listed_until_an_operator_dismisses_it() {
    let app = spawn_app_with(AppOptions::syncing().with_webhooks()).await;
    app.send_changes(&[contact(
        "clash-1",
        now_ms(),
        json!({"email": "clash-1@example.com"}),
    )])
    .await;
    let (state, _) = app.settled(contact_ref("clash-1"), SyncStatus::Synced).await;
    let crm_id: u64 = state.crm_id.unwrap().parse().unwrap();
    app.sandbox()
        .edit(
            "contacts",
            crm_id,
            [("email".to_string(), "typo@example.com".to_string())].into(),
        )
        .unwrap();
    let operator = signed_in(&app).await;
    let listing = eventually(60, "the conflict listing", || async {
        let page = operator.get("/admin?filter=conflict").await.body;
        // The counts are read just before the listing: wait for both to show it.
        (page.contains("contact/clash-1") && count_of(&page, "conflict") == "1").then_some(page)
    })
    .await;
    assert!(
        listing.contains("<span class=\"badge s-conflict\">conflict</span></td>"),
        "the row is marked"
    );

    let record_path = "/admin/record?object=contact&id=clash-1";
    let page = operator.get(record_path).await.body;
    assert!(
        page.contains("clash-1@example.com") && page.contains("typo@example.com"),
        "both values"
    );
    assert!(
        page.contains("<td class=\"conflict-status\"><span class=\"badge s-conflict\">open</span>"),
        "open until something happens"
    );
    let csrf = operator.csrf(record_path).await;
    let answer = operator
        .post(
            "/admin/conflicts/dismiss",
            &[("csrf", csrf.as_str()), ("record", "contact/clash-1")],
        )
        .await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER);
    let listing = operator.get("/admin?filter=conflict").await.body;
    assert_eq!(count_of(&listing, "conflict"), "0");
    assert!(!listing.contains("contact/clash-1"));
    let page = operator.get(record_path).await.body;
    assert!(
        page.contains("typo@example.com"),
        "the history stays on the record"
    );
    assert!(!page.contains("Dismiss conflicts"));
    assert!(
        page.contains("conflicts dismissed by shared password"),
        "the timeline names who dismissed them"
    );
    assert!(
        page.contains("<span class=\"badge s-deleted\">dismissed</span>"),
        "it says it was dismissed"
    );
}

#[tokio::test]
async fn a_conflict_is_resolved_when_the_apps_value_is_written_to_the_crm_again() {
    let app = spawn_app_with(AppOptions::syncing().with_webhooks()).await;
    let email = json!({"email": "clash-2@example.com", "first_name": "Ada"});
    app.send_changes(&[contact("clash-2", now_ms(), email.clone())])
        .await;
    let (state, _) = app.settled(contact_ref("clash-2"), SyncStatus::Synced).await;
    let crm_id: u64 = state.crm_id.unwrap().parse().unwrap();
    app.sandbox()
        .edit(
            "contacts",
            crm_id,
            [("email".to_string(), "typo-2@example.com".to_string())].into(),
        )
        .unwrap();
    let operator = signed_in(&app).await;
    eventually(60, "the conflict listed", || async {
        let page = operator.get("/admin?filter=conflict").await.body;
        page.contains("contact/clash-2").then_some(())
    })
    .await;
    let record_path = "/admin/record?object=contact&id=clash-2";
    let page = operator.get(record_path).await.body;
    assert!(
        page.contains("the CRM the person's until crm-sync writes the field again"),
        "the outcome says the CRM still holds the person's value"
    );

    // The app sends the record again: its email goes to the CRM, which resolves the conflict.
    app.send_changes(&[contact("clash-2", now_ms(), email)]).await;
    let store = app.sync_state();
    let state = eventually(30, "the conflict resolved", || async {
        let (state, _) = store.record(&contact_ref("clash-2"), 1).await.ok()??;
        (!state.open_conflicts).then_some(state)
    })
    .await;
    assert!(state.conflict_marks.open.is_empty());
    assert_eq!(
        app.sandbox().records("contacts")[0].properties["email"],
        "clash-2@example.com",
        "the CRM holds the app's value again"
    );
    let listing = operator.get("/admin?filter=conflict").await.body;
    assert!(!listing.contains("contact/clash-2"), "off the open listing");
    let page = operator.get(record_path).await.body;
    assert!(
        page.contains(
            "<span class=\"badge s-synced\">resolved</span> the app's value written to the CRM again"
        ),
        "{}",
        &page[page.find("Conflicts").unwrap_or(0)..]
    );
    assert!(
        page.contains("resolved the conflict on email: the app's value is in the CRM again"),
        "on the timeline"
    );
    assert!(!page.contains("Dismiss conflicts"), "nothing left to dismiss");
}

#[tokio::test]
async fn redrive_returns_dead_letters_to_their_queue_and_running_it_twice_moves_each_once() {
    let app = spawn_app().await;
    let dlq = app.stack.resources.queue("OutboundDeadLetterQueue").url.clone();
    let letter = |n: usize, reason: &str| {
        let reason = MessageAttributeValue::builder()
            .data_type("String")
            .string_value(reason)
            .build()
            .unwrap();
        app.sqs
            .send_message()
            .queue_url(&dlq)
            .message_body(format!("{{\"letter\":{n}}}"))
            .message_attributes("crm_sync_error", reason)
    };
    letter(0, "PROPERTY_DOESNT_EXIST: the oldest")
        .send()
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    for n in 1..5 {
        letter(n, "a newer failure").send().await.unwrap();
    }
    let operator = signed_in(&app).await;
    let page = operator.get("/admin/queues").await.body;
    let row = &page[page.find("data-lane=\"outbound\"").unwrap()..];
    let row = &row[..row.find("</tr>").unwrap()];
    assert!(row.contains("<td class=\"depth\">5</td>"), "{row}");
    assert!(row.contains("PROPERTY_DOESNT_EXIST: the oldest"), "{row}");
    assert!(
        !row.contains("disabled"),
        "a queue with letters offers its redrive: {row}"
    );
    let empty = &page[page.find("data-lane=\"inbound\"").unwrap()..];
    let empty = &empty[..empty.find("</tr>").unwrap()];
    assert!(
        empty.contains("<td class=\"depth\">0</td>") && empty.contains("disabled"),
        "an empty queue offers none: {empty}"
    );
    assert!(page.contains("No reconciliation has run yet."));
    assert_eq!(
        queue_depth(&app, "OutboundDeadLetterQueue").await,
        5,
        "looking moves nothing"
    );

    for n in 5..25 {
        letter(n, "later").send().await.unwrap();
    }
    let csrf = operator.csrf("/admin/queues").await;
    let fields = [("csrf", csrf.as_str()), ("lane", "outbound")];
    let (first, second) = tokio::join!(
        operator.post("/admin/queues/redrive", &fields),
        operator.post("/admin/queues/redrive", &fields)
    );
    let moved = |answer: &crm_sync_tests::dashboard::Answer| -> u64 {
        let location = answer.location.clone().expect("a redirect");
        let start = location.find("moved=").unwrap() + 6;
        location[start..].split('&').next().unwrap().parse().unwrap()
    };
    assert_eq!(moved(&first) + moved(&second), 25);
    let bodies = drain(&app.sqs, &app.stack.resources.queue("OutboundQueue").url).await;
    let distinct: HashSet<String> = bodies.iter().map(|body| body.to_string()).collect();
    assert_eq!((bodies.len(), distinct.len()), (25, 25), "each letter once");
    assert_eq!(queue_depth(&app, "OutboundDeadLetterQueue").await, 0);

    let again = operator.post("/admin/queues/redrive", &fields).await;
    assert_eq!(moved(&again), 0);
    let page = operator.get(&again.location.unwrap()).await.body;
    assert!(page.contains("Moved 0 messages from the outbound dead-letter queue"));
    let refused = operator
        .post(
            "/admin/queues/redrive",
            &[("csrf", csrf.as_str()), ("lane", "nope")],
        )
        .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn after_five_wrong_passwords_a_client_is_refused_even_the_right_one_until_the_window_ends() {
    const WINDOW_SECS: u64 = 5;
    let app = spawn_app_with(
        AppOptions::default().with_env("DASHBOARD_SIGN_IN_WINDOW_SECONDS", &WINDOW_SECS.to_string()),
    )
    .await;
    let url = app.stack.url();
    // Another machine, as the dashboard sees it: the local API's sourceIp is the TCP peer.
    let guesser_ip: IpAddr = "127.0.0.7".parse().unwrap();
    let mut guesser = DashboardClient::from_address(&url, guesser_ip);
    let window_ms = i64::try_from(WINDOW_SECS * 1000).unwrap();
    with_room_in_the_window(window_ms, window_ms - 1_000).await;
    for n in 1..=5 {
        let answer = guesser.sign_in(&format!("guess-{n}")).await;
        assert_eq!(
            answer.status,
            StatusCode::UNAUTHORIZED,
            "guess {n}: {}",
            answer.body
        );
        assert!(answer.body.contains("That password is not right."));
    }
    let refused = guesser.sign_in(DASHBOARD_PASSWORD).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS, "{}", refused.body);
    assert!(
        refused.body.contains("Too many failed sign-ins. Try again after"),
        "the page says when: {}",
        refused.body
    );
    let wait: u64 = refused
        .retry_after
        .as_deref()
        .expect("a Retry-After header")
        .parse()
        .unwrap();
    assert!((1..=WINDOW_SECS).contains(&wait), "Retry-After: {wait}");
    assert!(refused.set_cookie.is_none() && guesser.session_cookie().is_none());
    assert_eq!(guesser.get("/admin").await.status, StatusCode::SEE_OTHER);

    let mut colleague = DashboardClient::from_address(&url, "127.0.0.8".parse().unwrap());
    let answer = colleague.sign_in(DASHBOARD_PASSWORD).await;
    assert_eq!(
        answer.status,
        StatusCode::SEE_OTHER,
        "another client signs in: {}",
        answer.body
    );
    assert_eq!(colleague.get("/admin").await.status, StatusCode::OK);

    // Refused attempts are not counted: once the window ends, the right password works again.
    let back = eventually(3 * WINDOW_SECS, "sign-in to open again for the client", || {
        let url = url.clone();
        async move {
            let mut client = DashboardClient::from_address(&url, guesser_ip);
            let answer = client.sign_in(DASHBOARD_PASSWORD).await;
            if answer.status == StatusCode::TOO_MANY_REQUESTS {
                return None;
            }
            assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
            Some(client)
        }
    })
    .await;
    assert_eq!(back.get("/admin").await.status, StatusCode::OK);
}

#[tokio::test]
async fn past_the_limit_for_all_clients_together_even_a_new_client_with_the_right_password_is_refused() {
    let app = spawn_app_with(
        AppOptions::default()
            .with_env("DASHBOARD_SIGN_IN_FAILURES_ALL_CLIENTS", "3")
            .with_env("DASHBOARD_SIGN_IN_WINDOW_SECONDS", "60"),
    )
    .await;
    let url = app.stack.url();
    with_room_in_the_window(60_000, 10_000).await;
    for (n, ip) in ["127.0.0.11", "127.0.0.12", "127.0.0.13"].into_iter().enumerate() {
        let mut guesser = DashboardClient::from_address(&url, ip.parse().unwrap());
        let answer = guesser.sign_in(&format!("guess-{n}")).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{ip}: {}", answer.body);
    }
    let mut operator = DashboardClient::from_address(&url, "127.0.0.14".parse().unwrap());
    let refused = operator.sign_in(DASHBOARD_PASSWORD).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS, "{}", refused.body);
    assert!(operator.session_cookie().is_none());
}

#[tokio::test]
async fn a_session_cookie_copied_before_sign_out_opens_no_page_and_no_action_after_it() {
    let app = spawn_app().await;
    let url = app.stack.url();
    let operator = signed_in(&app).await;
    let copy = DashboardClient::new(&url).with_cookie(operator.session_cookie().unwrap());
    assert_eq!(
        copy.get("/admin").await.status,
        StatusCode::OK,
        "a copy works until sign-out"
    );
    let csrf = operator.csrf("/admin").await;
    assert_eq!(stored_sessions(&app).await.len(), 1);

    let out = operator.post("/admin/logout", &[("csrf", csrf.as_str())]).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER, "{}", out.body);
    assert_eq!(out.location.as_deref(), Some("/admin/login"));
    assert!(
        stored_sessions(&app).await.is_empty(),
        "sign-out deletes the session"
    );

    for client in [&operator, &copy] {
        for path in ["/admin", "/admin/queues", "/admin/record?object=contact&id=x"] {
            let answer = client.get(path).await;
            assert_eq!(answer.status, StatusCode::SEE_OTHER, "{path}");
            assert!(
                answer.location.as_deref().unwrap().starts_with("/admin/login"),
                "{path}: {:?}",
                answer.location
            );
        }
        for path in [
            "/admin/resync",
            "/admin/queues/redrive",
            "/admin/conflicts/dismiss",
            "/admin/logout",
        ] {
            let fields = [
                ("csrf", csrf.as_str()),
                ("lane", "outbound"),
                ("record", "contact/x"),
            ];
            let answer = client.post(path, &fields).await;
            assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{path}");
        }
    }
    assert_eq!(queue_depth(&app, "ResyncQueue").await, 0);
}

#[tokio::test]
async fn a_cookie_is_a_random_token_stored_as_a_digest_and_without_its_item_it_opens_nothing() {
    let app = spawn_app().await;
    let url = app.stack.url();
    let first = signed_in(&app).await;
    let second = signed_in(&app).await;
    let (one, two) = (cookie_value(&first), cookie_value(&second));
    assert_ne!(one, two, "the same password, two unrelated cookies");
    for cookie in [&one, &two] {
        // 32 random bytes in base64url: no expiry, no id, no signature to check a password against.
        assert_eq!(cookie.len(), 43, "{cookie}");
        assert!(
            cookie
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_'),
            "{cookie}"
        );
    }

    let mut stored = stored_sessions(&app).await;
    stored.sort();
    let mut expected = vec![session_pk(&storage_key(&one)), session_pk(&storage_key(&two))];
    expected.sort();
    assert_eq!(stored, expected, "the table holds a digest of each cookie");
    assert!(stored.iter().all(|pk| !pk.contains(&one) && !pk.contains(&two)));

    // The first session's item goes, behind the dashboard's back: its cookie opens nothing.
    app.dynamodb
        .delete_item()
        .table_name(app.stack.resources.table("DashboardTable"))
        .key("pk", AttributeValue::S(session_pk(&storage_key(&one))))
        .send()
        .await
        .unwrap();
    assert_eq!(first.get("/admin").await.status, StatusCode::SEE_OTHER);
    assert_eq!(second.get("/admin").await.status, StatusCode::OK);
    // Nor does a well-formed token the dashboard never issued.
    let made_up = DashboardClient::new(&url).with_cookie(&format!("crm_sync_session={}", "A".repeat(43)));
    assert_eq!(made_up.get("/admin").await.status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn an_over_long_search_or_record_id_is_answered_without_touching_dynamodb_limits() {
    let app = spawn_app().await;
    let operator = signed_in(&app).await;
    let at_limit = "r".repeat(256);
    let past = "r".repeat(3000);
    // A link's id holds both its records': up to 1,024 bytes.
    let link = |bytes: usize| format!("contact:{}%7Ccompany:a", "r".repeat(bytes - 18));

    for (path, expected) in [
        (format!("/admin?q={at_limit}"), StatusCode::OK),
        (format!("/admin?q={past}"), StatusCode::OK),
        (format!("/admin?q={past}%40example.com"), StatusCode::OK),
        (
            format!("/admin/record?object=contact&id={at_limit}"),
            StatusCode::NOT_FOUND,
        ),
        (
            format!("/admin/record?object=contact&id={past}"),
            StatusCode::BAD_REQUEST,
        ),
        (
            format!("/admin/record?object=link&id={}", link(1024)),
            StatusCode::NOT_FOUND,
        ),
        (
            format!("/admin/record?object=link&id={}", link(1025)),
            StatusCode::BAD_REQUEST,
        ),
        (format!("/admin?q={}", link(1024)), StatusCode::OK),
        (format!("/admin?q={}", link(1025)), StatusCode::OK),
    ] {
        let answer = operator.get(&path).await;
        assert_eq!(answer.status, expected, "{}: {}", &path[..40], answer.body);
    }
}

#[tokio::test]
async fn an_operator_sees_each_adoption_backfills_phase_and_progress_on_the_queues_page() {
    use crm_sync::domain::adoption::{BackfillPhase, BackfillProgress, PlanCounts};
    use crm_sync::ports::AdoptionStore;
    let app = spawn_app().await;
    let operator = signed_in(&app).await;
    assert!(operator
        .get("/admin/queues")
        .await
        .body
        .contains("No backfill has run."));

    let counts = PlanCounts {
        records: 210,
        create: 150,
        update: 30,
        link: 20,
        conflict: 10,
        ..PlanCounts::default()
    };
    let mut progress = BackfillProgress::new("plan-20261202T020352-102", &counts, now_ms() - 60_000);
    progress.phase = BackfillPhase::Writes;
    progress.sent = 120;
    progress.linked = 19;
    progress.refused = vec!["contact/u-7".into()];
    progress.stopped = Some("the CRM's budget is spent <soon>".into());
    progress.run_token = "a-run".into();
    assert!(app
        .sync_state()
        .save_backfill(&progress, now_ms(), now_ms())
        .await
        .unwrap());

    let page = operator.get("/admin/queues").await.body;
    let row = &page[page
        .find("data-plan=\"plan-20261202T020352-102\"")
        .expect("the backfill's row")..];
    let row = &row[..row.find("</tr>").unwrap()];
    assert!(row.contains("writes"), "{row}");
    assert!(row.contains("120 of 200"), "sent of the records to write: {row}");
    assert!(row.contains("10 conflicts, 1 links refused"), "{row}");
    assert!(row.contains("&lt;soon&gt;"), "the reason is escaped: {row}");
}

#[tokio::test]
async fn an_operator_reads_a_plans_decisions_cost_conflicts_and_field_changes_on_its_page() {
    use crm_sync::domain::adoption::{
        cost, Action, BackfillPhase, BackfillProgress, Budget, FieldChange, PlanCounts, PlanItem, PlanSummary,
    };
    use crm_sync::domain::contract::ObjectKind;
    use crm_sync::ports::AdoptionStore;
    let app = spawn_app().await;
    let operator = signed_in(&app).await;
    assert!(operator
        .get("/admin/queues")
        .await
        .body
        .contains("No plan has been made."));

    let counts = PlanCounts {
        records: 1_000,
        create: 700,
        update: 150,
        unchanged: 50,
        link: 90,
        conflict: 10,
        crm_owned_records: 290,
        ..PlanCounts::default()
    };
    let budget = Budget {
        batch: 100,
        daily_limit: 625_000,
        daily_reserve: 25_000,
        live_reserve: 60_000,
        left_today: None,
        calls_per_second: 18.4,
    };
    let item = |record_id: &str, action: Action| PlanItem {
        line: 1,
        plan_line: 0,
        object: ObjectKind::Contact,
        record_id: record_id.into(),
        action,
        crm_owned: Default::default(),
        message: String::new(),
    };
    let plan_id = "plan-20261202T050000-001";
    let mut summary = PlanSummary {
        plan_id: plan_id.into(),
        input: "users.jsonl".into(),
        crm: "hubspot".into(),
        planned_at: "2026-12-02T05:00:00Z".into(),
        cost: cost(&counts, &budget),
        counts,
        budget,
        examples: Vec::new(),
    };
    summary.take_examples(
        [
            item(
                "u-1",
                Action::Conflict {
                    reason: "<b>two</b> app records share ada@example.com".into(),
                    crm_ids: vec!["901".into()],
                },
            ),
            item(
                "u-2",
                Action::Update {
                    crm_id: "902".into(),
                    fields: vec![FieldChange {
                        field: "last_name".into(),
                        crm_property: "lastname".into(),
                        in_crm: "Byron".into(),
                        app: "Lovelace".into(),
                    }],
                },
            ),
        ]
        .into_iter(),
    );
    app.sync_state().save_plan(&summary).await.unwrap();

    let queues = operator.get("/admin/queues").await.body;
    let row = &queues[queues
        .find(&format!("data-plan=\"{plan_id}\""))
        .expect("the plan's row")..];
    let row = &row[..row.find("</tr>").unwrap()];
    assert!(row.contains(&format!("/admin/adoption?plan={plan_id}")), "{row}");
    assert!(
        row.contains("<td>700</td>") && row.contains("not started"),
        "{row}"
    );

    let page = operator.get(&format!("/admin/adoption?plan={plan_id}")).await;
    assert_eq!(page.status, StatusCode::OK);
    let body = page.body;
    let decision = |action: &str| {
        let row = &body[body.find(&format!("data-action=\"{action}\"")).expect(action)..];
        row[..row.find("</tr>").unwrap()].to_string()
    };
    assert!(decision("link").contains("<td>90</td>"), "{}", decision("link"));
    assert!(decision("conflict").contains("<td>10</td>"));
    // 2 x 90 links / 100 + 990 writes / 100 + 290 pulls / 100 = 2 + 10 + 3 calls.
    assert!(
        body.contains("15 (2 for links, 10 writes, 3 pull reads)"),
        "{body}"
    );
    assert!(
        body.contains("&lt;b&gt;two&lt;/b&gt; app records share"),
        "the reason is escaped"
    );
    assert!(
        body.contains("Byron") && body.contains("Lovelace"),
        "field by field"
    );
    assert!(body.contains("Not started."));

    let mut progress = BackfillProgress::new(plan_id, &summary.counts, now_ms());
    progress.phase = BackfillPhase::Pull;
    progress.run_token = "a-run".into();
    app.sync_state()
        .save_backfill(&progress, now_ms(), 0)
        .await
        .unwrap();
    let body = operator
        .get(&format!("/admin/adoption?plan={plan_id}"))
        .await
        .body;
    assert!(
        !body.contains("Not started.") && body.contains("pull"),
        "the backfill's progress"
    );

    for (path, status) in [
        (
            "/admin/adoption?plan=plan-none".to_string(),
            StatusCode::NOT_FOUND,
        ),
        ("/admin/adoption".to_string(), StatusCode::BAD_REQUEST),
        // 256 bytes is looked up; one past it, and past DynamoDB's key size, is no plan, not an
        // error (moto does not enforce the key size: this shows the answer, not the guard).
        (
            format!("/admin/adoption?plan={}", "p".repeat(256)),
            StatusCode::NOT_FOUND,
        ),
        (
            format!("/admin/adoption?plan={}", "p".repeat(257)),
            StatusCode::NOT_FOUND,
        ),
        (
            format!("/admin/adoption?plan={}", "p".repeat(2_000)),
            StatusCode::NOT_FOUND,
        ),
    ] {
        let shown: String = path.chars().take(40).collect();
        assert_eq!(operator.get(&path).await.status, status, "{shown}");
    }
}

#[tokio::test]
async fn an_operator_finds_and_opens_a_record_of_an_object_type_the_mapping_declares() {
    // The built-in mapping declares [company]; the dashboard reads it at cold start.
    let app = spawn_app_with(AppOptions::syncing().with_env("HUBSPOT_PORTAL_ID", "62515")).await;
    let venue = RecordRef {
        object: ObjectKind::declare("company").unwrap(),
        record_id: "hall-9".into(),
    };
    app.send_changes(&[
        json!({"version": 2, "type": "object.upsert", "object_type": "company",
                               "record_id": "hall-9", "idempotency_id": "hall-9-1", "changed_at": now_ms(),
                               "data": {"name": "Great Hall"}}),
    ])
    .await;
    let (state, _) = app.settled(venue, SyncStatus::Synced).await;
    let crm_id = state.crm_id.expect("written");
    let operator = signed_in(&app).await;

    let page = operator.get("/admin/record?object=company&id=hall-9").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(
        page.body
            .contains(&format!("/contacts/62515/record/0-2/{crm_id}")),
        "a link to the company in HubSpot: {}",
        page.body
    );
    assert!(
        page.body.contains("hall-9") && page.body.contains(&crm_id),
        "{}",
        page.body
    );
    for query in ["hall-9", crm_id.as_str()] {
        let found = operator.get(&format!("/admin?q={query}")).await.body;
        assert!(
            found.contains("/admin/record?object=company&amp;id=hall-9")
                || found.contains("/admin/record?object=company&id=hall-9"),
            "searching {query}: {found}"
        );
    }

    // The synced listing, narrowed to one type.
    app.send_changes(&[contact(
        "guest-1",
        now_ms(),
        json!({"email": "guest-1@example.com"}),
    )])
    .await;
    app.settled(contact_ref("guest-1"), SyncStatus::Synced).await;
    let all = operator.get("/admin?filter=synced").await.body;
    assert!(
        all.contains("company/hall-9") && all.contains("contact/guest-1"),
        "{all}"
    );
    // People, not ids: each row leads with its display fields (the mapping's `display`).
    assert!(all.contains(">Great Hall</a>"), "{all}");
    assert!(all.contains(">guest-1@example.com</a>"), "{all}");
    assert!(
        all.contains("filter=synced&amp;type=company"),
        "a link per type: {all}"
    );
    let companies = operator.get("/admin?filter=synced&type=company").await.body;
    assert!(companies.contains("company/hall-9"), "{companies}");
    assert!(!companies.contains("contact/guest-1"), "{companies}");
    let contacts = operator.get("/admin?filter=synced&type=contact").await.body;
    assert!(contacts.contains("contact/guest-1") && !contacts.contains("company/hall-9"));
    let unknown = operator.get("/admin?filter=synced&type=spaceship").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
}

/// The row of the causes table for a cause key.
fn cause_row<'a>(page: &'a str, key: &str) -> Option<&'a str> {
    let start = page.find(&format!("data-cause=\"{key}\""))?;
    let end = start + page[start..].find("</tr>")?;
    Some(&page[start..end])
}

/// Removes the CRM's phone property and sends three contacts with a phone (`{prefix}-1` to
/// `-3`), which the CRM will refuse; returns their ids.
async fn refused_for_their_phone(app: &TestApp, prefix: &str) -> Vec<String> {
    app.sandbox().remove_property("contacts", "phone");
    let ids: Vec<String> = (1..=3).map(|i| format!("{prefix}-{i}")).collect();
    let changes: Vec<serde_json::Value> = ids
        .iter()
        .map(|id| {
            let data = json!({"email": format!("{id}@example.com"), "phone": "+1 555 0100"});
            contact(id, now_ms(), data)
        })
        .collect();
    app.send_changes(&changes).await;
    ids
}

#[tokio::test]
async fn failures_are_grouped_by_cause_with_their_fix_and_one_click_re_syncs_a_cause() {
    let app = spawn_app_with(AppOptions::syncing()).await;
    // An admin removed the phone property; two records carry an email HubSpot refuses.
    let phones = refused_for_their_phone(&app, "cause-phone").await;
    let at = now_ms();
    let emails: Vec<String> = (1..=2).map(|i| format!("cause-email-{i}")).collect();
    let changes: Vec<serde_json::Value> = emails
        .iter()
        .map(|id| contact(id, at, json!({"email": format!("{id}-at-nowhere")})))
        .collect();
    app.send_changes(&changes).await;
    for id in phones.iter().chain(&emails) {
        app.settled(contact_ref(id), SyncStatus::Failed).await;
    }

    let operator = signed_in(&app).await;
    let home = operator.get("/admin").await.body;
    let missing = cause_row(&home, "PROPERTY_DOESNT_EXIST/phone").expect("the missing property is a cause");
    assert!(missing.contains("3 records"), "{missing}");
    assert!(missing.contains("Create it in the CRM"), "{missing}");
    assert!(missing.contains("Re-sync 3"), "{missing}");
    let refused = cause_row(&home, "INVALID_EMAIL/email").expect("the refused email is a cause");
    assert!(refused.contains("2 records"), "{refused}");
    assert!(refused.contains("Correct it in the app"), "{refused}");
    assert!(refused.contains("A re-sync alone cannot fix these."), "{refused}");
    assert_eq!(
        home.matches("data-cause=").count(),
        2,
        "five failures, two causes"
    );

    let listed = operator
        .get("/admin?filter=failed&cause=PROPERTY_DOESNT_EXIST%2Fphone")
        .await
        .body;
    for id in &phones {
        assert!(listed.contains(&format!("contact/{id}")), "{id} listed");
    }
    assert!(!listed.contains("cause-email-"), "only the cause's records");

    app.sandbox().add_property("contacts", "phone");
    let csrf = operator.csrf("/admin").await;
    let answer = operator
        .post(
            "/admin/failures/resync",
            &[
                ("csrf", csrf.as_str()),
                ("cause", "PROPERTY_DOESNT_EXIST/phone"),
                ("back", "/admin"),
            ],
        )
        .await;
    assert_eq!(
        answer.location.as_deref(),
        Some("/admin?done=resync&queued=3&skipped=0&more=0")
    );
    for id in &phones {
        app.settled(contact_ref(id), SyncStatus::Synced).await;
    }
    let store = app.sync_state();
    for id in &emails {
        let (state, _) = store.record(&contact_ref(id), 1).await.unwrap().unwrap();
        assert_eq!(
            state.status,
            SyncStatus::Failed,
            "{id}: another cause, not re-synced"
        );
    }
    let home = operator.get("/admin").await.body;
    assert!(cause_row(&home, "PROPERTY_DOESNT_EXIST/phone").is_none(), "fixed");
    assert!(cause_row(&home, "INVALID_EMAIL/email").is_some());
}

#[tokio::test]
async fn a_record_page_follows_a_queued_re_sync_until_it_has_an_outcome_without_any_script() {
    let app = spawn_app().await;
    // No sync function runs here, so the re-sync waits in its queue.
    let _ = taken_in_not_written(&app, "live-1").await;
    let store = app.sync_state();
    let operator = signed_in(&app).await;
    let path = "/admin/record?object=contact&id=live-1";
    let before = operator.get(path).await.body;
    assert!(
        !before.contains("http-equiv=\"refresh\""),
        "nothing to follow yet"
    );

    let csrf = operator.csrf(path).await;
    let answer = operator
        .post(
            "/admin/resync",
            &[
                ("csrf", csrf.as_str()),
                ("record", "contact/live-1"),
                ("back", path),
            ],
        )
        .await;
    let page = operator.get(&answer.location.unwrap()).await;
    assert!(page.body.contains("id=\"live-status\""), "queued, at once");
    assert!(
        page.body
            .contains("http-equiv=\"refresh\" content=\"2; url=/admin/record?object=contact&amp;id=live-1\""),
        "the page reloads itself, without the notice: {}",
        page.body
    );
    assert!(!page.body.contains("<script"), "no script");
    let stopped = operator.get(&format!("{path}&follow=0")).await.body;
    assert!(stopped.contains("id=\"live-status\""));
    assert!(
        !stopped.contains("http-equiv=\"refresh\""),
        "following can be stopped"
    );

    // The sync takes the record up: the timeline line comes first, the state after it. While
    // the state says the attempt is being written, the page keeps following.
    let body = contact("live-1", now_ms(), json!({"email": "live-1b@example.com"})).to_string();
    let taken = parse_change(&body).unwrap();
    assert!(matches!(
        store
            .claim(
                &taken,
                &body,
                &Default::default(),
                "t2",
                now_ms(),
                now_ms() + 60_000
            )
            .await
            .unwrap(),
        crm_sync::ports::RecordClaim::Claimed(_)
    ));
    store
        .append_timeline(&[crm_sync::domain::sync::TimelineEntry {
            record: contact_ref("live-1"),
            at_ms: now_ms(),
            kind: TimelineKind::Synced,
            idempotency_id: Some(taken.idempotency_id.clone()),
            detail: "created CRM record 1".into(),
            call: None,
        }])
        .await
        .unwrap();
    let writing = operator.get(path).await.body;
    assert!(writing.contains("http-equiv=\"refresh\""), "still being written");
    store
        .settle(
            &contact_ref("live-1"),
            "t2",
            now_ms(),
            &crm_sync::ports::Settlement::Applied {
                crm_id: Some("1".into()),
                version_ms: taken.changed_at_ms,
                idempotency_id: taken.idempotency_id.clone(),
                written: Default::default(),
                recent_writes: Default::default(),
                status: SyncStatus::Synced,
                previous_crm_ids: None,
                conflicts: None,
            },
        )
        .await
        .unwrap();
    let settled = operator.get(path).await.body;
    assert!(!settled.contains("id=\"live-status\""), "no longer queued");
    assert!(!settled.contains("http-equiv=\"refresh\""), "no longer followed");
}

/// The element whose `id` is `id`, up to its closing tag (`section`, `p` or `svg`), tags and all.
fn element<'a>(page: &'a str, id: &str) -> &'a str {
    let start = page
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} on the page"));
    let tag_start = page[..start].rfind('<').unwrap() + 1;
    let tag: String = page[tag_start..]
        .chars()
        .take_while(char::is_ascii_alphabetic)
        .collect();
    let end = start + page[start..].find(&format!("</{tag}>")).unwrap();
    &page[start..end]
}

#[tokio::test]
async fn the_landing_page_says_whether_sync_is_healthy_and_the_health_page_charts_it() {
    let app = spawn_app_with(AppOptions::syncing()).await;
    app.sandbox().remove_property("contacts", "phone");
    let at = now_ms();
    app.send_changes(&[
        contact("health-1", at, json!({"email": "health-1@example.com"})),
        contact("health-2", at, json!({"email": "health-2@example.com"})),
        contact(
            "health-3",
            at,
            json!({"email": "health-3@example.com", "phone": "+1 555 0100"}),
        ),
    ])
    .await;
    app.settled(contact_ref("health-1"), SyncStatus::Synced).await;
    app.settled(contact_ref("health-2"), SyncStatus::Synced).await;
    app.settled(contact_ref("health-3"), SyncStatus::Failed).await;

    let operator = signed_in(&app).await;
    let home = eventually(
        30,
        "the failure and the syncs counted, the failure dead-lettered",
        || async {
            let home = operator.get("/admin").await.body;
            (home.contains("1 change(s) failed in the last two hours (1 in 24 h), 2 synced")
                && home.contains("1 message(s) in dead-letter queues"))
            .then_some(home)
        },
    )
    .await;
    let health = element(&home, "health");
    assert!(health.contains("Sync needs attention"), "{health}");
    assert!(
        health.contains("<strong>Warning: </strong><a href=\"/admin?filter=failed\">"),
        "a failure among syncs is a warning, linked to its causes: {health}"
    );
    assert!(health.contains("no reconciliation has run yet"), "{health}");
    assert!(health.contains("Last successful sync: <time"), "{health}");
    assert!(
        health.contains("Longest wait of a change: <span class=\"muted\">none waiting"),
        "{health}"
    );

    // A change taken in twenty minutes ago and never written (its retries keep it waiting).
    let body = contact(
        "health-wait",
        now_ms(),
        json!({"email": "health-wait@example.com"}),
    )
    .to_string();
    let twenty_minutes_ago = now_ms() - 20 * 60_000;
    app.sync_state()
        .claim(
            &parse_change(&body).unwrap(),
            &body,
            &Default::default(),
            "t",
            twenty_minutes_ago,
            twenty_minutes_ago,
        )
        .await
        .unwrap();
    // Retried since: the retry and the next try do not make the wait look new.
    app.sync_state()
        .settle(
            &contact_ref("health-wait"),
            "t",
            twenty_minutes_ago,
            &crm_sync::ports::Settlement::Failed {
                error: "503".into(),
                status: SyncStatus::Pending,
                retryable: true,
                recent_writes: Default::default(),
            },
        )
        .await
        .unwrap();
    let body = contact(
        "health-wait",
        now_ms(),
        json!({"email": "health-wait@example.com"}),
    )
    .to_string();
    app.sync_state()
        .claim(
            &parse_change(&body).unwrap(),
            &body,
            &Default::default(),
            "t2",
            now_ms(),
            now_ms(),
        )
        .await
        .unwrap();
    let health = operator.get("/admin").await.body;
    let health = element(&health, "health");
    assert!(
        health.contains("Warning: </strong><a href=\"/admin?filter=pending\">a change has waited 20 min"),
        "{health}"
    );

    let page = operator.get("/admin/health").await.body;
    assert!(
        page.contains("2 changes synced and 1 failed in the last 168 hours"),
        "the chart's numbers: {}",
        element(&page, "hours-chart")
    );
    assert_eq!(
        page.matches("class=\"failed\"").count(),
        1,
        "one hour with a failure bar"
    );
    let budget = element(&page, "budget-facts");
    let used: u64 = budget
        .split('>')
        .nth(1)
        .and_then(|text| text.split(' ').next())
        .map(|n| n.replace(',', "").parse().unwrap())
        .unwrap();
    assert!(
        used >= 1,
        "the sync's calls are spent from today's budget: {budget}"
    );
    assert!(budget.contains(" of 625,000 calls used today"), "{budget}");
    assert!(!page.contains("<script"), "drawn on the server");

    // A healthy stack: syncs, a reconciliation, nothing failed.
    let calm = spawn_app_with(AppOptions::syncing()).await;
    calm.send_changes(&[contact(
        "calm-1",
        now_ms(),
        json!({"email": "calm-1@example.com"}),
    )])
    .await;
    calm.settled(contact_ref("calm-1"), SyncStatus::Synced).await;
    calm.reconcile().await;
    let home = signed_in(&calm).await.get("/admin").await.body;
    let health = element(&home, "health");
    assert!(health.contains("Sync is healthy"), "{health}");
    assert!(!health.contains("<li data-level"), "{health}");

    // A stack whose sync function does not run: the app's changes pile up on the queue.
    let stalled = spawn_app().await;
    stalled
        .send_changes(&[contact(
            "stuck-1",
            now_ms(),
            json!({"email": "stuck-1@example.com"}),
        )])
        .await;
    let home = signed_in(&stalled).await.get("/admin").await.body;
    let health = element(&home, "health");
    assert!(
        health.contains("Problem: </strong><a href=\"/admin/health\">1 change(s) wait on the outbound queue"),
        "{health}"
    );
}

#[tokio::test]
async fn the_days_budget_is_read_as_the_limiter_keeps_it_in_the_crms_own_unit() {
    use crm_sync::adapters::dynamodb::{DynamoDbRateLimiter, LimiterSettings};
    use crm_sync::ports::BudgetReader;
    let app = spawn_app().await;
    let table = app.stack.resources.table("RateLimitTable").to_string();
    // Pipedrive's budget is in tokens, 40 a call; its company budget exceeds the configured one.
    let settings = LimiterSettings {
        daily_limit: 30_000,
        daily_reserve: 1_500,
        live_reserve: 3_000,
        daily_cost_per_call: 40,
        ..LimiterSettings::default()
    };
    let limiter =
        DynamoDbRateLimiter::new(app.dynamodb.clone(), table.clone(), "pipedrive", settings.clone());
    let now = now_ms();
    let fresh = limiter.today(now).await.unwrap();
    assert_eq!(
        (fresh.used, fresh.limit, fresh.unit),
        (0, 30_000, "tokens"),
        "no day started yet"
    );

    let put = |day: i64, left: u64, max: Option<u64>| {
        let mut item = app
            .dynamodb
            .put_item()
            .table_name(&table)
            .item("pk", AttributeValue::S("pipedrive".into()))
            .item("day", AttributeValue::N(day.to_string()))
            .item("day_left", AttributeValue::N(left.to_string()));
        if let Some(max) = max {
            item = item.item("day_max", AttributeValue::N(max.to_string()));
        }
        item.send()
    };
    let today = settings.day_of(now);
    put(today, 100_000, Some(150_000)).await.unwrap();
    let budget = limiter.today(now).await.unwrap();
    assert_eq!(
        (budget.used, budget.limit),
        (50_000, 150_000),
        "the CRM's own maximum"
    );
    assert_eq!(
        budget.live_stop(),
        150_000 - 1_500 - 40,
        "the reserve and one call's cost"
    );
    put(today, 100_000, None).await.unwrap();
    assert_eq!(
        limiter.today(now).await.unwrap().limit,
        100_000,
        "a count left above the configured budget shows the budget is larger"
    );
    put(today - 1, 10, Some(150_000)).await.unwrap();
    assert_eq!(
        limiter.today(now).await.unwrap().used,
        0,
        "yesterday's spend is not today's"
    );
}

#[tokio::test]
async fn every_dead_letter_is_listed_with_its_reason_linked_searchable_paged_and_marked_once_fixed() {
    let app = spawn_app_with(AppOptions::syncing()).await;
    // An admin removed the phone property; one message breaks the contract (it has no record).
    let people = refused_for_their_phone(&app, "letter").await;
    app.send_changes(&[json!({"version": 1, "type": "contact.upsert", "note": "needle-42"})])
        .await;
    for id in &people {
        app.settled(contact_ref(id), SyncStatus::Failed).await;
    }
    let operator = signed_in(&app).await;
    let page = eventually(30, "four letters listed", || async {
        let page = operator.get("/admin/queues/letters?lane=outbound").await.body;
        (page.matches("data-letter=").count() == 4).then_some(page)
    })
    .await;
    for id in &people {
        assert!(
            page.contains(&format!(
                "href=\"/admin/record?object=contact&amp;id={id}\">{id}@example.com</a>"
            )),
            "{id} links to its record, by name"
        );
    }
    assert_eq!(
        page.matches("PROPERTY_DOESNT_EXIST").count(),
        3,
        "each with its reason"
    );
    assert_eq!(
        page.matches("<span class=\"badge s-failed\">waiting</span>")
            .count(),
        4
    );
    let queues = operator.get("/admin/queues").await.body;
    assert!(
        queues.contains("href=\"/admin/queues/letters?lane=outbound\""),
        "linked from the Queues page"
    );

    // The message with no record is found by any text of it.
    let found = operator
        .get("/admin/queues/letters?lane=outbound&q=NEEDLE-42")
        .await
        .body;
    assert_eq!(found.matches("data-letter=").count(), 1, "{found}");
    assert!(found.contains("invalid message"), "with its reason");
    assert!(found.contains("no record"), "and said to have no record");
    let none = operator
        .get("/admin/queues/letters?lane=outbound&q=nothing-like-this")
        .await
        .body;
    assert!(none.contains("No dead letter matches."));
    let bad = operator
        .get("/admin/queues/letters?lane=outbound&cursor=not-a-key")
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let unknown = operator.get("/admin/queues/letters?lane=nope").await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);

    // Paged: two at a time, every letter once, newest first.
    let journal = crm_sync::adapters::dynamodb::DynamoDbDeadLetterJournal::new(
        app.dynamodb.clone(),
        app.stack.resources.table("SyncStateTable"),
    );
    use crm_sync::ports::DeadLetterJournal;
    let (first, next) = journal.letters("outbound", None, 2, None).await.unwrap();
    let (second, last) = journal.letters("outbound", None, 2, next.clone()).await.unwrap();
    assert_eq!((first.len(), second.len()), (2, 2));
    assert!(next.is_some());
    let keys: HashSet<String> = first.iter().chain(&second).map(|l| l.key.clone()).collect();
    assert_eq!(keys.len(), 4, "no letter twice");
    assert!(
        first[0].key >= first[1].key && first[1].key >= second[0].key,
        "newest first"
    );
    if let Some(last) = last {
        assert!(journal
            .letters("outbound", None, 2, Some(last))
            .await
            .unwrap()
            .0
            .is_empty());
    }
    // A search pages too: one match a page, each once, none skipped.
    let mut found = Vec::new();
    let mut cursor = None;
    loop {
        let (page, next) = journal
            .letters("outbound", Some("property_doesnt_exist"), 1, cursor)
            .await
            .unwrap();
        found.extend(page.into_iter().map(|letter| letter.key));
        match next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(found.len(), 3, "{found:?}");
    assert_eq!(
        found.iter().collect::<HashSet<_>>().len(),
        3,
        "each once: {found:?}"
    );

    // Fixed in the CRM, redriven: the records sync, and their letters say so.
    app.sandbox().add_property("contacts", "phone");
    let csrf = operator.csrf("/admin/queues").await;
    let answer = operator
        .post(
            "/admin/queues/redrive",
            &[("csrf", csrf.as_str()), ("lane", "outbound")],
        )
        .await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER);
    for id in &people {
        app.settled(contact_ref(id), SyncStatus::Synced).await;
    }
    let page = operator.get("/admin/queues/letters?lane=outbound").await.body;
    assert_eq!(
        page.matches("<span class=\"badge s-synced\">fixed</span>")
            .count(),
        3,
        "{page}"
    );
    assert!(
        page.contains("<span class=\"badge s-pending\">redriven</span>"),
        "the broken message was moved back (and dead-lettered again, as a new letter)"
    );
    assert!(
        page.contains(" by shared password"),
        "the letter names who redrove it"
    );
    app.timeline_says(contact_ref(&people[0]), "dead letter redriven by shared password")
        .await;

    // A privacy erasure forgets the record's letters with its history.
    app.sync_state().forget(&contact_ref("letter-1")).await.unwrap();
    let (left, _) = journal.letters("outbound", None, 50, None).await.unwrap();
    assert!(
        left.iter()
            .all(|letter| letter.record != Some(contact_ref("letter-1"))),
        "{left:?}"
    );
    assert!(left
        .iter()
        .any(|letter| letter.record == Some(contact_ref("letter-2"))));
}

#[tokio::test]
async fn the_dashboards_newer_inputs_are_taken_at_their_limits_and_refused_past_them() {
    let app = spawn_app().await;
    let operator = signed_in(&app).await;
    // A search: 200 characters are searched, more are cut (never a DynamoDB error).
    // (A URL longer than API Gateway's 10 KB never reaches the function.)
    for length in [200, 201, 1_000] {
        let q = "é".repeat(length);
        let answer = operator
            .get(&format!(
                "/admin/queues/letters?lane=outbound&q={}",
                crm_sync::dashboard::html::url_part(&q)
            ))
            .await;
        assert_eq!(answer.status, StatusCode::OK, "a {length}-character search");
    }
    // A cursor: a letter's key of at most 400 bytes; anything else is 400.
    let at_limit = format!("{:013}#{}", 1, "m".repeat(400 - 14));
    let past_it = format!("{:013}#{}", 1, "m".repeat(401 - 14));
    for (cursor, status) in [
        (at_limit.as_str(), StatusCode::OK),
        (past_it.as_str(), StatusCode::BAD_REQUEST),
        ("123#x", StatusCode::BAD_REQUEST),
        ("abcdefghijklm#x", StatusCode::BAD_REQUEST),
    ] {
        let answer = operator
            .get(&format!(
                "/admin/queues/letters?lane=outbound&cursor={}",
                crm_sync::dashboard::html::url_part(cursor)
            ))
            .await;
        assert_eq!(answer.status, status, "cursor of {} bytes", cursor.len());
    }
    // A cause key is only compared: a huge or hostile one matches nothing and queues nothing.
    let csrf = operator.csrf("/admin").await;
    for cause in ["x".repeat(2_000), "<script>alert(1)</script>/\u{0}".to_string()] {
        let answer = operator
            .post(
                "/admin/failures/resync",
                &[
                    ("csrf", csrf.as_str()),
                    ("cause", cause.as_str()),
                    ("back", "/admin"),
                ],
            )
            .await;
        assert_eq!(
            answer.location.as_deref(),
            Some("/admin?done=resync&queued=0&skipped=0&more=0")
        );
        let page = operator
            .get(&format!(
                "/admin?filter=failed&cause={}",
                crm_sync::dashboard::html::url_part(&cause)
            ))
            .await;
        assert_eq!(page.status, StatusCode::OK);
        assert!(!page.body.contains("<script>alert"));
    }
    assert_eq!(queue_depth(&app, "ResyncQueue").await, 0);
    // Following a re-sync: any `follow` but 0 follows; a record page still reads.
    for follow in ["0", "1", "", "%00"] {
        let answer = operator
            .get(&format!("/admin/record?object=contact&id=nobody&follow={follow}"))
            .await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "follow={follow}");
    }
}
