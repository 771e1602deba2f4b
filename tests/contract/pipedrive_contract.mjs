// Pipedrive contract suite: Pipedrive's official Node client (npm `pipedrive`, 33.x) is the oracle.
//
// It drives the Pipedrive sandbox (infra/pipedrive-sandbox) through the official client, sending
// exactly the requests crm-sync's client sends (shared/src/adapters/pipedrive/client.rs), and checks
// each request body against the client's request models and each answer against its response
// models (types, required fields, no fields the model lacks) and against the values expected.
//
// The official client's models are TypeScript declarations only: nothing checks them at run time.
// This script reads them (node_modules/pipedrive/dist/versions/v{1,2}/models/*.d.ts) and validates
// the JSON against them itself, citing the model file and line of each mismatch.
//
// Environment:
//   PIPEDRIVE_BASE_URL   the sandbox root, e.g. http://127.0.0.1:3301 (API v2 at /api/v2, v1 at /v1)
//   PIPEDRIVE_TOKEN      its API token (sent as `x-api-token`, as the official client does)
//   CRM_SYNC_OUTBOUND_QUEUE_URL  optional: the local stack's outbound SQS queue (moto), e.g.
//       http://127.0.0.1:4866/123456789012/contract-pd-outbound. When set, app changes are sent
//       through crm-sync itself and what it wrote to the sandbox is checked against the models.
//
// Prints one PASS/FAIL/SKIP line per check and `N passed, N failed`; exits 1 on any failure.

import { readFileSync, readdirSync, existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as v2 from 'pipedrive/v2';
import * as v1 from 'pipedrive/v1';

const require = createRequire(import.meta.url);
const HERE = dirname(fileURLToPath(import.meta.url));
const REPO = join(HERE, '..', '..');

const BASE = (process.env.PIPEDRIVE_BASE_URL || '').replace(/\/+$/, '');
const TOKEN = process.env.PIPEDRIVE_TOKEN || '';
const QUEUE = process.env.CRM_SYNC_OUTBOUND_QUEUE_URL || '';
if (!BASE || !TOKEN) {
  console.error('PIPEDRIVE_BASE_URL and PIPEDRIVE_TOKEN are required');
  process.exit(2);
}

// ---------------------------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------------------------

let passed = 0;
let failed = 0;
let skipped = 0;
function report(status, name, detail) {
  if (status === 'PASS') passed += 1;
  else if (status === 'FAIL') failed += 1;
  else skipped += 1;
  console.log(`${status} ${name}${detail ? ` -- ${detail}` : ''}`);
}
function check(name, ok, detail) {
  report(ok ? 'PASS' : 'FAIL', name, detail);
  return ok;
}
const json = (value) => JSON.stringify(value);

// ---------------------------------------------------------------------------------------------
// The official client's models, read from its .d.ts files
// ---------------------------------------------------------------------------------------------

const PKG_ROOT = join(dirname(require.resolve('pipedrive/v2')), '..', '..', '..');
const cite = (file, line) => `${relative(HERE, file)}:${line}`;

/** Replaces comments with spaces, keeping offsets and line breaks. */
function blankComments(src) {
  return src
    .replace(/\/\*[\s\S]*?\*\//g, (c) => c.replace(/[^\n]/g, ' '))
    .replace(/\/\/[^\n]*/g, (c) => ' '.repeat(c.length));
}
function lineAt(text, offset) {
  return text.slice(0, offset).split('\n').length;
}
function closing(text, open) {
  let depth = 0;
  for (let i = open; i < text.length; i += 1) {
    if (text[i] === '{') depth += 1;
    else if (text[i] === '}') {
      depth -= 1;
      if (depth === 0) return i;
    }
  }
  throw new Error('unbalanced braces');
}
/** Splits `text` on `sep` where no bracket is open. */
function splitTop(text, sep) {
  const parts = [];
  let depth = 0;
  let start = 0;
  for (let i = 0; i < text.length; i += 1) {
    const c = text[i];
    if ('<{(['.includes(c)) depth += 1;
    else if ('>})]'.includes(c)) depth -= 1;
    else if (c === sep && depth === 0) {
      parts.push({ text: text.slice(start, i), offset: start });
      start = i + 1;
    }
  }
  parts.push({ text: text.slice(start), offset: start });
  return parts;
}
function parseType(raw) {
  const t = raw.trim().replace(/;\s*$/, '').trim();
  const union = splitTop(t, '|');
  if (union.length > 1) return { k: 'union', of: union.map((p) => parseType(p.text)) };
  const all = splitTop(t, '&');
  if (all.length > 1) return { k: 'and', of: all.map((p) => parseType(p.text)) };
  const array = t.match(/^Array<([\s\S]+)>$/);
  if (array) return { k: 'array', of: parseType(array[1]) };
  const map = t.match(/^\{\s*\[key: string\]\s*:\s*([\s\S]+?);?\s*\}$/);
  if (map) return { k: 'map', of: parseType(map[1]) };
  if (['string', 'number', 'boolean', 'any', 'object', 'null', 'undefined'].includes(t)) return { k: t };
  if (/^"[^"]*"$/.test(t)) return { k: 'lit', v: t.slice(1, -1) };
  if (/^-?\d+(\.\d+)?$/.test(t)) return { k: 'lit', v: Number(t) };
  return { k: 'ref', name: t };
}
function loadModels(version) {
  const dir = join(PKG_ROOT, 'dist', 'versions', version, 'models');
  const models = new Map();
  for (const name of readdirSync(dir).filter((f) => f.endsWith('.d.ts'))) {
    const file = join(dir, name);
    const code = blankComments(readFileSync(file, 'utf8'));
    for (const m of code.matchAll(/export interface (\w+)\s*\{/g)) {
      const open = m.index + m[0].length - 1;
      const body = code.slice(open + 1, closing(code, open));
      const props = {};
      let index = null;
      for (const member of splitTop(body, ';')) {
        const text = member.text.trim();
        if (!text) continue;
        const at = lineAt(code, open + 1 + member.offset + member.text.search(/\S/));
        let mm = text.match(/^'([^']+)'(\?)?\s*:\s*([\s\S]+)$/);
        if (mm) {
          props[mm[1]] = { type: parseType(mm[3]), optional: Boolean(mm[2]), file, line: at };
          continue;
        }
        mm = text.match(/^\[key: string\]\s*:\s*([\s\S]+)$/);
        if (mm) index = parseType(mm[1]);
      }
      models.set(m[1], { kind: 'object', props, index, file, line: lineAt(code, m.index) });
    }
    for (const m of code.matchAll(/export declare const (\w+)\s*:\s*\{([\s\S]*?)\};/g)) {
      const values = [...m[2].matchAll(/readonly [^:]+:\s*(?:"([^"]*)"|(-?[\d.]+))\s*;/g)].map((v) =>
        v[1] !== undefined ? v[1] : Number(v[2]),
      );
      models.set(m[1], { kind: 'enum', values, file, line: lineAt(code, m.index) });
    }
    for (const m of code.matchAll(/export type (\w+)\s*=\s*([^;]+);/g)) {
      if (m[2].includes('typeof')) continue; // the enum's type, read from its const above
      models.set(m[1], { kind: 'alias', type: parseType(m[2]), file, line: lineAt(code, m.index) });
    }
  }
  return models;
}
const MODELS = { v1: loadModels('v1'), v2: loadModels('v2') };

function typeText(type) {
  switch (type.k) {
    case 'union':
      return type.of.map(typeText).join(' | ');
    case 'and':
      return type.of.map(typeText).join(' & ');
    case 'array':
      return `Array<${typeText(type.of)}>`;
    case 'map':
      return `{[key]: ${typeText(type.of)}}`;
    case 'lit':
      return json(type.v);
    case 'ref':
      return type.name;
    default:
      return type.k;
  }
}

/** An object model's fields, intersections merged. */
function shapeOf(type, models) {
  if (type.k === 'ref') {
    const model = models.get(type.name);
    if (!model) throw new Error(`no model ${type.name}`);
    if (model.kind === 'object') return model;
    if (model.kind === 'alias') return shapeOf(model.type, models);
    return null;
  }
  if (type.k === 'and') {
    const shape = { kind: 'object', props: {}, index: null };
    for (const part of type.of) {
      const sub = shapeOf(part, models);
      if (!sub) return null;
      Object.assign(shape.props, sub.props);
      shape.index = shape.index || sub.index;
    }
    return shape;
  }
  return null;
}

/** Mismatches of `value` against `type`: [{path, problem, at}]. */
function validate(value, type, models, path = '$', out = []) {
  const bad = (problem, at) => out.push({ path, problem, at });
  switch (type.k) {
    case 'any':
      return out;
    case 'undefined':
      if (value !== undefined) bad(`expected undefined, got ${json(value)}`);
      return out;
    case 'null':
      if (value !== null) bad(`expected null, got ${json(value)}`);
      return out;
    case 'string':
    case 'number':
    case 'boolean':
      if (typeof value !== type.k) bad(`expected ${type.k}, got ${json(value)}`);
      return out;
    case 'object':
      if (value === null || typeof value !== 'object') bad(`expected object, got ${json(value)}`);
      return out;
    case 'lit':
      if (value !== type.v) bad(`expected ${json(type.v)}, got ${json(value)}`);
      return out;
    case 'array':
      if (!Array.isArray(value)) bad(`expected ${typeText(type)}, got ${json(value)}`);
      else value.forEach((item, i) => validate(item, type.of, models, `${path}[${i}]`, out));
      return out;
    case 'map':
      if (value === null || typeof value !== 'object' || Array.isArray(value)) {
        bad(`expected ${typeText(type)}, got ${json(value)}`);
      } else {
        for (const [key, item] of Object.entries(value)) validate(item, type.of, models, `${path}.${key}`, out);
      }
      return out;
    case 'union': {
      const tries = type.of.map((alt) => validate(value, alt, models, path, []));
      if (tries.some((t) => t.length === 0)) return out;
      const objectish = tries.filter((_, i) => ['ref', 'and'].includes(type.of[i].k) && value && typeof value === 'object');
      if (objectish.length) out.push(...objectish.sort((a, b) => a.length - b.length)[0]);
      else bad(`expected ${typeText(type)}, got ${json(value)}`);
      return out;
    }
    case 'ref': {
      const model = models.get(type.name);
      if (!model) {
        bad(`model ${type.name} not found`);
        return out;
      }
      if (model.kind === 'enum') {
        if (!model.values.includes(value)) bad(`expected one of ${json(model.values)} (${type.name}), got ${json(value)}`, cite(model.file, model.line));
        return out;
      }
      if (model.kind === 'alias' && !shapeOf(type, models)) return validate(value, model.type, models, path, out);
      return validateShape(value, shapeOf(type, models), type.name, models, path, out);
    }
    case 'and':
      return validateShape(value, shapeOf(type, models), typeText(type), models, path, out);
    default:
      bad(`unknown type ${json(type)}`);
      return out;
  }
}
function validateShape(value, shape, name, models, path, out) {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    out.push({ path, problem: `expected object ${name}, got ${json(value)}` });
    return out;
  }
  for (const [key, prop] of Object.entries(shape.props)) {
    if (value[key] === undefined) {
      if (!prop.optional) out.push({ path: `${path}.${key}`, problem: `required by ${name}, missing`, at: cite(prop.file, prop.line) });
    } else {
      const before = out.length;
      validate(value[key], prop.type, models, `${path}.${key}`, out);
      for (let i = before; i < out.length; i += 1) out[i].at = out[i].at || cite(prop.file, prop.line);
    }
  }
  for (const key of Object.keys(value)) {
    if (key in shape.props) continue;
    if (shape.index) validate(value[key], shape.index, models, `${path}.${key}`, out);
    else out.push({ path: `${path}.${key}`, problem: `not a field of ${name}`, at: shape.file ? cite(shape.file, shape.line) : undefined });
  }
  return out;
}
function problems(value, modelName, version) {
  return validate(value, { k: 'ref', name: modelName }, MODELS[version]);
}
function describe(issues) {
  return issues.map((i) => `${i.path}: ${i.problem}${i.at ? ` [${i.at}]` : ''}`).join('; ');
}
/** One check: `value` is a valid `modelName`. */
function conforms(name, value, modelName, version, { extraAllowed = [] } = {}) {
  const issues = problems(value, modelName, version).filter((i) => !(i.problem.startsWith('not a field') && extraAllowed.some((f) => i.path === `$.${f}`)));
  return check(name, issues.length === 0, issues.length ? `${describe(issues)}; body ${json(value)}` : `${modelName} (${version})`);
}
/** One check: `object` carries each of `fields`. */
function carries(name, object, fields) {
  const missing = fields.filter((f) => object == null || object[f] === undefined || object[f] === null);
  return check(name, missing.length === 0, missing.length ? `missing ${missing.join(', ')} in ${json(object)}` : fields.join(', '));
}

// ---------------------------------------------------------------------------------------------
// The official client, pointed at the sandbox
// ---------------------------------------------------------------------------------------------

// The official client's response interceptor hands back the body only (dist/versions/v2/base.js,
// `responseInterceptor`), so status and headers are caught in a transformResponse of its own
// axios request options.
const seen = { last: null };
const baseOptions = {
  transformResponse: [
    function capture(data, headers, status) {
      let body = data;
      try {
        body = typeof data === 'string' && data.length ? JSON.parse(data) : data;
      } catch {
        body = data;
      }
      seen.last = { status, headers: headers && headers.toJSON ? headers.toJSON() : { ...headers }, raw: data };
      return body;
    },
  ],
};
function configure(token) {
  return {
    v2: new v2.Configuration({ apiKey: token, basePath: `${BASE}/api/v2` }),
    v1: new v1.Configuration({ apiKey: token, basePath: `${BASE}/v1` }),
  };
}
const config = configure(TOKEN);
for (const c of [config.v1, config.v2]) c.baseOptions = baseOptions;
const persons = new v2.PersonsApi(config.v2);
const deals = new v2.DealsApi(config.v2);
const organizations = new v2.OrganizationsApi(config.v2);
const notes = new v1.NotesApi(config.v1);

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
let lastCall = 0;
/** One call through the official client, paced under the sandbox's burst window (20 per 2 s,
 * shared with the stack); a 429 is waited out unless `raw429`. */
async function call(fn, { raw429 = false, pace = 160 } = {}) {
  for (let attempt = 0; ; attempt += 1) {
    const wait = lastCall + pace - Date.now();
    if (wait > 0) await sleep(wait);
    lastCall = Date.now();
    seen.last = null;
    let result;
    try {
      const body = await fn();
      result = { ok: true, status: seen.last?.status, headers: seen.last?.headers || {}, body };
    } catch (error) {
      if (!seen.last) throw error;
      // The client's errorInterceptor rejects with the error body.
      result = { ok: false, status: seen.last.status, headers: seen.last.headers || {}, body: error };
    }
    if (result.status === 429 && !raw429 && attempt < 5) {
      await sleep(1000 * Math.max(1, Number(result.headers['x-ratelimit-reset']) || 2) + 200);
      continue;
    }
    return result;
  }
}

// ---------------------------------------------------------------------------------------------
// Requests as the official request models take them. What crm-sync itself sends is checked in
// throughCrmSync(), from the sandbox's log of the requests it received.
// ---------------------------------------------------------------------------------------------

// shared/config/mapping.pipedrive.toml: the custom field holding the app's id.
const ID_PROPERTY = 'crm_sync_app_id';
const entry = (value) => [{ value, primary: true, label: 'work' }];

// ---------------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------------

const RUN = `c${Date.now().toString(36)}`;
const rateSamples = [];
function sample(label, res) {
  rateSamples.push({ label, status: res.status, headers: res.headers });
  return res;
}

async function personsAndDealsAndNotes() {
  // --- Search request (client.rs:397-403): term, fields=custom_fields, exact_match=true ---------
  const searchParams = { term: `app-${RUN}`, fields: 'custom_fields', exact_match: true };
  const paramIssues = [];
  const api = readFileSync(join(PKG_ROOT, 'dist/versions/v2/api/persons-api.d.ts'), 'utf8');
  const fieldsType = api.match(/export interface PersonsApiSearchPersonsRequest[\s\S]*?readonly fields\?: ([^;]+);/)[1];
  if (!fieldsType.split('|').map((s) => s.trim().replace(/'/g, '')).includes(searchParams.fields)) paramIssues.push(`fields=${searchParams.fields} not in ${fieldsType}`);
  check('persons.search request: crm-sync\'s query (term, fields=custom_fields, exact_match=true) fits PersonsApiSearchPersonsRequest', paramIssues.length === 0, paramIssues.join('; ') || json(searchParams));

  const key = `app-${RUN}`;
  const empty = sample('GET /api/v2/persons/search', await call(() => persons.searchPersons(searchParams)));
  check('persons.search (no match): 200 with data.items []', empty.status === 200 && Array.isArray(empty.body?.data?.items) && empty.body.data.items.length === 0, `status ${empty.status} body ${json(empty.body)}`);
  conforms('persons.search (no match) response is a GetPersonSearchResponse', empty.body, 'GetPersonSearchResponse', 'v2');

  // --- Person create (client.rs:424-430) ----------------------------------------------------
  const contact = { email: `ada-${RUN}@example.com` };
  const createBody = { name: 'Ada Lovelace', emails: entry(contact.email), phones: entry('+44 20 7946 0000'), custom_fields: { [ID_PROPERTY]: key } };
  conforms(`persons.create request is an AddPersonRequest (${json(createBody)})`, createBody, 'AddPersonRequest', 'v2');
  const entryIssues = [...(createBody.emails || []).flatMap((e) => problems(e, 'PersonItemEmail', 'v2')), ...(createBody.phones || []).flatMap((e) => problems(e, 'PersonItemPhone', 'v2'))];
  check('persons.create request: emails/phones as [{value,primary,label}] (PersonItemEmail/PersonItemPhone)', entryIssues.length === 0 && createBody.emails?.length === 1 && createBody.phones?.length === 1, entryIssues.length ? describe(entryIssues) : `${json(createBody.emails)} ${json(createBody.phones)}`);
  const created = sample('POST /api/v2/persons', await call(() => persons.addPerson({ AddPersonRequest: createBody })));
  const person = created.body?.data || {};
  const personId = person.id;
  check('persons.create: 2xx with success:true and a numeric data.id', created.ok && created.body?.success === true && Number.isInteger(personId), `status ${created.status} body ${json(created.body)}`);
  conforms('persons.create response is an UpsertPersonResponse', created.body, 'UpsertPersonResponse', 'v2');
  check('persons.create response values: name, primary email, custom field as sent',
    person.name === 'Ada Lovelace' && person.emails?.[0]?.value === contact.email && person.emails?.[0]?.primary === true && person.custom_fields?.[ID_PROPERTY] === key,
    json(person));
  carries('persons.create response carries add_time, update_time, owner_id (Person model; set by Pipedrive)', person, ['add_time', 'update_time', 'owner_id']);

  // --- Person read (client.rs:471-502) --------------------------------------------------------
  const got = sample('GET /api/v2/persons/{id}', await call(() => persons.getPerson({ id: personId })));
  conforms('persons.get response is an UpsertPersonResponse (Person)', got.body, 'UpsertPersonResponse', 'v2');
  check('persons.get values equal what was written', got.body?.data?.id === personId && got.body?.data?.name === 'Ada Lovelace', json(got.body?.data));
  carries('persons.get carries add_time, update_time, owner_id', got.body?.data, ['add_time', 'update_time', 'owner_id']);

  // --- Person search (client.rs:397-412) ------------------------------------------------------
  const found = sample('GET /api/v2/persons/search', await call(() => persons.searchPersons({ term: key, fields: 'custom_fields', exact_match: true })));
  const items = found.body?.data?.items || [];
  check('persons.search finds the person by the app id (data.items[0].item.id)', items.length === 1 && items[0]?.item?.id === personId, json(found.body));
  conforms('persons.search response is a GetPersonSearchResponse (items[].item: id, type, name, emails: string[], custom_fields: string[], owner{id})', found.body, 'GetPersonSearchResponse', 'v2');
  check('persons.search item has type "person"', items[0]?.item?.type === 'person', `item.type = ${json(items[0]?.item?.type)}`);
  check('persons.search item emails are strings (model: Array<string>)', Array.isArray(items[0]?.item?.emails) && items[0].item.emails.every((e) => typeof e === 'string'), `emails = ${json(items[0]?.item?.emails)}`);
  check('persons.search item custom_fields are strings (model: Array<string>)', Array.isArray(items[0]?.item?.custom_fields) && items[0].item.custom_fields.every((e) => typeof e === 'string'), `custom_fields = ${json(items[0]?.item?.custom_fields)}`);
  const upper = await call(() => persons.searchPersons({ term: key.toUpperCase(), fields: 'custom_fields', exact_match: true }));
  check('persons.search exact_match is not case sensitive (persons-api.d.ts: "It is not case sensitive")', (upper.body?.data?.items || []).some((i) => i.item?.id === personId), `term ${key.toUpperCase()} -> ${json(upper.body?.data?.items)}`);

  // --- Person update (upsert's PATCH, client.rs:417-423, and update(), client.rs:434-445) ------
  const updateBody = { name: 'Augusta Lovelace', custom_fields: { [ID_PROPERTY]: key } };
  conforms(`persons.update request is an UpdatePersonRequest (${json(updateBody)})`, updateBody, 'UpdatePersonRequest', 'v2');
  const updated = sample('PATCH /api/v2/persons/{id}', await call(() => persons.updatePerson({ id: personId, UpdatePersonRequest: updateBody })));
  conforms('persons.update response is an UpsertPersonResponse', updated.body, 'UpsertPersonResponse', 'v2');
  check('persons.update: the new name reads back, split into first_name and last_name (Person model)', updated.body?.data?.name === 'Augusta Lovelace' && updated.body?.data?.first_name === 'Augusta' && updated.body?.data?.last_name === 'Lovelace', `after PATCH: ${json(pick(updated.body?.data || {}, /name/))}`);
  carries('persons.update response carries update_time', updated.body?.data, ['update_time']);

  // --- Deal create, associate, search, read (client.rs:385-432, 504-543) ------------------------
  const dealKey = `deal-${RUN}`;
  const dealEmpty = sample('GET /api/v2/deals/search', await call(() => deals.searchDeals({ term: dealKey, fields: 'custom_fields', exact_match: true })));
  conforms('deals.search (no match) response is a GetDealSearchResponse', dealEmpty.body, 'GetDealSearchResponse', 'v2');
  const dealBody = { title: 'Analytical engine', value: 1200, expected_close_date: '2026-12-31', custom_fields: { [ID_PROPERTY]: dealKey } };
  conforms(`deals.create request is an AddDealRequest (${json(dealBody)})`, dealBody, 'AddDealRequest', 'v2');
  const dealCreated = sample('POST /api/v2/deals', await call(() => deals.addDeal({ AddDealRequest: dealBody })));
  const deal = dealCreated.body?.data || {};
  const dealId = deal.id;
  check('deals.create: 2xx with success:true and a numeric data.id', dealCreated.ok && dealCreated.body?.success === true && Number.isInteger(dealId), `status ${dealCreated.status} body ${json(dealCreated.body)}`);
  conforms('deals.create response is an UpsertDealResponse', dealCreated.body, 'UpsertDealResponse', 'v2');
  check('deals.create response value is the number 1200', deal.value === 1200, `value = ${json(deal.value)}`);
  carries('deals.create response carries add_time, update_time, owner_id, status, currency, pipeline_id, stage_id (Deal model; Pipedrive defaults)', deal, ['add_time', 'update_time', 'owner_id', 'status', 'currency', 'pipeline_id', 'stage_id']);

  const associateBody = { person_id: personId };
  conforms(`deals.update (associate) request: {person_id: number} is an UpdateDealRequest (${json(associateBody)})`, associateBody, 'UpdateDealRequest', 'v2');
  const linked = sample('PATCH /api/v2/deals/{id}', await call(() => deals.updateDeal({ id: dealId, UpdateDealRequest: associateBody })));
  conforms('deals.update response is an UpsertDealResponse', linked.body, 'UpsertDealResponse', 'v2');
  check('deals.update links the person (data.person_id)', linked.body?.data?.person_id === personId, json(linked.body?.data));

  const dealFound = sample('GET /api/v2/deals/search', await call(() => deals.searchDeals({ term: dealKey, fields: 'custom_fields', exact_match: true })));
  const dealItem = dealFound.body?.data?.items?.[0]?.item;
  check('deals.search finds the deal by the app id', dealItem?.id === dealId, json(dealFound.body));
  conforms('deals.search response is a GetDealSearchResponse (item: type, title, value, person{id,name}, stage, owner, custom_fields: string[])', dealFound.body, 'GetDealSearchResponse', 'v2');
  check('deals.search item has type "deal"', dealItem?.type === 'deal', `item.type = ${json(dealItem?.type)}`);

  const dealGot = sample('GET /api/v2/deals/{id}', await call(() => deals.getDeal({ id: dealId })));
  conforms('deals.get response is an UpsertDealResponse (Deal)', dealGot.body, 'UpsertDealResponse', 'v2');

  // --- Notes, API v1 (client.rs:217-286) --------------------------------------------------------
  const activityKey = `act-${RUN}`;
  const listParams = { person_id: personId, sort: 'id DESC', limit: 100 };
  const listed0 = sample('GET /v1/notes', await call(() => notes.getNotes(listParams)));
  check('notes.list (v1) by person, sort "id DESC", limit 100: 200 with data []', listed0.status === 200 && Array.isArray(listed0.body?.data), `status ${listed0.status} body ${json(listed0.body)}`);
  conforms('notes.list response is a GetNotesResponse', listed0.body, 'GetNotesResponse', 'v1');

  const noteProps = { content: 'Called about the engine', add_time: '2026-11-27 10:00:00' };
  const addBody = { ...noteProps, content: `${noteProps.content}\n[crm-sync:${activityKey}]`, person_id: personId };
  conforms(`notes.create request is an AddNoteRequest (${json(addBody)})`, addBody, 'AddNoteRequest', 'v1');
  const noteCreated = sample('POST /v1/notes', await call(() => notes.addNote({ AddNoteRequest: addBody })));
  const note = noteCreated.body?.data || {};
  const noteId = note.id;
  check('notes.create: 2xx with success:true and a numeric data.id', noteCreated.ok && noteCreated.body?.success === true && Number.isInteger(noteId), `status ${noteCreated.status} body ${json(noteCreated.body)}`);
  conforms('notes.create response is an UpsertNoteResponse', noteCreated.body, 'UpsertNoteResponse', 'v1');
  check('notes.create response values: content, add_time, person_id as sent', note.content === addBody.content && note.add_time === noteProps.add_time && note.person_id === personId, json(note));
  carries('notes.create response carries add_time, update_time, user_id, active_flag', note, ['add_time', 'update_time', 'user_id', 'active_flag']);

  const listed = sample('GET /v1/notes', await call(() => notes.getNotes(listParams)));
  const marked = (listed.body?.data || []).find((n) => typeof n.content === 'string' && n.content.includes(`[crm-sync:${activityKey}]`));
  check('notes.list finds the note by its marker line (client.rs:268-286)', marked?.id === noteId, json(listed.body?.data));
  conforms('notes.list response is a GetNotesResponse', listed.body, 'GetNotesResponse', 'v1');
  check('notes.list carries additional_data.pagination {start, limit, more_items_in_collection}', listed.body?.additional_data?.pagination !== undefined && typeof listed.body.additional_data.pagination.more_items_in_collection === 'boolean', `additional_data = ${json(listed.body?.additional_data)}`);
  carries('notes.list items carry update_time, user_id', marked, ['update_time', 'user_id']);

  const putBody = { content: `Called about the engine, again\n[crm-sync:${activityKey}]`, add_time: '2026-11-27 10:00:00', person_id: personId };
  conforms(`notes.update request is a NoteRequest (${json(putBody)})`, putBody, 'NoteRequest', 'v1');
  const notePut = sample('PUT /v1/notes/{id}', await call(() => notes.updateNote({ id: noteId, NoteRequest: putBody })));
  conforms('notes.update response is an UpsertNoteResponse', notePut.body, 'UpsertNoteResponse', 'v1');
  check('notes.update (PUT) changes content', notePut.body?.data?.content === putBody.content, json(notePut.body?.data));

  const noteGot = sample('GET /v1/notes/{id}', await call(() => notes.getNote({ id: noteId })));
  conforms('notes.get (read, client.rs:481) response is an UpsertNoteResponse', noteGot.body, 'UpsertNoteResponse', 'v1');

  // Pipedrive's v1 notes are updated with PUT only (NotesApi has no PATCH on /notes/{id}).
  const notesApiJs = readFileSync(join(PKG_ROOT, 'dist/versions/v1/api/notes-api.js'), 'utf8');
  const noteMethods = [...notesApiJs.matchAll(/localVarPath = `\/notes\/\{id\}`[\s\S]*?method: '(\w+)'/g)].map((m) => m[1]);
  check('notes: the official NotesApi updates a note with PUT, not PATCH', noteMethods.includes('PUT') && !noteMethods.includes('PATCH'), `NotesApi methods on /notes/{id}: ${[...new Set(noteMethods)].join(', ')}`);
  const rawPatch = await fetch(`${BASE}/v1/notes/${noteId}`, { method: 'PATCH', headers: { 'x-api-token': TOKEN, 'content-type': 'application/json' }, body: json({ content: 'x' }) });
  check('notes: the sandbox refuses PATCH /v1/notes/{id}, as Pipedrive does', rawPatch.status === 404, `status ${rawPatch.status}`);

  // --- Organizations, and a person and a deal linked to one (org_id) ----------------------------
  const orgKey = `org-${RUN}`;
  const orgBody = { name: 'Analytical Engines Ltd', address: { value: '12 Marylebone, London' }, custom_fields: { [ID_PROPERTY]: orgKey } };
  conforms(`organizations.create request is an AddOrganizationRequest (${json(orgBody)})`, orgBody, 'AddOrganizationRequest', 'v2');
  const orgCreated = sample('POST /api/v2/organizations', await call(() => organizations.addOrganization({ AddOrganizationRequest: orgBody })));
  const orgId = orgCreated.body?.data?.id;
  check('organizations.create: 2xx with success:true and a numeric data.id', orgCreated.ok && orgCreated.body?.success === true && Number.isInteger(orgId), `status ${orgCreated.status} body ${json(orgCreated.body)}`);
  conforms('organizations.create response is an UpsertOrganizationResponse', orgCreated.body, 'UpsertOrganizationResponse', 'v2');
  check('organizations.create response values: name, address, custom field as sent',
    orgCreated.body?.data?.name === orgBody.name && orgCreated.body?.data?.address?.value === orgBody.address.value && orgCreated.body?.data?.custom_fields?.[ID_PROPERTY] === orgKey,
    json(orgCreated.body?.data));
  const orgGot = sample('GET /api/v2/organizations/{id}', await call(() => organizations.getOrganization({ id: orgId })));
  conforms('organizations.get response is an UpsertOrganizationResponse', orgGot.body, 'UpsertOrganizationResponse', 'v2');
  const orgFound = sample('GET /api/v2/organizations/search', await call(() => organizations.searchOrganization({ term: orgKey, fields: 'custom_fields', exact_match: true })));
  const orgItem = orgFound.body?.data?.items?.[0]?.item;
  check('organizations.search finds the organization by the app id, item type "organization"', orgItem?.id === orgId && orgItem?.type === 'organization', json(orgFound.body));
  conforms('organizations.search response is a GetOrganizationSearchResponse (item: address as text, custom_fields: string[])', orgFound.body, 'GetOrganizationSearchResponse', 'v2');
  const orgUpdateBody = { name: 'Analytical Engines plc' };
  conforms(`organizations.update request is an UpdateOrganizationRequest (${json(orgUpdateBody)})`, orgUpdateBody, 'UpdateOrganizationRequest', 'v2');
  const orgUpdated = sample('PATCH /api/v2/organizations/{id}', await call(() => organizations.updateOrganization({ id: orgId, UpdateOrganizationRequest: orgUpdateBody })));
  conforms('organizations.update response is an UpsertOrganizationResponse', orgUpdated.body, 'UpsertOrganizationResponse', 'v2');
  check('organizations.update: the new name reads back', orgUpdated.body?.data?.name === orgUpdateBody.name, json(orgUpdated.body?.data));
  const personOrg = { org_id: orgId };
  conforms(`persons.update request: {org_id: number} is an UpdatePersonRequest (${json(personOrg)})`, personOrg, 'UpdatePersonRequest', 'v2');
  const personLinked = await call(() => persons.updatePerson({ id: personId, UpdatePersonRequest: personOrg }));
  check('persons.update links the organization (data.org_id)', personLinked.body?.data?.org_id === orgId, json(personLinked.body?.data));
  const dealLinkedOrg = await call(() => deals.updateDeal({ id: dealId, UpdateDealRequest: { org_id: orgId } }));
  check('deals.update links the organization (data.org_id)', dealLinkedOrg.body?.data?.org_id === orgId, json(dealLinkedOrg.body?.data));
  const orgFields = await call(() => new v2.OrganizationFieldsApi(config.v2).getOrganizationFields({}));
  check('organizationFields lists the app id field as custom', (orgFields.body?.data || []).some((f) => f.field_code === ID_PROPERTY && f.is_custom_field === true), json(orgFields.body?.data));

  const noteDeleted = sample('DELETE /v1/notes/{id}', await call(() => notes.deleteNote({ id: noteId })));
  conforms('notes.delete (not called by crm-sync: no activity delete) response is a DeleteNoteResponse (data: boolean)', noteDeleted.body, 'DeleteNoteResponse', 'v1');

  // --- Deletes (archive, client.rs:447-469) ---------------------------------------------------
  const dealDeleted = sample('DELETE /api/v2/deals/{id}', await call(() => deals.deleteDeal({ id: dealId })));
  conforms('deals.delete response is a DeleteDealResponse', dealDeleted.body, 'DeleteDealResponse', 'v2');
  check('deals.delete answers data.id = the deal', dealDeleted.body?.data?.id === dealId, json(dealDeleted.body));
  const orgDeleted = sample('DELETE /api/v2/organizations/{id}', await call(() => organizations.deleteOrganization({ id: orgId })));
  conforms('organizations.delete response is a DeleteOrganizationResponse', orgDeleted.body, 'DeleteOrganizationResponse', 'v2');
  check('organizations.delete answers data.id = the organization', orgDeleted.body?.data?.id === orgId, json(orgDeleted.body));
  const personDeleted = sample('DELETE /api/v2/persons/{id}', await call(() => persons.deletePerson({ id: personId })));
  conforms('persons.delete response is a DeletePersonResponse', personDeleted.body, 'DeletePersonResponse', 'v2');
  check('persons.delete answers data.id = the person', personDeleted.body?.data?.id === personId, json(personDeleted.body));

  // --- Errors ----------------------------------------------------------------------------------
  const gone = sample('GET /api/v2/persons/{id} (deleted)', await call(() => persons.getPerson({ id: personId })));
  check('404 after delete: {success:false, error: string}', gone.status === 404 && gone.body?.success === false && typeof gone.body?.error === 'string', `status ${gone.status} body ${json(gone.body)}`);
  conforms('404 body is a FailResponse (v1 model: success, error; errorCode/error_info tolerated)', gone.body, 'FailResponse', 'v1', { extraAllowed: ['errorCode', 'error_info'] });
  const badNote = await call(() => notes.addNote({ AddNoteRequest: { content: 'orphan' } }));
  check('400 (note without person/deal/org/lead): {success:false, error: string}', badNote.status === 400 && badNote.body?.success === false && typeof badNote.body?.error === 'string', `status ${badNote.status} body ${json(badNote.body)}`);
  conforms('400 body is a FailResponse (errorCode/error_info tolerated)', badNote.body, 'FailResponse', 'v1', { extraAllowed: ['errorCode', 'error_info'] });

  const wrong = configure('not-the-token');
  wrong.v2.baseOptions = baseOptions;
  const unauthorized = await call(() => new v2.PersonsApi(wrong.v2).getPerson({ id: 1 }));
  check('401 with a wrong api token: {success:false, error}', unauthorized.status === 401 && unauthorized.body?.success === false && typeof unauthorized.body?.error === 'string', `status ${unauthorized.status} body ${json(unauthorized.body)}`);
  conforms('401 body is an UnathorizedResponse (errorCode: number)', unauthorized.body, 'UnathorizedResponse', 'v1');
  const codes = [gone, badNote, unauthorized].map((r) => r.body?.errorCode);
  check('errorCode, where an error body has one, is a number (the client\'s only model of it, UnathorizedResponse, types it number)', codes.every((c) => c === undefined || typeof c === 'number'), `404/400/401 errorCode: ${json(codes)}`);
}

function rateLimitHeaders() {
  const bad = rateSamples.filter((s) => !['x-ratelimit-limit', 'x-ratelimit-remaining', 'x-ratelimit-reset'].every((h) => /^\d+$/.test(String(s.headers[h] ?? ''))));
  check('every answer carries x-ratelimit-limit, x-ratelimit-remaining, x-ratelimit-reset (integers; reset in seconds)', rateSamples.length > 0 && bad.length === 0,
    bad.length ? bad.map((s) => `${s.label}: ${json(s.headers)}`).join('; ') : `${rateSamples.length} answers, e.g. ${json(pick(rateSamples[0].headers, /ratelimit|daily/))}`);
  const budget = rateSamples.filter((s) => !/^\d+$/.test(String(s.headers['x-daily-ratelimit-token-remaining'] ?? '')) || !/^\d+$/.test(String(s.headers['x-daily-ratelimit-token-limit'] ?? '')));
  check('every answer carries the daily token budget: x-daily-ratelimit-token-limit, x-daily-ratelimit-token-remaining', budget.length === 0,
    budget.length ? `absent on ${budget.length} of ${rateSamples.length} answers; rate headers sent: ${json(pick(rateSamples[0].headers, /ratelimit|daily/))}` : '');
  const legacy = rateSamples.filter((s) => /^GET /.test(s.label) && s.headers['x-daily-requests-left'] !== undefined);
  check('x-daily-requests-left (legacy POST/PUT fair-use counter) is not sent on GET answers', legacy.length === 0,
    legacy.length ? `sent on ${legacy.length} GET answers, e.g. ${legacy[0].label}: ${legacy[0].headers['x-daily-requests-left']}` : '');
}
function pick(headers, pattern) {
  return Object.fromEntries(Object.entries(headers || {}).filter(([k]) => pattern.test(k)));
}

async function burst() {
  // Bounded: at most 45 requests, stopping at the first 429.
  let hit = null;
  for (let i = 0; i < 45 && !hit; i += 1) {
    const res = await call(() => persons.searchPersons({ term: `none-${RUN}`, fields: 'custom_fields', exact_match: true }), { raw429: true, pace: 0 });
    if (res.status === 429) hit = res;
  }
  if (!check('429 past the burst window', Boolean(hit), hit ? '' : 'no 429 after 45 requests')) return;
  check('429 body: {success:false, error: string}', hit.body?.success === false && typeof hit.body?.error === 'string', json(hit.body));
  check('429 headers: x-ratelimit-remaining 0 and x-ratelimit-reset >= 1 (seconds)', hit.headers['x-ratelimit-remaining'] === '0' && Number(hit.headers['x-ratelimit-reset']) >= 1, json(pick(hit.headers, /ratelimit|daily|retry/)));
  check('429 headers tell a burst from a spent day: x-daily-ratelimit-token-remaining present', hit.headers['x-daily-ratelimit-token-remaining'] !== undefined, json(pick(hit.headers, /ratelimit|daily|retry/)));
  await sleep(2500);
}

// ---------------------------------------------------------------------------------------------
// crm-sync itself (optional): app changes through the local stack, then what it wrote
// ---------------------------------------------------------------------------------------------

async function sqsSend(message) {
  const url = new URL(QUEUE);
  const res = await fetch(`${url.origin}/`, {
    method: 'POST',
    headers: {
      'content-type': 'application/x-amz-json-1.0',
      'x-amz-target': 'AmazonSQS.SendMessage',
      // moto routes by the credential scope; it does not verify the signature.
      authorization: 'AWS4-HMAC-SHA256 Credential=contract/20260101/us-east-1/sqs/aws4_request, SignedHeaders=host, Signature=0',
    },
    body: json({ QueueUrl: QUEUE, MessageBody: json(message) }),
  });
  if (!res.ok) throw new Error(`SQS SendMessage ${res.status}: ${await res.text()}`);
}
async function until(what, probe, seconds = 45) {
  const end = Date.now() + seconds * 1000;
  while (Date.now() < end) {
    const value = await probe();
    if (value) return value;
    await sleep(1000);
  }
  throw new Error(`timed out waiting for ${what}`);
}
const change = (type, recordId, data, extra = {}) => ({ version: 1, type, record_id: recordId, idempotency_id: `${recordId}-${Date.now()}-${Math.random().toString(36).slice(2)}`, changed_at: Date.now(), ...extra, ...(data ? { data } : {}) });
async function findBy(api, recordId) {
  const res = await call(() => (api === 'persons' ? persons.searchPersons : deals.searchDeals).call(api === 'persons' ? persons : deals, { term: recordId, fields: 'custom_fields', exact_match: true }));
  const id = res.body?.data?.items?.[0]?.item?.id;
  if (!id) return null;
  const got = await call(() => (api === 'persons' ? persons.getPerson({ id }) : deals.getDeal({ id })));
  return got.body?.data || null;
}
/** What a create wrote: the stored record, less what the sandbox adds (`id`). */
const sent = (record, ...drop) => Object.fromEntries(Object.entries(record).filter(([k]) => !['id', ...drop].includes(k)));

/** The requests crm-sync sent to the sandbox since `from` (an index into the log). */
async function logged(from = 0) {
  const res = await fetch(`${BASE}/_sandbox/requests`);
  return (await res.json()).slice(from);
}
/** Holds every body crm-sync sent with `method` to a path matching `path` against `model`. */
function sentAs(requests, method, path, model, version) {
  const bodies = requests.filter((r) => r.method === method && path.test(r.path)).map((r) => r.body);
  check(`crm-sync sent ${method} ${path.source} at least once`, bodies.length > 0, `log: ${json(requests.map((r) => `${r.method} ${r.path}`))}`);
  bodies.forEach((body, i) => conforms(`crm-sync's ${method} ${path.source} body #${i + 1} is a${/^[AEIOU]/.test(model) ? 'n' : ''} ${model} (${json(body)})`, body, model, version));
}

async function throughCrmSync() {
  if (!QUEUE) {
    report('SKIP', 'crm-sync live requests', 'CRM_SYNC_OUTBOUND_QUEUE_URL not set');
    return;
  }
  const contactId = `live-contact-${RUN}`;
  const dealRecord = `live-deal-${RUN}`;
  const activityRecord = `live-act-${RUN}`;
  const start = (await logged()).length;
  try {
    await sqsSend(change('contact.upsert', contactId, { email: `live-${RUN}@example.com`, first_name: 'Grace', last_name: 'Hopper', phone: '+1 555 0100' }));
    const stored = await until('crm-sync to create the person', () => findBy('persons', contactId));
    check('crm-sync persons.create: name made of the first and last names', stored.name === 'Grace Hopper', json(stored));

    await sqsSend(change('deal.upsert', dealRecord, { name: 'Compiler', amount: 1200, close_date: '2026-12-31' }, { contact_record_id: contactId }));
    const storedDeal = await until('crm-sync to create and link the deal', async () => {
      const d = await findBy('deals', dealRecord);
      return d && d.person_id ? d : null;
    });
    check('crm-sync deals.create sends value as a number (amount 1200)', storedDeal.value === 1200, `value stored = ${json(storedDeal.value)}`);

    await sqsSend(change('activity.log', activityRecord, { body: 'Met at the lab', occurred_at: '2026-11-27T10:00:00Z' }, { contact_record_id: contactId }));
    await until('crm-sync to create the note', async () => {
      const res = await call(() => notes.getNotes({ person_id: stored.id, sort: 'id DESC', limit: 100 }));
      return (res.body?.data || []).find((n) => String(n.content).includes(`[crm-sync:`)) || null;
    });

    await sqsSend(change('contact.upsert', contactId, { first_name: 'Amazing Grace' }));
    const renamed = await until('crm-sync to update the person', async () => {
      const p = await findBy('persons', contactId);
      return p && p.name !== 'Grace Hopper' ? p : null;
    });
    check('crm-sync persons.update: a first-name change reaches `name`', renamed.name === 'Amazing Grace Hopper', `after the PATCH: name ${json(renamed.name)}, first_name ${json(renamed.first_name)}`);

    await sqsSend(change('contact.delete', contactId, null));
    await until('crm-sync to delete the person', async () => {
      const res = await call(() => persons.getPerson({ id: stored.id }));
      return res.status === 404;
    });

    // Every request crm-sync made, held against the official request models.
    const requests = (await logged(start)).filter((r) => !r.path.startsWith('/_sandbox'));
    sentAs(requests, 'POST', /^\/api\/v2\/persons$/, 'AddPersonRequest', 'v2');
    sentAs(requests, 'PATCH', /^\/api\/v2\/persons\/\d+$/, 'UpdatePersonRequest', 'v2');
    sentAs(requests, 'POST', /^\/api\/v2\/deals$/, 'AddDealRequest', 'v2');
    sentAs(requests, 'PATCH', /^\/api\/v2\/deals\/\d+$/, 'UpdateDealRequest', 'v2');
    sentAs(requests, 'POST', /^\/v1\/notes$/, 'AddNoteRequest', 'v1');
    const unknown = requests.filter((r) => !/^(GET|POST|PATCH|DELETE) \/api\/v2\/(persons|deals)(\/search|\/\d+)?$|^(GET|POST|PUT) \/v1\/notes(\/\d+)?$|^GET \/api\/v2\/(person|deal)Fields$/.test(`${r.method} ${r.path}`));
    check('crm-sync called only endpoints the official client has', unknown.length === 0, json(unknown.map((r) => `${r.method} ${r.path}`)));
  } catch (error) {
    check('crm-sync live requests', false, String(error?.message || error));
  }
}

// ---------------------------------------------------------------------------------------------

/** A person merged into another through the official client's v1 PersonsApi.mergePersons (a person in
 * Pipedrive merges the same way): the merged person is gone, the one kept answers as before. */
async function merges() {
  const mergesApi = new v1.PersonsApi(config.v1);
  const make = async (label) => {
    const body = { name: `Merge ${label}`, emails: entry(`merge-${label}-${RUN}@example.com`), custom_fields: { [ID_PROPERTY]: `merge-${label}-${RUN}` } };
    const made = await call(() => persons.addPerson({ AddPersonRequest: body }));
    return made.body?.data?.id;
  };
  const kept = await make('kept');
  const gone = await make('gone');
  const request = { merge_with_id: kept };
  conforms('persons.merge request is a MergePersonsRequest', request, 'MergePersonsRequest', 'v1');
  const merged = sample('PUT /v1/persons/{id}/merge', await call(() => mergesApi.mergePersons({ id: gone, MergePersonsRequest: request })));
  check('persons.merge: 200 with success:true, the kept person\'s id and merge_what_id', merged.ok && merged.body?.success === true && merged.body?.data?.id === kept && merged.body?.data?.merge_what_id === gone, `status ${merged.status} body ${json(merged.body)}`);
  const after = await call(() => persons.getPerson({ id: gone }));
  check('persons.get of the merged person: 404', after.status === 404, `status ${after.status} body ${json(after.body)}`);
  const still = await call(() => persons.getPerson({ id: kept }));
  check('persons.get of the kept person: 200, its own app id', still.ok && still.body?.data?.custom_fields?.[ID_PROPERTY] === `merge-kept-${RUN}`, json(still.body?.data));
}

async function main() {
  console.log(`# pipedrive ${JSON.parse(readFileSync(join(PKG_ROOT, 'package.json'), 'utf8')).version} against ${BASE} (v2 ${config.v2.basePath}, v1 ${config.v1.basePath})`);
  await personsAndDealsAndNotes();
  await merges();
  rateLimitHeaders();
  await burst();
  await throughCrmSync();
  console.log(`${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}`);
  process.exit(failed ? 1 : 0);
}

main().catch((error) => {
  console.error(error);
  console.log(`${passed} passed, ${failed + 1} failed`);
  process.exit(1);
});
