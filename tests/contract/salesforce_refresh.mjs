// The OAuth refresh-token flow crm-sync relies on (shared/src/adapters/salesforce/client.rs:
// renew() after a 401 INVALID_SESSION_ID, then the call repeated), with jsforce as the oracle.
//
// A jsforce Connection starts with a stale access token, the refresh token and the connected
// app's client id/secret, with loginUrl at the server under test. Its first call (an sObject
// Collections upsert, as crm-sync sends it) is refused with 401, jsforce refreshes the session
// through POST {loginUrl}/services/oauth2/token and repeats the call. jsforce derives `userInfo`
// from the token response's `id` (https://login.salesforce.com/id/{orgId}/{userId}), so a token
// response without `id` makes the refresh itself fail ("Cannot read properties of undefined
// (reading 'split')", jsforce src/connection.ts parseIdUrl/oauthRefreshFn).
//
// Environment (defaults fit the local stack on port 3201): SALESFORCE_BASE_URL (instance URL),
// SALESFORCE_LOGIN_URL (defaults to SALESFORCE_BASE_URL), SALESFORCE_API_VERSION (60.0),
// SALESFORCE_REFRESH_TOKEN, SALESFORCE_CLIENT_ID, SALESFORCE_CLIENT_SECRET,
// SALESFORCE_EXTERNAL_ID_FIELD (Crm_Sync_App_Id__c). SALESFORCE_TOKEN is not used: the point is
// to start from a token the server refuses. Run before salesforce_contract.py, whose last check
// spends the sandbox's daily API budget.
//
// jsforce is pinned to 3.10.16, the last 3.x that runs on Node 20 (3.10.19+ need Node >= 22 for
// undici 8). Run: cd tests/contract && npm install && node salesforce_refresh.mjs
// One PASS/FAIL line per check; exit 1 on any failure.

import { createHmac, randomUUID } from 'node:crypto';
import { createRequire } from 'node:module';
import { Connection, OAuth2 } from 'jsforce';

const env = (name, fallback) => (process.env[name] || '').trim() || fallback;

let baseUrl = env('SALESFORCE_BASE_URL', 'http://127.0.0.1:3201').replace(/\/+$/, '');
let apiVersion = env('SALESFORCE_API_VERSION', '60.0').replace(/^v/i, '');
const suffix = baseUrl.match(/^(.*?)\/services\/data\/v(\d+\.\d+)$/);
if (suffix) {
  baseUrl = suffix[1];
  if (!process.env.SALESFORCE_API_VERSION) apiVersion = suffix[2];
}
const loginUrl = env('SALESFORCE_LOGIN_URL', baseUrl).replace(/\/+$/, '');
const refreshToken = env('SALESFORCE_REFRESH_TOKEN', 'sandbox-refresh');
const clientId = env('SALESFORCE_CLIENT_ID', 'crm-sync-contract');
const clientSecret = env('SALESFORCE_CLIENT_SECRET', 'crm-sync-contract-secret');
const extId = env('SALESFORCE_EXTERNAL_ID_FIELD', 'Crm_Sync_App_Id__c');
const apiPath = `/services/data/v${apiVersion}`;
const run = randomUUID().slice(0, 10);
const stale = `stale-${run}`;
const jsforceVersion = createRequire(import.meta.url)('jsforce/package.json').version;

const results = [];
const short = (value, limit = 700) => {
  const text = typeof value === 'string' ? value : JSON.stringify(value);
  return text === undefined || text.length <= limit ? String(text) : `${text.slice(0, limit)}... (${text.length} chars)`;
};
class Failed extends Error {}
const expect = (condition, message) => {
  if (!condition) throw new Failed(message);
};
const describeError = (error) =>
  error instanceof Failed
    ? error.message
    : `${error.name || 'Error'}${error.errorCode && error.errorCode !== error.name ? ` ${error.errorCode}` : ''}: ` +
      `${error.message}${error.data ? ` ${short(error.data)}` : ''}`;

async function check(name, fn) {
  let ok = true;
  let detail;
  try {
    detail = await fn();
  } catch (error) {
    ok = false;
    detail = describeError(error);
  }
  results.push({ name, ok });
  console.log(`${ok ? 'PASS' : 'FAIL'} ${name}: ${detail ?? ''}`);
  return ok;
}

console.log(
  `Salesforce refresh contract: instance ${baseUrl}, login ${loginUrl}, API v${apiVersion}, jsforce ${jsforceVersion}, run ${run}`,
);

const refreshes = [];
const conn = new Connection({
  oauth2: { clientId, clientSecret, loginUrl },
  instanceUrl: baseUrl,
  accessToken: stale,
  refreshToken,
  version: apiVersion,
});
conn.on('refresh', (accessToken, res) => refreshes.push({ accessToken, res }));

let contactId;

const documentedFields = (res) => {
  const missing = ['access_token', 'instance_url', 'id', 'token_type', 'issued_at', 'signature'].filter((k) => !(k in res));
  expect(missing.length === 0, `missing ${missing.join(', ')}: ${short({ ...res, access_token: '...' })}`);
  expect(res.token_type === 'Bearer', `token_type: ${short(res.token_type)}`);
  expect(/^https?:\/\/[^/]+\/id\/00D[0-9A-Za-z]{12,15}\/005[0-9A-Za-z]{12,15}$/.test(res.id), `id is not /id/{orgId}/{userId}: ${short(res.id)}`);
  expect(/^\d{13}$/.test(String(res.issued_at)), `issued_at is not epoch ms: ${short(res.issued_at)}`);
  const signature = createHmac('sha256', clientSecret).update(`${res.id}${res.issued_at}`).digest('base64');
  expect(res.signature === signature, `signature ${short(res.signature)}, expected ${signature}`);
  return `id ${res.id}, issued_at ${res.issued_at}, signature verified`;
};

await check("jsforce OAuth2.refreshToken(): the documented token response (access_token, instance_url, id, token_type, issued_at, signature = base64 HMAC-SHA256(secret, id + issued_at))", async () => {
  const res = await new OAuth2({ clientId, clientSecret, loginUrl }).refreshToken(refreshToken);
  expect(typeof res?.access_token === 'string' && res.access_token, `no access_token: ${short(res)}`);
  return documentedFields(res);
});

await check('a 401 makes jsforce refresh the session and repeat the call (an sObject Collections upsert)', async () => {
  let answer;
  try {
    answer = await conn.request({
      method: 'PATCH',
      url: `${apiPath}/composite/sobjects/Contact/${extId}`,
      body: JSON.stringify({
        allOrNone: false,
        records: [
          {
            attributes: { type: 'Contact' },
            [extId]: `${run}-refresh`,
            LastName: 'Refresh',
            Email: `refresh.${run}@example.com`,
          },
        ],
      }),
      headers: { 'content-type': 'application/json' },
    });
  } catch (error) {
    const hint = error.errorCode === 'REQUEST_LIMIT_EXCEEDED' ? ' (the daily budget is spent: restart the local stack)' : '';
    throw new Failed(`${describeError(error)}${hint}; refreshes seen: ${refreshes.length}`);
  }
  expect(refreshes.length === 1, `expected exactly one refresh, saw ${refreshes.length}`);
  expect(Array.isArray(answer) && answer.length === 1, `expected one SaveResult: ${short(answer)}`);
  const [result] = answer;
  expect(result.success === true && Array.isArray(result.errors) && result.errors.length === 0,
    `the repeated upsert did not succeed: ${short(answer)}`);
  expect(typeof result.id === 'string' && result.id.length === 18 && result.id.startsWith('003'),
    `not a Contact id: ${short(answer)}`);
  expect(result.created === true, `created is not true: ${short(answer)}`);
  contactId = result.id;
  return `1 refresh, then ${short(answer)}`;
});

await check('the connection holds the new access token and instance URL', async () => {
  expect(refreshes.length >= 1, 'no refresh happened');
  const { accessToken, res } = refreshes[0];
  expect(typeof accessToken === 'string' && accessToken && accessToken !== stale, `no new access token: ${short(accessToken)}`);
  expect(conn.accessToken === accessToken && res.access_token === accessToken,
    `connection token ${short(conn.accessToken)} vs refreshed ${short(accessToken)}`);
  expect(typeof res.instance_url === 'string' && conn.instanceUrl === res.instance_url,
    `instanceUrl ${conn.instanceUrl} vs instance_url ${short(res.instance_url)}`);
  return `accessToken ${accessToken.slice(0, 12)}..., instanceUrl ${conn.instanceUrl}`;
});

await check('userInfo comes from the token response id (/id/{orgId}/{userId})', async () => {
  const info = conn.userInfo;
  expect(info && typeof info === 'object', `no userInfo: ${short(info)}`);
  expect(/^005[0-9A-Za-z]{12,15}$/.test(info.id ?? ''), `userInfo.id is not a user id: ${short(info)}`);
  expect(/^00D[0-9A-Za-z]{12,15}$/.test(info.organizationId ?? ''), `userInfo.organizationId is not an org id: ${short(info)}`);
  expect(info.url === refreshes[0]?.res?.id, `userInfo.url ${short(info.url)} is not the response id ${short(refreshes[0]?.res?.id)}`);
  return short(info);
});

// The read-back checks need a session: the refreshed connection's, or (when its refresh failed)
// one from a direct token call, on which the record is upserted first.
let fallbackNote = '';
async function workingConnection() {
  if (refreshes.length) return conn;
  const res = await new OAuth2({ clientId, clientSecret, loginUrl }).refreshToken(refreshToken);
  const plain = new Connection({ instanceUrl: res.instance_url || baseUrl, accessToken: res.access_token, version: apiVersion });
  fallbackNote = ' (on a session from a direct token call: the connection\'s own refresh failed)';
  if (!contactId) {
    const [result] = await plain.request({
      method: 'PATCH',
      url: `${apiPath}/composite/sobjects/Contact/${extId}`,
      body: JSON.stringify({ allOrNone: false, records: [{ attributes: { type: 'Contact' }, [extId]: `${run}-refresh`, LastName: 'Refresh', Email: `refresh.${run}@example.com` }] }),
      headers: { 'content-type': 'application/json' },
    });
    expect(result?.success === true, `fallback upsert failed: ${short(result)}`);
    contactId = result.id;
  }
  return plain;
}

await check('the session reads the record back (GET /composite/sobjects/Contact?ids=&fields=), limitInfo parsed', async () => {
  const conn = await workingConnection();
  const answer = await conn.request(`${apiPath}/composite/sobjects/Contact?ids=${contactId}&fields=Id,Email`);
  expect(Array.isArray(answer) && answer.length === 1 && answer[0], `unexpected answer: ${short(answer)}`);
  expect(answer[0].Id === contactId && answer[0].Email === `refresh.${run}@example.com`, `wrong record: ${short(answer)}`);
  expect(conn.limitInfo?.apiUsage?.limit > 0 && conn.limitInfo.apiUsage.used > 0,
    `jsforce parsed no Sforce-Limit-Info: ${short(conn.limitInfo)}`);
  return `${short(answer)}; limitInfo ${short(conn.limitInfo)}${fallbackNote}`;
});

await check("jsforce's own retrieve (POST /composite/sobjects/Contact {ids, fields})", async () => {
  const conn = await workingConnection();
  const answer = await conn.sobject('Contact').retrieve([contactId], { fields: ['Id', 'Email'] });
  expect(Array.isArray(answer) && answer.length === 1 && answer[0]?.Id === contactId, `unexpected answer: ${short(answer)}`);
  return `${short(answer)}${fallbackNote}`;
});

await check('a refused refresh token raises invalid_grant', async () => {
  const oauth2 = new OAuth2({ clientId, clientSecret, loginUrl });
  try {
    const res = await oauth2.refreshToken(`not-a-refresh-token-${run}`);
    throw new Failed(`the token endpoint accepted a bogus refresh token: ${short({ ...res, access_token: '...' })}`);
  } catch (error) {
    if (error instanceof Failed) throw error;
    expect(error.name === 'invalid_grant', `expected invalid_grant, got ${error.name}: ${error.message}`);
    return `${error.name}: ${error.message}`;
  }
});

const failed = results.filter((r) => !r.ok).length;
console.log(`\n${results.length - failed} passed, ${failed} failed`);
process.exitCode = failed ? 1 : 0;
