#!/usr/bin/env python3
"""Contract checks for the Salesforce REST calls crm-sync makes, with simple-salesforce 1.12.10 as
the client (the oracle), against a real org or the local sandbox (infra/salesforce-sandbox).

Every call in shared/src/adapters/salesforce/client.rs is exercised in the form crm-sync sends it:

  POST   /services/oauth2/token  (grant_type=refresh_token, form body)            renew()
  PATCH  /composite/sobjects/{SObject}/{ExternalIdField}  {allOrNone:false,...}   upsert()
  PATCH  /composite/sobjects  {allOrNone:false, records:[{attributes, id, ...}]}  update(), Task WhoId link
  POST   /composite/sobjects  {allOrNone:false, records:[OpportunityContactRole]} associate()
  DELETE /composite/sobjects?ids=a,b&allOrNone=false                              archive()
  GET    /queryAll/?q=SELECT … MasterRecordId … (and nextRecordsUrl)               merges_since(), survivor()
  POST   /composite/sobjects/{SObject}  {ids, fields}                             read()
  GET    /sobjects/{SObject}/describe                                              property_kinds()
  errors ([{message, errorCode}]), 401 INVALID_SESSION_ID, 403 REQUEST_LIMIT_EXCEEDED,
  Sforce-Limit-Info

plus the GET retrieve form `GET /composite/sobjects/{SObject}?ids=a,b&fields=F1,F2`, which the
documentation also gives.
Checks marked [advisory] cover calls crm-sync does not make or behaviour the documentation does not
pin down; they print PASS/FAIL but do not change the exit code.

Environment (defaults fit the local stack: `CRM=salesforce ... CRM_SYNC_SANDBOX_PORT=3201
target/debug/crm-sync-local`):
  SALESFORCE_BASE_URL       instance URL (http://127.0.0.1:3201); a .../services/data/vXX.X suffix
                            is accepted and its version used
  SALESFORCE_API_VERSION    60.0 (crm-sync's API_VERSION)
  SALESFORCE_TOKEN          access token (sandbox-token)
  SALESFORCE_REFRESH_TOKEN  refresh token (sandbox-refresh)
  SALESFORCE_CLIENT_ID      connected app consumer key (crm-sync-contract; the sandbox checks it
                            once told to with require_client, as the contract test does)
  SALESFORCE_CLIENT_SECRET  connected app consumer secret (crm-sync-contract-secret)
  SALESFORCE_TOKEN_URL      {SALESFORCE_BASE_URL}/services/oauth2/token
  SALESFORCE_EXTERNAL_ID_FIELD  Crm_Sync_App_Id__c (on Contact, Opportunity and Task)
  SALESFORCE_SKIP_LIMIT_BURN=1  skip the REQUEST_LIMIT_EXCEEDED check. Otherwise, on a loopback
                            host only, the last check spends the rest of the day's API budget
                            (at most SALESFORCE_MAX_BURN calls, default 150000) to reach the 403;
                            restart the local stack to get a fresh budget. Run
                            salesforce_refresh.mjs before this script, not after.

simple-salesforce always builds https:// URLs from the instance host (api.py, Salesforce.__init__);
for an http:// base URL (the local sandbox) the session gets a transport adapter that sends those
requests over plain HTTP to the same host and port. Nothing else about the client is changed.

Plain Python, no pytest: one PASS/FAIL line per check, exit 1 on any non-advisory failure.
"""

import base64
import hashlib
import hmac
import http.client
import importlib.metadata
import json
import os
import re
import sys
import threading
import time
import uuid
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import (
    SalesforceError,
    SalesforceExpiredSession,
    SalesforceMalformedRequest,
    SalesforceRefusedRequest,
    SalesforceResourceNotFound,
)

# --------------------------------------------------------------------------------------------
# Configuration


def env(name, default):
    value = os.environ.get(name, "").strip()
    return value or default


BASE_URL = env("SALESFORCE_BASE_URL", "http://127.0.0.1:3201").rstrip("/")
API_VERSION = env("SALESFORCE_API_VERSION", "60.0")
_base_match = re.match(r"^(.*?)/services/data/v(\d+\.\d+)/?$", BASE_URL)
if _base_match:
    BASE_URL = _base_match.group(1)
    if "SALESFORCE_API_VERSION" not in os.environ:
        API_VERSION = _base_match.group(2)
API_VERSION = API_VERSION.lstrip("vV")
API_PATH = f"/services/data/v{API_VERSION}"
TOKEN = env("SALESFORCE_TOKEN", "sandbox-token")
REFRESH_TOKEN = env("SALESFORCE_REFRESH_TOKEN", "sandbox-refresh")
CLIENT_ID = env("SALESFORCE_CLIENT_ID", "crm-sync-contract")
CLIENT_SECRET = env("SALESFORCE_CLIENT_SECRET", "crm-sync-contract-secret")
TOKEN_URL = env("SALESFORCE_TOKEN_URL", f"{BASE_URL}/services/oauth2/token")
EXT_ID = env("SALESFORCE_EXTERNAL_ID_FIELD", "Crm_Sync_App_Id__c")
SKIP_LIMIT_BURN = env("SALESFORCE_SKIP_LIMIT_BURN", "") not in ("", "0", "false")
MAX_BURN = int(env("SALESFORCE_MAX_BURN", "150000"))
# Merges a person made in the org before the run, for the queryAll checks: "merged:master,..."
# and a SOQL datetime before them. Unset: those checks are skipped.
MERGED = dict(pair.split(":", 1) for pair in env("SALESFORCE_MERGED", "").split(",") if ":" in pair)
MERGES_SINCE = env("SALESFORCE_MERGES_SINCE", "")

_split = urlsplit(BASE_URL)
HOST = _split.hostname or ""
LOOPBACK = HOST in ("127.0.0.1", "localhost", "::1")

# A run's external ids are unique, so reruns against the same org do not collide.
RUN = uuid.uuid4().hex[:10]
# Well-formed ids that name no record (an all-digit 15-char id has the checksum suffix AAA).
ABSENT = {"Contact": "003000000000000AAA", "Opportunity": "006000000000000AAA", "Account": "001000000000000AAA"}
MALFORMED_ID = "not-a-salesforce-id"


# --------------------------------------------------------------------------------------------
# simple-salesforce over plain HTTP for a local sandbox


class _PlainHttp(HTTPAdapter):
    """Sends simple-salesforce's https:// requests for the sandbox's host:port over http://."""

    def send(self, request, **kwargs):
        if request.url.startswith("https://"):
            request.url = "http://" + request.url[len("https://"):]
        return super().send(request, **kwargs)


def new_session():
    session = requests.Session()
    if _split.scheme == "http":
        netloc = _split.netloc
        session.mount(f"https://{netloc}/", _PlainHttp())
        session.mount(f"https://{netloc}", _PlainHttp())
    return session


def salesforce(token):
    return Salesforce(
        instance_url=BASE_URL,
        session_id=token,
        version=API_VERSION,
        session=new_session(),
        object_pairs_hook=dict,
    )


class Ctx:
    token = TOKEN
    sf = None
    contacts = {}  # external id -> Salesforce id
    opportunity = None
    task = None
    last_usage = None

    def use(self, token):
        self.token = token
        self.sf = salesforce(token)


CTX = Ctx()

# --------------------------------------------------------------------------------------------
# Reporting

RESULTS = []  # (name, ok, advisory)


def short(value, limit=700):
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


class Failed(AssertionError):
    pass


def expect(condition, message):
    if not condition:
        raise Failed(message)


def check(name, fn, advisory=False):
    tag = " [advisory]" if advisory else ""
    try:
        detail = fn()
        ok = True
    except Failed as error:
        ok, detail = False, str(error)
    except SalesforceError as error:
        ok = False
        detail = f"{type(error).__name__}: HTTP {error.status} {error.url} -> {short(error.content)}"
    except Exception as error:  # noqa: BLE001 - a crash is a failed check, reported as such
        ok, detail = False, f"{type(error).__name__}: {error}"
    RESULTS.append((name, ok, advisory))
    print(f"{'PASS' if ok else 'FAIL'}{tag} {name}: {detail or ''}", flush=True)
    return ok


def error_objects(content):
    """The REST error array; every entry has a string message and errorCode."""
    expect(isinstance(content, list) and content, f"error body is not a non-empty JSON array: {short(content)}")
    for entry in content:
        expect(isinstance(entry, dict), f"error entry is not an object: {short(entry)}")
        expect(isinstance(entry.get("message"), str), f"error entry lacks a string message: {short(entry)}")
        expect(isinstance(entry.get("errorCode"), str), f"error entry lacks a string errorCode: {short(entry)}")
        if "fields" in entry:
            expect(isinstance(entry["fields"], list), f"error entry's fields is not a list: {short(entry)}")
    return content


def raises(fn, exc_type, status):
    try:
        value = fn()
    except exc_type as error:
        expect(error.status == status, f"expected HTTP {status}, got {error.status}: {short(error.content)}")
        return error
    except SalesforceError as error:
        raise Failed(
            f"expected {exc_type.__name__} (HTTP {status}), got {type(error).__name__} HTTP {error.status}: "
            f"{short(error.content)}"
        ) from None
    raise Failed(f"expected HTTP {status} ({exc_type.__name__}), got a success: {short(value)}")


# --------------------------------------------------------------------------------------------
# crm-sync's calls, through simple-salesforce


def rest(path, method="GET", body=None):
    kwargs = {} if body is None else {"json": body}
    return CTX.sf.restful(path, method=method, **kwargs)


def upsert(sobject, records):
    body = {
        "allOrNone": False,
        "records": [{"attributes": {"type": sobject}, **fields} for fields in records],
    }
    return rest(f"composite/sobjects/{sobject}/{EXT_ID}", "PATCH", body)


def update(sobject, records):
    body = {
        "allOrNone": False,
        "records": [{"attributes": {"type": sobject}, **fields} for fields in records],
    }
    return rest("composite/sobjects", "PATCH", body)


def create(records):
    return rest("composite/sobjects", "POST", {"allOrNone": False, "records": records})


def delete(ids):
    return rest(f"composite/sobjects?ids={','.join(ids)}&allOrNone=false", "DELETE")


def retrieve(sobject, ids, fields):
    return rest(f"composite/sobjects/{sobject}?ids={','.join(ids)}&fields={','.join(fields)}")


def contact(key, **fields):
    return {EXT_ID: f"{RUN}-{key}", "LastName": f"Contract {key}", "Email": f"{key}.{RUN}@example.com", **fields}


def save_result(result, where):
    expect(isinstance(result, dict), f"{where}: SaveResult is not an object: {short(result)}")
    expect(isinstance(result.get("success"), bool), f"{where}: SaveResult lacks boolean success: {short(result)}")
    expect(isinstance(result.get("errors"), list), f"{where}: SaveResult lacks errors[]: {short(result)}")
    return result


def succeeded(result, where, prefix=None):
    save_result(result, where)
    expect(result["success"] is True and result["errors"] == [], f"{where}: not a success: {short(result)}")
    record_id = result.get("id")
    expect(isinstance(record_id, str) and len(record_id) == 18, f"{where}: id is not an 18-char id: {short(result)}")
    if prefix:
        expect(record_id.startswith(prefix), f"{where}: id {record_id} lacks key prefix {prefix}: {short(result)}")
    return record_id


def failed_with(result, where, code, field=None):
    save_result(result, where)
    expect(result["success"] is False and result["errors"], f"{where}: expected a failure: {short(result)}")
    error = result["errors"][0]
    expect(isinstance(error.get("message"), str), f"{where}: error lacks message: {short(result)}")
    expect(isinstance(error.get("fields"), list), f"{where}: error lacks fields[]: {short(result)}")
    expect(error.get("statusCode") == code, f"{where}: expected statusCode {code}: {short(result)}")
    if field:
        expect(field in error["fields"], f"{where}: expected fields to name {field}: {short(result)}")
    return error


# --------------------------------------------------------------------------------------------
# Checks: sObject Collections upsert


def check_upsert_creates():
    results = upsert("Contact", [contact("a"), contact("b"), contact("c")])
    expect(isinstance(results, list) and len(results) == 3, f"expected 3 SaveResults, got {short(results)}")
    ids = []
    for index, result in enumerate(results):
        ids.append(succeeded(result, f"[{index}]", "003"))
        expect(result.get("created") is True, f"[{index}] created is not true: {short(result)}")
    expect(len(set(ids)) == 3, f"ids are not distinct: {ids}")
    CTX.contacts.update({"a": ids[0], "b": ids[1], "c": ids[2]})
    return short(results)


def check_upsert_updates_in_order():
    expect(CTX.contacts, "no contacts from the create check")
    results = upsert("Contact", [contact("b", Phone="+1 555 0102"), contact("a", Phone="+1 555 0101"), contact("d")])
    expect(isinstance(results, list) and len(results) == 3, f"expected 3 SaveResults, got {short(results)}")
    for index, key in enumerate(["b", "a"]):
        record_id = succeeded(results[index], f"[{index}]")
        expect(record_id == CTX.contacts[key], f"[{index}] expected the id of {key} ({CTX.contacts[key]}): {short(results)}")
        expect(results[index].get("created") is False, f"[{index}] created is not false: {short(results[index])}")
    CTX.contacts["d"] = succeeded(results[2], "[2]", "003")
    expect(results[2].get("created") is True, f"[2] created is not true: {short(results[2])}")
    return short(results)


def check_upsert_all_or_none_false():
    results = upsert("Contact", [contact("e"), contact("f", Email="not-an-email"), contact("a", FirstName="Ada")])
    expect(isinstance(results, list) and len(results) == 3, f"expected 3 SaveResults, got {short(results)}")
    CTX.contacts["e"] = succeeded(results[0], "[0]", "003")
    failed_with(results[1], "[1]", "INVALID_EMAIL_ADDRESS", "Email")
    expect(succeeded(results[2], "[2]") == CTX.contacts["a"], f"[2] expected the id of a: {short(results[2])}")
    return short(results)


def check_upsert_200():
    records = [contact(f"bulk{i:03d}") for i in range(200)]
    results = upsert("Contact", records)
    expect(isinstance(results, list) and len(results) == 200, f"expected 200 SaveResults, got {len(results or [])}")
    ids = [succeeded(result, f"[{i}]", "003") for i, result in enumerate(results)]
    expect(all(result.get("created") is True for result in results), "not every record was created")
    expect(len(set(ids)) == 200, "ids are not distinct")
    CTX.bulk_ids = ids
    return f"200 SaveResults, all created, first {short(results[0])}"


def check_upsert_201_refused():
    records = [contact(f"over{i:03d}") for i in range(201)]
    error = raises(lambda: upsert("Contact", records), SalesforceMalformedRequest, 400)
    content = error_objects(error.content)
    expect(content[0]["errorCode"] == "EXCEEDED_ID_LIMIT", f"expected EXCEEDED_ID_LIMIT: {short(content)}")
    return f"HTTP 400 {short(content)}"


def check_upsert_opportunity():
    record = {
        EXT_ID: f"{RUN}-deal",
        "Name": f"Contract deal {RUN}",
        "Amount": "1250.5",
        "CloseDate": "2026-12-31",
        "StageName": "Prospecting",
    }
    results = upsert("Opportunity", [record])
    expect(isinstance(results, list) and len(results) == 1, f"expected 1 SaveResult: {short(results)}")
    CTX.opportunity = succeeded(results[0], "[0]", "006")
    expect(results[0].get("created") is True, f"created is not true: {short(results)}")
    read = retrieve("Opportunity", [CTX.opportunity], ["Amount", "CloseDate", "StageName"])
    expect(isinstance(read, list) and len(read) == 1 and isinstance(read[0], dict), f"read back: {short(read)}")
    expect(read[0].get("Amount") == 1250.5 and not isinstance(read[0].get("Amount"), str),
           f"Amount (currency) should read back as the number 1250.5: {short(read)}")
    expect(read[0].get("CloseDate") == "2026-12-31", f"CloseDate should read back as 2026-12-31: {short(read)}")
    return f"{short(results)}; read back {short(read)}"


def check_upsert_task():
    record = {EXT_ID: f"{RUN}-task", "Subject": "Call", "Description": "Contract call", "ActivityDate": "2026-12-01"}
    results = upsert("Task", [record])
    expect(isinstance(results, list) and len(results) == 1, f"expected 1 SaveResult: {short(results)}")
    CTX.task = succeeded(results[0], "[0]")
    expect(CTX.task.startswith("00T"), f"a Task id starts with 00T: {short(results)}")
    return short(results)


# --------------------------------------------------------------------------------------------
# Checks: retrieve


def check_get_retrieve_fields():
    ids = [CTX.contacts["b"], ABSENT["Contact"], CTX.contacts["a"]]
    records = retrieve("Contact", ids, ["Email", "Phone"])
    expect(isinstance(records, list) and len(records) == 3, f"expected 3 entries: {short(records)}")
    expect(records[1] is None, f"an absent id should read back as null: {short(records)}")
    for index, key in ((0, "b"), (2, "a")):
        record = records[index]
        expect(isinstance(record, dict), f"[{index}] is not a record: {short(records)}")
        expect(record.get("Email") == f"{key}.{RUN}@example.com", f"[{index}] wrong Email: {short(record)}")
        expect(record.get("Phone") == f"+1 555 010{2 if key == 'b' else 1}", f"[{index}] wrong Phone: {short(record)}")
        extra = set(record) - {"attributes", "Id", "Email", "Phone"}
        expect(not extra, f"[{index}] fields=Email,Phone not honoured; extra fields {sorted(extra)}: {short(record)}")
    return short(records)


def check_get_retrieve_attributes():
    ids = [CTX.contacts["a"], CTX.contacts["b"]]
    records = retrieve("Contact", ids, ["Id"])
    expect(isinstance(records, list) and len(records) == 2, f"expected 2 records: {short(records)}")
    for record_id, record in zip(ids, records):
        expect(isinstance(record, dict) and record.get("Id") == record_id, f"expected Id {record_id}: {short(record)}")
        attributes = record.get("attributes")
        expected = {"type": "Contact", "url": f"{API_PATH}/sobjects/Contact/{record_id}"}
        expect(attributes == expected, f"attributes should be {short(expected)}: {short(record)}")
    return short(records)


def check_get_retrieve_datetime_format():
    records = retrieve("Contact", [CTX.contacts["a"]], ["CreatedDate", "LastModifiedDate"])
    expect(isinstance(records, list) and len(records) == 1 and isinstance(records[0], dict), f"{short(records)}")
    pattern = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+0000$"
    for name in ("CreatedDate", "LastModifiedDate"):
        value = records[0].get(name)
        expect(isinstance(value, str) and re.match(pattern, value),
               f"REST JSON renders a datetime as 2026-12-01T17:33:38.000+0000; {name} is {value!r}")
    return f"CreatedDate {records[0]['CreatedDate']}, LastModifiedDate {records[0]['LastModifiedDate']}"


def check_get_retrieve_invalid_field():
    error = raises(lambda: retrieve("Contact", [CTX.contacts["a"]], ["No_Such_Field__c"]), SalesforceMalformedRequest, 400)
    content = error_objects(error.content)
    expect(content[0]["errorCode"] == "INVALID_FIELD", f"expected INVALID_FIELD: {short(content)}")
    return f"HTTP 400 {short(content)}"


def check_post_retrieve():
    ids = [CTX.contacts["a"], ABSENT["Contact"], CTX.contacts["b"]]
    records = rest("composite/sobjects/Contact", "POST", {"ids": ids, "fields": ["Id", "Email"]})
    expect(isinstance(records, list) and len(records) == 3, f"expected 3 entries: {short(records)}")
    expect(records[1] is None, f"an absent id should read back as null: {short(records)}")
    for index, key in ((0, "a"), (2, "b")):
        record = records[index]
        expect(isinstance(record, dict), f"[{index}] is not a record: {short(records)}")
        expect(record.get("Id") == CTX.contacts[key], f"[{index}] wrong Id: {short(record)}")
        expect(record.get("Email") == f"{key}.{RUN}@example.com", f"[{index}] wrong Email: {short(record)}")
        expect((record.get("attributes") or {}).get("type") == "Contact", f"[{index}] attributes.type: {short(record)}")
        extra = set(record) - {"attributes", "Id", "Email"}
        expect(not extra, f"[{index}] fields not honoured; extra {sorted(extra)}: {short(record)}")
    return short(records)


# --------------------------------------------------------------------------------------------
# Checks: update, create (associate), delete (archive)


def check_update():
    ids = [CTX.contacts["c"], CTX.contacts["d"]]
    results = update("Contact", [{"id": ids[0], "Phone": "+1 555 0103"}, {"id": ids[1], "FirstName": "Dora"}])
    expect(isinstance(results, list) and len(results) == 2, f"expected 2 SaveResults: {short(results)}")
    for index, record_id in enumerate(ids):
        expect(succeeded(results[index], f"[{index}]") == record_id, f"[{index}] expected id {record_id}: {short(results)}")
    read = retrieve("Contact", ids, ["Phone", "FirstName"])
    expect(read[0].get("Phone") == "+1 555 0103" and read[1].get("FirstName") == "Dora", f"read back: {short(read)}")
    return f"{short(results)}; read back {short(read)}"


def check_update_failures_alone():
    results = update("Contact", [{"id": CTX.contacts["c"], "Email": "broken"}, {"id": CTX.contacts["d"], "LastName": "Ok"}])
    expect(isinstance(results, list) and len(results) == 2, f"expected 2 SaveResults: {short(results)}")
    failed_with(results[0], "[0]", "INVALID_EMAIL_ADDRESS", "Email")
    succeeded(results[1], "[1]")
    return short(results)


def check_update_malformed_id():
    results = update("Contact", [{"id": MALFORMED_ID, "LastName": "Nobody"}])
    expect(isinstance(results, list) and len(results) == 1, f"expected 1 SaveResult: {short(results)}")
    failed_with(results[0], "[0]", "MALFORMED_ID")
    return short(results)


def check_create_contact_role():
    expect(CTX.opportunity, "no Opportunity from the upsert check")
    record = {
        "attributes": {"type": "OpportunityContactRole"},
        "OpportunityId": CTX.opportunity,
        "ContactId": CTX.contacts["a"],
    }
    results = create([record])
    expect(isinstance(results, list) and len(results) == 1, f"expected 1 SaveResult: {short(results)}")
    succeeded(results[0], "[0]", "00K")
    return short(results)


def check_create_save_result_keys():
    record = {
        "attributes": {"type": "OpportunityContactRole"},
        "OpportunityId": CTX.opportunity,
        "ContactId": CTX.contacts["b"],
    }
    results = create([record])
    expect(isinstance(results, list) and len(results) == 1, f"expected 1 SaveResult: {short(results)}")
    succeeded(results[0], "[0]")
    expect(set(results[0]) == {"id", "success", "errors"},
           f"a create SaveResult is {{id, success, errors}} (only upsert adds created): {short(results)}")
    return short(results)


def check_create_bad_reference():
    record = {
        "attributes": {"type": "OpportunityContactRole"},
        "OpportunityId": ABSENT["Opportunity"],
        "ContactId": CTX.contacts["a"],
    }
    results = create([record])
    expect(isinstance(results, list) and len(results) == 1, f"expected 1 SaveResult: {short(results)}")
    save_result(results[0], "[0]")
    expect(results[0]["success"] is False and results[0]["errors"],
           f"a role naming an Opportunity that does not exist must fail: {short(results)}")
    return short(results)


def check_task_link():
    expect(CTX.task, "no Task from the upsert check")
    results = update("Task", [{"id": CTX.task, "WhoId": CTX.contacts["a"]}])
    expect(isinstance(results, list) and len(results) == 1, f"expected 1 SaveResult: {short(results)}")
    expect(succeeded(results[0], "[0]") == CTX.task, f"expected id {CTX.task}: {short(results)}")
    read = retrieve("Task", [CTX.task], ["WhoId"])
    expect(isinstance(read, list) and read and read[0].get("WhoId") == CTX.contacts["a"], f"read back WhoId: {short(read)}")
    return f"{short(results)}; read back {short(read)}"


def check_delete():
    ids = [CTX.contacts["e"], CTX.contacts["d"]]
    results = delete(ids)
    expect(isinstance(results, list) and len(results) == 2, f"expected 2 SaveResults: {short(results)}")
    for index, record_id in enumerate(ids):
        expect(succeeded(results[index], f"[{index}]") == record_id, f"[{index}] expected id {record_id}: {short(results)}")
    read = retrieve("Contact", ids, ["Id"])
    expect(read == [None, None], f"deleted records should read back as null: {short(read)}")
    return f"{short(results)}; read back {short(read)}"


def check_delete_deleted():
    results = delete([CTX.contacts["e"]])
    expect(isinstance(results, list) and len(results) == 1, f"expected 1 SaveResult: {short(results)}")
    failed_with(results[0], "[0]", "ENTITY_IS_DELETED")
    return short(results)


def check_delete_malformed():
    results = delete([CTX.contacts["c"], MALFORMED_ID])
    expect(isinstance(results, list) and len(results) == 2, f"expected 2 SaveResults: {short(results)}")
    expect(succeeded(results[0], "[0]") == CTX.contacts["c"], f"[0] expected id {CTX.contacts['c']}: {short(results)}")
    failed_with(results[1], "[1]", "MALFORMED_ID")
    return short(results)


# --------------------------------------------------------------------------------------------
# Checks: queryAll (merges, and where a merged id went)

DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}\+0000$")


def check_query_all_deleted():
    ids = [CTX.contacts["e"], CTX.contacts["d"]]
    soql = (f"SELECT Id, MasterRecordId, IsDeleted, SystemModstamp FROM Contact "
            f"WHERE Id IN ('{ids[0]}', '{ids[1]}')")
    live = CTX.sf.query(soql)
    expect(live.get("totalSize") == 0 and live.get("records") == [], f"query hides deleted records: {short(live)}")
    every = CTX.sf.query_all(soql, include_deleted=True)
    records = every.get("records")
    expect(every.get("done") is True and every.get("totalSize") == 2, f"queryAll finds both: {short(every)}")
    expect(sorted(r["Id"] for r in records) == sorted(ids), f"the deleted ids: {short(records)}")
    for record in records:
        expect(record["attributes"]["type"] == "Contact", f"attributes.type: {short(record)}")
        expect(record["IsDeleted"] is True and record["MasterRecordId"] is None,
               f"deleted, not merged: {short(record)}")
        expect(DATETIME.match(record["SystemModstamp"] or ""), f"SystemModstamp as the REST API writes it: {short(record)}")
    return short(records)


def check_query_all_merges():
    if not MERGED:
        print("SKIP queryAll merges: set SALESFORCE_MERGED and SALESFORCE_MERGES_SINCE", flush=True)
        return "skipped"
    # The query crm-sync's merge scan sends (shared/src/adapters/salesforce/client.rs).
    soql = ("SELECT Id, MasterRecordId, SystemModstamp, LastModifiedById FROM Contact WHERE IsDeleted = true "
            f"AND MasterRecordId != null AND SystemModstamp > {MERGES_SINCE} ORDER BY SystemModstamp")
    first = CTX.sf.query(soql, include_deleted=True)
    if first.get("done") is False:
        expect(re.match(r"^/services/data/v\d+\.\d+/query/[^/]+$", first.get("nextRecordsUrl") or ""),
               f"nextRecordsUrl is a path from the host: {short(first)}")
    every = CTX.sf.query_all(soql, include_deleted=True)
    records = every.get("records") or []
    expect(every.get("totalSize") == len(records), f"totalSize counts every page: {short(every)}")
    found = {record["Id"]: record["MasterRecordId"] for record in records}
    for merged, master in MERGED.items():
        expect(found.get(merged) == master, f"{merged} merged into {master}: {short(records)}")
    stamps = [record["SystemModstamp"] for record in records]
    expect(stamps == sorted(stamps), f"oldest first: {stamps}")
    expect(all(isinstance(record.get("LastModifiedById"), str) for record in records), f"who merged: {short(records)}")
    return f"{len(records)} merged record(s), first page done={first.get('done')}"


# --------------------------------------------------------------------------------------------
# Checks: errors, limits, describe


def check_invalid_session():
    stale = salesforce("not-a-valid-session")
    error = raises(lambda: stale.restful(f"composite/sobjects/Contact?ids={CTX.contacts['a']}&fields=Id"),
                   SalesforceExpiredSession, 401)
    content = error_objects(error.content)
    expect(content[0]["errorCode"] == "INVALID_SESSION_ID", f"expected INVALID_SESSION_ID: {short(content)}")
    return f"HTTP 401 {short(content)}"


def check_not_found():
    error = raises(lambda: rest("composite/no-such-resource"), SalesforceResourceNotFound, 404)
    content = error_objects(error.content)
    expect(content[0]["errorCode"] == "NOT_FOUND", f"expected NOT_FOUND: {short(content)}")
    return f"HTTP 404 {short(content)}"


def check_json_parser_error():
    error = raises(
        lambda: CTX.sf.restful(f"composite/sobjects/Contact/{EXT_ID}", method="PATCH", data="{not json"),
        SalesforceMalformedRequest, 400)
    content = error_objects(error.content)
    expect(content[0]["errorCode"] == "JSON_PARSER_ERROR", f"expected JSON_PARSER_ERROR: {short(content)}")
    return f"HTTP 400 {short(content)}"


def check_limit_header():
    rest(f"composite/sobjects/Contact?ids={CTX.contacts['a']}&fields=Id")
    first = CTX.sf.api_usage.get("api-usage")
    rest(f"composite/sobjects/Contact?ids={CTX.contacts['a']}&fields=Id")
    second = CTX.sf.api_usage.get("api-usage")
    expect(first is not None and second is not None, f"simple-salesforce parsed no api-usage: {CTX.sf.api_usage}")
    expect(second.total == first.total and second.total > 0, f"limit changed or zero: {first} -> {second}")
    expect(second.used > first.used, f"used did not grow across calls: {first} -> {second}")
    raw = CTX.sf.session.get(f"{CTX.sf.base_url}composite/sobjects/Contact?ids={CTX.contacts['a']}&fields=Id",
                             headers=CTX.sf.headers)
    header = raw.headers.get("Sforce-Limit-Info", "")
    expect(re.match(r"^api-usage=\d+/\d+(;\s*per-app-api-usage=\d+/\d+\(appName=[^)]*\))?$", header),
           f"Sforce-Limit-Info not in the documented form: {header!r}")
    CTX.last_usage = second
    return f"{first} -> {second}; header {header!r}"


DESCRIBE_EXPECTED = {
    "Contact": {"Id": "id", "Email": "email", "Phone": "phone", "FirstName": "string", "LastName": "string"},
    "Opportunity": {"Id": "id", "Name": "string", "Amount": "currency", "CloseDate": "date",
                    "StageName": "picklist", "Probability": "percent"},
    "Task": {"Id": "id", "Subject": "combobox", "Description": "textarea", "ActivityDate": "date",
             "WhoId": "reference"},
    "Account": {"Id": "id", "Name": "string", "Website": "url", "Industry": "picklist", "ParentId": "reference"},
    "Project__c": {"Id": "id", "Name": "string", "Account__c": "reference", "Status__c": "picklist"},
}


def check_describe(sobject):
    def run():
        described = getattr(CTX.sf, sobject).describe()
        expect(isinstance(described, dict), f"describe is not an object: {short(described)}")
        expect(described.get("name") == sobject, f"name should be {sobject}: {short(described)}")
        fields = described.get("fields")
        expect(isinstance(fields, list) and fields, f"no fields[]: {short(described)}")
        by_name = {field.get("name"): field for field in fields if isinstance(field, dict)}
        wrong = {
            name: (by_name.get(name) or {}).get("type")
            for name, kind in DESCRIBE_EXPECTED[sobject].items()
            if (by_name.get(name) or {}).get("type") != kind
        }
        expect(not wrong, f"field types differ from {DESCRIBE_EXPECTED[sobject]}: got {wrong}")
        external = by_name.get(EXT_ID)
        expect(external is not None and external.get("externalId") is True,
               f"{EXT_ID} should be described with externalId true: {short(external)}")
        return f"{len(fields)} fields; " + ", ".join(f"{n}:{by_name[n]['type']}" for n in DESCRIBE_EXPECTED[sobject])
    return run


def check_account_relations():
    """An Account by external id; a contact naming it gets its direct AccountContactRelation;
    another account's relation with roles made by API; the same pair again refused."""
    account = succeeded(upsert("Account", [{EXT_ID: f"{RUN}-acct", "Name": "Contract Account",
                                            "Website": "https://contract.example.com"}])[0], "[0] Account", "001")
    other = succeeded(upsert("Account", [{EXT_ID: f"{RUN}-acct2", "Name": "Other Account"}])[0], "[0] Account", "001")
    person = succeeded(upsert("Contact", [contact("acr", AccountId=account)])[0], "[0] Contact", "003")
    direct = CTX.sf.query(
        f"SELECT Id, AccountId, IsDirect, Roles FROM AccountContactRelation WHERE ContactId = '{person}'")
    rows = direct.get("records", [])
    expect(len(rows) == 1 and rows[0].get("AccountId") == account and rows[0].get("IsDirect") is True,
           f"the contact's direct relation: {short(direct)}")
    relation = {"attributes": {"type": "AccountContactRelation"}, "AccountId": other, "ContactId": person,
                "Roles": "Billing Contact;Decision Maker"}
    made = succeeded(create([relation])[0], "[0] AccountContactRelation", "07k")
    read = retrieve("AccountContactRelation", [made], ["Roles", "IsDirect", "IsActive"])
    expect(read[0].get("Roles") == "Billing Contact;Decision Maker" and read[0].get("IsDirect") is False
           and read[0].get("IsActive") is True, f"roles read back, indirect and active: {short(read)}")
    failed_with(create([relation])[0], "[0] the same pair again", "DUPLICATE_VALUE")
    return f"direct {rows[0]['Id']}, indirect {made}"


def check_custom_object_lookup():
    """A custom object (Project__c) upserted by external id with a lookup to its account; a lookup
    to an account that does not exist fails alone."""
    account = succeeded(upsert("Account", [{EXT_ID: f"{RUN}-acct", "Name": "Contract Account"}])[0], "[0] Account")
    results = upsert("Project__c", [
        {EXT_ID: f"{RUN}-proj", "Name": "Contract project", "Account__c": account, "Status__c": "Active"},
        {EXT_ID: f"{RUN}-orphan", "Name": "Orphan", "Account__c": ABSENT["Account"]},
    ])
    expect(isinstance(results, list) and len(results) == 2, f"expected 2 SaveResults: {short(results)}")
    project = succeeded(results[0], "[0] Project__c", "a01")
    failed_with(results[1], "[1] a lookup to no account", "INVALID_CROSS_REFERENCE_KEY", "Account__c")
    read = retrieve("Project__c", [project], ["Account__c", "Status__c"])
    expect(read[0].get("Account__c") == account, f"the lookup read back: {short(read)}")
    return short(results)


def check_single_upsert():
    status = CTX.sf.Contact.upsert(f"{EXT_ID}/{RUN}-single", {"LastName": "Single", "Email": f"single.{RUN}@example.com"})
    expect(status == 201, f"a created record answers 201, got {status}")
    return f"HTTP {status}"


# --------------------------------------------------------------------------------------------
# Checks: OAuth refresh (crm-sync's renew(): a form POST; simple-salesforce has no refresh flow,
# so the call goes through its requests session)


def token_request(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, refresh_token=REFRESH_TOKEN):
    form = {"grant_type": "refresh_token", "client_id": client_id, "client_secret": client_secret,
            "refresh_token": refresh_token}
    return new_session().post(TOKEN_URL, data=form, headers={"Accept": "application/json"}, timeout=30)


def token_json(response):
    try:
        return response.json()
    except ValueError:
        raise Failed(f"HTTP {response.status_code}, not JSON: {short(response.text)}") from None


def check_refresh():
    response = token_request()
    body = token_json(response)
    expect(response.status_code == 200, f"HTTP {response.status_code}: {short(body)}")
    expect(isinstance(body.get("access_token"), str) and body["access_token"], f"no access_token: {short(body)}")
    expect(isinstance(body.get("instance_url"), str) and re.match(r"^https?://[^/]+/?$", body["instance_url"]),
           f"instance_url is not an origin URL: {short(body)}")
    expect(body.get("token_type") == "Bearer", f"token_type should be Bearer: {short(body)}")
    CTX.refresh_body = body
    previous = CTX.token
    CTX.use(body["access_token"])
    CTX.previous_token = previous
    return short({**body, "access_token": body["access_token"][:12] + "..."})


def check_refresh_identity_fields():
    body = getattr(CTX, "refresh_body", None)
    expect(body is not None, "no token response from the refresh check")
    missing = [name for name in ("id", "issued_at", "signature") if name not in body]
    expect(not missing, f"documented fields missing: {missing}; response {short(body)}")
    expect(re.match(r"^https?://[^/]+/id/00D[0-9A-Za-z]{12,15}/005[0-9A-Za-z]{12,15}$", body["id"]),
           f"id is not https://<login host>/id/<orgId>/<userId>: {body['id']!r}")
    expect(re.match(r"^\d{13}$", str(body["issued_at"])), f"issued_at is not epoch milliseconds: {body['issued_at']!r}")
    expect(abs(int(body["issued_at"]) / 1000 - time.time()) < 86400, f"issued_at is not today: {body['issued_at']}")
    expected = base64.b64encode(
        hmac.new(CLIENT_SECRET.encode(), (body["id"] + str(body["issued_at"])).encode(), hashlib.sha256).digest()
    ).decode()
    expect(body["signature"] == expected,
           f"signature is not base64(HMAC-SHA256(client_secret, id + issued_at)) = {expected}: {body['signature']!r}")
    return f"id={body['id']} issued_at={body['issued_at']} signature verified"


def check_refreshed_token_works():
    records = retrieve("Contact", [CTX.contacts["a"]], ["Id"])
    expect(isinstance(records, list) and records and records[0].get("Id") == CTX.contacts["a"],
           f"the refreshed token did not read the record back: {short(records)}")
    return f"token {CTX.token[:12]}... read {short(records)}"


def check_refresh_bad_token():
    response = token_request(refresh_token="not-a-refresh-token")
    body = token_json(response)
    expect(response.status_code == 400, f"expected HTTP 400, got {response.status_code}: {short(body)}")
    expect(body.get("error") == "invalid_grant" and isinstance(body.get("error_description"), str),
           f"expected error invalid_grant with error_description: {short(body)}")
    return f"HTTP 400 {short(body)}"


def check_refresh_bad_secret():
    response = token_request(client_secret=CLIENT_SECRET + "-wrong")
    body = token_json(response)
    if response.status_code == 200 and body.get("access_token"):
        CTX.use(body["access_token"])  # the server issued (and switched to) a new token regardless
    expect(response.status_code == 400, f"expected HTTP 400, got {response.status_code}: {short(body)}")
    expect(body.get("error") == "invalid_client", f"expected error invalid_client: {short(body)}")
    return f"HTTP 400 {short(body)}"


def check_refresh_bad_client_id():
    response = token_request(client_id=CLIENT_ID + "-wrong")
    body = token_json(response)
    if response.status_code == 200 and body.get("access_token"):
        CTX.use(body["access_token"])
    expect(response.status_code == 400, f"expected HTTP 400, got {response.status_code}: {short(body)}")
    expect(body.get("error") == "invalid_client_id", f"expected error invalid_client_id: {short(body)}")
    return f"HTTP 400 {short(body)}"


def check_previous_token_survives_refresh():
    previous = getattr(CTX, "previous_token", None)
    expect(previous, "no token from before the refresh")
    old = salesforce(previous)
    records = old.restful(f"composite/sobjects/Contact?ids={CTX.contacts['a']}&fields=Id")
    expect(isinstance(records, list) and records and records[0], f"unexpected answer: {short(records)}")
    return "the access token issued before the refresh still works"


# --------------------------------------------------------------------------------------------
# Checks: the daily limit (last: it spends the rest of the day's budget)


def burn(calls):
    """Spends up to `calls` API requests on cheap retrieves, over keep-alive connections."""
    path = f"{API_PATH}/composite/sobjects/Contact?ids={ABSENT['Contact']}&fields=Id"
    headers = {"Authorization": f"Bearer {CTX.token}"}
    state = {"left": calls, "refused": False, "spent": 0, "other": None}
    lock = threading.Lock()

    def worker():
        connection = http.client.HTTPConnection(_split.hostname, _split.port or 80, timeout=30)
        while True:
            with lock:
                if state["refused"] or state["left"] <= 0:
                    break
                state["left"] -= 1
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            response.read()
            with lock:
                state["spent"] += 1
                if response.status == 403:
                    state["refused"] = True
                elif response.status != 200 and state["other"] is None:
                    state["other"] = response.status
        connection.close()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return state


def check_daily_limit():
    usage = CTX.sf.api_usage.get("api-usage") or CTX.last_usage
    expect(usage is not None, "no Sforce-Limit-Info seen")
    remaining = usage.total - usage.used
    if remaining > 0:
        if _split.scheme != "http" or not LOOPBACK:
            raise Failed(f"not spending {remaining} real API calls on {HOST}; set SALESFORCE_SKIP_LIMIT_BURN=1")
        expect(remaining <= MAX_BURN, f"{remaining} calls left exceeds SALESFORCE_MAX_BURN={MAX_BURN}")
        started = time.time()
        state = burn(remaining + 5)
        expect(state["other"] is None, f"a burn call answered HTTP {state['other']}")
        print(f"  (spent {state['spent']} calls in {time.time() - started:.0f}s to reach the daily limit)", flush=True)
    path = f"composite/sobjects/Contact?ids={CTX.contacts['a']}&fields=Id"
    error = raises(lambda: rest(path), SalesforceRefusedRequest, 403)
    content = error_objects(error.content)
    expect(content[0]["errorCode"] == "REQUEST_LIMIT_EXCEEDED", f"expected REQUEST_LIMIT_EXCEEDED: {short(content)}")
    raw = CTX.sf.session.get(CTX.sf.base_url + path, headers=CTX.sf.headers)
    expect(raw.status_code == 403, f"raw repeat: HTTP {raw.status_code}")
    expect("Retry-After" not in raw.headers, f"a daily-limit 403 carries no Retry-After: {dict(raw.headers)}")
    return f"HTTP 403 {short(content)}; Sforce-Limit-Info {raw.headers.get('Sforce-Limit-Info')!r}"


# --------------------------------------------------------------------------------------------


def preflight():
    """Starts from a working token: a 401 is renewed once with the refresh token, as crm-sync does."""
    CTX.use(TOKEN)
    try:
        CTX.sf.restful(f"composite/sobjects/Contact?ids={ABSENT['Contact']}&fields=Id")
    except SalesforceExpiredSession:
        response = token_request()
        body = token_json(response)
        if response.status_code != 200 or not body.get("access_token"):
            print(f"FAIL preflight: SALESFORCE_TOKEN refused and the refresh failed: {short(body)}")
            sys.exit(1)
        print("INFO preflight: SALESFORCE_TOKEN was refused (401); continuing with a refreshed token")
        CTX.use(body["access_token"])
    except SalesforceRefusedRequest as error:
        print(f"FAIL preflight: the org's daily API budget is spent (restart the local stack): {short(error.content)}")
        sys.exit(1)


def main():
    print(f"Salesforce contract: {BASE_URL} API v{API_VERSION}, token URL {TOKEN_URL}, "
          f"simple-salesforce {importlib.metadata.version('simple-salesforce')}, run {RUN}", flush=True)
    preflight()
    check("upsert PATCH /composite/sobjects/Contact/{ext}: creates, SaveResults {id,success,errors,created}",
          check_upsert_creates)
    check("upsert: updates by external id, results in input order, created=false", check_upsert_updates_in_order)
    check("upsert allOrNone=false: an invalid record fails alone (INVALID_EMAIL_ADDRESS, fields [Email])",
          check_upsert_all_or_none_false)
    check("upsert: 200 records in one call", check_upsert_200)
    check("upsert: 201 records -> 400 EXCEEDED_ID_LIMIT", check_upsert_201_refused)
    check("upsert Opportunity: string Amount/CloseDate stored as currency/date", check_upsert_opportunity)
    check("upsert Task by external id (id prefix 00T)", check_upsert_task)
    check("GET /composite/sobjects/Contact?ids=&fields= honours fields, absent id -> null, input order",
          check_get_retrieve_fields)
    check("GET retrieve: every record carries attributes {type, url}", check_get_retrieve_attributes)
    check("GET retrieve: datetime fields read back as YYYY-MM-DDThh:mm:ss.sss+0000",
          check_get_retrieve_datetime_format)
    check("GET retrieve: an unknown field -> 400 INVALID_FIELD", check_get_retrieve_invalid_field)
    check("POST /composite/sobjects/Contact {ids, fields} (documented retrieve form)", check_post_retrieve)
    check("update PATCH /composite/sobjects by id", check_update)
    check("update allOrNone=false: an invalid record fails alone", check_update_failures_alone)
    check("update: a malformed id -> MALFORMED_ID", check_update_malformed_id)
    check("associate POST /composite/sobjects OpportunityContactRole (id prefix 00K)", check_create_contact_role)
    check("create SaveResult is {id, success, errors} (no created)", check_create_save_result_keys)
    check("create OpportunityContactRole naming a missing Opportunity fails", check_create_bad_reference)
    check("associate PATCH /composite/sobjects Task WhoId", check_task_link)
    check("archive DELETE /composite/sobjects?ids=&allOrNone=false", check_delete)
    check("archive: an already deleted record -> ENTITY_IS_DELETED", check_delete_deleted)
    check("archive: a malformed id -> MALFORMED_ID (not ENTITY_IS_DELETED)", check_delete_malformed)
    check("queryAll GET /queryAll/?q=: deleted records with IsDeleted, query hides them", check_query_all_deleted)
    check("queryAll: merged records name MasterRecordId, page by page via nextRecordsUrl (merge scan)",
          check_query_all_merges)
    check("errors: bad token -> 401 [{message, errorCode: INVALID_SESSION_ID}]", check_invalid_session)
    check("errors: unknown resource -> 404 [{message, errorCode: NOT_FOUND}]", check_not_found)
    check("errors: malformed JSON -> 400 JSON_PARSER_ERROR", check_json_parser_error)
    check("Sforce-Limit-Info: api-usage=used/max, parsed by simple-salesforce, grows per call", check_limit_header)
    check("Account upsert (001), a contact's direct AccountContactRelation, one with Roles by API (07k), the pair again DUPLICATE_VALUE",
          check_account_relations)
    check("custom object Project__c upsert (a01) with a lookup to its Account; a lookup to none INVALID_CROSS_REFERENCE_KEY",
          check_custom_object_lookup)
    for sobject in ("Contact", "Opportunity", "Task", "Account", "Project__c"):
        check(f"describe GET /sobjects/{sobject}/describe: fields[].name/type, {EXT_ID} externalId",
              check_describe(sobject))
    check("single-record upsert PATCH /sobjects/Contact/{ext}/{value} -> 201", check_single_upsert, advisory=True)
    check("OAuth refresh POST /services/oauth2/token: 200 access_token, instance_url, token_type", check_refresh)
    check("OAuth refresh: documented id, issued_at, signature (HMAC-SHA256 of id+issued_at)",
          check_refresh_identity_fields)
    check("OAuth refresh: the new access token authorises API calls", check_refreshed_token_works)
    check("OAuth refresh: a bad refresh token -> 400 invalid_grant", check_refresh_bad_token)
    check("OAuth refresh: a wrong client secret -> 400 invalid_client", check_refresh_bad_secret)
    check("OAuth refresh: an unknown client id -> 400 invalid_client_id", check_refresh_bad_client_id)
    check("OAuth refresh: the access token from before the refresh still works (UNCONFIRMED)",
          check_previous_token_survives_refresh, advisory=True)
    if SKIP_LIMIT_BURN:
        print("SKIP daily limit 403 REQUEST_LIMIT_EXCEEDED: SALESFORCE_SKIP_LIMIT_BURN is set")
    else:
        check("daily limit: 403 [{message, errorCode: REQUEST_LIMIT_EXCEEDED}], no Retry-After", check_daily_limit)

    failed = [name for name, ok, advisory in RESULTS if not ok and not advisory]
    advisory_failed = [name for name, ok, advisory in RESULTS if not ok and advisory]
    print(f"\n{len(RESULTS) - len(failed) - len(advisory_failed)} passed, {len(failed)} failed, "
          f"{len(advisory_failed)} advisory failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
