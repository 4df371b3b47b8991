// crm-gateway dashboard: polls GET /api/crm/status and fills the page in. Every value is set
// with textContent (never innerHTML), so text from the CRM or the app shows as text.
'use strict';

const TOKEN_KEY = 'crm-gateway.token';
const POLL_MS = 3000;

const $ = (id) => document.getElementById(id);
let timer = null;
let busy = false;

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

async function api(method, path) {
  const headers = { Accept: 'application/json' };
  const t = token();
  if (t) headers.Authorization = 'Bearer ' + t;
  const response = await fetch(path, { method, headers, cache: 'no-store', credentials: 'same-origin' });
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    body = null;
  }
  if (!response.ok) {
    const error = new Error((body && body.error && body.error.message) || response.statusText);
    error.status = response.status;
    throw error;
  }
  return body;
}

// --- formatting -------------------------------------------------------------------------

function count(n) {
  return Number(n || 0).toLocaleString('en-GB');
}

function duration(seconds) {
  if (seconds == null) return '–';
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return s + ' s';
  if (s < 3600) return Math.floor(s / 60) + ' min ' + (s % 60) + ' s';
  if (s < 86400) return Math.floor(s / 3600) + ' h ' + Math.floor((s % 3600) / 60) + ' min';
  return Math.floor(s / 86400) + ' d ' + Math.floor((s % 86400) / 3600) + ' h';
}

function ago(iso) {
  if (!iso) return 'never';
  return duration((Date.now() - Date.parse(iso)) / 1000) + ' ago';
}

// An element with text children only.
function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value == null) continue;
    if (key === 'class') node.className = value;
    else if (key === 'title') node.title = value;
    else if (key.startsWith('data-')) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) {
    if (child == null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// A status badge: a word and a symbol, so it reads without colour too.
function badge(node, state, text) {
  const symbol = { ok: '✓', warn: '!', bad: '✗', unknown: '?' }[state] || '?';
  node.dataset.state = state;
  node.textContent = symbol + ' ' + text;
}

function time(iso) {
  return el('time', { dateTime: iso || '', title: iso || '' }, ago(iso));
}

function field(name, value, title) {
  for (const node of document.querySelectorAll('[data-field="' + name + '"]')) {
    node.textContent = value;
    if (title !== undefined) node.title = title || '';
  }
}

function failedFigure(name, n) {
  field(name, count(n));
  for (const node of document.querySelectorAll('[data-field="' + name + '"]')) {
    node.dataset.state = n > 0 ? 'bad' : 'ok';
  }
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

// --- rendering --------------------------------------------------------------------------

function renderCrm(crm) {
  const health = crm.health || {};
  const open = crm.circuit && crm.circuit.circuit === 'open';
  if (health.ok && !open) badge($('crm-health'), 'ok', 'Reachable');
  else if (health.ok) badge($('crm-health'), 'warn', 'Reachable, delivery paused');
  else badge($('crm-health'), 'bad', 'Unreachable');
  $('crm-health').title = health.error || '';
  field('crm.provider', crm.provider === 'mock' ? 'mock CRM (CRM_ENABLED=false)' : crm.provider);
  field(
    'crm.circuit',
    open ? 'open: paused after ' + crm.circuit.consecutiveFailures + ' failures' : 'closed: delivering',
  );
  const last = crm.lastCall;
  if (last) {
    field('crm.lastCall', (last.ok ? '✓ ' : '✗ ') + last.operation + ', ' + ago(last.at), last.error || last.at);
    field('crm.lastSuccess', ago(last.lastSuccessAt), last.lastSuccessAt || '');
  } else {
    field('crm.lastCall', 'none since start');
    field('crm.lastSuccess', '–');
  }
  field('crm.checkedAt', ago(health.checkedAt), health.checkedAt || '');
}

function renderOverview(status) {
  const outbox = status.outbox;
  field('outbox.pending', count(outbox.pending));
  field('outbox.inFlight', count(outbox.inFlight));
  failedFigure('outbox.failed', outbox.failed);
  field('outbox.oldest', outbox.oldestPendingAgeSeconds == null ? 'nothing waiting' : duration(outbox.oldestPendingAgeSeconds));
  const hooks = status.webhooks;
  field('webhooks.appliedHour', count(hooks.lastHour.applied));
  failedFigure('webhooks.failedHour', hooks.lastHour.failed);
  field('webhooks.lastReceived', ago(hooks.lastReceivedAt), hooks.lastReceivedAt || '');
}

function renderAudit(status) {
  const audit = status.lastAudit;
  if (!audit) {
    badge($('audit-state'), 'unknown', 'No audit yet');
    field('audit.at', 'never', 'run: crm-gateway audit');
    field('audit.differences', '–');
    field('audit.pending', '–');
  } else {
    const c = audit.counts;
    const left = audit.fixed ? c.left : audit.differences;
    if (left === 0) badge($('audit-state'), 'ok', audit.fixed ? 'Fixed: none left' : 'Both sides equal');
    else if (audit.fixed) badge($('audit-state'), 'bad', left + ' left for a person');
    else badge($('audit-state'), 'bad', left + (left === 1 ? ' difference' : ' differences'));
    field('audit.at', ago(audit.finishedAt) + (audit.fixed ? ' (with --fix)' : ''), audit.finishedAt);
    field(
      'audit.differences',
      count(audit.differences) + ' (' + count(c.differingFields) + ' fields, ' + count(c.onlyInCrm) +
        ' only in CRM, ' + count(c.onlyLocal) + ' only here)',
      audit.recordTypes,
    );
    field('audit.pending', count(c.pending));
  }
  const through = status.import
    .filter((p) => p.through)
    .map((p) => p.through)
    .sort();
  field('import.through', through.length ? ago(through[0]) : 'never', through.length ? through[0] : 'run: crm-gateway import');
  // Salesforce's Change Data Capture channel: events applied, when its position last moved,
  // and which instance reads it (while its lease holds).
  const streams = status.streams || [];
  if (!streams.length) {
    field('stream.state', 'none (webhooks)', 'the CRM sends webhooks; no change stream is read');
    field('stream.reader', '–');
  } else {
    const s = streams[0];
    const reading = s.reader && s.leaseExpiresAt && new Date(s.leaseExpiresAt) > new Date();
    field('stream.state', count(s.events) + ' events, ' + ago(s.updatedAt), s.channel + ', position stored ' + s.updatedAt);
    field('stream.reader', reading ? s.reader : 'nobody', reading ? 'lease until ' + s.leaseExpiresAt : 'no instance holds the lease');
  }
}

function renderRecords(status) {
  const oldest = {};
  for (const row of status.outbox.byType) {
    if (row.oldestAgeSeconds != null) {
      oldest[row.recordType] = Math.max(oldest[row.recordType] || 0, row.oldestAgeSeconds);
    }
  }
  fill(
    $('records').tBodies[0],
    status.records.map((r) =>
      el(
        'tr',
        {},
        el('th', { scope: 'row' }, r.recordType),
        el('td', { class: 'num' }, count(r.synced)),
        el('td', { class: 'num' }, count(r.pending)),
        el('td', { class: 'num', 'data-state': r.failed > 0 ? 'bad' : null }, r.failed > 0 ? '✗ ' + count(r.failed) : '0'),
        el('td', { class: 'num' }, oldest[r.recordType] == null ? '–' : duration(oldest[r.recordType])),
      ),
    ),
  );
  const hooks = status.webhooks;
  const outcomes = ['applied', 'duplicate', 'stale', 'echo', 'ignored', 'waiting', 'failed'];
  fill(
    $('webhooks').tBodies[0],
    outcomes.map((o) => {
      const bad = o === 'failed' && hooks.lastDay.failed > 0;
      return el(
        'tr',
        {},
        el('th', { scope: 'row' }, o),
        el('td', { class: 'num', 'data-state': bad && hooks.lastHour.failed > 0 ? 'bad' : null }, count(hooks.lastHour[o])),
        el('td', { class: 'num', 'data-state': bad ? 'bad' : null }, count(hooks.lastDay[o])),
      );
    }),
  );
}

function actionButton(label, action, id) {
  return el('button', { type: 'button', class: 'small', 'data-action': action, 'data-id': String(id) }, label);
}

function renderFailures(status) {
  const outbound = status.failures.outbound;
  fill(
    $('outbound-failures').tBodies[0],
    outbound.map((f) =>
      el(
        'tr',
        { 'data-row': String(f.id) },
        el('td', { class: 'mono' }, '#' + f.id),
        el('td', {}, f.recordType + ' ', el('span', { class: 'mono' }, f.recordId)),
        el('td', {}, f.operation),
        el('td', { class: 'num' }, count(f.attempts)),
        el('td', { class: 'error' }, f.error || '–'),
        el('td', {}, time(f.failedAt)),
        el('td', { class: 'action' }, actionButton('Retry', 'retry', f.id)),
      ),
    ),
  );
  $('outbound-empty').hidden = outbound.length > 0;
  const inbound = status.failures.inbound;
  fill(
    $('inbound-failures').tBodies[0],
    inbound.map((f) =>
      el(
        'tr',
        { 'data-event': f.eventId },
        el('td', { class: 'mono' }, f.eventId),
        el('td', {}, f.eventType),
        el('td', {}, (f.recordType || '') + ' ', el('span', { class: 'mono' }, f.crmId || '')),
        el('td', { class: 'error' }, f.error || '–'),
        el('td', {}, time(f.receivedAt)),
        el('td', { class: 'action' }, actionButton('Replay', 'replay', f.eventId)),
      ),
    ),
  );
  $('inbound-empty').hidden = inbound.length > 0;
  $('retry-all').disabled = busy || (outbound.length === 0 && inbound.length === 0);
}

const OUTCOME_STATE = { applied: 'ok', duplicate: 'ok', stale: 'ok', echo: 'ok', ignored: 'ok', waiting: 'warn', failed: 'bad' };

function renderRecent(status) {
  const events = status.recentEvents;
  fill(
    $('recent-events').tBodies[0],
    events.map((e) =>
      el(
        'tr',
        { 'data-event': e.eventId },
        el('td', {}, time(e.receivedAt)),
        el('td', { class: 'mono' }, e.eventId),
        el('td', {}, e.eventType),
        el('td', {}, (e.recordType || '') + ' ', el('span', { class: 'mono' }, e.crmId || '')),
        el('td', { class: 'name' }, e.name || '–'),
        el('td', { title: e.reason || '' }, badgeText(OUTCOME_STATE[e.outcome] || 'unknown', e.outcome)),
      ),
    ),
  );
  $('recent-empty').hidden = events.length > 0;
}

function badgeText(state, text) {
  const node = el('span', { class: 'badge' });
  badge(node, state, text);
  return node;
}

function render(status) {
  renderCrm(status.crm);
  renderOverview(status);
  renderAudit(status);
  renderRecords(status);
  renderFailures(status);
  renderRecent(status);
  badge($('connection'), 'ok', 'Live');
  $('updated').textContent = 'Updated ' + new Date(status.generatedAt).toLocaleTimeString('en-GB');
  $('updated').title = status.generatedAt;
}

// --- behaviour --------------------------------------------------------------------------

function notice(text, state) {
  const node = $('notice');
  node.hidden = !text;
  node.textContent = text || '';
  node.dataset.state = state || 'ok';
}

function askForToken(message) {
  $('token-form').hidden = false;
  $('forget-token').hidden = true;
  badge($('connection'), 'warn', 'Token needed');
  notice(message, 'warn');
  $('token').focus();
}

async function refresh() {
  clearTimeout(timer);
  try {
    render(await api('GET', '/api/crm/status'));
    $('token-form').hidden = true;
    $('forget-token').hidden = !token();
    if ($('notice').dataset.state === 'warn' || $('notice').dataset.state === 'bad') notice('');
  } catch (error) {
    if (error.status === 401) {
      askForToken(token() ? 'The token was refused: enter the current one.' : 'Enter the API token to see the sync status.');
      return; // polling resumes once a token is entered
    }
    badge($('connection'), 'bad', 'Not updating');
    notice('Cannot read the status: ' + error.message, 'bad');
  }
  timer = setTimeout(refresh, POLL_MS);
}

// Runs one operator action (`work` returns the message to show), then refreshes at once.
async function act(button, work) {
  busy = true;
  button.disabled = true;
  $('retry-all').disabled = true;
  try {
    notice(await work(), 'ok');
  } catch (error) {
    if (error.status === 401) askForToken('The token was refused: enter the current one.');
    else notice('That did not work: ' + error.message, 'bad');
  } finally {
    busy = false;
    await refresh();
  }
}

document.addEventListener('DOMContentLoaded', () => {
  $('token-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const value = $('token').value.trim();
    if (!value) return;
    sessionStorage.setItem(TOKEN_KEY, value);
    $('token').value = '';
    notice('');
    refresh();
  });
  $('forget-token').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    askForToken('Token forgotten.');
  });
  document.body.addEventListener('click', (event) => {
    const button = event.target.closest('button[data-action]');
    if (!button || button.disabled) return;
    const id = button.dataset.id;
    if (button.dataset.action === 'retry') {
      act(button, async () => {
        await api('POST', '/api/crm/outbox/' + encodeURIComponent(id) + '/retry');
        return 'Delivery #' + id + ' is queued again.';
      });
    } else if (button.dataset.action === 'replay') {
      act(button, async () => {
        const result = await api('POST', '/api/crm/inbox/' + encodeURIComponent(id) + '/replay');
        return 'Event ' + id + ' replayed: ' + result.outcome + '.';
      });
    }
  });
  $('retry-all').addEventListener('click', () => {
    act($('retry-all'), async () => {
      const outbound = await api('POST', '/api/crm/outbox/retry-failed');
      const inbound = await api('POST', '/api/crm/inbox/replay-failed');
      return outbound.retried + ' deliveries queued again, ' + inbound.replayed + ' webhook events replayed.';
    });
  });
  refresh();
});
