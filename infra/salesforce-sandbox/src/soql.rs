//! The SOQL the sandbox answers, and nothing more:
//! `SELECT f, … FROM Obj [WHERE c AND c …] [ORDER BY f [ASC|DESC]] [LIMIT n]`, where a condition
//! is `Field op literal` (`=`, `!=` or `<>`, `<`, `>`, `<=`, `>=`) or `Field IN ('a', …)`, and a literal
//! is a quoted string, `true`/`false`, `null`, a number or a datetime (`2026-11-30T00:00:00Z`).
//! Anything else is refused as Salesforce refuses a query it cannot parse (`MALFORMED_QUERY`);
//! a field the sObject lacks is `INVALID_FIELD`. Text compares without regard to case, as in SOQL.

use std::cmp::Ordering;

use serde_json::{Map, Value};

/// A parsed query; field names as the schema spells them.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Query {
    pub fields: Vec<String>,
    pub sobject: String,
    conditions: Vec<Condition>,
    order_by: Option<(String, bool)>,
    pub limit: Option<usize>,
}

#[derive(Debug, Clone, PartialEq)]
enum Literal {
    Text(String),
    Bool(bool),
    Null,
    Number(f64),
    DateTime(i64),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Gt,
    Le,
    Ge,
    In,
}

#[derive(Debug, Clone, PartialEq)]
struct Condition {
    field: String,
    op: Op,
    values: Vec<Literal>,
}

/// Why a query was refused: Salesforce's error code and message.
pub(crate) type Refusal = (&'static str, String);

fn malformed(message: impl Into<String>) -> Refusal {
    ("MALFORMED_QUERY", message.into())
}

fn tokens(soql: &str) -> Result<Vec<String>, Refusal> {
    let mut out = Vec::new();
    let mut chars = soql.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            ',' | '(' | ')' => {
                out.push(c.to_string());
                chars.next();
            }
            '\'' => {
                chars.next();
                let mut text = String::from("'");
                loop {
                    match chars.next() {
                        Some('\\') => text.extend(chars.next()),
                        Some('\'') => break,
                        Some(c) => text.push(c),
                        None => return Err(malformed("unterminated string literal")),
                    }
                }
                out.push(text);
            }
            '=' | '!' | '<' | '>' => {
                chars.next();
                let mut op = c.to_string();
                if chars.peek() == Some(&'=') || (c == '<' && chars.peek() == Some(&'>')) {
                    op.extend(chars.next());
                }
                out.push(op);
            }
            _ => {
                let mut word = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || ",()=!<>'".contains(c) {
                        break;
                    }
                    word.push(c);
                    chars.next();
                }
                out.push(word);
            }
        }
    }
    Ok(out)
}

fn literal(token: &str) -> Result<Literal, Refusal> {
    if let Some(text) = token.strip_prefix('\'') {
        return Ok(Literal::Text(text.to_string()));
    }
    match token.to_ascii_lowercase().as_str() {
        "true" => return Ok(Literal::Bool(true)),
        "false" => return Ok(Literal::Bool(false)),
        "null" => return Ok(Literal::Null),
        _ => {}
    }
    if let Some(ms) = datetime_ms(token) {
        return Ok(Literal::DateTime(ms));
    }
    token
        .parse::<f64>()
        .map(Literal::Number)
        .map_err(|_| malformed(format!("unexpected token: '{token}'")))
}

/// A datetime as SOQL writes it (`2026-11-30T00:00:00Z`, or with `.000` and an offset), or as
/// the sandbox stores and the REST API renders it.
pub(crate) fn datetime_ms(text: &str) -> Option<i64> {
    use time::format_description::well_known::Rfc3339;
    const REST: &[time::format_description::FormatItem<'_>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond][offset_hour sign:mandatory][offset_minute]"
    );
    time::OffsetDateTime::parse(text, &Rfc3339)
        .or_else(|_| time::OffsetDateTime::parse(text, REST))
        .ok()
        .and_then(|at| i64::try_from(at.unix_timestamp_nanos() / 1_000_000).ok())
}

/// Parses `soql`; `field` gives a field's schema spelling on an sObject (SOQL names are
/// case-insensitive), `None` when the sObject has no such field or is unknown.
pub(crate) fn parse(soql: &str, field: impl Fn(&str, &str) -> Option<String>) -> Result<Query, Refusal> {
    let tokens = tokens(soql)?;
    let mut at = 0;
    let keyword = |at: usize, word: &str| tokens.get(at).is_some_and(|t| t.eq_ignore_ascii_case(word));
    if !keyword(0, "SELECT") {
        return Err(malformed("a query starts with SELECT"));
    }
    at += 1;
    let mut names = Vec::new();
    loop {
        let name = tokens
            .get(at)
            .ok_or_else(|| malformed("unexpected end of query"))?;
        names.push(name.clone());
        at += 1;
        if tokens.get(at).map(String::as_str) == Some(",") {
            at += 1;
            continue;
        }
        break;
    }
    if !keyword(at, "FROM") {
        return Err(malformed("expecting FROM"));
    }
    let sobject = tokens
        .get(at + 1)
        .ok_or_else(|| malformed("unexpected end of query"))?
        .clone();
    at += 2;
    if field(&sobject, "Id").is_none() {
        return Err((
            "INVALID_TYPE",
            format!("sObject type '{sobject}' is not supported."),
        ));
    }
    let resolve = |name: &str| {
        field(&sobject, name).ok_or_else(|| {
            (
                "INVALID_FIELD",
                format!("No such column '{name}' on entity '{sobject}'."),
            )
        })
    };
    let fields = names.iter().map(|name| resolve(name)).collect::<Result<_, _>>()?;
    let mut conditions = Vec::new();
    if keyword(at, "WHERE") {
        at += 1;
        loop {
            let name = tokens
                .get(at)
                .ok_or_else(|| malformed("unexpected end of query"))?;
            let field = resolve(name)?;
            let op_token = tokens
                .get(at + 1)
                .ok_or_else(|| malformed("unexpected end of query"))?;
            at += 2;
            let op = match op_token.to_ascii_uppercase().as_str() {
                "=" => Op::Eq,
                "!=" | "<>" => Op::Ne,
                "<" => Op::Lt,
                ">" => Op::Gt,
                "<=" => Op::Le,
                ">=" => Op::Ge,
                "IN" => Op::In,
                other => return Err(malformed(format!("unexpected token: '{other}'"))),
            };
            let values = if op == Op::In {
                if tokens.get(at).map(String::as_str) != Some("(") {
                    return Err(malformed("IN takes a list in parentheses"));
                }
                at += 1;
                let mut values = Vec::new();
                loop {
                    let token = tokens
                        .get(at)
                        .ok_or_else(|| malformed("unexpected end of query"))?;
                    values.push(literal(token)?);
                    at += 1;
                    match tokens.get(at).map(String::as_str) {
                        Some(",") => at += 1,
                        Some(")") => {
                            at += 1;
                            break;
                        }
                        _ => return Err(malformed("an IN list ends with ')'")),
                    }
                }
                values
            } else {
                let token = tokens
                    .get(at)
                    .ok_or_else(|| malformed("unexpected end of query"))?;
                at += 1;
                vec![literal(token)?]
            };
            conditions.push(Condition { field, op, values });
            if keyword(at, "AND") {
                at += 1;
                continue;
            }
            break;
        }
    }
    let mut order_by = None;
    if keyword(at, "ORDER") && keyword(at + 1, "BY") {
        let name = tokens
            .get(at + 2)
            .ok_or_else(|| malformed("unexpected end of query"))?;
        at += 3;
        let descending = keyword(at, "DESC");
        if descending || keyword(at, "ASC") {
            at += 1;
        }
        order_by = Some((resolve(name)?, descending));
    }
    let mut limit = None;
    if keyword(at, "LIMIT") {
        let count = tokens
            .get(at + 1)
            .ok_or_else(|| malformed("unexpected end of query"))?;
        limit = Some(count.parse().map_err(|_| malformed("LIMIT takes a number"))?);
        at += 2;
    }
    if let Some(extra) = tokens.get(at) {
        return Err(malformed(format!("unexpected token: '{extra}'")));
    }
    Ok(Query {
        fields,
        sobject,
        conditions,
        order_by,
        limit,
    })
}

fn compare(value: Option<&Value>, literal: &Literal) -> Option<Ordering> {
    let value = value.filter(|v| !v.is_null());
    match literal {
        Literal::Null => Some(if value.is_none() {
            Ordering::Equal
        } else {
            Ordering::Greater
        }),
        Literal::Bool(want) => Some(value.and_then(Value::as_bool).unwrap_or(false).cmp(want)),
        // SOQL compares text without regard to case.
        Literal::Text(want) => value
            .and_then(Value::as_str)
            .map(|have| have.to_lowercase().cmp(&want.to_lowercase())),
        Literal::Number(want) => value
            .and_then(Value::as_f64)
            .and_then(|have| have.partial_cmp(want)),
        Literal::DateTime(want) => value
            .and_then(Value::as_str)
            .and_then(datetime_ms)
            .map(|have| have.cmp(want)),
    }
}

impl Query {
    /// Whether a stored record meets every condition.
    pub fn matches(&self, record: &Map<String, Value>) -> bool {
        self.conditions.iter().all(|condition| {
            let value = record.get(&condition.field);
            let ordering = |literal| compare(value, literal);
            match condition.op {
                Op::Eq => ordering(&condition.values[0]) == Some(Ordering::Equal),
                Op::Ne => ordering(&condition.values[0]).is_some_and(|o| o != Ordering::Equal),
                Op::Lt => ordering(&condition.values[0]) == Some(Ordering::Less),
                Op::Gt => ordering(&condition.values[0]) == Some(Ordering::Greater),
                Op::Le => ordering(&condition.values[0]).is_some_and(|o| o != Ordering::Greater),
                Op::Ge => ordering(&condition.values[0]).is_some_and(|o| o != Ordering::Less),
                Op::In => condition
                    .values
                    .iter()
                    .any(|literal| ordering(literal) == Some(Ordering::Equal)),
            }
        })
    }

    /// Sorts matched records as `ORDER BY` asks (text and datetimes as stored compare in order).
    pub fn sort(&self, records: &mut [Map<String, Value>]) {
        let Some((field, descending)) = &self.order_by else {
            return;
        };
        let key = |record: &Map<String, Value>| record.get(field).map(Value::to_string).unwrap_or_default();
        records.sort_by(|a, b| {
            let order = key(a).cmp(&key(b));
            if *descending {
                order.reverse()
            } else {
                order
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field(_: &str, name: &str) -> Option<String> {
        ["Id", "MasterRecordId", "IsDeleted", "SystemModstamp"]
            .into_iter()
            .find(|known| known.eq_ignore_ascii_case(name))
            .map(str::to_string)
    }

    fn record(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap()
    }

    #[test]
    fn the_merge_query_crm_sync_sends_parses_and_selects_merged_records_after_the_stamp() {
        let query = parse(
            "SELECT Id, MasterRecordId, SystemModstamp FROM Contact WHERE IsDeleted = true \
             AND MasterRecordId != null AND SystemModstamp > 2026-11-30T00:00:00Z ORDER BY SystemModstamp",
            field,
        )
        .unwrap();
        assert_eq!(query.fields, ["Id", "MasterRecordId", "SystemModstamp"]);
        let merged = record(json!({"Id": "a", "IsDeleted": true, "MasterRecordId": "b",
                                   "SystemModstamp": "2026-11-30T00:00:01.000Z"}));
        assert!(query.matches(&merged));
        let deleted = record(json!({"Id": "a", "IsDeleted": true, "MasterRecordId": null,
                                    "SystemModstamp": "2026-11-30T00:00:01.000Z"}));
        assert!(!query.matches(&deleted));
        let earlier = record(json!({"Id": "a", "IsDeleted": true, "MasterRecordId": "b",
                                    "SystemModstamp": "2026-11-29T23:59:59.000Z"}));
        assert!(!query.matches(&earlier));
        let live = record(json!({"Id": "a", "SystemModstamp": "2026-11-30T00:00:01.000Z"}));
        assert!(!query.matches(&live));
    }

    #[test]
    fn names_are_case_insensitive_and_in_lists_match_any_value() {
        let query = parse(
            "select id from Contact where ID in ('x', 'y') AND id <> 'x' limit 5",
            field,
        )
        .unwrap();
        assert_eq!(query.limit, Some(5));
        assert!(query.matches(&record(json!({"Id": "y"}))));
        assert!(
            query.matches(&record(json!({"Id": "Y"}))),
            "text compares without regard to case"
        );
        assert!(!query.matches(&record(json!({"Id": "x"}))), "<> is !=");
        assert!(!query.matches(&record(json!({"Id": "z"}))));
    }

    #[test]
    fn unknown_fields_and_syntax_are_refused_with_salesforces_codes() {
        assert_eq!(
            parse("SELECT Nope FROM Contact", field).unwrap_err().0,
            "INVALID_FIELD"
        );
        assert_eq!(
            parse("SELECT Id Contact", field).unwrap_err().0,
            "MALFORMED_QUERY"
        );
        assert_eq!(
            parse("SELECT Id FROM Contact WHERE Id = 'x", field)
                .unwrap_err()
                .0,
            "MALFORMED_QUERY"
        );
        assert_eq!(
            parse("SELECT Id FROM Contact WHERE Id = 'x' OR Id = 'y'", field)
                .unwrap_err()
                .0,
            "MALFORMED_QUERY"
        );
    }
}
