//! Why records failed, as an operator groups them: the cause of a record's last error (the
//! CRM's error code and the property it names, or crm-sync's own reason), and what fixes it.
//! Three hundred records refused for one missing property are one cause with one fix.

/// Where the fix of a cause is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FixIn {
    /// In the CRM (a property, a credential, a rule): then a re-sync sends the records again.
    Crm,
    /// In the app's data: the app's next change of the record syncs it; a re-sync would send
    /// the same refused value again.
    App,
    /// A decision on each record's page (an identity conflict).
    Record,
    /// Nothing to fix: the CRM or the network failed for a while; a re-sync tries again.
    Wait,
    /// Not known: the record's timeline has the CRM's whole answer.
    Unknown,
}

impl FixIn {
    /// Whether re-syncing the group, with nothing changed, can succeed.
    pub fn resync_helps(self) -> bool {
        matches!(self, FixIn::Crm | FixIn::Wait | FixIn::Unknown)
    }
}

/// One cause of failure: a code and, where the error names one, the property or field.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cause {
    /// The CRM's error code (`PROPERTY_DOESNT_EXIST`), `HTTP_401` for a whole call refused,
    /// or crm-sync's own (`IDENTITY_CONFLICT`, `GAVE_UP`, `LINK_WAITS`, `MERGE_WAITS`,
    /// `STATE_TOO_LARGE`, `OTHER`).
    pub code: String,
    pub field: Option<String>,
}

/// Codes whose records name a property the CRM does not have.
const MISSING_PROPERTY: [&str; 2] = ["PROPERTY_DOESNT_EXIST", "INVALID_FIELD"];
/// Codes of a value the CRM refuses for its property.
const BAD_VALUE: [&str; 19] = [
    "INVALID_EMAIL",
    "INVALID_EMAIL_ADDRESS",
    "INVALID_DECIMAL",
    "INVALID_INTEGER",
    "INVALID_NUMBER",
    "INVALID_DATE",
    "INVALID_DATETIME",
    "INVALID_OPTION",
    "INVALID_ENUMERATION_OPTION",
    "INVALID_BOOLEAN",
    "INVALID_PHONE_NUMBER",
    "INVALID_LONG_STRING",
    "INVALID_TYPE_ON_FIELD_IN_RECORD",
    "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
    "STRING_TOO_LONG",
    "NUMBER_OUTSIDE_VALID_RANGE",
    "FIELD_CUSTOM_VALIDATION_EXCEPTION",
    "VALIDATION_ERROR",
    "INVALID_LABEL",
];
/// Codes of a permission crm-sync's CRM user or app lacks.
const NO_PERMISSION: [&str; 5] = [
    "HTTP_403",
    "INSUFFICIENT_ACCESS",
    "INSUFFICIENT_ACCESS_OR_READONLY",
    "INVALID_FIELD_FOR_INSERT_UPDATE",
    "MISSING_SCOPES",
];

impl Cause {
    /// A stable key for links and forms: `CODE` or `CODE/field`.
    pub fn key(&self) -> String {
        match &self.field {
            Some(field) => format!("{}/{field}", self.code),
            None => self.code.clone(),
        }
    }

    pub fn fix_in(&self) -> FixIn {
        let code = self.code.as_str();
        match code {
            _ if MISSING_PROPERTY.contains(&code) || NO_PERMISSION.contains(&code) => FixIn::Crm,
            _ if BAD_VALUE.contains(&code) => FixIn::App,
            "REQUIRED_FIELD_MISSING" | "STATE_TOO_LARGE" => FixIn::App,
            "HTTP_401" | "DUPLICATES_DETECTED" | "DUPLICATE_VALUE" => FixIn::Crm,
            "IDENTITY_CONFLICT" => FixIn::Record,
            "GAVE_UP" | "LINK_WAITS" | "MERGE_WAITS" => FixIn::Wait,
            _ => FixIn::Unknown,
        }
    }

    /// What to do, written for an operator.
    pub fn hint(&self) -> String {
        // `property “phone”`, or `a property` when the error names none.
        let named = |what: &str| match self.field.as_deref() {
            Some(field) => format!("{what} “{field}”"),
            None => format!("a {what}"),
        };
        let code = self.code.as_str();
        match code {
            _ if MISSING_PROPERTY.contains(&code) => format!(
                "The CRM lacks {} that these records write. Create it in the CRM (or take it out of \
                 the mapping), then re-sync them.",
                named("property")
            ),
            _ if NO_PERMISSION.contains(&code) => format!(
                "The CRM user or app crm-sync signs in as may not write {} (a missing scope, \
                 field-level security, or a read-only field). Grant it in the CRM, or take the field \
                 out of the mapping; then re-sync these records.",
                named("field")
            ),
            _ if BAD_VALUE.contains(&code) => format!(
                "The CRM refuses the app's value of {}. Correct it in the app: the app's next change \
                 syncs the record, and a re-sync before that sends the same value again. If the CRM \
                 should accept it (a new option, a longer field), change the property in the CRM, then \
                 re-sync.",
                named("property")
            ),
            "REQUIRED_FIELD_MISSING" => format!(
                "The CRM requires {}, and these records have no value for it. Give it a value in the \
                 app (or map an app field to it), or make it optional in the CRM; then re-sync.",
                named("field")
            ),
            "STATE_TOO_LARGE" => "The records are too large for crm-sync to keep (DynamoDB's 400 KB item \
                                  limit). Shorten their largest fields in the app; the next change syncs them."
                .to_string(),
            "IDENTITY_CONFLICT" => "Two app records claim one CRM record. Open each record: merge the \
                                    duplicates in the CRM, or let them share the CRM record; then re-sync."
                .to_string(),
            "DUPLICATES_DETECTED" | "DUPLICATE_VALUE" => format!(
                "A duplicate rule, or {} that must be unique in the CRM, blocks these records. Merge the \
                 duplicates in the CRM or relax the rule, then re-sync.",
                named("field")
            ),
            "HTTP_401" => "The CRM refused crm-sync's credentials. Renew the token or secret in Secrets \
                           Manager, then re-sync these records."
                .to_string(),
            "HTTP_404" => "The CRM answered that what these records write to does not exist (deleted or \
                           merged there, or a custom object's name is wrong). Open a record's timeline for \
                           the call; fix the mapping or the CRM, then re-sync."
                .to_string(),
            "GAVE_UP" => "The CRM kept failing or timing out until crm-sync gave up. Nothing is wrong with \
                          the records: once the CRM answers again (see its status page), re-sync them."
                .to_string(),
            "LINK_WAITS" => "The records link to records not in the CRM yet. Re-sync (or fix) the linked \
                             records first; then re-sync these."
                .to_string(),
            "MERGE_WAITS" => "The CRM merged a record these are on, and crm-sync waits for the merge's \
                              event to know which app record owns it. Check the merge in the CRM, then \
                              re-sync."
                .to_string(),
            _ => "Open a record: its timeline has the CRM's whole answer. Re-sync once the cause is fixed."
                .to_string(),
        }
    }
}

/// The cause of a record's last error, as the sync and its adapters word it.
pub fn cause_of(error: &str) -> Cause {
    let error = error.trim();
    // A record held back (an identity conflict waiting for an operator) says why after `held: `.
    let error = error.strip_prefix("held: ").unwrap_or(error);
    if error.starts_with("identity conflict:") {
        return own("IDENTITY_CONFLICT");
    }
    if (error.starts_with("gave up after waiting") && error.contains("for the linked records"))
        || error.contains("is not in the CRM yet")
    {
        return own("LINK_WAITS");
    }
    if error.contains("waiting for the merge's event") {
        return own("MERGE_WAITS");
    }
    if let Some(rest) = error.strip_prefix("gave up after") {
        // `gave up after 5 attempts: <the last failure>`: a failure with a cause of its own (a
        // refused credential, a CRM code) is grouped by it; an outage is grouped as one.
        let inner = rest.split_once(": ").map_or("", |(_, inner)| inner);
        let cause = cause_of(inner);
        return if cause.code == "OTHER" {
            own("GAVE_UP")
        } else {
            cause
        };
    }
    if error.starts_with("the record's sync state would take")
        || error.starts_with("the record's sync state cannot take")
    {
        return own("STATE_TOO_LARGE");
    }
    if let Some(status) = http_status(error) {
        return Cause {
            code: format!("HTTP_{status}"),
            field: field_named(error),
        };
    }
    match leading_code(error) {
        Some((code, message)) => Cause {
            code: code.to_string(),
            field: field_named(message),
        },
        None => own("OTHER"),
    }
}

fn own(code: &str) -> Cause {
    Cause {
        code: code.to_string(),
        field: None,
    }
}

/// `CODE: message`, the form of a CRM's refusal of one record.
fn leading_code(error: &str) -> Option<(&str, &str)> {
    let (code, message) = error.split_once(':')?;
    let is_code = code.len() >= 3
        && code.len() <= 64
        && code
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        && code.starts_with(|c: char| c.is_ascii_uppercase());
    is_code.then(|| (code, message.trim()))
}

/// A whole call refused (`POST /crm/… -> 401: …`): its 4xx status.
fn http_status(error: &str) -> Option<u16> {
    let (_, after) = error.split_once(" -> ")?;
    let status: u16 = after.get(..3)?.parse().ok()?;
    (400..500).contains(&status).then_some(status)
}

/// The property or field a CRM's message names, in the forms the CRMs use.
fn field_named(message: &str) -> Option<String> {
    // The adapters' own suffixes, read from the end: a value quoted earlier in the message
    // cannot pose as one.
    let last = |start: &str, end: char| -> Option<String> {
        let rest = &message[message.rfind(start)? + start.len()..];
        clean(&rest[..rest.find(end)?])
    };
    let first = |start: &str, end: char| -> Option<String> {
        let rest = &message[message.find(start)? + start.len()..];
        clean(&rest[..rest.find(end)?])
    };
    last("(property ", ')')
        .or_else(|| last("(fields: ", ')'))
        // HubSpot: `Property "phone" does not exist`, and its validation details' `"name":"email"`.
        .or_else(|| first("Property \"", '"'))
        .or_else(|| first("\"name\":\"", '"'))
        // Salesforce: `Required fields are missing: [LastName]`, `No such column 'Foo__c' …`.
        .or_else(|| first("missing: [", ']'))
        .or_else(|| first("No such column '", '\''))
}

/// A field name fit for a key: short, and without characters a form or URL would mangle.
fn clean(value: &str) -> Option<String> {
    let value = value.trim();
    let fit = !value.is_empty()
        && value.len() <= 100
        && value
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | ',' | ' '));
    fit.then(|| value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cause(code: &str, field: Option<&str>) -> Cause {
        Cause {
            code: code.into(),
            field: field.map(str::to_string),
        }
    }

    #[test]
    fn a_crms_refusal_is_grouped_by_its_code_and_the_property_it_names() {
        for (error, expected) in [
            (
                "PROPERTY_DOESNT_EXIST: Property \"phone\" does not exist",
                cause("PROPERTY_DOESNT_EXIST", Some("phone")),
            ),
            (
                "INVALID_EMAIL: Email address bob@ is invalid (property email)",
                cause("INVALID_EMAIL", Some("email")),
            ),
            (
                r#"VALIDATION_ERROR: Property values were not valid: [{"isValid":false,"message":"x","error":"INVALID_DECIMAL","name":"amount"}]"#,
                cause("VALIDATION_ERROR", Some("amount")),
            ),
            (
                "REQUIRED_FIELD_MISSING: Required fields are missing: [LastName]",
                cause("REQUIRED_FIELD_MISSING", Some("LastName")),
            ),
            (
                "INVALID_FIELD: No such column 'Shoe__c' on entity 'Contact'",
                cause("INVALID_FIELD", Some("Shoe__c")),
            ),
            (
                "STRING_TOO_LONG: Title: data value too large: aaaa (max length=80) (fields: Title)",
                cause("STRING_TOO_LONG", Some("Title")),
            ),
            (
                "INVALID_EMAIL_ADDRESS: Email: invalid email address: bob (fields: Email)",
                cause("INVALID_EMAIL_ADDRESS", Some("Email")),
            ),
            (
                "gave up after 5 attempts: NOT_REPORTED: HubSpot's response did not report this input",
                cause("NOT_REPORTED", None),
            ),
            (
                "NOT_CLEARABLE: Pipedrive cannot clear it",
                cause("NOT_CLEARABLE", None),
            ),
        ] {
            assert_eq!(cause_of(error), expected, "{error}");
        }
    }

    #[test]
    fn crm_syncs_own_reasons_are_causes_of_their_own() {
        for (error, code) in [
            (
                "identity conflict: CRM record 7 already belongs to app record u-2",
                "IDENTITY_CONFLICT",
            ),
            ("gave up after 5 attempts: 503", "GAVE_UP"),
            (
                "gave up after waiting 86401 s for the linked records: contact/u-1 is not in the CRM yet",
                "LINK_WAITS",
            ),
            (
                "the record's sync state would take about 390 KB with this change, more than the 360 KB \
                 one DynamoDB item can safely hold; shorten the record's largest fields",
                "STATE_TOO_LARGE",
            ),
            (
                "held: identity conflict: CRM record 7 already belongs to app record u-2",
                "IDENTITY_CONFLICT",
            ),
            (
                "gave up after 5 attempts: contact u-1 is not in the CRM yet, so the association waits",
                "LINK_WAITS",
            ),
            (
                "gave up after 3 attempts: the CRM merged CRM record 1 into 2, which app record u-9 is on \
                 too: waiting for the merge's event to decide which app record owns it",
                "MERGE_WAITS",
            ),
            // 401 and 403 are retried (a rotated token may come): the last failure is the cause.
            (
                "gave up after 5 attempts: POST /crm/objects/2026-03/contacts/batch/upsert -> 401: \
                 authentication failed: expired",
                "HTTP_401",
            ),
            (
                "gave up after 5 attempts: POST /api/v2/persons -> 403: authentication failed: scope",
                "HTTP_403",
            ),
            ("gave up after 5 attempts: POST /x -> 503: busy", "GAVE_UP"),
            ("POST /api/v2/persons -> 404: not found", "HTTP_404"),
            ("something nobody foresaw", "OTHER"),
            ("", "OTHER"),
        ] {
            assert_eq!(cause_of(error), cause(code, None), "{error}");
        }
    }

    #[test]
    fn a_field_that_would_not_survive_a_link_is_left_out_of_the_cause() {
        let long = format!(
            "PROPERTY_DOESNT_EXIST: Property \"{}\" does not exist",
            "p".repeat(101)
        );
        assert_eq!(cause_of(&long).field, None);
        let odd = "PROPERTY_DOESNT_EXIST: Property \"a&b=<c>\" does not exist";
        assert_eq!(cause_of(odd).field, None);
        let unclosed = "PROPERTY_DOESNT_EXIST: Property \"phone";
        assert_eq!(cause_of(unclosed).field, None);
    }

    #[test]
    fn an_app_value_quoted_in_the_message_cannot_pose_as_the_property() {
        let error = "INVALID_EMAIL: Email address a(property password)@x is invalid (property email)";
        assert_eq!(cause_of(error).field.as_deref(), Some("email"));
    }

    #[test]
    fn a_lowercase_or_spaced_prefix_is_not_taken_for_a_code() {
        assert_eq!(
            cause_of("could not look up who holds CRM record 9: x").code,
            "OTHER"
        );
        assert_eq!(cause_of("Not Found: x").code, "OTHER");
    }

    #[test]
    fn the_hint_says_where_the_fix_is_made_and_whether_a_resync_can_help() {
        let missing = cause("PROPERTY_DOESNT_EXIST", Some("phone"));
        assert_eq!(missing.fix_in(), FixIn::Crm);
        assert!(missing.fix_in().resync_helps());
        assert!(missing.hint().contains("property “phone”"), "{}", missing.hint());
        assert!(
            cause("PROPERTY_DOESNT_EXIST", None)
                .hint()
                .starts_with("The CRM lacks a property that"),
            "an error naming no property still reads"
        );
        assert!(missing.hint().contains("Create it in the CRM"));
        let email = cause("INVALID_EMAIL", Some("email"));
        assert_eq!(email.fix_in(), FixIn::App);
        assert!(!email.fix_in().resync_helps());
        assert!(email.hint().contains("Correct it in the app"));
        assert_eq!(cause("IDENTITY_CONFLICT", None).fix_in(), FixIn::Record);
        assert_eq!(cause("GAVE_UP", None).fix_in(), FixIn::Wait);
        assert_eq!(cause("HTTP_401", None).fix_in(), FixIn::Crm);
        assert_eq!(cause("OTHER", None).fix_in(), FixIn::Unknown);
    }

    #[test]
    fn a_key_names_the_code_and_the_field() {
        assert_eq!(
            cause("PROPERTY_DOESNT_EXIST", Some("phone")).key(),
            "PROPERTY_DOESNT_EXIST/phone"
        );
        assert_eq!(cause("GAVE_UP", None).key(), "GAVE_UP");
    }
}
