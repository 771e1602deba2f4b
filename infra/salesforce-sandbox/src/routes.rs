//! The sandbox's HTTP side: which path and method reach which call, and the checks every API call
//! passes first. What each call does to the org is in the crate root.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, Request, State};
use axum::http::header::{AUTHORIZATION, HOST};
use axum::http::HeaderMap;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{any, get, patch, MethodRouter};
use axum::Router;
use serde_json::Value;

use super::{
    collection, create_from_attributes, delete_by_ids, describe, form, not_found, query, query_more, refresh,
    reply, retrieve_by_body, retrieve_by_query, update, upsert, Shared, API_PATH,
};

/// The OAuth token endpoint, and the REST API behind the session, budget and fault checks.
pub(crate) fn router(shared: Shared) -> Router {
    let collections = format!("{API_PATH}/composite/sobjects");
    let composite: [(String, MethodRouter<Shared>); 3] = [
        (
            collections.clone(),
            patch(update_records).post(create_records).delete(delete_records),
        ),
        (
            format!("{collections}/{{sobject}}"),
            // `get` alone would also answer HEAD, which was always `NOT_FOUND` here.
            get(retrieve_records)
                .head(wrong_method)
                .post(retrieve_records_by_body),
        ),
        (
            format!("{collections}/{{sobject}}/{{external_id}}"),
            patch(upsert_records),
        ),
    ];
    let mut api: Router<Shared> = Router::new().route(
        &format!("{API_PATH}/sobjects/{{sobject}}/describe"),
        // Describe never looked at the method.
        any(describe_sobject),
    );
    for (resource, all) in [("query", false), ("queryAll", true)] {
        let run = get(move |state: State<Shared>, headers: HeaderMap, raw: RawQuery| {
            run_query(state, headers, raw, all)
        });
        api = api
            .route(&format!("{API_PATH}/{resource}/"), run.clone())
            .route(&format!("{API_PATH}/{resource}"), run)
            .route(&format!("{API_PATH}/{resource}/{{locator}}"), get(next_batch));
    }
    for (path, methods) in composite {
        // A trailing slash has always been tolerated here; clients that add one keep working.
        api = api
            .route(&format!("{path}/"), methods.clone())
            .route(&path, methods);
    }
    let api = api
        .method_not_allowed_fallback(wrong_method)
        .fallback(unknown_path)
        .layer(middleware::from_fn_with_state(shared.clone(), api_checks));
    Router::new()
        // Not an API call: no session, budget or injected fault applies; any method reaches it
        // and the form decides, as it always has.
        .route("/services/oauth2/token", any(token))
        .merge(api)
        // Bodies were never capped (200 records, or 2,000 ids, stay far below any cap anyway).
        .layer(DefaultBodyLimit::disable())
        .with_state(shared)
}

/// Marks an answer an injected late answer does not hold back: an unknown path, where nothing
/// was applied, was always answered at once.
#[derive(Clone, Copy)]
struct AnswerNow;

/// What every API call (an unknown path too) passes first, in Salesforce's order: the session,
/// the day's budget, then the injected faults. A late answer is applied, then held back past the
/// client's patience.
async fn api_checks(State(shared): State<Shared>, request: Request, next: Next) -> Response {
    let hold = {
        let bearer = request
            .headers()
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "));
        let mut state = shared.lock().unwrap();
        match state.admit(bearer) {
            Ok(hold) => hold,
            Err((status, body)) => return reply(status, &body, &state),
        }
    };
    let response = next.run(request).await;
    if let Some(hold) = hold {
        if response.extensions().get::<AnswerNow>().is_none() {
            tokio::time::sleep(hold).await;
        }
    }
    response
}

/// Runs `call` on the org and answers with its result; the records it wrote are then announced
/// by Outbound Message.
fn answer(shared: &Shared, call: impl FnOnce(&mut super::State) -> (u16, Value)) -> Response {
    let mut state = shared.lock().unwrap();
    let (status, body) = call(&mut state);
    let response = reply(status, &body, &state);
    state.notify(shared.clone());
    response
}

/// Salesforce's `NOT_FOUND`.
fn no_such_resource(shared: &Shared) -> Response {
    let state = shared.lock().unwrap();
    let (status, body) = not_found();
    reply(status, &body, &state)
}

/// `/services/oauth2/token`: the refresh-token grant.
async fn token(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let host = headers
        .get(HOST)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    let mut state = shared.lock().unwrap();
    state.stats.calls += 1;
    let (status, body) = refresh(&mut state, host, &body);
    reply(status, &body, &state)
}

/// `GET /sobjects/{type}/describe`.
async fn describe_sobject(State(shared): State<Shared>, Path(sobject): Path<String>) -> Response {
    let state = shared.lock().unwrap();
    let (status, body) = describe(&sobject);
    reply(status, &body, &state)
}

/// `PATCH /composite/sobjects/{type}/{externalIdField}`: upsert by the external id.
async fn upsert_records(
    State(shared): State<Shared>,
    Path((sobject, external_id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    answer(&shared, |state| {
        collection(state, &body, |state, record| {
            upsert(state, &sobject, &external_id, record)
        })
    })
}

/// `PATCH /composite/sobjects`: update by id.
async fn update_records(State(shared): State<Shared>, body: Bytes) -> Response {
    answer(&shared, |state| collection(state, &body, update))
}

/// `POST /composite/sobjects`: create, each record's type from its `attributes`.
async fn create_records(State(shared): State<Shared>, body: Bytes) -> Response {
    answer(&shared, |state| collection(state, &body, create_from_attributes))
}

/// `DELETE /composite/sobjects?ids=a,b`.
async fn delete_records(State(shared): State<Shared>, RawQuery(query): RawQuery) -> Response {
    let query = form(query.unwrap_or_default().as_bytes());
    answer(&shared, |state| delete_by_ids(state, &query))
}

/// `GET /composite/sobjects/{type}?ids=a,b&fields=F1,F2`.
async fn retrieve_records(
    State(shared): State<Shared>,
    Path(sobject): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let query = form(query.unwrap_or_default().as_bytes());
    answer(&shared, |state| retrieve_by_query(state, &sobject, &query))
}

/// `POST /composite/sobjects/{type}` with `{ids, fields}`.
async fn retrieve_records_by_body(
    State(shared): State<Shared>,
    Path(sobject): Path<String>,
    body: Bytes,
) -> Response {
    answer(&shared, |state| retrieve_by_body(state, &sobject, &body))
}

/// `GET /query/?q=…` and `GET /queryAll/?q=…`; `Sforce-Query-Options: batchSize=N` asks for
/// smaller batches (200 to 2,000).
async fn run_query(
    State(shared): State<Shared>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    all: bool,
) -> Response {
    let parameters = form(raw.unwrap_or_default().as_bytes());
    let batch = headers
        .get("sforce-query-options")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            value
                .split(',')
                .find_map(|part| part.trim().strip_prefix("batchSize="))
        })
        .and_then(|size| size.trim().parse::<usize>().ok())
        .map(|size| size.clamp(200, 2000));
    let mut state = shared.lock().unwrap();
    let (status, body) = match parameters.get("q") {
        Some(soql) => query(&mut state, soql, all, batch),
        None => (
            400,
            serde_json::json!([{"errorCode": "MALFORMED_QUERY", "message": "the q parameter is required"}]),
        ),
    };
    reply(status, &body, &state)
}

/// `GET /query/{locator}-{offset}`: the next batch of a query (of a `queryAll` too).
async fn next_batch(State(shared): State<Shared>, Path(locator): Path<String>) -> Response {
    let mut state = shared.lock().unwrap();
    let (status, body) = query_more(&mut state, &locator);
    reply(status, &body, &state)
}

/// A method a served path does not take: `NOT_FOUND`, after the checks like any API call.
async fn wrong_method(State(shared): State<Shared>) -> Response {
    no_such_resource(&shared)
}

/// A path the sandbox does not serve: `NOT_FOUND`, after the checks, never held back.
async fn unknown_path(State(shared): State<Shared>) -> Response {
    let mut response = no_such_resource(&shared);
    response.extensions_mut().insert(AnswerNow);
    response
}
