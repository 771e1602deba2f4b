"""HubSpot contract suite: HubSpot's official Python client (hubspot-api-client 12.0.0) as the oracle.

It drives a HubSpot (the local sandbox, infra/hubspot-sandbox, or a real account) through the
SDK, with every call crm-sync's HubSpot client makes (shared/src/adapters/hubspot/client.rs), and
asserts that the SDK's typed models deserialize the answers with the expected values:

- batch upsert (idProperty crm_sync_app_id, objectWriteTraceId), update, archive (204), read
  (properties; missing ids) of contacts, deals and notes;
- default associations (deals->contacts, notes->contacts, notes->deals), SDK model
  PublicDefaultAssociation;
- properties metadata (names, types, unique values);
- errors: a whole-call 409 CONFLICT on an existing email (batch create without
  objectWriteTraceId, batch upsert), 207 multi-status for batch create with objectWriteTraceId,
  400 VALIDATION_ERROR (unknown property, wrong type), 429 with policyName;
- values: notes take hs_timestamp as epoch ms and as UTC text; date/datetime properties read
  back as ISO text.

Each check runs on both path families: the legacy one (v3 objects and properties, v4
associations) through the SDK's own methods, and the date-versioned one
(/crm/objects/2026-03/..., /crm/associations/2026-03/..., /crm/properties/2026-03/...), which
SDK 12.0.0 does not call natively, through the same SDK ApiClient (`call_api`, same request
models, same response model classes and status maps).

Environment: HUBSPOT_BASE_URL (e.g. http://127.0.0.1:3101), HUBSPOT_TOKEN; optional
HUBSPOT_API_VERSION (default 2026-03). Checks that need the sandbox's control API (/_sandbox:
429s) are skipped where it is absent. Records are keyed by a per-run id, so runs do not collide.

    python3 -m venv /tmp/contract-venv && /tmp/contract-venv/bin/pip install -r infra/requirements-contract.txt
    HUBSPOT_BASE_URL=http://127.0.0.1:3101 HUBSPOT_TOKEN=sandbox-token \
        /tmp/contract-venv/bin/python tests/contract/hubspot_contract.py

Prints one PASS/FAIL/SKIP line per check and exits non-zero if any failed.
"""

import datetime as dt
import importlib.metadata as metadata
import json
import os
import random
import sys
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import Checks, Skip, env, short  # noqa: E402

import hubspot  # noqa: E402
from hubspot import HubSpot  # noqa: E402
import hubspot.crm.associations.v4 as assoc_models  # noqa: E402
import hubspot.crm.associations.v4.schema as assoc_schema_models  # noqa: E402
import hubspot.crm.companies as company_models  # noqa: E402
import hubspot.crm.objects as object_models  # noqa: E402
import hubspot.crm.schemas as schema_models  # noqa: E402
import hubspot.crm.contacts as contact_models  # noqa: E402
import hubspot.crm.deals as deal_models  # noqa: E402
import hubspot.crm.objects.notes as note_models  # noqa: E402
import hubspot.crm.properties as property_models  # noqa: E402

BASE = env("HUBSPOT_BASE_URL").rstrip("/")
TOKEN = env("HUBSPOT_TOKEN")
VERSION = env("HUBSPOT_API_VERSION", "2026-03")
ID_PROPERTY = "crm_sync_app_id"
RUN = f"{int(time.time())}{random.randint(100, 999)}"

# 2026-11-27T10:15:00Z, as crm-sync writes datetimes (epoch ms) and as UTC text.
INSTANT = dt.datetime(2026, 11, 27, 10, 15, tzinfo=dt.timezone.utc)
INSTANT_MS = str(int(INSTANT.timestamp() * 1000))
INSTANT_TEXT = "2026-11-27T10:15:00Z"
DATE_PROPERTIES = {"closedate", "hs_timestamp"}
MISSING_ID = "990000000001"

# SDK 12.0.0 ships with client_side_validation off (e.g. crm/contacts/configuration.py:201), so
# its models take any JSON; on (the default here), a model refuses a body that lacks a field the
# SDK's OpenAPI spec requires. HUBSPOT_SDK_STRICT=0 runs with the SDK's own default.
STRICT = os.environ.get("HUBSPOT_SDK_STRICT", "1") != "0"
client = HubSpot(access_token=TOKEN, host=BASE, client_side_validation=STRICT)

# The SDK package (request models, response models) and batch API of each object type.
OBJECTS = {
    "contacts": (contact_models, lambda: client.crm.contacts.batch_api),
    "companies": (company_models, lambda: client.crm.companies.batch_api),
    "deals": (deal_models, lambda: client.crm.deals.batch_api),
    "notes": (note_models, lambda: client.crm.objects.notes.batch_api),
}

# The SDK's own status -> model maps of its batch methods (e.g. crm/contacts/api/batch_api.py).
RESPONSE_TYPES = {
    "create": {201: "BatchResponseSimplePublicObject", 207: "BatchResponseSimplePublicObjectWithErrors"},
    "read": {200: "BatchResponseSimplePublicObject", 207: "BatchResponseSimplePublicObjectWithErrors"},
    "update": {200: "BatchResponseSimplePublicObject", 207: "BatchResponseSimplePublicObjectWithErrors"},
    "upsert": {200: "BatchResponseSimplePublicUpsertObject", 207: "BatchResponseSimplePublicUpsertObjectWithErrors"},
    "archive": {},
}
# associations/v4/api/batch_api.py create_default: only 200.
ASSOCIATE_TYPES = {200: "BatchResponsePublicDefaultAssociation"}
PROPERTIES_TYPES = {200: "CollectionResponsePropertyNoPaging"}

# HUBSPOT_DEFINED default association type ids (reference: dealToContact 3, noteToContact 202,
# noteToDeal 214).
ASSOCIATIONS = [
    ("deals", "contacts", 3),
    ("notes", "contacts", 202),
    ("notes", "deals", 214),
    ("contacts", "companies", 279),
    ("deals", "companies", 341),
]
# associations/v4/api/batch_api.py create and get_page (batch/read).
LABELLED_CREATE_TYPES = {201: "BatchResponseLabelsBetweenObjectPair", 207: "BatchResponseLabelsBetweenObjectPairWithErrors"}
LABELLED_READ_TYPES = {200: "BatchResponsePublicAssociationMultiWithLabel", 207: "BatchResponsePublicAssociationMultiWithLabelWithErrors"}


class Answer:
    """What one call returned: HTTP status, the SDK model (or None), the raw body, headers, and
    why the SDK refused the body (`model_error`) or raised (`api_error`)."""

    def __init__(self, status, data=None, raw=None, headers=None, model_error=None, api_error=None):
        self.status = status
        self.data = data
        self.raw = raw
        self.headers = {k.lower(): v for k, v in dict(headers or {}).items()}
        self.model_error = model_error
        self.api_error = api_error

    def json(self):
        try:
            return json.loads(self.raw) if self.raw else None
        except (TypeError, ValueError):
            return None

    def describe(self):
        why = f"; SDK refused the body: {self.model_error}" if self.model_error else ""
        return f"HTTP {self.status}{why}; body {short(self.raw)}"


RETRY_THROTTLED = [True]


def sdk_call(api_client, fn):
    """Runs an SDK call that returns (data, status, headers); never raises for HTTP answers. A
    burst 429 is waited out and retried (as crm-sync does), except where a check provokes one."""
    for _ in range(8):
        answer = _sdk_call(api_client, fn)
        body = answer.json() if answer.status == 429 else None
        if not (RETRY_THROTTLED[0] and isinstance(body, dict) and body.get("policyName") != "DAILY"):
            return answer
        time.sleep(min(float(answer.headers.get("retry-after") or 2), 10))
    return answer


def _sdk_call(api_client, fn):
    api_client.last_response = None
    try:
        data, status, headers = fn()
        raw = getattr(api_client.last_response, "data", None)
        return Answer(status, data, raw, headers)
    except Exception as error:  # noqa: BLE001
        if any(c.__name__ == "ApiException" for c in type(error).__mro__) and getattr(error, "status", 0):
            body = error.body.decode() if isinstance(error.body, bytes) else error.body
            return Answer(error.status, None, body, error.headers, api_error=error)
        last = getattr(api_client, "last_response", None)
        if last is None:  # no answer at all (unreachable): not a contract result
            raise
        # A 2xx the SDK could not turn into its model (a required field missing, a bad value).
        raw = last.data.decode() if isinstance(last.data, bytes) else last.data
        return Answer(last.status, None, raw, last.getheaders(), model_error=f"{type(error).__name__}: {error}")


class Family:
    """One path family: `legacy` (v3 objects/properties, v4 associations; SDK methods) or the
    date-versioned one (SDK ApiClient.call_api on the dated paths)."""

    def __init__(self, dated):
        self.dated = dated
        self.name = VERSION if dated else "v3"

    def _raw(self, api_client, method, path, body, types):
        api_client.last_response = None
        return sdk_call(
            api_client,
            lambda: api_client.call_api(
                path,
                method,
                path_params={},
                query_params=[],
                header_params={"Accept": "application/json", "Content-Type": "application/json"},
                body=body,
                response_types_map=types,
                auth_settings=["oauth2"],
                _return_http_data_only=False,
                _preload_content=True,
            ),
        )

    def batch(self, obj, action, body):
        api = OBJECTS[obj][1]()
        if self.dated:
            path = f"/crm/objects/{VERSION}/{obj}/batch/{action}"
            return self._raw(api.api_client, "POST", path, body, RESPONSE_TYPES[action])
        api.api_client.last_response = None
        return sdk_call(api.api_client, lambda: getattr(api, f"{action}_with_http_info")(body))

    def associate(self, from_type, to_type, body):
        api = client.crm.associations.v4.batch_api
        if self.dated:
            path = f"/crm/associations/{VERSION}/{from_type}/{to_type}/batch/associate/default"
            return self._raw(api.api_client, "POST", path, body, ASSOCIATE_TYPES)
        api.api_client.last_response = None
        return sdk_call(api.api_client, lambda: api.create_default_with_http_info(from_type, to_type, body))

    def labelled(self, from_type, to_type, action, body):
        """batch/create (labels) or batch/read of the v4 associations API."""
        api = client.crm.associations.v4.batch_api
        if self.dated:
            types = LABELLED_CREATE_TYPES if action == "create" else LABELLED_READ_TYPES
            path = f"/crm/associations/{VERSION}/{from_type}/{to_type}/batch/{action}"
            return self._raw(api.api_client, "POST", path, body, types)
        api.api_client.last_response = None
        method = api.create_with_http_info if action == "create" else api.get_page_with_http_info
        return sdk_call(api.api_client, lambda: method(from_type, to_type, body))

    def properties(self, obj):
        api = client.crm.properties.core_api
        if self.dated:
            return self._raw(api.api_client, "GET", f"/crm/properties/{VERSION}/{obj}", None, PROPERTIES_TYPES)
        api.api_client.last_response = None
        return sdk_call(api.api_client, lambda: api.get_all_with_http_info(obj))


# --- request bodies, with the SDK's request models -------------------------------------------


def upsert_body(obj, items, traced=True):
    """items: [(key, properties)]; objectWriteTraceId is the input's index, as crm-sync sends."""
    m = OBJECTS[obj][0]
    return m.BatchInputSimplePublicObjectBatchInputUpsert(
        inputs=[
            m.SimplePublicObjectBatchInputUpsert(
                id_property=ID_PROPERTY, id=key, properties=props, object_write_trace_id=str(i) if traced else None
            )
            for i, (key, props) in enumerate(items)
        ]
    )


def update_body(obj, items, traced=True):
    m = OBJECTS[obj][0]
    return m.BatchInputSimplePublicObjectBatchInput(
        inputs=[
            m.SimplePublicObjectBatchInput(id=crm_id, properties=props, object_write_trace_id=str(i) if traced else None)
            for i, (crm_id, props) in enumerate(items)
        ]
    )


def create_body(obj, props_list, traced):
    m = OBJECTS[obj][0]
    return m.BatchInputSimplePublicObjectBatchInputForCreate(
        inputs=[
            m.SimplePublicObjectBatchInputForCreate(
                properties=props, object_write_trace_id=str(i) if traced else None
            )
            for i, props in enumerate(props_list)
        ]
    )


def read_body(obj, ids, properties):
    m = OBJECTS[obj][0]
    return m.BatchReadInputSimplePublicObjectId(
        properties=properties,
        properties_with_history=[],
        inputs=[m.SimplePublicObjectId(id=i) for i in ids],
    )


def archive_body(obj, ids):
    m = OBJECTS[obj][0]
    return m.BatchInputSimplePublicObjectId(inputs=[m.SimplePublicObjectId(id=i) for i in ids])


def associate_body(pairs):
    m = assoc_models
    return m.BatchInputPublicDefaultAssociationMultiPost(
        inputs=[
            m.PublicDefaultAssociationMultiPost(_from=m.PublicObjectId(id=a), to=m.PublicObjectId(id=b))
            for a, b in pairs
        ]
    )


def sample(obj, key, variant=0):
    """Properties crm-sync writes for each object type (dates as epoch ms, as crm-sync sends)."""
    if obj == "contacts":
        return {"email": f"{key}@contract.example.com", "firstname": "Ada", "lastname": f"Contract{variant}"}
    if obj == "companies":
        return {"name": f"Contract company {key} v{variant}", "domain": f"{key}.contract.example.com"}
    if obj == "deals":
        return {
            "dealname": f"Contract deal {key} v{variant}",
            "amount": "1250.5",
            "dealstage": "appointmentscheduled",
            "pipeline": "default",
            "closedate": INSTANT_MS,
        }
    return {"hs_note_body": f"Contract note {key} v{variant}", "hs_timestamp": INSTANT_MS}


# --- assertions ------------------------------------------------------------------------------

counter = [0]


def new_key(label):
    counter[0] += 1
    return f"contract-{RUN}-{label}-{counter[0]}"


def expect(answer, status, model):
    """The call answered `status` and the SDK deserialized its `model`."""
    assert answer.api_error is None and answer.model_error is None and answer.status == status, (
        f"expected HTTP {status} as {model}; got {answer.describe()}"
    )
    if model is None:
        assert answer.data is None, f"expected no body; got {short(answer.raw)}"
    else:
        assert type(answer.data).__name__ == model, f"expected {model}, got {type(answer.data).__name__}"
        assert answer.data.status == "COMPLETE", f"status {answer.data.status!r}, expected 'COMPLETE'"
    return answer.data


def expect_collection(answer, model):
    """A 200 the SDK deserialized as `model`, a collection without a batch status."""
    assert answer.api_error is None and answer.model_error is None and answer.status == 200, (
        f"expected HTTP 200 as {model}; got {answer.describe()}"
    )
    assert type(answer.data).__name__ == model, f"expected {model}, got {type(answer.data).__name__}"
    return answer.data


def expect_error(answer, status, package):
    """A whole-call error: `status`, a JSON body the SDK's Error model accepts; returns the body."""
    assert answer.status == status, f"expected HTTP {status} (whole call); got {answer.describe()}"
    body = answer.json()
    assert isinstance(body, dict), f"error body is not a JSON object: {short(answer.raw)}"
    assert body.get("status") == "error", f"status {body.get('status')!r}, expected 'error': {short(body)}"
    configuration = package.Configuration()
    configuration.client_side_validation = STRICT
    try:
        package.models.Error(
            local_vars_configuration=configuration,
            correlation_id=body.get("correlationId"),
            message=body.get("message"),
            category=body.get("category"),
            errors=body.get("errors"),
            context=body.get("context"),
            links=body.get("links"),
            sub_category=body.get("subCategory"),
        )
    except ValueError as error:
        raise AssertionError(f"the SDK's Error model refuses the body ({error}): {short(body)}")
    return body


def is_datetime(value):
    return isinstance(value, dt.datetime) and value.tzinfo is not None


def iso_instant(value):
    """The instant an ISO-8601 text names; None when the value is not ISO text (e.g. epoch ms)."""
    if not isinstance(value, str) or "T" not in value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else None


def raw_results(answer):
    body = answer.json() or {}
    return body.get("results") or []


def assert_string_properties(answer):
    """HubSpot sends every property value as a string (or null); the SDK's dict[str, str] would
    coerce other JSON types silently, so this reads the raw body."""
    for result in raw_results(answer):
        for name, value in (result.get("properties") or {}).items():
            assert value is None or isinstance(value, str), (
                f"property {name} is JSON {type(value).__name__} {value!r}, expected a string"
            )


def assert_written(properties, written):
    for name, value in written.items():
        if name in DATE_PROPERTIES:
            continue
        got = (properties or {}).get(name)
        assert got == value, f"property {name}: {got!r}, expected {value!r}"


class SetupError(AssertionError):
    pass


def fixture(obj, count=1, label="fx"):
    """Records made through the SDK's v3 batch upsert, for checks about other calls: [(key, id)]."""
    items = [(new_key(f"{obj}-{label}"), None) for _ in range(count)]
    items = [(key, sample(obj, key)) for key, _ in items]
    answer = Family(False).batch(obj, "upsert", upsert_body(obj, items))
    if answer.status != 200 or answer.data is None:
        raise SetupError(f"setup (v3 batch upsert of {obj}) failed: {answer.describe()}")
    ids = {r.properties.get(ID_PROPERTY): r.id for r in answer.data.results}
    return [(key, ids.get(key)) for key, _ in items]


# --- sandbox control API (only for faults that a real account cannot be asked for) --------------


def control(method, path, body=None):
    request = urllib.request.Request(
        f"{BASE}/_sandbox{path}",
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read().decode()
            return response.status, (json.loads(text) if text else None)
    except urllib.error.HTTPError as error:
        return error.code, None
    except (urllib.error.URLError, OSError):
        return None, None


def have_control_api():
    status, body = control("GET", "/health")
    return status == 200 and isinstance(body, dict) and body.get("status") == "ok"


# --- checks ----------------------------------------------------------------------------------


def check_upsert_creates(fam, obj, state):
    items = [(new_key(f"{obj}-up"), None) for _ in range(2)]
    items = [(key, sample(obj, key)) for key, _ in items]
    answer = fam.batch(obj, "upsert", upsert_body(obj, items))
    data = expect(answer, 200, "BatchResponseSimplePublicUpsertObject")
    assert is_datetime(data.started_at) and is_datetime(data.completed_at), "startedAt/completedAt not datetimes"
    assert len(data.results) == 2, f"{len(data.results)} results for 2 inputs: {short(answer.raw)}"
    by_trace = {r.object_write_trace_id: r for r in data.results}
    assert set(by_trace) == {"0", "1"}, f"objectWriteTraceId of results: {sorted(map(str, by_trace))}, expected ['0', '1']"
    for trace, (key, props) in enumerate(items):
        result = by_trace[str(trace)]
        assert result.new is True, f"new={result.new!r} for a created record"
        assert isinstance(result.id, str) and result.id.isdigit(), f"id {result.id!r} is not a numeric string"
        assert result.archived is False, f"archived={result.archived!r}"
        assert is_datetime(result.created_at) and is_datetime(result.updated_at), "createdAt/updatedAt not datetimes"
        assert result.properties.get(ID_PROPERTY) == key, f"{ID_PROPERTY}={result.properties.get(ID_PROPERTY)!r}, expected {key!r}"
        assert_written(result.properties, props)
    assert_string_properties(answer)
    state[obj] = [(key, by_trace[str(i)].id) for i, (key, _) in enumerate(items)]
    return f"ids {[r.id for r in data.results]}"


def check_upsert_updates(fam, obj, state):
    records = state.get(obj) or fixture(obj, 2, "up2")
    items = [(key, {**sample(obj, key, variant=1)}) for key, _ in records]
    answer = fam.batch(obj, "upsert", upsert_body(obj, items))
    data = expect(answer, 200, "BatchResponseSimplePublicUpsertObject")
    assert len(data.results) == 2, f"{len(data.results)} results for 2 inputs"
    by_trace = {r.object_write_trace_id: r for r in data.results}
    for trace, (key, crm_id) in enumerate(records):
        result = by_trace.get(str(trace))
        assert result is not None, f"no result with objectWriteTraceId {trace}: {short(answer.raw)}"
        assert result.new is False, f"new={result.new!r} for an existing record"
        assert result.id == crm_id, f"id {result.id!r}, expected the existing {crm_id!r}"
        assert_written(result.properties, items[trace][1])
        assert result.updated_at >= result.created_at, "updatedAt before createdAt"


def check_update(fam, obj):
    records = fixture(obj, 2, "upd")
    items = [(crm_id, sample(obj, key, variant=2)) for key, crm_id in records]
    answer = fam.batch(obj, "update", update_body(obj, items))
    data = expect(answer, 200, "BatchResponseSimplePublicObject")
    by_id = {r.id: r for r in data.results}
    assert set(by_id) == {crm_id for _, crm_id in records}, f"result ids {sorted(by_id)}, expected {sorted(i for _, i in records)}"
    for crm_id, props in items:
        result = by_id[crm_id]
        assert_written(result.properties, props)
        assert result.archived is False, f"archived={result.archived!r}"
        assert is_datetime(result.updated_at) and result.updated_at >= result.created_at, "updatedAt missing or before createdAt"
    assert_string_properties(answer)


def check_read_found(fam, obj):
    records = fixture(obj, 2, "rd")
    wanted = sorted(set(sample(obj, "x")) | {ID_PROPERTY})
    answer = fam.batch(obj, "read", read_body(obj, [i for _, i in records], wanted))
    data = expect(answer, 200, "BatchResponseSimplePublicObject")
    by_id = {r.id: r for r in data.results}
    assert set(by_id) == {i for _, i in records}, f"result ids {sorted(by_id)}, expected {sorted(i for _, i in records)}"
    for key, crm_id in records:
        props = by_id[crm_id].properties
        assert props.get(ID_PROPERTY) == key, f"{ID_PROPERTY}={props.get(ID_PROPERTY)!r}, expected {key!r}"
        assert_written(props, sample(obj, key))
        assert is_datetime(by_id[crm_id].created_at), "createdAt not a datetime"
    assert_string_properties(answer)


def check_read_missing(fam, obj):
    (key, crm_id), = fixture(obj, 1, "rdm")
    answer = fam.batch(obj, "read", read_body(obj, [crm_id, MISSING_ID], [ID_PROPERTY]))
    assert answer.status == 207, f"expected HTTP 207 (one id missing); got {answer.describe()}"
    data = expect(answer, 207, "BatchResponseSimplePublicObjectWithErrors")
    assert [r.id for r in data.results] == [crm_id], f"results {[r.id for r in data.results]}, expected [{crm_id!r}]"
    assert data.results[0].properties.get(ID_PROPERTY) == key, "the found record lacks its crm_sync_app_id"
    assert data.num_errors == 1 and len(data.errors) == 1, f"numErrors {data.num_errors}, errors {short(answer.json().get('errors'))}"
    error = data.errors[0]
    assert error.category == "OBJECT_NOT_FOUND", f"category {error.category!r}, expected OBJECT_NOT_FOUND"
    assert MISSING_ID in (error.context or {}).get("ids", []), f"context {error.context!r} does not name {MISSING_ID}"


def check_read_none_found(fam, obj):
    answer = fam.batch(obj, "read", read_body(obj, [MISSING_ID], [ID_PROPERTY]))
    # Integrators report a 404 for a batch read that finds none of its ids; HubSpot's reference
    # documents 200 and 207 only. crm-sync reads either as "none found".
    assert answer.status in (404, 207), f"expected HTTP 404 or 207 (no id found); got {answer.describe()}"
    if answer.status == 404:
        body = answer.json()
        assert body.get("category") == "OBJECT_NOT_FOUND", f"category {body.get('category')!r}"


def check_archive(fam, obj):
    (key, crm_id), (key2, crm_id2) = fixture(obj, 2, "arc")
    answer = fam.batch(obj, "archive", archive_body(obj, [crm_id]))
    expect(answer, 204, None)
    assert not answer.raw, f"204 with a body: {short(answer.raw)}"
    # Read back (through v3, the served family) to see that exactly that record is gone.
    read = Family(False).batch(obj, "read", read_body(obj, [crm_id, crm_id2], [ID_PROPERTY]))
    live = {r.id for r in (read.data.results if read.data else [])} or {
        r.get("id") for r in raw_results(read)
    }
    assert crm_id not in live, f"archived record {crm_id} still read back: {read.describe()}"
    assert crm_id2 in live, f"the record not archived ({crm_id2}) is no longer read back: {read.describe()}"


def check_archive_again(fam, obj):
    (key, crm_id), = fixture(obj, 1, "arc2")
    first = fam.batch(obj, "archive", archive_body(obj, [crm_id]))
    expect(first, 204, None)
    again = fam.batch(obj, "archive", archive_body(obj, [crm_id]))
    expect(again, 204, None)


def check_upsert_after_archive(fam, obj):
    (key, crm_id), = fixture(obj, 1, "rearc")
    expect(fam.batch(obj, "archive", archive_body(obj, [crm_id])), 204, None)
    answer = fam.batch(obj, "upsert", upsert_body(obj, [(key, sample(obj, key))]))
    data = expect(answer, 200, "BatchResponseSimplePublicUpsertObject")
    result = data.results[0]
    assert result.new is True, f"new={result.new!r}: upserting an archived record's key must create a new one"
    assert result.id != crm_id, f"the archived id {crm_id} came back"


def merge_or_purge(fam, action, body, types):
    """`POST …/contacts/merge` or `…/contacts/gdpr-delete`: the SDK's method (v3) or its ApiClient on
    the dated path, with the SDK's request model."""
    api = client.crm.contacts.basic_api
    if fam.dated:
        path = f"/crm/objects/{VERSION}/contacts/{'merge' if action == 'merge' else 'gdpr-delete'}"
        return fam._raw(api.api_client, "POST", path, body, types)
    api.api_client.last_response = None
    return sdk_call(api.api_client, lambda: getattr(api, f"{action}_with_http_info")(body))


def check_merge(fam):
    (_, primary), (_, secondary) = fixture("contacts", 2, "merge")
    body = contact_models.PublicMergeInput(primary_object_id=primary, object_id_to_merge=secondary)
    answer = merge_or_purge(fam, "merge", body, {200: "SimplePublicObject"})
    assert answer.api_error is None and answer.model_error is None and answer.status == 200, (
        f"expected HTTP 200 as SimplePublicObject; got {answer.describe()}"
    )
    survivor = answer.data
    assert type(survivor).__name__ == "SimplePublicObject", f"got {type(survivor).__name__}"
    # Both old ids read as the survivor, as HubSpot documents for merged records.
    read = Family(False).batch("contacts", "read", read_body("contacts", [primary, secondary], [ID_PROPERTY]))
    ids = {r.get("id") for r in raw_results(read)}
    assert ids == {survivor.id}, f"reading the merged ids gave {sorted(ids)}, expected [{survivor.id}]"
    return f"survivor {survivor.id} of {primary} and {secondary}"


def check_gdpr_delete(fam):
    (_, crm_id), = fixture("contacts", 1, "gdpr")
    body = contact_models.PublicGdprDeleteInput(object_id=crm_id)
    answer = merge_or_purge(fam, "purge", body, {})
    assert answer.api_error is None and answer.status == 204, f"expected HTTP 204; got {answer.describe()}"
    assert not answer.raw, f"204 with a body: {short(answer.raw)}"
    read = Family(False).batch("contacts", "read", read_body("contacts", [crm_id], [ID_PROPERTY]))
    assert not raw_results(read), f"the erased contact still reads back: {read.describe()}"


def check_date_read_back(fam, obj, prop):
    (key, crm_id), = fixture(obj, 1, "date")
    answer = fam.batch(obj, "read", read_body(obj, [crm_id], [prop, ID_PROPERTY]))
    data = expect(answer, 200, "BatchResponseSimplePublicObject")
    raw = raw_results(answer)
    value = (raw[0].get("properties") or {}).get(prop) if raw else None
    instant = iso_instant(value)
    assert instant is not None, f"{prop} written as epoch ms {INSTANT_MS} read back as {value!r}, expected ISO text ({INSTANT_TEXT})"
    assert instant == INSTANT, f"{prop} read back as {value!r} = {instant}, expected {INSTANT_TEXT}"
    assert data.results[0].properties.get(prop) == value
    return f"{prop}={value}"


def check_note_timestamp_text(fam):
    key = new_key("notes-ts")
    props = {"hs_note_body": f"Contract note {key}", "hs_timestamp": INSTANT_TEXT}
    answer = fam.batch("notes", "upsert", upsert_body("notes", [(key, props)]))
    data = expect(answer, 200, "BatchResponseSimplePublicUpsertObject")
    assert len(data.results) == 1 and data.results[0].new is True, f"results {short(answer.raw)}"
    crm_id = data.results[0].id
    read = Family(False).batch("notes", "read", read_body("notes", [crm_id], ["hs_timestamp"]))
    raw = raw_results(read)
    value = (raw[0].get("properties") or {}).get("hs_timestamp") if raw else None
    assert iso_instant(value) == INSTANT, f"hs_timestamp written as {INSTANT_TEXT} read back as {value!r} ({read.describe()})"
    return f"hs_timestamp={value}"


def check_associate(fam, from_type, to_type, type_id):
    (_, from_id), = fixture(from_type, 1, "as")
    (_, to_id), = fixture(to_type, 1, "as")
    answer = fam.associate(from_type, to_type, associate_body([(from_id, to_id)]))
    data = expect(answer, 200, "BatchResponsePublicDefaultAssociation")
    assert is_datetime(data.started_at) and is_datetime(data.completed_at), "startedAt/completedAt not datetimes"
    pairs = [
        (
            getattr(r._from, "id", None),
            getattr(r.to, "id", None),
            getattr(r.association_spec, "association_category", None),
            getattr(r.association_spec, "association_type_id", None),
        )
        for r in data.results
    ]
    assert (from_id, to_id, "HUBSPOT_DEFINED", type_id) in pairs, (
        f"no result {{from:{{id:{from_id}}}, to:{{id:{to_id}}}, associationSpec:{{HUBSPOT_DEFINED, {type_id}}}}}; "
        f"SDK read (from, to, category, typeId) {pairs} from {short(answer.raw)}"
    )
    return f"{len(pairs)} result(s)"


def linked_types(fam, from_type, to_type, from_id):
    """(toObjectId, category, typeId, label) of a record's links, read through the SDK's model."""
    body = assoc_models.BatchInputPublicFetchAssociationsBatchRequest(
        inputs=[assoc_models.PublicFetchAssociationsBatchRequest(id=from_id)]
    )
    answer = fam.labelled(from_type, to_type, "read", body)
    data = expect(answer, 200, "BatchResponsePublicAssociationMultiWithLabel")
    return {
        (str(to.to_object_id), t.category, t.type_id, t.label)
        for result in data.results
        for to in result.to
        for t in to.association_types
    }


def check_labels(fam):
    """A label defined between contacts and companies (with its inverse), a contact linked to a
    company with it, read back on both sides, then the label and the link taken off."""
    definitions = client.crm.associations.v4.schema.definitions_api
    request = assoc_schema_models.PublicAssociationDefinitionCreateRequest(
        label=f"Billing contact {fam.name}", name=f"billing_contact_{fam.name.replace('-', '_')}", inverse_label=f"Billed company {fam.name}"
    )
    made = sdk_call(definitions.api_client, lambda: definitions.create_with_http_info("contacts", "companies", request))
    data = expect_collection(made, "CollectionResponseAssociationSpecWithLabelNoPaging")
    type_id = next((t.type_id for t in data.results if t.label == request.label), None)
    assert type_id is not None and all(t.category == "USER_DEFINED" for t in data.results), f"no USER_DEFINED type for the label: {short(made.raw)}"
    listed = sdk_call(definitions.api_client, lambda: definitions.get_all_with_http_info("contacts", "companies"))
    kinds = {(t.category, t.type_id, t.label) for t in expect_collection(listed, "CollectionResponseAssociationSpecWithLabelNoPaging").results}
    assert ("HUBSPOT_DEFINED", 279, None) in kinds and ("USER_DEFINED", type_id, request.label) in kinds, f"labels listed: {kinds}"
    (_, contact), = fixture("contacts", 1, "lb")
    (_, company), = fixture("companies", 1, "lb")
    body = assoc_models.BatchInputPublicAssociationMultiPost(
        inputs=[
            assoc_models.PublicAssociationMultiPost(
                _from=assoc_models.PublicObjectId(id=contact),
                to=assoc_models.PublicObjectId(id=company),
                types=[assoc_models.AssociationSpec(association_category="USER_DEFINED", association_type_id=type_id)],
            )
        ]
    )
    created = expect(fam.labelled("contacts", "companies", "create", body), 201, "BatchResponseLabelsBetweenObjectPair")
    pairs = [(str(r.from_object_id), str(r.to_object_id), r.from_object_type_id, r.to_object_type_id, r.labels) for r in created.results]
    assert pairs == [(contact, company, "0-1", "0-2", [request.label])], f"created: {pairs}"
    forward = linked_types(fam, "contacts", "companies", contact)
    assert forward == {(company, "HUBSPOT_DEFINED", 279, None), (company, "USER_DEFINED", type_id, request.label)}, f"contact's side: {forward}"
    backward = linked_types(fam, "companies", "contacts", company)
    assert (contact, "USER_DEFINED", type_id + 1, request.inverse_label) in backward and (contact, "HUBSPOT_DEFINED", 280, None) in backward, f"company's side: {backward}"
    batch = client.crm.associations.v4.batch_api
    batch.api_client.last_response = None
    unlabelled = sdk_call(batch.api_client, lambda: batch.archive_labels_with_http_info("contacts", "companies", body))
    assert unlabelled.status == 204, f"labels/archive: {unlabelled.describe()}"
    assert linked_types(fam, "contacts", "companies", contact) == {(company, "HUBSPOT_DEFINED", 279, None)}, "the label went, the link stayed"
    gone = assoc_models.BatchInputPublicAssociationMultiArchive(
        inputs=[assoc_models.PublicAssociationMultiArchive(_from=assoc_models.PublicObjectId(id=contact), to=[assoc_models.PublicObjectId(id=company)])]
    )
    archived = sdk_call(batch.api_client, lambda: batch.archive_with_http_info("contacts", "companies", gone))
    assert archived.status == 204, f"batch/archive: {archived.describe()}"
    assert linked_types(fam, "contacts", "companies", contact) == set(), "no link left"
    return f"label {type_id}, inverse {type_id + 1}"


def check_custom_object():
    """A custom object type defined through the schemas API, then written and read through the
    generic objects API by its objectTypeId and by its fullyQualifiedName."""
    schemas = client.crm.schemas.core_api
    name = f"project_{RUN}"
    egg = schema_models.ObjectSchemaEgg(
        name=name,
        labels=schema_models.ObjectTypeDefinitionLabels(singular="Project", plural="Projects"),
        primary_display_property="project_name",
        required_properties=["project_name"],
        searchable_properties=["project_name"],
        secondary_display_properties=[],
        associated_objects=["COMPANY"],
        properties=[
            schema_models.ObjectTypePropertyCreate(name="project_name", label="Name", type="string", field_type="text"),
            schema_models.ObjectTypePropertyCreate(name=ID_PROPERTY, label="App id", type="string", field_type="text", has_unique_value=True),
        ],
    )
    schemas.api_client.last_response = None
    made = sdk_call(schemas.api_client, lambda: schemas.create_with_http_info(egg))
    assert made.api_error is None and made.model_error is None and made.status == 201 and type(made.data).__name__ == "ObjectSchema", (
        f"expected 201 ObjectSchema; got {made.describe()}"
    )
    type_id, qualified = made.data.object_type_id, made.data.fully_qualified_name
    assert type_id.startswith("2-") and qualified.startswith("p") and qualified.endswith(f"_{name}"), f"ids: {type_id}, {qualified}"
    again = sdk_call(schemas.api_client, lambda: schemas.create_with_http_info(egg))
    assert again.status == 400, f"the same name again: {again.describe()}"
    got = sdk_call(schemas.api_client, lambda: schemas.get_by_id_with_http_info(qualified))
    assert got.status == 200 and got.data.object_type_id == type_id, f"by its fullyQualifiedName: {got.describe()}"
    objects = client.crm.objects.batch_api
    key = new_key("project")
    body = object_models.BatchInputSimplePublicObjectBatchInputUpsert(
        inputs=[object_models.SimplePublicObjectBatchInputUpsert(
            id_property=ID_PROPERTY, id=key, properties={"project_name": "Analytical engine", ID_PROPERTY: key}, object_write_trace_id="0")]
    )
    objects.api_client.last_response = None
    written = expect(sdk_call(objects.api_client, lambda: objects.upsert_with_http_info(type_id, body)), 200, "BatchResponseSimplePublicUpsertObject")
    assert [r.new for r in written.results] == [True], f"created: {written.results}"
    read_body = object_models.BatchReadInputSimplePublicObjectId(
        properties=["project_name"], id_property=ID_PROPERTY, inputs=[object_models.SimplePublicObjectId(id=key)], properties_with_history=[]
    )
    read = expect(sdk_call(objects.api_client, lambda: objects.read_with_http_info(qualified, read_body)), 200, "BatchResponseSimplePublicObject")
    assert [r.properties.get("project_name") for r in read.results] == ["Analytical engine"], f"read back by {qualified}: {read.results}"
    props = client.crm.properties.core_api
    listed = sdk_call(props.api_client, lambda: props.get_all_with_http_info(type_id))
    unique = {p.name: p.has_unique_value for p in (listed.data.results if listed.data else [])}
    assert unique.get(ID_PROPERTY) is True and unique.get("project_name") is False, f"properties of {type_id}: {unique}"
    return f"{type_id} ({qualified})"


def check_properties(fam, obj, expected):
    answer = fam.properties(obj)
    assert answer.status == 200 and answer.data is not None, f"expected HTTP 200 as CollectionResponsePropertyNoPaging; got {answer.describe()}"
    by_name = {p.name: p for p in answer.data.results}
    for name, (kind, unique) in expected.items():
        prop = by_name.get(name)
        assert prop is not None, f"no property {name} among {len(by_name)}"
        assert prop.type == kind, f"{name}.type {prop.type!r}, expected {kind!r}"
        if unique:
            assert prop.has_unique_value is True, f"{name}.hasUniqueValue {prop.has_unique_value!r}, expected true"


PROPERTY_EXPECTATIONS = {
    "contacts": {"email": ("string", False), ID_PROPERTY: ("string", True)},
    "companies": {"name": ("string", False), "domain": ("string", False), ID_PROPERTY: ("string", True)},
    "deals": {"amount": ("number", False), "closedate": ("datetime", False), "dealstage": ("enumeration", False), ID_PROPERTY: ("string", True)},
    "notes": {"hs_timestamp": ("datetime", False), "hs_note_body": ("string", False), ID_PROPERTY: ("string", True)},
}


def seed_email_contact():
    """A contact with an email and no crm_sync_app_id (as a sales rep would make), via v3 create."""
    email = f"{new_key('seed')}@contract.example.com"
    answer = Family(False).batch("contacts", "create", create_body("contacts", [{"email": email, "firstname": "Seeded"}], traced=False))
    if answer.status != 201 or answer.data is None:
        raise SetupError(f"setup (v3 batch create of a contact) failed: {answer.describe()}")
    return email, answer.data.results[0].id


def check_conflict_create_untraced(fam):
    email, existing = seed_email_contact()
    answer = fam.batch("contacts", "create", create_body("contacts", [{"email": email}], traced=False))
    body = expect_error(answer, 409, contact_models)
    assert body.get("category") == "CONFLICT", f"category {body.get('category')!r}, expected CONFLICT"
    assert body.get("message") == f"Contact already exists. Existing ID: {existing}", f"message {body.get('message')!r}"


def check_conflict_upsert(fam):
    email, existing = seed_email_contact()
    key = new_key("contacts-conflict")
    answer = fam.batch("contacts", "upsert", upsert_body("contacts", [(key, {"email": email, "firstname": "Dup"})]))
    body = expect_error(answer, 409, contact_models)
    assert body.get("category") == "CONFLICT", f"category {body.get('category')!r}, expected CONFLICT"
    assert body.get("message") == f"Contact already exists. Existing ID: {existing}", f"message {body.get('message')!r}"


def check_conflict_create_traced(fam):
    email, existing = seed_email_contact()
    fresh = f"{new_key('fresh')}@contract.example.com"
    answer = fam.batch("contacts", "create", create_body("contacts", [{"email": email}, {"email": fresh}], traced=True))
    assert answer.status == 207, f"expected HTTP 207; got {answer.describe()}"
    data = expect(answer, 207, "BatchResponseSimplePublicObjectWithErrors")
    assert data.num_errors == 1 and len(data.errors) == 1, f"numErrors {data.num_errors}: {short(answer.raw)}"
    error = data.errors[0]
    assert error.category == "CONFLICT", f"category {error.category!r}, expected CONFLICT"
    assert f"Existing ID: {existing}" in (error.message or ""), f"message {error.message!r} lacks 'Existing ID: {existing}'"
    assert (error.context or {}).get("objectWriteTraceId") == ["0"], f"context {error.context!r}, expected objectWriteTraceId ['0']"
    assert len(data.results) == 1 and data.results[0].properties.get("email") == fresh, f"results {short(answer.json().get('results'))}"


def validation_codes(body):
    """Error codes and property names named by a validation error body (errors[] or message)."""
    codes, names = set(), set()
    for detail in body.get("errors") or []:
        if detail.get("code"):
            codes.add(detail["code"])
        names.update(((detail.get("context") or {}).get("propertyName")) or [])
    return codes, names, body.get("message") or ""


def check_validation(fam, obj, props, code_choices, prop, action="upsert", traced=False):
    """Multi-status is for inputs that carry an objectWriteTraceId (as crm-sync's do): then the
    invalid input is a 207 error mapped to its trace id; without one, the whole call is a 400."""
    if action == "upsert":
        request = upsert_body(obj, [(new_key(f"{obj}-val"), props)], traced=traced)
    else:
        (_, crm_id), = fixture(obj, 1, "val")
        request = update_body(obj, [(crm_id, props)], traced=traced)
    answer = fam.batch(obj, action, request)
    if traced:
        model = "BatchResponseSimplePublicUpsertObjectWithErrors" if action == "upsert" else "BatchResponseSimplePublicObjectWithErrors"
        data = expect(answer, 207, model)
        assert data.num_errors == 1 and len(data.errors) == 1, f"numErrors {data.num_errors}: {short(answer.raw)}"
        error = data.errors[0]
        assert error.category == "VALIDATION_ERROR", f"category {error.category!r}, expected VALIDATION_ERROR"
        assert (error.context or {}).get("objectWriteTraceId") == ["0"], f"context {error.context!r}"
        body = answer.json()["errors"][0]
        codes, names, message = validation_codes(body)
        assert codes & code_choices, f"no code {sorted(code_choices)} in {short(body)}"
        assert prop in names or prop in message, f"property {prop} not named in {short(body)}"
        return
    body = expect_error(answer, 400, OBJECTS[obj][0])
    assert body.get("category") == "VALIDATION_ERROR", f"category {body.get('category')!r}, expected VALIDATION_ERROR"
    codes, names, message = validation_codes(body)
    assert codes & code_choices or any(c in message for c in code_choices), f"no code {sorted(code_choices)} in {short(body)}"
    assert prop in names or prop in message, f"property {prop} not named in {short(body)}"


def check_throttle(fam, policy):
    if not have_control_api():
        raise Skip("needs the sandbox control API (/_sandbox) to provoke a 429")
    status, faults = control("GET", "/faults")
    assert status == 200 and faults, "GET /_sandbox/faults failed"
    if policy == "DAILY":
        control("POST", "/faults", {"daily_used": faults["daily_limit"]})
    else:
        control("POST", "/faults", {"throttle_next": 1})
    RETRY_THROTTLED[0] = False
    try:
        key = new_key("contacts-429")
        answer = fam.batch("contacts", "upsert", upsert_body("contacts", [(key, sample("contacts", key))]))
    finally:
        RETRY_THROTTLED[0] = True
        control("POST", "/faults", {"daily_used": faults["daily_used"], "throttle_next": 0})
    assert answer.status == 429, f"expected HTTP 429; got {answer.describe()}"
    body = answer.json() or {}
    assert body.get("status") == "error", f"status {body.get('status')!r}: {short(body)}"
    assert body.get("errorType") == "RATE_LIMIT", f"errorType {body.get('errorType')!r}: {short(body)}"
    assert body.get("policyName") == policy, f"policyName {body.get('policyName')!r}, expected {policy}"
    assert body.get("correlationId") and body.get("requestId"), f"correlationId/requestId missing: {short(body)}"
    if policy == "DAILY":
        assert body.get("message") == "You have reached your daily limit.", f"message {body.get('message')!r}"
    for header in ("x-hubspot-ratelimit-max", "x-hubspot-ratelimit-remaining", "x-hubspot-ratelimit-interval-milliseconds"):
        assert header in answer.headers, f"header {header} missing: {sorted(answer.headers)}"
    # Not asserted (the documented 429 body has no `category`): whether the SDK's Error model,
    # strict, would take it.
    configuration = contact_models.Configuration()
    configuration.client_side_validation = True
    try:
        contact_models.models.Error(
            local_vars_configuration=configuration,
            correlation_id=body.get("correlationId"),
            message=body.get("message"),
            category=body.get("category"),
        )
        return "SDK Error model (strict) accepts the body"
    except ValueError as error:
        return f"note: the SDK's Error model (strict) refuses this documented shape: {error}"


def sdk_has_dated_paths():
    root = os.path.dirname(hubspot.__file__)
    hits = []
    for folder, _, files in os.walk(root):
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(folder, name), encoding="utf-8") as handle:
                    text = handle.read()
                if f"/{VERSION}/" in text or "/crm/objects/20" in text or "/crm/associations/20" in text:
                    hits.append(os.path.relpath(os.path.join(folder, name), root))
    return hits


def main():
    checks = Checks()
    hits = sdk_has_dated_paths()
    print(
        f"INFO hubspot-api-client {metadata.version('hubspot-api-client')} against {BASE}: "
        + (f"dated paths in the SDK: {hits}" if hits else f"the SDK has no {VERSION} paths; dated checks use its ApiClient.call_api with the same models")
        + f"; client_side_validation={STRICT}",
        flush=True,
    )
    for fam in (Family(False), Family(True)):
        state = {}
        n = fam.name
        a = "v4" if not fam.dated else VERSION
        for obj in OBJECTS:
            checks.run(f"[{n}] {obj} batch/upsert creates (new=true, objectWriteTraceId, crm_sync_app_id, timestamps)", lambda: check_upsert_creates(fam, obj, state))
            checks.run(f"[{n}] {obj} batch/upsert updates by crm_sync_app_id (new=false, same id)", lambda: check_upsert_updates(fam, obj, state))
            checks.run(f"[{n}] {obj} batch/update", lambda: check_update(fam, obj))
            checks.run(f"[{n}] {obj} batch/read returns the requested properties", lambda: check_read_found(fam, obj))
            checks.run(f"[{n}] {obj} batch/read with a missing id: 207, OBJECT_NOT_FOUND naming it", lambda: check_read_missing(fam, obj))
            checks.run(f"[{n}] {obj} batch/read finding no id: 404 OBJECT_NOT_FOUND (or 207)", lambda: check_read_none_found(fam, obj))
            checks.run(f"[{n}] {obj} batch/archive: 204, no body, record gone", lambda: check_archive(fam, obj))
            checks.run(f"[{n}] {obj} batch/archive of an archived record: 204", lambda: check_archive_again(fam, obj))
            checks.run(f"[{n}] {obj} batch/upsert of an archived record's key creates a new record", lambda: check_upsert_after_archive(fam, obj))
        checks.run(f"[{n}] deals closedate written as epoch ms reads back as ISO text", lambda: check_date_read_back(fam, "deals", "closedate"))
        checks.run(f"[{n}] notes hs_timestamp written as epoch ms reads back as ISO text", lambda: check_date_read_back(fam, "notes", "hs_timestamp"))
        checks.run(f"[{n}] notes hs_timestamp accepted as UTC text ({INSTANT_TEXT})", lambda: check_note_timestamp_text(fam))
        for from_type, to_type, type_id in ASSOCIATIONS:
            checks.run(
                f"[{a}] associations {from_type}->{to_type} batch/associate/default: PublicDefaultAssociation, type {type_id}",
                lambda: check_associate(fam, from_type, to_type, type_id),
            )
        if not fam.dated:
            checks.run(
                "[v3] custom object: schemas API 201 ObjectSchema (2-…, p…_name), the name again 400, read by fullyQualifiedName; records upserted by objectTypeId and read by fullyQualifiedName; its properties",
                check_custom_object,
            )
        checks.run(
            f"[{a}] labelled associations contacts->companies: a label and its inverse defined, batch/create 201 with the label, batch/read both sides, labels/archive keeps the link, batch/archive 204",
            lambda: check_labels(fam),
        )
        for obj, expected in PROPERTY_EXPECTATIONS.items():
            checks.run(f"[{n}] properties {obj}: {', '.join(f'{k}:{v[0]}' for k, v in expected.items())}", lambda: check_properties(fam, obj, expected))
        checks.run(f"[{n}] contacts batch/create without objectWriteTraceId on an existing email: whole-call 409 CONFLICT", lambda: check_conflict_create_untraced(fam))
        checks.run(f"[{n}] contacts batch/upsert on an existing email: whole-call 409 CONFLICT", lambda: check_conflict_upsert(fam))
        checks.run(f"[{n}] contacts batch/create with objectWriteTraceId on an existing email: 207, CONFLICT for trace 0", lambda: check_conflict_create_traced(fam))
        for traced in (False, True):
            how = "with objectWriteTraceId: 207 mapped to trace 0" if traced else "without objectWriteTraceId: whole-call 400"
            checks.run(
                f"[{n}] contacts batch/upsert with an unknown property, {how}, VALIDATION_ERROR PROPERTY_DOESNT_EXIST",
                lambda: check_validation(fam, "contacts", {"crm_sync_no_such_property": "x"}, {"PROPERTY_DOESNT_EXIST"}, "crm_sync_no_such_property", traced=traced),
            )
            checks.run(
                f"[{n}] contacts batch/update with an unknown property, {how}, VALIDATION_ERROR PROPERTY_DOESNT_EXIST",
                lambda: check_validation(fam, "contacts", {"crm_sync_no_such_property": "x"}, {"PROPERTY_DOESNT_EXIST"}, "crm_sync_no_such_property", action="update", traced=traced),
            )
            checks.run(
                f"[{n}] deals batch/upsert with text in a number property (amount), {how}, VALIDATION_ERROR",
                lambda: check_validation(fam, "deals", {"dealname": "Bad amount", "amount": "lots"}, {"INVALID_DECIMAL", "INVALID_INTEGER", "INVALID_NUMBER"}, "amount", traced=traced),
            )
        checks.run(f"[{n}] contacts merge: 200 SimplePublicObject, both old ids read as the survivor", lambda: check_merge(fam))
        checks.run(f"[{n}] contacts gdpr-delete (PublicGdprDeleteInput): 204, no body, the contact gone", lambda: check_gdpr_delete(fam))
        checks.run(f"[{n}] 429 TEN_SECONDLY_ROLLING: errorType RATE_LIMIT, policyName, rate-limit headers", lambda: check_throttle(fam, "TEN_SECONDLY_ROLLING"))
        checks.run(f"[{n}] 429 DAILY: 'You have reached your daily limit.', policyName DAILY", lambda: check_throttle(fam, "DAILY"))
    return checks.finish()


if __name__ == "__main__":
    sys.exit(main())
