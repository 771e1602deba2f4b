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

    /// A syncing stack writing to this CRM's sandbox, whose webhooks (HubSpot's, Pipedrive's
    /// v2, Salesforce's Outbound Messages) come back to the stack: the whole loop.
    pub async fn looped_stack(self) -> CrmStack {
        const TOKEN: &str = "scenario-token";
        match self {
            Crm::HubSpot => CrmStack {
                app: spawn_app_with(AppOptions::syncing().with_webhooks()).await,
                sandbox: Sandbox::HubSpot,
            },
            Crm::Pipedrive => {
                let sandbox = start_pipedrive(TOKEN).await;
                let mut options = pipedrive_options(&sandbox, TOKEN);
                options.parameters.extend([
                    ("PipedriveWebhookUser".to_string(), "scenario-hooks".to_string()),
                    (
                        "PipedriveWebhookPassword".to_string(),
                        "scenario hook password".to_string(),
                    ),
                ]);
                let app = spawn_app_with(options).await;
                sandbox.set_webhook(pipedrive_sandbox::Webhook {
                    url: app.webhook_url("pipedrive"),
                    user: "scenario-hooks".into(),
                    password: "scenario hook password".into(),
                });
                CrmStack {
                    app,
                    sandbox: Sandbox::Pipedrive(sandbox),
                }
            }
            Crm::Salesforce => {
                let sandbox = start_salesforce(TOKEN).await;
                let app = salesforce_looped_app(&sandbox, salesforce_options(&sandbox, TOKEN)).await;
                CrmStack {
                    app,
                    sandbox: Sandbox::Salesforce(sandbox),
                }
            }
        }
    }

    /// What the conflict journal names as the source of a person's edit in this CRM.
    pub fn person_source(self) -> &'static str {
        match self {
            Crm::HubSpot => "CRM_UI",
            Crm::Pipedrive => "app",
            Crm::Salesforce => "user 005000000000002AAA",
        }
    }

    /// A syncing stack writing to this CRM's sandbox.
    pub async fn stack(self) -> CrmStack {
        self.stack_with_env(&[]).await
    }

    /// [`Crm::stack`], its functions given these variables too.
    pub async fn stack_with_env(self, env: &[(&str, &str)]) -> CrmStack {
        self.stack_with(|mut options| {
            for (name, value) in env {
                options = options.with_env(name, value);
            }
            options
        })
        .await
    }

    /// [`Crm::stack`], its options changed by `with_env`.
    pub async fn stack_with(self, with_env: impl Fn(AppOptions) -> AppOptions) -> CrmStack {
        const TOKEN: &str = "scenario-token";
        match self {
            Crm::HubSpot => CrmStack {
                app: spawn_app_with(with_env(AppOptions::syncing())).await,
                sandbox: Sandbox::HubSpot,
            },
            Crm::Pipedrive => {
                let sandbox = start_pipedrive(TOKEN).await;
                let app = spawn_app_with(with_env(pipedrive_options(&sandbox, TOKEN))).await;
                CrmStack {
                    app,
                    sandbox: Sandbox::Pipedrive(sandbox),
                }
            }
            Crm::Salesforce => {
                let sandbox = start_salesforce(TOKEN).await;
                let app = spawn_app_with(with_env(salesforce_options(&sandbox, TOKEN))).await;
                CrmStack {
                    app,
                    sandbox: Sandbox::Salesforce(sandbox),
                }
            }
        }
    }
}

/// A stack started with `options` (syncing to `sandbox`) whose Outbound Messages from `sandbox`
/// come back to its webhook route, as a workflow rule on Contact and Opportunity would send them.
pub async fn salesforce_looped_app(
    sandbox: &salesforce_sandbox::Sandbox,
    mut options: AppOptions,
) -> TestApp {
    const HOOK_TOKEN: &str = "outbound-messages-token-9Xc2";
    options.parameters.extend([
        (
            "SalesforceOrganizationId".to_string(),
            salesforce_sandbox::ORGANIZATION_ID.to_string(),
        ),
        ("SalesforceWebhookToken".to_string(), HOOK_TOKEN.to_string()),
        (
            "SalesforceIntegrationUserId".to_string(),
            salesforce_sandbox::INTEGRATION_USER_ID.to_string(),
        ),
    ]);
    let app = spawn_app_with(options).await;
    let selected = |fields: &[&str]| fields.iter().map(|f| f.to_string()).collect::<Vec<_>>();
    sandbox.set_outbound_messages(salesforce_sandbox::OutboundMessages {
        url: format!("{}?token={HOOK_TOKEN}", app.webhook_url("salesforce")),
        fields: [
            (
                "Contact".to_string(),
                selected(&["Email", "Phone", "FirstName", "LastName", "Crm_Sync_App_Id__c"]),
            ),
            (
                "Opportunity".to_string(),
                selected(&["Name", "Amount", "StageName", "Crm_Sync_App_Id__c"]),
            ),
            (
                "Account".to_string(),
                selected(&["Name", "Website", "Industry", "Crm_Sync_App_Id__c"]),
            ),
        ]
        .into(),
    });
    app
}

async fn start_pipedrive(token: &str) -> pipedrive_sandbox::Sandbox {
    pipedrive_sandbox::Sandbox::start("127.0.0.1:0", token, pipedrive_sandbox::Limits::default())
        .await
        .expect("the sandbox starts")
}

async fn start_salesforce(token: &str) -> salesforce_sandbox::Sandbox {
    salesforce_sandbox::Sandbox::start("127.0.0.1:0", token, "scenario-refresh", 10_000)
        .await
        .expect("the sandbox starts")
}

fn pipedrive_options(sandbox: &pipedrive_sandbox::Sandbox, token: &str) -> AppOptions {
    AppOptions::syncing()
        .with_env("CRM", "pipedrive")
        .with_env("PIPEDRIVE_API_BASE", &sandbox.url())
        .with_env("PIPEDRIVE_API_TOKEN", token)
}

fn salesforce_options(sandbox: &salesforce_sandbox::Sandbox, token: &str) -> AppOptions {
    AppOptions::syncing()
        .with_env("CRM", "salesforce")
        .with_env("SALESFORCE_INSTANCE_URL", &sandbox.instance_url())
        .with_env("SALESFORCE_ACCESS_TOKEN", token)
        // The sandbox's day, as an org's edition would set it.
        .with_env("SALESFORCE_DAILY_LIMIT", "10000")
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
    /// The Salesforce sandbox, when the stack writes to one.
    pub fn salesforce(&self) -> Option<&salesforce_sandbox::Sandbox> {
        match &self.sandbox {
            Sandbox::Salesforce(sandbox) => Some(sandbox),
            _ => None,
        }
    }

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
                    // A person's contact has no app id field at all.
                    let text = |name: &str| {
                        contact
                            .get(name)
                            .and_then(serde_json::Value::as_str)
                            .unwrap_or_default()
                            .to_string()
                    };
                    (text("Crm_Sync_App_Id__c"), text("Email"))
                })
                .collect(),
        }
    }

    /// Changes a contact's email as a person in the CRM would; its webhook says so.
    pub fn edit_email_as_a_person(&self, app_id: &str, email: &str) {
        match &self.sandbox {
            Sandbox::HubSpot => {
                let sandbox = self.app.sandbox();
                let record = sandbox
                    .find("contacts", "crm_sync_app_id", app_id)
                    .expect("the contact is in HubSpot");
                sandbox
                    .edit(
                        "contacts",
                        record.id,
                        [("email".to_string(), email.to_string())].into(),
                    )
                    .expect("an edit HubSpot takes");
            }
            Sandbox::Pipedrive(sandbox) => {
                let person = sandbox
                    .records("persons")
                    .into_iter()
                    .find(|p| p["custom_fields"]["crm_sync_app_id"] == app_id)
                    .expect("the person is in Pipedrive");
                let id = person["id"].as_u64().expect("a numeric id");
                sandbox.edit(
                    "persons",
                    id,
                    serde_json::json!({"emails": [{"value": email, "primary": true, "label": "work"}]}),
                );
            }
            Sandbox::Salesforce(sandbox) => {
                let contact = sandbox
                    .records("Contact")
                    .into_iter()
                    .find(|c| c.get("Crm_Sync_App_Id__c").and_then(serde_json::Value::as_str) == Some(app_id))
                    .expect("the contact is in Salesforce");
                let id = contact["Id"].as_str().expect("an id").to_string();
                sandbox.edit("Contact", &id, serde_json::json!({"Email": email}));
            }
        }
    }

    /// Renames a company (the mapping's `[company]`) as a person in the CRM would, and sets its
    /// industry where the mapping has one (the CRM's field); its webhook says so. Returns the
    /// industry as the CRM names it, if set.
    pub fn edit_company_as_a_person(&self, app_id: &str, name: &str) -> Option<String> {
        match &self.sandbox {
            Sandbox::HubSpot => {
                let sandbox = self.app.sandbox();
                let record = sandbox
                    .find("companies", "crm_sync_app_id", app_id)
                    .expect("the company is in HubSpot");
                sandbox
                    .edit(
                        "companies",
                        record.id,
                        [
                            ("name".to_string(), name.to_string()),
                            ("industry".to_string(), "AEROSPACE".to_string()),
                        ]
                        .into(),
                    )
                    .expect("an edit HubSpot takes");
                Some("AEROSPACE".into())
            }
            Sandbox::Pipedrive(sandbox) => {
                let organization = sandbox
                    .records("organizations")
                    .into_iter()
                    .find(|o| o["custom_fields"]["crm_sync_app_id"] == app_id)
                    .expect("the organization is in Pipedrive");
                let id = organization["id"].as_u64().expect("a numeric id");
                sandbox.edit("organizations", id, serde_json::json!({"name": name}));
                None
            }
            Sandbox::Salesforce(sandbox) => {
                let account = sandbox
                    .records("Account")
                    .into_iter()
                    .find(|a| a.get("Crm_Sync_App_Id__c").and_then(serde_json::Value::as_str) == Some(app_id))
                    .expect("the account is in Salesforce");
                let id = account["Id"].as_str().expect("an id").to_string();
                sandbox.edit(
                    "Account",
                    &id,
                    serde_json::json!({"Name": name, "Industry": "Aerospace"}),
                );
                Some("Aerospace".into())
            }
        }
    }

    /// Moves a deal to a later stage as a person in the CRM would; returns the stage as the CRM
    /// names it (what the app inbox should carry).
    pub fn move_deal_stage_as_a_person(&self, app_id: &str) -> String {
        match &self.sandbox {
            Sandbox::HubSpot => {
                let sandbox = self.app.sandbox();
                let deal = sandbox
                    .find("deals", "crm_sync_app_id", app_id)
                    .expect("the deal is in HubSpot");
                sandbox
                    .edit(
                        "deals",
                        deal.id,
                        [("dealstage".to_string(), "closedwon".to_string())].into(),
                    )
                    .expect("an edit HubSpot takes");
                "closedwon".into()
            }
            Sandbox::Pipedrive(sandbox) => {
                let deal = sandbox
                    .records("deals")
                    .into_iter()
                    .find(|d| d["custom_fields"]["crm_sync_app_id"] == app_id)
                    .expect("the deal is in Pipedrive");
                let id = deal["id"].as_u64().expect("a numeric id");
                sandbox.edit("deals", id, serde_json::json!({"stage_id": 4}));
                "4".into()
            }
            Sandbox::Salesforce(sandbox) => {
                let opportunity = sandbox
                    .records("Opportunity")
                    .into_iter()
                    .find(|o| o.get("Crm_Sync_App_Id__c").and_then(serde_json::Value::as_str) == Some(app_id))
                    .expect("the opportunity is in Salesforce");
                let id = opportunity["Id"].as_str().expect("an id").to_string();
                sandbox.edit("Opportunity", &id, serde_json::json!({"StageName": "Closed Won"}));
                "Closed Won".into()
            }
        }
    }

    /// Waits until every webhook the CRM has sent is delivered and processed.
    pub async fn webhooks_settled(&self) {
        match &self.sandbox {
            Sandbox::HubSpot => {
                self.app
                    .webhooks_settled(|| self.app.sandbox().pending_webhooks())
                    .await
            }
            Sandbox::Pipedrive(sandbox) => self.app.webhooks_settled(|| sandbox.pending_webhooks()).await,
            Sandbox::Salesforce(sandbox) => self.app.webhooks_settled(|| sandbox.pending_messages()).await,
        }
    }

    /// From now on the CRM fails `error_rate` of its calls with a server error and times out
    /// `timeout_rate` of them (answering after 2 s, past a patient stack's 1 s: Pipedrive and
    /// Salesforce apply such a call, HubSpot's gateway does not), its dice seeded with `seed`.
    pub fn inject_faults(&self, error_rate: f64, timeout_rate: f64, seed: u64) {
        let timeout = std::time::Duration::from_secs(2);
        match &self.sandbox {
            Sandbox::HubSpot => {
                let sandbox = self.app.sandbox();
                sandbox.set_faults(hubspot_sandbox::Faults {
                    error_rate,
                    timeout_rate,
                    timeout_ms: 2_000,
                    seed: Some(seed),
                    ..sandbox.faults()
                });
            }
            Sandbox::Pipedrive(sandbox) => sandbox.set_faults(
                pipedrive_sandbox::Faults {
                    error_rate,
                    timeout_rate,
                    timeout,
                },
                seed,
            ),
            Sandbox::Salesforce(sandbox) => sandbox.set_faults(
                salesforce_sandbox::Faults {
                    error_rate,
                    timeout_rate,
                    timeout,
                },
                seed,
            ),
        }
    }

    /// The server errors and timeouts the CRM has injected so far.
    pub fn injected_faults(&self) -> (u64, u64) {
        match &self.sandbox {
            Sandbox::HubSpot => {
                let stats = self.app.sandbox().stats();
                (stats.injected_errors, stats.injected_timeouts)
            }
            Sandbox::Pipedrive(sandbox) => {
                let stats = sandbox.stats();
                (stats.injected_errors, stats.injected_timeouts)
            }
            Sandbox::Salesforce(sandbox) => {
                let stats = sandbox.stats();
                (stats.injected_errors, stats.injected_timeouts)
            }
        }
    }

    /// The CRM id of the contact holding the app's `app_id`.
    pub fn contact_crm_id(&self, app_id: &str) -> String {
        match &self.sandbox {
            Sandbox::HubSpot => self
                .app
                .sandbox()
                .find("contacts", "crm_sync_app_id", app_id)
                .expect("the contact is in HubSpot")
                .id
                .to_string(),
            Sandbox::Pipedrive(sandbox) => sandbox
                .records("persons")
                .into_iter()
                .find(|p| p["custom_fields"]["crm_sync_app_id"] == app_id)
                .expect("the person is in Pipedrive")["id"]
                .to_string(),
            Sandbox::Salesforce(sandbox) => sandbox
                .records("Contact")
                .into_iter()
                .find(|c| c.get("Crm_Sync_App_Id__c").and_then(serde_json::Value::as_str) == Some(app_id))
                .expect("the contact is in Salesforce")["Id"]
                .as_str()
                .expect("an id")
                .to_string(),
        }
    }

    /// A contact created by a person in the CRM, holding no app id; returns its CRM id.
    pub fn create_contact_as_a_person(&self, email: &str) -> String {
        match &self.sandbox {
            Sandbox::HubSpot => self
                .app
                .sandbox()
                .create("contacts", [("email".to_string(), email.to_string())].into())
                .expect("a contact HubSpot takes")
                .id
                .to_string(),
            Sandbox::Pipedrive(sandbox) => sandbox
                .create(
                    "persons",
                    serde_json::json!({"name": email, "emails": [{"value": email, "primary": true, "label": "work"}]}),
                )
                .to_string(),
            Sandbox::Salesforce(sandbox) => {
                sandbox.create_as_person("Contact", serde_json::json!({"Email": email, "LastName": email}))
            }
        }
    }

    /// Merges the contact `loser` into `survivor` as a person in the CRM would (HubSpot: the
    /// survivor is the primary, and the merge makes a new record); returns the surviving CRM id.
    /// Salesforce announces no merge: see [`Self::merges_noticed`].
    pub fn merge_contacts_as_a_person(&self, loser: &str, survivor: &str) -> String {
        self.merge_as_a_person(["contacts", "persons", "Contact"], loser, survivor)
    }

    /// Merges `loser` into `survivor` of the CRM object each CRM names in `objects` (HubSpot's,
    /// Pipedrive's, Salesforce's), as a person would; returns the surviving CRM id.
    fn merge_as_a_person(&self, objects: [&str; 3], loser: &str, survivor: &str) -> String {
        let id = |text: &str| text.parse::<u64>().expect("a numeric CRM id");
        match &self.sandbox {
            Sandbox::HubSpot => self
                .app
                .sandbox()
                .merge(objects[0], id(survivor), id(loser))
                .expect("a merge HubSpot takes")
                .id
                .to_string(),
            Sandbox::Pipedrive(sandbox) => {
                assert!(
                    sandbox.merge(objects[1], id(loser), id(survivor)),
                    "a merge Pipedrive takes"
                );
                survivor.to_string()
            }
            Sandbox::Salesforce(sandbox) => {
                sandbox
                    .merge(objects[2], survivor, &[loser])
                    .expect("a merge Salesforce takes");
                survivor.to_string()
            }
        }
    }

    /// A company (the mapping's `[company]`) created by a person in the CRM; returns its CRM id.
    pub fn create_company_as_a_person(&self, name: &str) -> String {
        match &self.sandbox {
            Sandbox::HubSpot => self
                .app
                .sandbox()
                .create("companies", [("name".to_string(), name.to_string())].into())
                .expect("a company HubSpot takes")
                .id
                .to_string(),
            Sandbox::Pipedrive(sandbox) => sandbox
                .create("organizations", serde_json::json!({"name": name}))
                .to_string(),
            Sandbox::Salesforce(sandbox) => {
                sandbox.create_as_person("Account", serde_json::json!({"Name": name}))
            }
        }
    }

    /// Merges the company `loser` into `survivor` as a person in the CRM would; returns the
    /// surviving CRM id (see [`Self::merge_contacts_as_a_person`]).
    pub fn merge_companies_as_a_person(&self, loser: &str, survivor: &str) -> String {
        self.merge_as_a_person(["companies", "organizations", "Account"], loser, survivor)
    }

    /// The companies the CRM holds: (CRM id, name).
    pub fn companies(&self) -> Vec<(String, String)> {
        let object = match &self.sandbox {
            Sandbox::HubSpot => "companies",
            Sandbox::Pipedrive(_) => "organizations",
            Sandbox::Salesforce(_) => "Account",
        };
        self.rows(object)
            .into_iter()
            .map(|(crm_id, _, name)| (crm_id, name))
            .collect()
    }

    /// Lets crm-sync notice the CRM's merges: HubSpot and Pipedrive post them; Salesforce's are
    /// read by the reconcile function's frequent merge scan, run here as its schedule would.
    pub async fn merges_noticed(&self) {
        if let Sandbox::Salesforce(_) = &self.sandbox {
            let scan = self.app.scan_merges().await;
            assert_eq!(
                scan.errors, 0,
                "the merge scan read and enqueued everything: {scan:?}"
            );
        }
    }

    /// Whether the CRM holds a live contact with this id.
    pub fn contact_exists(&self, crm_id: &str) -> bool {
        match &self.sandbox {
            Sandbox::HubSpot => crm_id
                .parse::<u64>()
                .ok()
                .is_some_and(|id| self.app.sandbox().records("contacts").iter().any(|r| r.id == id)),
            Sandbox::Pipedrive(sandbox) => sandbox
                .records("persons")
                .iter()
                .any(|p| p["id"].as_u64().map(|id| id.to_string()).as_deref() == Some(crm_id)),
            Sandbox::Salesforce(sandbox) => sandbox
                .records("Contact")
                .iter()
                .any(|c| c.get("Id").and_then(serde_json::Value::as_str) == Some(crm_id)),
        }
    }

    /// The live records of a CRM object as (the app's id, their name): HubSpot's `name`,
    /// Pipedrive's `name`, Salesforce's `Name`.
    pub fn named_records(&self, crm_object: &str) -> Vec<(String, String)> {
        self.rows(crm_object)
            .into_iter()
            .map(|(_, app_id, name)| (app_id, name))
            .collect()
    }

    /// The live records of a CRM object as (CRM id, the app's id, name).
    fn rows(&self, crm_object: &str) -> Vec<(String, String, String)> {
        let text = |value: Option<&serde_json::Value>| {
            value.and_then(|v| v.as_str()).unwrap_or_default().to_string()
        };
        match &self.sandbox {
            Sandbox::HubSpot => self
                .app
                .sandbox()
                .records(crm_object)
                .into_iter()
                .map(|r| {
                    let get = |name: &str| r.properties.get(name).cloned().unwrap_or_default();
                    (r.id.to_string(), get("crm_sync_app_id"), get("name"))
                })
                .collect(),
            Sandbox::Pipedrive(sandbox) => sandbox
                .records(crm_object)
                .iter()
                .map(|r| {
                    (
                        r["id"].to_string(),
                        text(r.get("custom_fields").and_then(|c| c.get("crm_sync_app_id"))),
                        text(r.get("name")),
                    )
                })
                .collect(),
            Sandbox::Salesforce(sandbox) => sandbox
                .records(crm_object)
                .iter()
                .map(|r| {
                    (
                        text(r.get("Id")),
                        text(r.get("Crm_Sync_App_Id__c")),
                        text(r.get("Name")),
                    )
                })
                .collect(),
        }
    }

    /// Every link from a contact or a deal to a company the CRM holds, by the app's ids:
    /// (`contact` or `deal`, its app id, the company's app id, the pair's labels sorted).
    pub fn company_links(&self) -> std::collections::BTreeSet<(String, String, String, Vec<String>)> {
        use serde_json::Value;
        let mut links = std::collections::BTreeSet::new();
        match &self.sandbox {
            Sandbox::HubSpot => {
                let sandbox = self.app.sandbox();
                let app_id = |object: &str, id: u64| {
                    sandbox
                        .records(object)
                        .into_iter()
                        .find(|r| r.id == id)
                        .and_then(|r| r.properties.get("crm_sync_app_id").cloned())
                        .unwrap_or_default()
                };
                for (kind, object) in [("contact", "contacts"), ("deal", "deals")] {
                    for record in sandbox.records(object) {
                        for (other, company) in sandbox.associations(object, record.id) {
                            if other == "companies" {
                                links.insert((
                                    kind.to_string(),
                                    app_id(object, record.id),
                                    app_id("companies", company),
                                    sandbox.labels_of(object, record.id, "companies", company),
                                ));
                            }
                        }
                    }
                }
            }
            Sandbox::Pipedrive(sandbox) => {
                let app_id = |record: &serde_json::Map<String, Value>| {
                    record["custom_fields"]["crm_sync_app_id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string()
                };
                let organizations = sandbox.records("organizations");
                for (kind, entity) in [("contact", "persons"), ("deal", "deals")] {
                    for record in sandbox.records(entity) {
                        let Some(org) = record.get("org_id").and_then(Value::as_u64) else {
                            continue;
                        };
                        let company = organizations
                            .iter()
                            .find(|o| o["id"].as_u64() == Some(org))
                            .map(app_id)
                            .unwrap_or_default();
                        links.insert((kind.to_string(), app_id(&record), company, Vec::new()));
                    }
                }
            }
            Sandbox::Salesforce(sandbox) => {
                let text = |record: &serde_json::Map<String, Value>, field: &str| {
                    record
                        .get(field)
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string()
                };
                let app_id = |sobject: &str, id: &str| {
                    sandbox
                        .records(sobject)
                        .into_iter()
                        .find(|r| r.get("Id").and_then(Value::as_str) == Some(id))
                        .map(|r| text(&r, "Crm_Sync_App_Id__c"))
                        .unwrap_or_default()
                };
                for relation in sandbox.records("AccountContactRelation") {
                    let mut roles: Vec<String> = text(&relation, "Roles")
                        .split(';')
                        .filter(|r| !r.is_empty())
                        .map(str::to_string)
                        .collect();
                    roles.sort();
                    links.insert((
                        "contact".into(),
                        app_id("Contact", &text(&relation, "ContactId")),
                        app_id("Account", &text(&relation, "AccountId")),
                        roles,
                    ));
                }
                for deal in sandbox.records("Opportunity") {
                    let account = text(&deal, "AccountId");
                    if !account.is_empty() {
                        links.insert((
                            "deal".into(),
                            text(&deal, "Crm_Sync_App_Id__c"),
                            app_id("Account", &account),
                            Vec::new(),
                        ));
                    }
                }
            }
        }
        links
    }

    /// How many records of a CRM object the sandbox holds.
    pub fn count(&self, crm_object: &str) -> usize {
        match &self.sandbox {
            Sandbox::HubSpot => self.app.sandbox().records(crm_object).len(),
            Sandbox::Pipedrive(sandbox) => sandbox.records(crm_object).len(),
            Sandbox::Salesforce(sandbox) => sandbox.records(crm_object).len(),
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
