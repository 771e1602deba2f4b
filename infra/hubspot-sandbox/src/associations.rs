//! The v4 associations API with labels: `batch/create` (links with association types),
//! `batch/read`, `batch/archive`, `batch/labels/archive`, and the label definitions
//! (`GET`/`POST …/{from}/{to}/labels`), in HubSpot's shapes (the SDK's
//! `BatchResponseLabelsBetweenObjectPair`, `BatchResponsePublicAssociationMultiWithLabel`,
//! `CollectionResponseAssociationSpecWithLabelNoPaging`).

use serde_json::{json, Value};

use crate::{hubspot_error, store_now, State};

/// HubSpot's object type id: a standard object's, or a custom one's own (`2-…`).
fn type_id_of(object: &str) -> String {
    match object {
        "contacts" => "0-1".into(),
        "companies" => "0-2".into(),
        "deals" => "0-3".into(),
        "notes" => "0-46".into(),
        custom => custom.to_string(),
    }
}

fn invalid(message: &str) -> (u16, Value) {
    (400, hubspot_error("VALIDATION_ERROR", message))
}

fn inputs(body: &[u8]) -> Result<Vec<Value>, (u16, Value)> {
    let parsed: Value =
        serde_json::from_slice(body).map_err(|error| invalid(&format!("Invalid input JSON: {error}")))?;
    match parsed.get("inputs").and_then(Value::as_array) {
        Some(inputs) if inputs.len() <= 100 => Ok(inputs.clone()),
        Some(_) => Err(invalid("Too many inputs: at most 100 a call")),
        None => Err(invalid("Invalid input JSON: `inputs` is required")),
    }
}

fn id_at(value: &Value, pointer: &str) -> Option<u64> {
    match value.pointer(pointer)? {
        Value::String(text) => text.parse().ok(),
        Value::Number(number) => number.as_u64(),
        _ => None,
    }
}

fn not_found(from: &str, from_id: u64) -> Value {
    json!({
        "status": "error", "category": "OBJECT_NOT_FOUND",
        "message": format!("No {from} with ID {from_id} exist"),
        "context": {"ids": [from_id.to_string()]}, "errors": [], "links": {},
    })
}

/// A batch answer: 201/200 when every input went through, else 207 with the errors.
fn batch_answer(ok: u16, results: Vec<Value>, errors: Vec<Value>) -> (u16, Value) {
    let mut body = json!({
        "status": "COMPLETE", "results": results,
        "startedAt": store_now(), "completedAt": store_now(),
    });
    if errors.is_empty() {
        return (ok, body);
    }
    body["numErrors"] = json!(errors.len());
    body["errors"] = Value::Array(errors);
    (207, body)
}

/// `POST …/batch/create`: `{inputs: [{from: {id}, to: {id}, types: [{associationCategory,
/// associationTypeId}]}]}`; each pair's labels come back.
pub fn create(state: &mut State, from: &str, to: &str, body: &[u8]) -> (u16, Value) {
    let inputs = match inputs(body) {
        Ok(inputs) => inputs,
        Err(answer) => return answer,
    };
    state.stats.batch_inputs += inputs.len() as u64;
    let (mut results, mut errors) = (Vec::new(), Vec::new());
    for input in &inputs {
        let (Some(from_id), Some(to_id)) = (id_at(input, "/from/id"), id_at(input, "/to/id")) else {
            return invalid("Each input needs from.id and to.id");
        };
        let types: Option<Vec<u32>> = input.get("types").and_then(Value::as_array).map(|types| {
            types
                .iter()
                .filter_map(|t| t.get("associationTypeId").and_then(Value::as_u64))
                .map(|id| id as u32)
                .collect()
        });
        let Some(types) = types.filter(|types| !types.is_empty()) else {
            return invalid("Each input needs at least one association type");
        };
        match state.store.associate_with(from, from_id, to, to_id, &types) {
            Ok(labels) => results.push(json!({
                "fromObjectTypeId": type_id_of(from), "fromObjectId": from_id,
                "toObjectTypeId": type_id_of(to), "toObjectId": to_id,
                "labels": labels,
            })),
            Err(failure) => errors.push(json!({
                "status": "error", "category": failure.category, "message": failure.message,
                "context": {"ids": [from_id.to_string(), to_id.to_string()]}, "errors": [], "links": {},
            })),
        }
    }
    batch_answer(201, results, errors)
}

/// `POST …/batch/read`: `{inputs: [{id}]}`; each record's linked records of `to`, with every
/// association type (the default one has no label).
pub fn read(state: &mut State, from: &str, to: &str, body: &[u8]) -> (u16, Value) {
    let inputs = match inputs(body) {
        Ok(inputs) => inputs,
        Err(answer) => return answer,
    };
    let (mut results, mut errors) = (Vec::new(), Vec::new());
    let definitions = state.store.labels_between(from, to);
    for input in &inputs {
        let Some(from_id) = id_at(input, "/id") else {
            return invalid("Each input needs an id");
        };
        if state.store.get(from, from_id).is_none() {
            errors.push(not_found(from, from_id));
            continue;
        }
        let mut linked: Vec<u64> = state
            .store
            .associations_of(from, from_id)
            .into_iter()
            .filter(|(object, _)| object == to)
            .map(|(_, id)| id)
            .collect();
        linked.sort_unstable();
        let to_list: Vec<Value> = linked
            .into_iter()
            .map(|to_id| {
                let held = state.store.types_of(from, from_id, to, to_id);
                let types: Vec<Value> = definitions
                    .iter()
                    .filter(|(_, id, _)| held.contains(id))
                    .map(|(category, id, label)| json!({"category": category, "typeId": id, "label": label}))
                    .collect();
                json!({"toObjectId": to_id, "associationTypes": types})
            })
            .collect();
        results.push(json!({"from": {"id": from_id.to_string()}, "to": to_list}));
    }
    batch_answer(200, results, errors)
}

/// `POST …/batch/archive`: `{inputs: [{from: {id}, to: [{id}]}]}`; every type of each pair
/// goes. 204.
pub fn archive(state: &mut State, from: &str, to: &str, body: &[u8]) -> (u16, Value) {
    let inputs = match inputs(body) {
        Ok(inputs) => inputs,
        Err(answer) => return answer,
    };
    for input in &inputs {
        let Some(from_id) = id_at(input, "/from/id") else {
            return invalid("Each input needs from.id");
        };
        for other in input.get("to").and_then(Value::as_array).into_iter().flatten() {
            if let Some(to_id) = id_at(other, "/id") {
                state.store.disassociate(from, from_id, to, to_id);
            }
        }
    }
    (204, Value::Null)
}

/// `POST …/batch/labels/archive`: as `batch/create`'s body; the given labels come off each pair,
/// the link stays. 204.
pub fn remove_labels(state: &mut State, from: &str, to: &str, body: &[u8]) -> (u16, Value) {
    let inputs = match inputs(body) {
        Ok(inputs) => inputs,
        Err(answer) => return answer,
    };
    for input in &inputs {
        let (Some(from_id), Some(to_id)) = (id_at(input, "/from/id"), id_at(input, "/to/id")) else {
            return invalid("Each input needs from.id and to.id");
        };
        let types: Vec<u32> = input
            .get("types")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|t| t.get("associationTypeId").and_then(Value::as_u64))
            .map(|id| id as u32)
            .collect();
        state.store.remove_labels(from, from_id, to, to_id, &types);
    }
    (204, Value::Null)
}

fn definitions(state: &State, from: &str, to: &str) -> Vec<Value> {
    state
        .store
        .labels_between(from, to)
        .into_iter()
        .map(|(category, id, label)| json!({"category": category, "typeId": id, "label": label}))
        .collect()
}

/// `GET …/{from}/{to}/labels`: the association types between two objects.
pub fn labels(state: &mut State, from: &str, to: &str) -> (u16, Value) {
    (200, json!({"results": definitions(state, from, to)}))
}

/// `POST …/{from}/{to}/labels` `{label, name, inverseLabel?}`: a new label (and its inverse);
/// the answer lists the new types.
pub fn define(state: &mut State, from: &str, to: &str, body: &[u8]) -> (u16, Value) {
    let request: Value = match serde_json::from_slice(body) {
        Ok(request) => request,
        Err(error) => return invalid(&format!("Invalid input JSON: {error}")),
    };
    let label = request
        .get("label")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .trim();
    let name = request
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .trim();
    if label.is_empty() || name.is_empty() || label.len() > 100 {
        return invalid("A label needs `label` (1 to 100 characters) and `name`");
    }
    let inverse = request
        .get("inverseLabel")
        .and_then(Value::as_str)
        .filter(|inverse| !inverse.trim().is_empty())
        .unwrap_or(label)
        .to_string();
    let (forward, backward) = state.store.define_label(from, to, label, &inverse);
    let mut results = vec![json!({"category": "USER_DEFINED", "typeId": forward, "label": label})];
    if request.get("inverseLabel").is_some() {
        results.push(json!({"category": "USER_DEFINED", "typeId": backward, "label": inverse}));
    }
    (200, json!({"results": results}))
}
