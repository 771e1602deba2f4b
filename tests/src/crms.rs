//! One scenario, three CRMs: a stack syncing to HubSpot's, Pipedrive's or Salesforce's sandbox,
//! and the contacts each holds read the same way, so that a behaviour is proven once for all
//! three instead of once per CRM.

use std::collections::BTreeMap;

use crate::{spawn_app_with, AppOptions, TestApp};

/// The CRMs crm-sync speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crm {
    HubSpot,
    Pipedrive,
    Salesforce,
}

impl Crm {
    pub const ALL: [Crm; 3] = [Crm::HubSpot, Crm::Pipedrive, Crm::Salesforce];

    /// A syncing stack writing to this CRM's sandbox.
    pub async fn stack(self) -> CrmStack {
        const TOKEN: &str = "scenario-token";
        match self {
            Crm::HubSpot => CrmStack {
                app: spawn_app_with(AppOptions::syncing()).await,
                sandbox: Sandbox::HubSpot,
            },
            Crm::Pipedrive => {
                let sandbox = pipedrive_sandbox::Sandbox::start(
                    "127.0.0.1:0",
                    TOKEN,
                    pipedrive_sandbox::Limits::default(),
                )
                .await
                .expect("the sandbox starts");
                let app = spawn_app_with(
                    AppOptions::syncing()
                        .with_env("CRM", "pipedrive")
                        .with_env("PIPEDRIVE_API_BASE", &sandbox.url())
                        .with_env("PIPEDRIVE_API_TOKEN", TOKEN),
                )
                .await;
                CrmStack {
                    app,
                    sandbox: Sandbox::Pipedrive(sandbox),
                }
            }
            Crm::Salesforce => {
                let sandbox =
                    salesforce_sandbox::Sandbox::start("127.0.0.1:0", TOKEN, "scenario-refresh", 10_000)
                        .await
                        .expect("the sandbox starts");
                let app = spawn_app_with(
                    AppOptions::syncing()
                        .with_env("CRM", "salesforce")
                        .with_env("SALESFORCE_INSTANCE_URL", &sandbox.instance_url())
                        .with_env("SALESFORCE_ACCESS_TOKEN", TOKEN),
                )
                .await;
                CrmStack {
                    app,
                    sandbox: Sandbox::Salesforce(sandbox),
                }
            }
        }
    }
}

enum Sandbox {
    /// The stack's own (`TestApp::sandbox`).
    HubSpot,
    Pipedrive(pipedrive_sandbox::Sandbox),
    Salesforce(salesforce_sandbox::Sandbox),
}

/// A stack and the CRM it syncs to.
pub struct CrmStack {
    pub app: TestApp,
    sandbox: Sandbox,
}

impl CrmStack {
    /// Every contact the CRM holds, as app id → email.
    pub fn contact_emails(&self) -> BTreeMap<String, String> {
        match &self.sandbox {
            Sandbox::HubSpot => self
                .app
                .sandbox()
                .records("contacts")
                .into_iter()
                .map(|record| {
                    let get = |name: &str| record.properties.get(name).cloned().unwrap_or_default();
                    (get("crm_sync_app_id"), get("email"))
                })
                .collect(),
            Sandbox::Pipedrive(sandbox) => sandbox
                .records("persons")
                .into_iter()
                .map(|person| {
                    let text = |value: &serde_json::Value| value.as_str().unwrap_or_default().to_string();
                    (
                        text(&person["custom_fields"]["crm_sync_app_id"]),
                        text(&person["emails"][0]["value"]),
                    )
                })
                .collect(),
            Sandbox::Salesforce(sandbox) => sandbox
                .records("Contact")
                .into_iter()
                .map(|contact| {
                    let text = |value: &serde_json::Value| value.as_str().unwrap_or_default().to_string();
                    (text(&contact["Crm_Sync_App_Id__c"]), text(&contact["Email"]))
                })
                .collect(),
        }
    }

    /// How many contacts the CRM holds (a contact written twice would show here).
    pub fn contact_count(&self) -> usize {
        match &self.sandbox {
            Sandbox::HubSpot => self.app.sandbox().records("contacts").len(),
            Sandbox::Pipedrive(sandbox) => sandbox.records("persons").len(),
            Sandbox::Salesforce(sandbox) => sandbox.records("Contact").len(),
        }
    }
}
