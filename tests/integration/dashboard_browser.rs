//! The dashboard in a real browser (headless Chromium over WebDriver): an operator signs in,
//! finds a failed record and its cause's fix, reads the CRM's error, fixes the cause, clicks
//! Re-sync and watches the page follow the record from queued to synced; then a rep's edit of
//! the app-owned email opens a conflict that the app's next write resolves. With
//! `CRM_SYNC_SCREENSHOTS=<dir>` it also saves the README's screenshots.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crm_sync::domain::contract::{ObjectKind, RecordRef};
use crm_sync::domain::sync::SyncStatus;
use crm_sync_tests::app_changes::contact;
use crm_sync_tests::browser::Browser;
use crm_sync_tests::hubspot::now_ms;
use crm_sync_tests::{spawn_app_with, AppOptions, DASHBOARD_PASSWORD};
use serde_json::json;

/// Fails on any serious or critical accessibility violation axe-core finds on the page.
async fn accessible(browser: &Browser, axe: &str, page: &str) {
    let violations = browser
        .accessibility_violations(axe)
        .await
        .expect("axe-core runs in the page");
    assert!(
        violations.is_empty(),
        "{page}: {}",
        serde_json::to_string_pretty(&violations).unwrap()
    );
}

/// axe-core's script, installed with the Node packages.
fn axe_source() -> String {
    std::fs::read_to_string(
        crm_sync_tests::contract::node_suites()
            .expect("the Node packages install")
            .join("node_modules/axe-core/axe.min.js"),
    )
    .expect("axe-core is installed")
}

async fn save(browser: &Browser, name: &str) {
    let Some(dir) = std::env::var_os("CRM_SYNC_SCREENSHOTS").map(PathBuf::from) else {
        return;
    };
    std::fs::create_dir_all(&dir).unwrap();
    let png = browser.screenshot().await.unwrap();
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

#[tokio::test]
async fn an_operator_finds_a_failed_record_reads_its_error_and_re_syncs_it_after_the_fix() {
    let app = spawn_app_with(AppOptions::syncing().with_webhooks()).await;
    // An admin removed the phone property in the CRM: contacts with a phone are refused.
    app.sandbox().remove_property("contacts", "phone");
    let at = now_ms();
    app.send_changes(&[
        contact(
            "ada",
            at,
            json!({"email": "ada@example.com", "first_name": "Ada"}),
        ),
        contact(
            "grace",
            at,
            json!({"email": "grace@example.com", "phone": "+1 555 0100"}),
        ),
        contact(
            "linus",
            at,
            json!({"email": "linus@example.com", "first_name": "Linus"}),
        ),
    ])
    .await;
    let grace = RecordRef {
        object: ObjectKind::Contact,
        record_id: "grace".into(),
    };
    app.settled(grace.clone(), SyncStatus::Failed).await;

    let axe = axe_source();
    let browser = Browser::start().await.expect("headless Chromium starts");
    let base = app.stack.url();
    browser.goto(&format!("{base}/admin")).await.unwrap();
    assert!(
        browser.url().await.unwrap().contains("/admin/login"),
        "sign-in comes first"
    );
    accessible(&browser, &axe, "sign-in").await;
    save(&browser, "sign-in").await;
    browser
        .find("#password")
        .await
        .unwrap()
        .type_text(DASHBOARD_PASSWORD)
        .await
        .unwrap();
    browser
        .find("form.login button")
        .await
        .unwrap()
        .click_through()
        .await
        .unwrap();

    // The failed listing is the landing page; the counts are at the top.
    let failed_count = browser
        .find("[data-filter=failed]")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(failed_count, "1");
    // The person, not the id: a record that never synced is named by its waiting change.
    let named = browser
        .find("a[href*='id=grace']")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(named, "grace@example.com");
    // Failures lead with their cause and its fix.
    let cause = browser
        .find("tr[data-cause='PROPERTY_DOESNT_EXIST/phone']")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(cause.contains("1 record"), "{cause}");
    assert!(cause.contains("Create it in the CRM"), "{cause}");
    accessible(&browser, &axe, "records").await;
    save(&browser, "records").await;
    // The keyboard's first stop skips the navigation, and shows where it is.
    browser.press("\u{E004}").await.unwrap();
    let focused = browser
        .execute(
            "var e = document.activeElement; var s = getComputedStyle(e);
             return [e.textContent, s.outlineStyle, s.outlineWidth];",
            serde_json::json!([]),
        )
        .await
        .unwrap();
    assert_eq!(focused[0], "Skip to content");
    assert_ne!(focused[1], "none", "the focus is visible: {focused}");
    let unreachable = browser
        .execute(
            "return Array.from(document.querySelectorAll('a[href], button:not([disabled]), input:not([type=hidden]), summary'))
               .filter(function (e) { return e.tabIndex < 0; }).length;",
            serde_json::json!([]),
        )
        .await
        .unwrap();
    assert_eq!(unreachable, 0, "every control is reachable by the keyboard");
    browser
        .find("a[href*='id=grace']")
        .await
        .unwrap()
        .click_through()
        .await
        .unwrap();
    assert!(browser.title().await.unwrap().starts_with("contact/grace"));
    let error = browser.find("#last-error").await.unwrap().text().await.unwrap();
    assert!(error.starts_with("PROPERTY_DOESNT_EXIST"), "{error}");
    assert!(
        error.contains("phone"),
        "the CRM's own message names the property: {error}"
    );
    accessible(&browser, &axe, "record (failed)").await;
    save(&browser, "record-failed").await;

    app.sandbox().add_property("contacts", "phone");
    // The CRM answers slowly: the re-sync is seen queued before it settles.
    let calm = app.sandbox().faults();
    let mut slow = calm.clone();
    slow.latency_ms = 3_000;
    app.sandbox().set_faults(slow);
    browser
        .find("button[value=selected]")
        .await
        .unwrap()
        .click_through()
        .await
        .unwrap();
    let notice = browser.find(".notice").await.unwrap().text().await.unwrap();
    assert_eq!(notice, "Queued 1 record for re-sync.");
    let live = browser.find("#live-status").await.unwrap().text().await.unwrap();
    assert_eq!(live, "re-sync queued", "shown at once");
    save(&browser, "record-queued").await;

    // The page follows the record by itself: the test never reloads it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // A read may meet the page mid-reload: then it is read again.
        let status = match browser.find("h1 .badge").await {
            Ok(badge) => badge.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let queued = browser.find("#live-status").await.is_ok();
        if status == "synced" && !queued {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the page never showed the record synced by itself (last: {status})"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    app.sandbox().set_faults(calm);
    let crm = app
        .sandbox()
        .find("contacts", "crm_sync_app_id", "grace")
        .expect("the contact is in the CRM");
    assert_eq!(
        crm.properties.get("phone").map(String::as_str),
        Some("+1 555 0100")
    );
    let timeline = browser.find("#timeline").await.unwrap().text().await.unwrap();
    assert!(
        timeline.contains("re-sync requested from the dashboard"),
        "{timeline}"
    );
    accessible(&browser, &axe, "record (synced)").await;
    save(&browser, "record-synced").await;

    // A rep changes the app-owned email in the CRM: a conflict, open until the app's value is
    // written again, which resolves it.
    app.sandbox()
        .edit(
            "contacts",
            crm.id,
            [("email".to_string(), "grace.typo@example.com".to_string())].into(),
        )
        .unwrap();
    let record_url = format!("{base}/admin/record?object=contact&id=grace");
    let status_after = |wanted: &'static str| {
        let (browser, record_url) = (&browser, record_url.clone());
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                browser.goto(&record_url).await.unwrap();
                let status = match browser.find("td.conflict-status .badge").await {
                    Ok(badge) => badge.text().await.unwrap_or_default(),
                    Err(_) => String::new(),
                };
                if status == wanted {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "the conflict never showed {wanted} (last: {status:?})"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    status_after("open").await;
    accessible(&browser, &axe, "record (conflict open)").await;
    app.send_changes(&[contact(
        "grace",
        now_ms(),
        json!({"email": "grace@example.com", "phone": "+1 555 0100"}),
    )])
    .await;
    status_after("resolved").await;

    browser.goto(&format!("{base}/admin/health")).await.unwrap();
    let chart = browser.find("#hours-desc").await.unwrap().text().await;
    assert!(chart.is_ok(), "the chart describes itself");
    accessible(&browser, &axe, "health").await;
    save(&browser, "health").await;
    browser
        .goto(&format!("{base}/admin/queues/letters?lane=outbound"))
        .await
        .unwrap();
    let letter = browser
        .find("#letters tbody tr")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(letter.contains("PROPERTY_DOESNT_EXIST"), "{letter}");
    accessible(&browser, &axe, "dead letters").await;
    save(&browser, "dead-letters").await;

    // Tonight's reconciliation, as the schedule would start it.
    let report = app
        .stack
        .reconcile
        .run_until(tokio::time::Instant::now() + Duration::from_secs(60))
        .await
        .unwrap();
    browser.goto(&format!("{base}/admin/queues")).await.unwrap();
    let shown = browser
        .find("#reconcile-report")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(shown.contains(&report.run_id), "{shown}");
    assert!(
        shown.contains(&format!("Records checked\n{}", report.checked)),
        "{shown}"
    );
    let depth = browser
        .find("tr[data-lane=outbound] .depth")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        depth, "1",
        "the failed change's dead letter is still there until redriven"
    );
    accessible(&browser, &axe, "queues").await;
    save(&browser, "queues").await;

    browser.resize(390, 844).await.unwrap();
    browser
        .goto(&format!("{base}/admin?filter=synced"))
        .await
        .unwrap();
    assert_eq!(browser.find_all("tbody tr").await.unwrap().len(), 3);
    // Each row is a card: a cell takes the phone's whole width rather than a sliver of it.
    let cell = browser
        .find("tbody tr td[data-label=Status]")
        .await
        .unwrap()
        .width()
        .await
        .unwrap();
    assert!(cell > 300.0, "a card's cell is {cell} px wide on a 390 px screen");
    accessible(&browser, &axe, "records on a phone").await;
    save(&browser, "records-phone").await;

    // The test ends every process it started: Chromium too, not only chromedriver.
    let chromium = browser.chromium_processes();
    assert!(!chromium.is_empty(), "Chromium ran under its own profile");
    drop(browser);
    crm_sync_tests::eventually(20, "Chromium ended with the browser", || {
        let chromium = chromium.clone();
        async move {
            let alive: Vec<u32> = chromium
                .iter()
                .copied()
                .filter(|pid| {
                    std::path::Path::new(&format!("/proc/{pid}/cmdline")).exists()
                        && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
                })
                .collect();
            alive.is_empty().then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn an_operator_signs_in_through_the_identity_provider_and_every_page_names_them() {
    let provider = crm_sync_tests::oidc::OidcProvider::start();
    // `localhost`, not the dashboard's `127.0.0.1`: another site, as a real provider is, so the
    // browser applies its cross-site cookie rules to the way back.
    let issuer = provider.issuer.replace("127.0.0.1", "localhost");
    provider.add_operator("ada-sub-1", "ada@example.com").await;
    let app = spawn_app_with(provider.dashboard_options(&issuer, AppOptions::syncing())).await;
    let axe = axe_source();
    let browser = Browser::start().await.expect("headless Chromium starts");
    let base = app.stack.url();
    browser.goto(&format!("{base}/admin/health")).await.unwrap();
    assert!(browser.url().await.unwrap().contains("/admin/login"));
    accessible(&browser, &axe, "sign-in through a provider").await;
    save(&browser, "sign-in-provider").await;
    browser
        .find("a.button")
        .await
        .unwrap()
        .click_through()
        .await
        .unwrap();
    assert!(
        browser
            .url()
            .await
            .unwrap()
            .starts_with(&format!("{issuer}/oauth2/authorize")),
        "at the provider"
    );
    browser
        .find("input[name=sub]")
        .await
        .unwrap()
        .type_text("ada-sub-1")
        .await
        .unwrap();
    browser
        .find("form button[type=submit]")
        .await
        .unwrap()
        .click_through()
        .await
        .unwrap();
    // Back at the dashboard, on the page first asked for, signed in as Ada.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let url = browser.url().await.unwrap_or_default();
        let named = match browser.find(".operator").await {
            Ok(element) => element.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if url.ends_with("/admin/health") && named == "ada@example.com" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not signed in as Ada on the health page (at {url}, named {named:?})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    browser.goto(&format!("{base}/admin/queues")).await.unwrap();
    assert_eq!(
        browser.find(".operator").await.unwrap().text().await.unwrap(),
        "ada@example.com",
        "the session holds across pages"
    );
}
