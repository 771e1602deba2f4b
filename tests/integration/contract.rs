//! The sandboxes against the vendors' own client libraries: every call crm-sync makes, driven
//! through the official client, must come back as the client's typed models with the expected
//! values. Where a sandbox and the official client disagree, the sandbox is wrong.

use crm_sync_tests::contract;

#[tokio::test]
async fn hubspots_official_python_client_reads_every_answer_the_hubspot_sandbox_gives() {
    let python = contract::python().expect("the contract virtualenv installs");
    let sandbox = hubspot_sandbox::Sandbox::start("127.0.0.1:0", hubspot_sandbox::SandboxConfig::default())
        .await
        .expect("the sandbox starts");

    let run = contract::run(
        &python,
        "hubspot_contract.py",
        &[
            ("HUBSPOT_BASE_URL", sandbox.url()),
            ("HUBSPOT_TOKEN", sandbox.token()),
        ],
    )
    .await;

    assert!(run.passed, "{}\n\n{}", run.failures(), run.output);
    assert!(
        run.passes() >= 125,
        "every call is checked, on v3/v4 and 2026-03 paths:\n{}",
        run.output
    );
    assert!(!run.output.contains("SKIP"), "every check ran:\n{}", run.output);
    for check in ["PASS [v3] custom object", "PASS [v4] labelled associations"] {
        assert!(run.output.contains(check), "{check} ran:\n{}", run.output);
    }
}

#[tokio::test]
async fn pipedrives_official_node_client_reads_every_answer_and_takes_every_request_crm_sync_makes() {
    let suites = contract::node_suites().expect("the Node clients install");
    const TOKEN: &str = "contract-token";
    let sandbox =
        pipedrive_sandbox::Sandbox::start("127.0.0.1:0", TOKEN, pipedrive_sandbox::Limits::default())
            .await
            .expect("the sandbox starts");
    // crm-sync itself, syncing to the sandbox: the suite sends app changes and checks what
    // crm-sync wrote against the official request models.
    let app = crm_sync_tests::spawn_app_with(
        crm_sync_tests::AppOptions::syncing()
            .with_env("CRM", "pipedrive")
            .with_env("PIPEDRIVE_API_BASE", &sandbox.url())
            .with_env("PIPEDRIVE_API_TOKEN", TOKEN),
    )
    .await;
    let root = sandbox.url().trim_end_matches("/api/v2").to_string();

    let run = contract::run(
        std::path::Path::new("node"),
        "pipedrive_contract.mjs",
        &[
            ("PIPEDRIVE_BASE_URL", root),
            ("PIPEDRIVE_TOKEN", TOKEN.to_string()),
            (
                "CRM_SYNC_OUTBOUND_QUEUE_URL",
                app.stack.resources.queue("OutboundQueue").url.clone(),
            ),
        ],
    )
    .await;
    let _ = suites;

    assert!(run.passed, "{}\n\n{}", run.failures(), run.output);
    assert!(!run.output.contains("SKIP"), "every check ran:\n{}", run.output);
    assert!(
        run.output.contains("PASS persons.merge: 200"),
        "the merge is checked:\n{}",
        run.output
    );
    assert!(
        run.output
            .contains("PASS organizations.search finds the organization"),
        "organizations are checked:\n{}",
        run.output
    );
}

#[tokio::test]
async fn simple_salesforce_and_jsforce_read_every_answer_the_salesforce_sandbox_gives() {
    let python = contract::python().expect("the contract virtualenv installs");
    let suites = contract::node_suites().expect("the Node clients install");
    // A small day, so that the suite can spend it and see Salesforce's 403.
    let sandbox =
        salesforce_sandbox::Sandbox::start("127.0.0.1:0", "contract-access", "contract-refresh", 3_000)
            .await
            .expect("the sandbox starts");
    sandbox.require_client("crm-sync-contract", "crm-sync-contract-secret");
    // Merges a person made before the run, for the queryAll checks: two into one at once, then
    // that one into another; answered two records a page, so that the client pages.
    let now_ms = crm_sync::domain::Clock::now_ms(&crm_sync::domain::SystemClock);
    let since = format!("{}Z", &crm_sync::domain::clock::rfc3339(now_ms - 5_000)[..19]);
    let person =
        |n: u32| sandbox.create_as_person("Contact", serde_json::json!({"LastName": format!("Merged {n}")}));
    let [a, b, c, d] = [person(1), person(2), person(3), person(4)];
    sandbox.merge("Contact", &a, &[&b, &c]).expect("a merge");
    sandbox.merge("Contact", &d, &[&a]).expect("a merge");
    sandbox.set_query_batch_size(2);
    let merged = format!("{b}:{a},{c}:{a},{a}:{d}");
    let env = [
        ("SALESFORCE_MERGED", merged),
        ("SALESFORCE_MERGES_SINCE", since),
        ("SALESFORCE_BASE_URL", sandbox.instance_url()),
        ("SALESFORCE_TOKEN", "contract-access".to_string()),
        ("SALESFORCE_REFRESH_TOKEN", "contract-refresh".to_string()),
        ("SALESFORCE_CLIENT_ID", "crm-sync-contract".to_string()),
        ("SALESFORCE_CLIENT_SECRET", "crm-sync-contract-secret".to_string()),
    ];

    let refresh = contract::run(std::path::Path::new("node"), "salesforce_refresh.mjs", &env).await;
    let rest = contract::run(&python, "salesforce_contract.py", &env).await;
    let _ = suites;

    assert!(
        refresh.passed,
        "jsforce:\n{}\n\n{}",
        refresh.failures(),
        refresh.output
    );
    assert!(
        rest.passed,
        "simple-salesforce:\n{}\n\n{}",
        rest.failures(),
        rest.output
    );
    assert!(!rest.output.contains("SKIP"), "every check ran:\n{}", rest.output);
    for check in ["PASS Account upsert", "PASS custom object Project__c"] {
        assert!(rest.output.contains(check), "{check} ran:\n{}", rest.output);
    }
    assert!(
        rest.output.contains("PASS queryAll: merged records"),
        "the merge scan's query is checked:\n{}",
        rest.output
    );
    assert!(
        !refresh.output.contains("SKIP"),
        "every check ran:\n{}",
        refresh.output
    );
}
