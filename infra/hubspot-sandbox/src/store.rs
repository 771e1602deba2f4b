//! The sandbox's records and HubSpot's rules for them: properties that exist, values that are
//! valid, unique properties, upsert by a unique property, archive, associations.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde_json::{json, Value};

/// Default deal stages of HubSpot's default pipeline.
pub const DEAL_STAGES: [&str; 7] = [
    "appointmentscheduled",
    "qualifiedtobuy",
    "presentationscheduled",
    "decisionmakerboughtin",
    "contractsent",
    "closedwon",
    "closedlost",
];

/// A stored CRM record.
#[derive(Debug, Clone)]
pub struct Record {
    pub id: u64,
    pub properties: BTreeMap<String, String>,
    pub created_at: String,
    pub updated_at: String,
    pub archived: bool,
}

/// HubSpot's type of a property (`GET /crm/properties/{version}/{object}`): what it validates on
/// write and how it reads back. Properties an admin adds are text.
pub fn property_type(name: &str) -> &'static str {
    match name {
        "amount" => "number",
        "closedate" | "hs_timestamp" => "datetime",
        "dealstage" | "pipeline" | "lifecyclestage" => "enumeration",
        "phone" => "phone_number",
        _ => "string",
    }
}

/// Epoch milliseconds of a datetime as HubSpot takes it: epoch ms, or UTC text (RFC 3339).
fn datetime_ms(value: &str) -> Option<i64> {
    if let Ok(ms) = value.parse::<i64>() {
        return Some(ms);
    }
    let at = time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).ok()
}

/// A stored value as the API reads it back: datetimes as ISO text with milliseconds, whatever
/// form they were written in (webhooks report the stored epoch milliseconds), numbers in their
/// shortest form.
fn api_value(name: &str, value: &str) -> String {
    if property_type(name) == "number" {
        // HubSpot keeps numbers as numbers: `1200.50` reads back as `1200.5`.
        if let Some(number) = value.parse::<f64>().ok().filter(|n| n.is_finite()) {
            return number.to_string();
        }
    }
    if property_type(name) == "datetime" {
        if let Some(at) = value
            .parse::<i128>()
            .ok()
            .and_then(|ms| time::OffsetDateTime::from_unix_timestamp_nanos(ms * 1_000_000).ok())
        {
            let format = time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
            );
            return at.format(&format).unwrap_or_else(|_| value.to_string());
        }
    }
    value.to_string()
}

impl Record {
    pub fn to_json(&self, only: Option<&[String]>) -> Value {
        let properties: BTreeMap<&String, String> = self
            .properties
            .iter()
            .filter(|(name, _)| only.is_none_or(|only| only.contains(name)))
            .map(|(name, value)| (name, api_value(name, value)))
            .collect();
        json!({
            "id": self.id.to_string(),
            "properties": properties,
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
            "archived": self.archived,
        })
    }
}

/// One failed input, shaped like HubSpot's batch error objects.
#[derive(Debug, Clone)]
pub struct InputFailure {
    pub status: u16,
    pub category: &'static str,
    pub message: String,
    /// The per-property message, in `errors[]`.
    pub detail: Option<String>,
    pub code: Option<&'static str>,
    pub property: Option<String>,
}

impl InputFailure {
    /// HubSpot's answer to a write naming a record that is not there (or not any more).
    fn not_found(id: u64) -> Self {
        Self {
            status: 404,
            category: "OBJECT_NOT_FOUND",
            message: format!("Object not found. objectId are usually numeric. ({id})"),
            detail: None,
            code: None,
            property: None,
        }
    }

    fn validation(code: &'static str, property: &str, detail: String) -> Self {
        Self {
            status: 400,
            category: "VALIDATION_ERROR",
            message: "Property values were not valid".to_string(),
            detail: Some(detail),
            code: Some(code),
            property: Some(property.to_string()),
        }
    }

    /// The body of a whole call this failure refuses: HubSpot's error body, with a correlation id.
    pub fn to_whole_call_json(&self) -> Value {
        let mut body = self.to_json(None, None);
        body["correlationId"] = json!(format!("{:08x}-sandbox", self.message.len()));
        if body["context"].as_object().is_some_and(serde_json::Map::is_empty) {
            body.as_object_mut().map(|b| b.remove("context"));
        }
        body
    }

    pub fn to_json(&self, trace: Option<&str>, extra_context: Option<(&str, String)>) -> Value {
        let mut context = serde_json::Map::new();
        if let Some(trace) = trace {
            context.insert("objectWriteTraceId".into(), json!([trace]));
        }
        if let Some((name, value)) = extra_context {
            context.insert(name.into(), json!([value]));
        }
        let mut errors = Vec::new();
        if let Some(code) = self.code {
            let detail = self.detail.as_deref().unwrap_or(&self.message);
            errors.push(json!({
                "message": detail,
                "code": code,
                "context": { "propertyName": [self.property.clone().unwrap_or_default()] },
            }));
        }
        json!({
            "status": "error",
            "category": self.category,
            "message": self.message,
            "errors": errors,
            "context": context,
            "links": {},
        })
    }
}

/// A change to a record, as HubSpot would report it by webhook.
#[derive(Debug, Clone)]
pub struct StoreChange {
    pub object: String,
    pub id: u64,
    pub created: bool,
    /// Properties whose value changed (an empty value: cleared).
    pub properties: BTreeMap<String, String>,
    /// A change of who the record is (`merge`, `restore`, `privacyDeletion`) and the fields its
    /// event carries beyond the common ones.
    pub identity: Option<(&'static str, Value)>,
}

impl StoreChange {
    fn identity(object: &str, id: u64, action: &'static str, fields: Value) -> Self {
        Self {
            object: object.to_string(),
            id,
            created: false,
            properties: BTreeMap::new(),
            identity: Some((action, fields)),
        }
    }
}

/// Every object type's records, and the properties each type has.
pub struct Store {
    /// Changes not yet turned into webhook events.
    pub changes: Vec<StoreChange>,
    /// object -> (properties, unique properties)
    schema: HashMap<String, (Vec<String>, Vec<String>)>,
    objects: HashMap<String, BTreeMap<u64, Record>>,
    next_id: u64,
    /// (object, property, value) -> id, for unique properties of live records.
    unique: HashMap<(String, String, String), u64>,
    associations: HashSet<(String, u64, String, u64)>,
    /// The association types (labels) of each linked pair, by direction: every link has its
    /// default type; a labelled one has its label's too.
    link_types: HashMap<(String, u64, String, u64), BTreeSet<u32>>,
    /// Labels an admin defined between two object types: (from, to) -> [(type id, label)].
    labels: HashMap<(String, String), Vec<(u32, String)>>,
    /// (object, merged-away id) -> the id it was merged into.
    merged: HashMap<(String, u64), u64>,
    /// Custom object types by `objectTypeId` (`2-…`): their schema as the schemas API answers it.
    custom: BTreeMap<String, Value>,
    /// A custom object's other names (`fullyQualifiedName`, `name`) -> its `objectTypeId`.
    aliases: HashMap<String, String>,
    /// (custom object type, property) -> the property's `type`.
    custom_types: HashMap<(String, String), String>,
}

impl Default for Store {
    fn default() -> Self {
        let schema = ["contacts", "companies", "deals", "notes"]
            .into_iter()
            .filter_map(|object| {
                let (properties, unique) = default_properties(object)?;
                Some((
                    object.to_string(),
                    (
                        properties.iter().map(|p| p.to_string()).collect(),
                        unique.iter().map(|p| p.to_string()).collect(),
                    ),
                ))
            })
            .collect();
        Self {
            changes: Vec::new(),
            schema,
            objects: HashMap::new(),
            next_id: 0,
            unique: HashMap::new(),
            associations: HashSet::new(),
            link_types: HashMap::new(),
            labels: HashMap::new(),
            merged: HashMap::new(),
            custom: BTreeMap::new(),
            aliases: HashMap::new(),
            custom_types: HashMap::new(),
        }
    }
}

/// Properties each object type has at first, and which of them hold unique values.
fn default_properties(object: &str) -> Option<(&'static [&'static str], &'static [&'static str])> {
    match object {
        "contacts" => Some((
            &[
                "email",
                "firstname",
                "lastname",
                "phone",
                "company",
                "lifecyclestage",
                "crm_sync_app_id",
            ],
            &["email", "crm_sync_app_id"],
        )),
        "companies" => Some((
            &["name", "domain", "industry", "city", "crm_sync_app_id"],
            &["crm_sync_app_id"],
        )),
        "deals" => Some((
            &[
                "dealname",
                "amount",
                "closedate",
                "dealstage",
                "pipeline",
                "crm_sync_app_id",
            ],
            &["crm_sync_app_id"],
        )),
        "notes" => Some((
            &["hs_note_body", "hs_timestamp", "crm_sync_app_id"],
            &["crm_sync_app_id"],
        )),
        _ => None,
    }
}

/// Values as the store keeps them: datetimes as epoch milliseconds.
fn stored(mut properties: BTreeMap<String, String>) -> BTreeMap<String, String> {
    for (name, value) in properties.iter_mut() {
        if property_type(name) == "datetime" && !value.is_empty() {
            if let Some(ms) = datetime_ms(value) {
                *value = ms.to_string();
            }
        }
    }
    properties
}

/// Now as HubSpot writes times: UTC, to the millisecond.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
        ))
        .unwrap_or_default()
}

impl Store {
    /// The object type a path names: a custom object by its `objectTypeId`, its
    /// `fullyQualifiedName` or its name, anything else as it is.
    pub fn canonical<'a>(&'a self, object: &'a str) -> &'a str {
        self.aliases.get(object).map_or(object, String::as_str)
    }

    /// A property's `type`: a custom object's as its schema declared it.
    pub fn property_type_of(&self, object: &str, name: &str) -> String {
        self.custom_types
            .get(&(object.to_string(), name.to_string()))
            .cloned()
            .unwrap_or_else(|| property_type(name).to_string())
    }

    /// A custom object type defined from an `ObjectSchemaEgg`, as `POST
    /// /crm-object-schemas/v3/schemas` does; its `ObjectSchema`, or why it is refused.
    pub fn define_object(&mut self, egg: &Value, portal_id: u64) -> Result<Value, String> {
        let name = egg
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .trim()
            .to_string();
        let valid_name = !name.is_empty()
            && name.len() <= 100
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic());
        if !valid_name {
            return Err("name must start with a letter and hold only letters, digits and _".into());
        }
        if self.aliases.contains_key(&name) || self.schema.contains_key(&name) {
            return Err(format!("An object type named {name} already exists"));
        }
        let labels = egg.get("labels").cloned().unwrap_or(Value::Null);
        if labels.get("singular").and_then(Value::as_str).is_none()
            || labels.get("plural").and_then(Value::as_str).is_none()
        {
            return Err("labels need singular and plural".into());
        }
        let mut properties = Vec::new();
        let mut unique = Vec::new();
        let mut described = Vec::new();
        for property in egg
            .get("properties")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let (Some(pname), Some(kind)) = (
                property.get("name").and_then(Value::as_str),
                property.get("type").and_then(Value::as_str),
            ) else {
                return Err("each property needs name and type".into());
            };
            if properties.iter().any(|p: &String| p == pname) {
                return Err(format!("property {pname} is defined twice"));
            }
            properties.push(pname.to_string());
            if property.get("hasUniqueValue").and_then(Value::as_bool) == Some(true) {
                unique.push(pname.to_string());
            }
            described.push((pname.to_string(), kind.to_string(), property.clone()));
        }
        let required: Vec<String> = egg
            .get("requiredProperties")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| p.as_str().map(str::to_string))
            .collect();
        if let Some(missing) = required.iter().find(|p| !properties.contains(p)) {
            return Err(format!("required property {missing} is not among the properties"));
        }
        let object_type_id = format!("2-{}", 2_000_001 + self.custom.len());
        let fully_qualified = format!("p{portal_id}_{name}");
        let now = now_rfc3339();
        let schema = serde_json::json!({
            "id": object_type_id.trim_start_matches("2-"),
            "objectTypeId": object_type_id,
            "fullyQualifiedName": fully_qualified,
            "name": name,
            "labels": labels,
            "requiredProperties": required,
            "searchableProperties": egg.get("searchableProperties").cloned().unwrap_or(serde_json::json!([])),
            "primaryDisplayProperty": egg.get("primaryDisplayProperty").cloned().unwrap_or(Value::Null),
            "secondaryDisplayProperties": egg.get("secondaryDisplayProperties").cloned().unwrap_or(serde_json::json!([])),
            "properties": described.iter().map(|(pname, kind, given)| serde_json::json!({
                "name": pname,
                "label": given.get("label").cloned().unwrap_or(serde_json::json!(pname)),
                "type": kind,
                "fieldType": given.get("fieldType").cloned().unwrap_or(serde_json::json!("text")),
                "groupName": format!("{name}_information"),
                "description": "",
                "options": [],
                "hasUniqueValue": unique.contains(pname),
                "createdAt": now,
                "updatedAt": now,
            })).collect::<Vec<_>>(),
            "associations": [],
            "createdAt": now,
            "updatedAt": now,
            "archived": false,
        });
        for (pname, kind, _) in &described {
            self.custom_types
                .insert((object_type_id.clone(), pname.clone()), kind.clone());
        }
        self.schema.insert(object_type_id.clone(), (properties, unique));
        self.aliases.insert(fully_qualified, object_type_id.clone());
        self.aliases.insert(name, object_type_id.clone());
        self.custom.insert(object_type_id, schema.clone());
        Ok(schema)
    }

    /// Every custom object type's schema.
    pub fn object_schemas(&self) -> Vec<Value> {
        self.custom.values().cloned().collect()
    }

    /// A custom object type's schema, by any of its names.
    pub fn object_schema(&self, object: &str) -> Option<&Value> {
        self.custom.get(self.canonical(object))
    }

    /// Whether the object type exists; its properties and unique properties.
    pub fn schema(&self, object: &str) -> Option<(&[String], &[String])> {
        self.schema
            .get(object)
            .map(|(properties, unique)| (properties.as_slice(), unique.as_slice()))
    }

    /// Adds a property to an object type, as a HubSpot admin would.
    pub fn add_property(&mut self, object: &str, name: &str) -> bool {
        match self.schema.get_mut(object) {
            Some((properties, _)) => {
                if !properties.iter().any(|p| p == name) {
                    properties.push(name.to_string());
                }
                true
            }
            None => false,
        }
    }

    /// Removes a property from an object type.
    pub fn remove_property(&mut self, object: &str, name: &str) -> bool {
        match self.schema.get_mut(object) {
            Some((properties, _)) => {
                properties.retain(|p| p != name);
                true
            }
            None => false,
        }
    }

    fn tick(&mut self) -> String {
        now_rfc3339()
    }

    pub fn records(&self, object: &str) -> impl Iterator<Item = &Record> {
        self.objects
            .get(object)
            .into_iter()
            .flat_map(|records| records.values())
    }

    pub fn get(&self, object: &str, id: u64) -> Option<&Record> {
        self.objects
            .get(object)?
            .get(&id)
            .filter(|record| !record.archived)
    }

    pub fn find_by(&self, object: &str, property: &str, value: &str) -> Option<u64> {
        self.unique
            .get(&(object.to_string(), property.to_string(), value.to_string()))
            .copied()
    }

    pub fn associations_of(&self, object: &str, id: u64) -> Vec<(String, u64)> {
        self.associations
            .iter()
            .filter(|(from, from_id, _, _)| from == object && *from_id == id)
            .map(|(_, _, to, to_id)| (to.clone(), *to_id))
            .collect()
    }

    /// Checks property names and values as HubSpot does.
    pub fn validate(&self, object: &str, properties: &BTreeMap<String, String>) -> Result<(), InputFailure> {
        let known = self.schema(object).map(|(known, _)| known).unwrap_or(&[]);
        for (name, value) in properties {
            if !known.iter().any(|k| k == name) {
                return Err(InputFailure {
                    status: 400,
                    category: "VALIDATION_ERROR",
                    message: format!("Property \"{name}\" does not exist"),
                    detail: None,
                    code: Some("PROPERTY_DOESNT_EXIST"),
                    property: Some(name.clone()),
                });
            }
            if value.is_empty() {
                continue;
            }
            let invalid = match name.as_str() {
                "email" => {
                    let valid = value.split_once('@').is_some_and(|(local, domain)| {
                        !local.is_empty() && domain.contains('.') && !domain.ends_with('.')
                    });
                    (!valid).then(|| ("INVALID_EMAIL", format!("Email address {value} is invalid")))
                }
                "amount" => value
                    .parse::<f64>()
                    .is_err()
                    .then(|| ("INVALID_DECIMAL", format!("{value} was not a valid number."))),
                "closedate" | "hs_timestamp" => datetime_ms(value).is_none().then(|| {
                    (
                        "INVALID_DATE",
                        format!("{value} is not a valid datetime (epoch milliseconds or UTC text)"),
                    )
                }),
                "dealstage" => (!DEAL_STAGES.contains(&value.as_str())).then(|| {
                    (
                        "INVALID_OPTION",
                        format!("{value} was not one of the allowed options"),
                    )
                }),
                "hs_note_body" => (value.chars().count() > 65_536).then(|| {
                    (
                        "INVALID_LONG_STRING",
                        "note body longer than 65536 characters".to_string(),
                    )
                }),
                _ => None,
            };
            if let Some((code, message)) = invalid {
                return Err(InputFailure::validation(code, name, message));
            }
        }
        Ok(())
    }

    fn conflict(
        &self,
        object: &str,
        id: Option<u64>,
        properties: &BTreeMap<String, String>,
    ) -> Option<InputFailure> {
        let (_, unique) = self.schema(object)?;
        for property in unique {
            let Some(value) = properties.get(property).filter(|v| !v.is_empty()) else {
                continue;
            };
            if let Some(existing) = self.find_by(object, property, value) {
                if Some(existing) != id {
                    let noun = match object {
                        "contacts" => "Contact",
                        "deals" => "Deal",
                        _ => "Object",
                    };
                    return Some(InputFailure {
                        status: 409,
                        category: "CONFLICT",
                        message: format!("{noun} already exists. Existing ID: {existing}"),
                        detail: None,
                        code: None,
                        property: Some(property.to_string()),
                    });
                }
            }
        }
        None
    }

    fn index(&mut self, object: &str, record: &Record, add: bool) {
        let Some((_, unique)) = self.schema(object) else {
            return;
        };
        let unique = unique.to_vec();
        for property in &unique {
            if let Some(value) = record.properties.get(property).filter(|v| !v.is_empty()) {
                let key = (object.to_string(), property.to_string(), value.clone());
                if add {
                    self.unique.insert(key, record.id);
                } else {
                    self.unique.remove(&key);
                }
            }
        }
    }

    /// Stores a live record, its unique values indexed.
    fn put(&mut self, object: &str, record: &Record) {
        self.index(object, record, true);
        self.objects
            .entry(object.to_string())
            .or_default()
            .insert(record.id, record.clone());
    }

    /// Creates a record; returns it.
    pub fn create(
        &mut self,
        object: &str,
        properties: BTreeMap<String, String>,
    ) -> Result<Record, InputFailure> {
        self.validate(object, &properties)?;
        let properties = stored(properties);
        if object == "notes" && properties.get("hs_timestamp").is_none_or(|v| v.is_empty()) {
            return Err(InputFailure::validation(
                "REQUIRED_FIELD",
                "hs_timestamp",
                "hs_timestamp is required".to_string(),
            ));
        }
        if let Some(conflict) = self.conflict(object, None, &properties) {
            return Err(conflict);
        }
        self.next_id += 1;
        let now = self.tick();
        let record = Record {
            id: self.next_id,
            properties: properties.into_iter().filter(|(_, v)| !v.is_empty()).collect(),
            created_at: now.clone(),
            updated_at: now,
            archived: false,
        };
        self.put(object, &record);
        self.changes.push(StoreChange {
            object: object.to_string(),
            id: record.id,
            created: true,
            properties: record.properties.clone(),
            identity: None,
        });
        Ok(record)
    }

    /// Updates a live record's properties (an empty value clears one).
    pub fn update(
        &mut self,
        object: &str,
        id: u64,
        properties: BTreeMap<String, String>,
    ) -> Result<Record, InputFailure> {
        self.validate(object, &properties)?;
        let properties = stored(properties);
        let Some(current) = self.get(object, id).cloned() else {
            return Err(InputFailure::not_found(id));
        };
        if let Some(conflict) = self.conflict(object, Some(id), &properties) {
            return Err(conflict);
        }
        self.index(object, &current, false);
        let mut record = current;
        let mut changed = BTreeMap::new();
        for (name, value) in properties {
            let before = record.properties.get(&name).cloned().unwrap_or_default();
            if before != value {
                changed.insert(name.clone(), value.clone());
            }
            if value.is_empty() {
                record.properties.remove(&name);
            } else {
                record.properties.insert(name, value);
            }
        }
        if !changed.is_empty() {
            self.changes.push(StoreChange {
                object: object.to_string(),
                id,
                created: false,
                properties: changed,
                identity: None,
            });
        }
        record.updated_at = self.tick();
        self.put(object, &record);
        Ok(record)
    }

    /// Creates or updates by a unique property; returns the record and whether it is new.
    pub fn upsert(
        &mut self,
        object: &str,
        id_property: &str,
        key: &str,
        mut properties: BTreeMap<String, String>,
    ) -> Result<(Record, bool), InputFailure> {
        properties.insert(id_property.to_string(), key.to_string());
        match self.find_by(object, id_property, key) {
            Some(id) => self.update(object, id, properties).map(|record| (record, false)),
            None => self.create(object, properties).map(|record| (record, true)),
        }
    }

    /// The conflict an upsert by `id_property = key` would meet: another live record holding one
    /// of its unique values. Checked for a whole batch before any input is applied, because
    /// HubSpot refuses such a batch as a whole.
    pub fn upsert_conflict(
        &self,
        object: &str,
        id_property: &str,
        key: &str,
        properties: &BTreeMap<String, String>,
    ) -> Option<InputFailure> {
        let mut properties = properties.clone();
        properties.insert(id_property.to_string(), key.to_string());
        let target = self.find_by(object, id_property, key);
        self.conflict(object, target, &properties)
    }

    pub fn archive(&mut self, object: &str, id: u64) {
        if let Some(record) = self.get(object, id).cloned() {
            self.index(object, &record, false);
            if let Some(stored) = self
                .objects
                .get_mut(object)
                .and_then(|records| records.get_mut(&id))
            {
                stored.archived = true;
            }
        }
    }

    /// The record `id` names now: itself, or the one it was merged into (HubSpot reads a
    /// merged-away id as the record that survived it).
    pub fn resolve(&self, object: &str, id: u64) -> u64 {
        let mut id = id;
        while let Some(next) = self.merged.get(&(object.to_string(), id)) {
            id = *next;
        }
        id
    }

    /// Merges `secondary` into `primary`, as HubSpot does: contacts and companies become a new
    /// record (a new id) holding the primary's values, its empty ones filled from the secondary;
    /// other objects keep the primary's id. Both old ids then read as the survivor, and writes by
    /// them find nothing. Associations move to the survivor. Returns the survivor.
    pub fn merge(&mut self, object: &str, primary: u64, secondary: u64) -> Result<Record, InputFailure> {
        if primary == secondary {
            return Err(InputFailure {
                status: 400,
                category: "VALIDATION_ERROR",
                message: "A record cannot be merged with itself".into(),
                detail: None,
                code: None,
                property: None,
            });
        }
        let first = self
            .get(object, primary)
            .cloned()
            .ok_or_else(|| InputFailure::not_found(primary))?;
        let second = self
            .get(object, secondary)
            .cloned()
            .ok_or_else(|| InputFailure::not_found(secondary))?;
        let mut properties = second.properties.clone();
        let moved = first
            .properties
            .keys()
            .filter(|name| !second.properties.contains_key(*name))
            .count();
        properties.extend(first.properties.clone());
        for old in [&first, &second] {
            self.index(object, old, false);
            if let Some(stored) = self.objects.get_mut(object).and_then(|r| r.get_mut(&old.id)) {
                stored.archived = true;
            }
        }
        let new_record = matches!(object, "contacts" | "companies");
        let id = if new_record {
            self.next_id += 1;
            self.next_id
        } else {
            primary
        };
        let now = self.tick();
        let record = Record {
            id,
            properties,
            created_at: first.created_at.clone(),
            updated_at: now,
            archived: false,
        };
        self.put(object, &record);
        for old in [primary, secondary].into_iter().filter(|old| *old != id) {
            self.merged.insert((object.to_string(), old), id);
            let moved_links: Vec<(String, u64, String, u64)> = self
                .associations
                .iter()
                .filter(|(from, from_id, to, to_id)| {
                    (from == object && *from_id == old) || (to == object && *to_id == old)
                })
                .cloned()
                .collect();
            for (from, from_id, to, to_id) in moved_links {
                self.associations
                    .remove(&(from.clone(), from_id, to.clone(), to_id));
                let types = self
                    .link_types
                    .remove(&(from.clone(), from_id, to.clone(), to_id))
                    .unwrap_or_default();
                let from_id = if from == object && from_id == old {
                    id
                } else {
                    from_id
                };
                let to_id = if to == object && to_id == old { id } else { to_id };
                // The survivor keeps every type either record had on the link.
                self.link_types
                    .entry((from.clone(), from_id, to.clone(), to_id))
                    .or_default()
                    .extend(types);
                self.associations.insert((from, from_id, to, to_id));
            }
        }
        let mut fields = json!({
            "primaryObjectId": primary,
            "mergedObjectIds": [secondary],
            "numberOfPropertiesMoved": moved,
        });
        if new_record {
            fields["newObjectId"] = json!(id);
        }
        self.changes
            .push(StoreChange::identity(object, id, "merge", fields));
        Ok(record)
    }

    /// Brings back an archived record that was not merged away; `false` when there is none.
    pub fn restore(&mut self, object: &str, id: u64) -> bool {
        if self.merged.contains_key(&(object.to_string(), id)) {
            return false;
        }
        let Some(record) = self.objects.get_mut(object).and_then(|r| r.get_mut(&id)) else {
            return false;
        };
        if !record.archived {
            return false;
        }
        record.archived = false;
        let record = record.clone();
        self.index(object, &record, true);
        self.changes
            .push(StoreChange::identity(object, id, "restore", json!({})));
        true
    }

    /// Deletes a contact for good, as a GDPR deletion does: nothing of it is kept, its unique
    /// values are free again; `false` when there is none.
    pub fn privacy_delete(&mut self, object: &str, id: u64) -> bool {
        let Some(record) = self.get(object, id).cloned() else {
            return false;
        };
        self.index(object, &record, false);
        if let Some(records) = self.objects.get_mut(object) {
            records.remove(&id);
        }
        self.associations.retain(|(from, from_id, to, to_id)| {
            !((from == object && *from_id == id) || (to == object && *to_id == id))
        });
        self.link_types.retain(|(from, from_id, to, to_id), _| {
            !((from == object && *from_id == id) || (to == object && *to_id == id))
        });
        self.changes
            .push(StoreChange::identity(object, id, "privacyDeletion", json!({})));
        true
    }

    pub fn associate(&mut self, from: &str, from_id: u64, to: &str, to_id: u64) -> Result<(), InputFailure> {
        for (object, id) in [(from, from_id), (to, to_id)] {
            if self.get(object, id).is_none() {
                return Err(InputFailure {
                    status: 404,
                    category: "OBJECT_NOT_FOUND",
                    message: format!("No {object} with ID {id} exist"),
                    detail: None,
                    code: None,
                    property: None,
                });
            }
        }
        let new = self
            .associations
            .insert((from.to_string(), from_id, to.to_string(), to_id));
        self.associations
            .insert((to.to_string(), to_id, from.to_string(), from_id));
        self.add_types(from, from_id, to, to_id, &[default_association_type(from, to)]);
        if new {
            self.association_changed(from, from_id, to, to_id, false);
        }
        Ok(())
    }

    /// Records `types` (and their inverses) on a linked pair, both ways.
    fn add_types(&mut self, from: &str, from_id: u64, to: &str, to_id: u64, types: &[u32]) {
        for type_id in types {
            let inverse = self.inverse_type(from, to, *type_id);
            self.link_types
                .entry((from.to_string(), from_id, to.to_string(), to_id))
                .or_default()
                .insert(*type_id);
            if let Some(inverse) = inverse {
                self.link_types
                    .entry((to.to_string(), to_id, from.to_string(), from_id))
                    .or_default()
                    .insert(inverse);
            }
        }
    }

    /// Defines a label between two object types and its inverse, as an admin does in HubSpot's
    /// settings; returns their type ids (USER_DEFINED). The same label again is the same type.
    pub fn define_label(&mut self, from: &str, to: &str, label: &str, inverse: &str) -> (u32, u32) {
        if let Some(index) = self
            .labels
            .get(&(from.to_string(), to.to_string()))
            .and_then(|defined| defined.iter().position(|(_, name)| name == label))
        {
            let there = self.labels[&(from.to_string(), to.to_string())][index].0;
            return (there, self.inverse_type(from, to, there).unwrap_or(there));
        }
        let next = 1_000 + 2 * self.labels.values().map(Vec::len).sum::<usize>() as u32;
        self.labels
            .entry((from.to_string(), to.to_string()))
            .or_default()
            .push((next, label.to_string()));
        self.labels
            .entry((to.to_string(), from.to_string()))
            .or_default()
            .push((next + 1, inverse.to_string()));
        (next, next + 1)
    }

    /// The association types between two object types: HubSpot's default (no label), then the
    /// labels defined; (category, type id, label).
    pub fn labels_between(&self, from: &str, to: &str) -> Vec<(&'static str, u32, Option<String>)> {
        let mut types = vec![("HUBSPOT_DEFINED", default_association_type(from, to), None)];
        types.extend(
            self.labels
                .get(&(from.to_string(), to.to_string()))
                .into_iter()
                .flatten()
                .map(|(id, label)| ("USER_DEFINED", *id, Some(label.clone()))),
        );
        types
    }

    /// The type of the other direction: a default's is the other default, a label's its inverse.
    fn inverse_type(&self, from: &str, to: &str, type_id: u32) -> Option<u32> {
        if type_id == default_association_type(from, to) {
            return Some(default_association_type(to, from));
        }
        let index = self
            .labels
            .get(&(from.to_string(), to.to_string()))?
            .iter()
            .position(|(id, _)| *id == type_id)?;
        Some(
            self.labels
                .get(&(to.to_string(), from.to_string()))?
                .get(index)?
                .0,
        )
    }

    /// Links two records with the given types (a default one included), as the v4 batch create
    /// does; returns the labels the pair now has. A type not defined between the two objects is
    /// refused.
    pub fn associate_with(
        &mut self,
        from: &str,
        from_id: u64,
        to: &str,
        to_id: u64,
        types: &[u32],
    ) -> Result<Vec<String>, InputFailure> {
        let known: Vec<u32> = self
            .labels_between(from, to)
            .iter()
            .map(|(_, id, _)| *id)
            .collect();
        if let Some(unknown) = types.iter().find(|id| !known.contains(id)) {
            return Err(InputFailure {
                status: 400,
                category: "VALIDATION_ERROR",
                message: format!("{unknown} is not a valid association type between {from} and {to}"),
                detail: None,
                code: None,
                property: None,
            });
        }
        self.associate(from, from_id, to, to_id)?;
        self.add_types(from, from_id, to, to_id, types);
        Ok(self.labels_of(from, from_id, to, to_id))
    }

    /// How many links there are from records of `from` to records of `to`.
    pub fn association_count(&self, from: &str, to: &str) -> usize {
        self.associations
            .iter()
            .filter(|(f, _, t, _)| f == from && t == to)
            .count()
    }

    /// How many links from `from` to `to` carry a label (a type besides the default one).
    pub fn labelled_count(&self, from: &str, to: &str) -> usize {
        let default = default_association_type(from, to);
        self.link_types
            .iter()
            .filter(|((f, _, t, _), types)| f == from && t == to && types.iter().any(|id| *id != default))
            .count()
    }

    /// The labels (not the default type) a linked pair has, in this direction.
    pub fn labels_of(&self, from: &str, from_id: u64, to: &str, to_id: u64) -> Vec<String> {
        let types = self.types_of(from, from_id, to, to_id);
        self.labels_between(from, to)
            .into_iter()
            .filter(|(_, id, _)| types.contains(id))
            .filter_map(|(_, _, label)| label)
            .collect()
    }

    /// The type ids a linked pair has, in this direction.
    pub fn types_of(&self, from: &str, from_id: u64, to: &str, to_id: u64) -> BTreeSet<u32> {
        self.link_types
            .get(&(from.to_string(), from_id, to.to_string(), to_id))
            .cloned()
            .unwrap_or_default()
    }

    /// Takes labels off a linked pair (and their inverses); the link and its default type stay.
    pub fn remove_labels(&mut self, from: &str, from_id: u64, to: &str, to_id: u64, types: &[u32]) {
        let default = default_association_type(from, to);
        for type_id in types.iter().filter(|id| **id != default) {
            let inverse = self.inverse_type(from, to, *type_id);
            if let Some(held) = self
                .link_types
                .get_mut(&(from.to_string(), from_id, to.to_string(), to_id))
            {
                held.remove(type_id);
            }
            if let (Some(inverse), Some(held)) = (
                inverse,
                self.link_types
                    .get_mut(&(to.to_string(), to_id, from.to_string(), from_id)),
            ) {
                held.remove(&inverse);
            }
        }
    }

    /// Removes a link (both directions); `false` when there was none.
    pub fn disassociate(&mut self, from: &str, from_id: u64, to: &str, to_id: u64) -> bool {
        let removed = self
            .associations
            .remove(&(from.to_string(), from_id, to.to_string(), to_id));
        self.associations
            .remove(&(to.to_string(), to_id, from.to_string(), from_id));
        self.link_types
            .remove(&(from.to_string(), from_id, to.to_string(), to_id));
        self.link_types
            .remove(&(to.to_string(), to_id, from.to_string(), from_id));
        if removed {
            self.association_changed(from, from_id, to, to_id, true);
        }
        removed
    }

    /// A deal's link to a contact changed: HubSpot reports it on both sides.
    fn association_changed(&mut self, from: &str, from_id: u64, to: &str, to_id: u64, removed: bool) {
        let (deal, contact) = match (from, to) {
            ("deals", "contacts") => (from_id, to_id),
            ("contacts", "deals") => (to_id, from_id),
            _ => return,
        };
        for (object, id, kind, other) in [
            ("deals", deal, "DEAL_TO_CONTACT", contact),
            ("contacts", contact, "CONTACT_TO_DEAL", deal),
        ] {
            self.changes.push(StoreChange::identity(
                object,
                id,
                "associationChange",
                json!({
                    "associationType": kind,
                    "fromObjectId": id,
                    "toObjectId": other,
                    "associationRemoved": removed,
                    "isPrimaryAssociation": false,
                }),
            ));
        }
    }
}

/// HubSpot's default association type ids (HUBSPOT_DEFINED) between standard objects.
pub fn default_association_type(from: &str, to: &str) -> u32 {
    match (from, to) {
        ("deals", "contacts") => 3,
        ("contacts", "deals") => 4,
        ("contacts", "companies") => 279,
        ("companies", "contacts") => 280,
        ("deals", "companies") => 341,
        ("companies", "deals") => 342,
        ("notes", "contacts") => 202,
        ("contacts", "notes") => 201,
        ("notes", "deals") => 214,
        ("deals", "notes") => 213,
        ("notes", "companies") => 190,
        ("companies", "notes") => 189,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn upsert_creates_once_then_updates_the_same_record() {
        let mut store = Store::default();
        let (first, new) = store
            .upsert("contacts", "crm_sync_app_id", "u1", props(&[("email", "a@x.io")]))
            .unwrap();
        assert!(new);
        let (second, new) = store
            .upsert(
                "contacts",
                "crm_sync_app_id",
                "u1",
                props(&[("firstname", "Ada")]),
            )
            .unwrap();
        assert!(!new);
        assert_eq!(first.id, second.id);
        assert_eq!(second.properties["email"], "a@x.io");
        assert_eq!(store.records("contacts").count(), 1);
    }

    #[test]
    fn a_second_contact_with_the_same_email_conflicts_naming_the_existing_id() {
        let mut store = Store::default();
        let (first, _) = store
            .upsert("contacts", "crm_sync_app_id", "u1", props(&[("email", "a@x.io")]))
            .unwrap();
        let error = store
            .upsert("contacts", "crm_sync_app_id", "u2", props(&[("email", "a@x.io")]))
            .unwrap_err();
        assert_eq!(error.category, "CONFLICT");
        assert_eq!(
            error.message,
            format!("Contact already exists. Existing ID: {}", first.id)
        );
    }

    #[test]
    fn invalid_values_and_unknown_properties_are_validation_errors() {
        let store = Store::default();
        assert_eq!(
            store
                .validate("contacts", &props(&[("email", "nope")]))
                .unwrap_err()
                .code,
            Some("INVALID_EMAIL")
        );
        assert_eq!(
            store
                .validate("deals", &props(&[("amount", "lots")]))
                .unwrap_err()
                .code,
            Some("INVALID_DECIMAL")
        );
        assert_eq!(
            store
                .validate("deals", &props(&[("colour", "red")]))
                .unwrap_err()
                .code,
            Some("PROPERTY_DOESNT_EXIST")
        );
        assert!(
            store.validate("contacts", &props(&[("email", "")])).is_ok(),
            "an empty value clears"
        );
    }

    #[test]
    fn a_property_an_admin_removes_no_longer_exists_until_added_back() {
        let mut store = Store::default();
        store.remove_property("contacts", "phone");
        assert_eq!(
            store
                .validate("contacts", &props(&[("phone", "1")]))
                .unwrap_err()
                .code,
            Some("PROPERTY_DOESNT_EXIST")
        );
        store.add_property("contacts", "phone");
        assert!(store.validate("contacts", &props(&[("phone", "1")])).is_ok());
    }

    #[test]
    fn an_archived_record_frees_its_unique_values() {
        let mut store = Store::default();
        let (record, _) = store
            .upsert("contacts", "crm_sync_app_id", "u1", props(&[("email", "a@x.io")]))
            .unwrap();
        store.archive("contacts", record.id);
        assert!(store.get("contacts", record.id).is_none());
        let (again, new) = store
            .upsert("contacts", "crm_sync_app_id", "u1", props(&[("email", "a@x.io")]))
            .unwrap();
        assert!(new);
        assert_ne!(again.id, record.id);
    }
}
