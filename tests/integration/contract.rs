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
        run.passes() >= 80,
        "every call is checked, on v3/v4 and 2026-03 paths:\n{}",
        run.output
    );
}
