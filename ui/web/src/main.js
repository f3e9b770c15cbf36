// DaemonEye analyst UI: a hash router over views that read the center's
// API. The API enforces roles; the UI only hides what the role cannot do.
import { get, post, del, APIError } from './api.js';
import { h, fmtTime, errorBox, table, askReason } from './dom.js';
import { traceView, lineageView } from './trace.js';
import { session, can } from './session.js';


const main = () => document.getElementById('main');
// show replaces the page; like h(), it skips null and flattens arrays.
function show(...kids) { main().replaceChildren(...kids.flat(Infinity).filter((k) => k !== null && k !== undefined && k !== false)); }

async function whoami() {
  try {
    session.me = await get('/whoami');
  } catch (e) {
    if (!(e instanceof APIError) || (e.status !== 401 && e.status !== 403)) throw e;
    session.me = null;
  }
  const nav = document.getElementById('nav');
  const who = document.getElementById('who');
  nav.hidden = !session.me;
  who.replaceChildren();
  if (session.me) {
    // A certificate login lasts as long as the browser presents the
    // certificate: there is no session to end.
    who.append(`${session.me.id} · ${session.me.role} · `, h('span', { id: 'who-auth' }, session.me.auth === 'certificate' ? 'client certificate' : 'password'));
    if (session.me.auth === 'password') who.append(h('button', { id: 'logout', onclick: logout }, 'Log out'));
    for (const a of nav.querySelectorAll('a[data-min-role]')) a.hidden = !can(a.dataset.minRole);
  }
}

async function logout() {
  try { await post('/logout'); } catch (e) { /* the session is gone either way */ }
  session.me = null;
  location.hash = '#/login';
  await route();
}

function loginView(err) {
  const name = h('input', { type: 'text', id: 'login-name', autocomplete: 'username' });
  const pass = h('input', { type: 'password', id: 'login-password', autocomplete: 'current-password' });
  const msg = h('div', {});
  if (err) msg.append(errorBox(err));
  const submit = async (ev) => {
    ev.preventDefault();
    msg.replaceChildren();
    try {
      await post('/login', { name: name.value, password: pass.value });
      await whoami();
      location.hash = '#/alerts';
    } catch (e) { msg.replaceChildren(errorBox(e)); }
  };
  show(h('div', { class: 'card login' },
    h('h1', {}, 'Operator login'),
    h('p', { class: 'muted' }, 'A local account; or an operator certificate from the customer\'s web CA (daemoneye pki issue --role operator NAME --browser, imported in this browser): the browser presents it and you are logged in without a password.'),
    h('form', { id: 'login-form', onsubmit: submit },
      h('label', { for: 'login-name' }, 'Operator'), name,
      h('label', { for: 'login-password' }, 'Password'), pass,
      h('p', {}, h('button', { class: 'primary', type: 'submit', id: 'login-submit' }, 'Log in'))),
    msg));
  name.focus();
}

// ---- Fleet

function healthSummary(hl) {
  if (!hl || typeof hl !== 'object') return '';
  const keys = Object.keys(hl);
  if (!keys.length) return 'no report';
  return keys.slice(0, 8).map((k) => `${k}: ${typeof hl[k] === 'object' ? JSON.stringify(hl[k]) : hl[k]}`).join('\n');
}

async function fleetView() {
  const { hosts } = await get('/hosts');
  const lost = (x) => Object.entries(x.lost_events || {}).map(([k, v]) => `${k}: ${v}`).join(', ') || '0';
  show(h('h1', {}, `Fleet (${hosts.length} nodes)`),
    table([
      ['Node', (x) => h('b', {}, x.agent_id)], ['Kind', (x) => x.kind], ['Version', (x) => x.version],
      ['Addresses', (x) => x.addresses.join(', ')],
      ['Proxy path', (x) => x.proxy_path.length ? x.proxy_path.join(' → ') : 'direct'],
      ['Last seen', (x) => fmtTime(x.last_seen)], ['Last event', (x) => fmtTime(x.last_event)],
      ['Health', (x) => h('pre', {}, healthSummary(x.health))], ['Lost events', lost],
    ], hosts), h('p', { class: 'muted' }, 'Health is each node\'s last report (at ', fmtTime(hosts[0] && hosts[0].health_time), ' for the first).'));
}

// ---- Alerts

async function alertsView() {
  const { alerts } = await get('/alerts?limit=200');
  show(h('h1', {}, `Alerts (${alerts.length}) `, h('button', { id: 'alerts-refresh', onclick: () => alertsView().catch((e) => show(errorBox(e))) }, 'Refresh')),
    alerts.length ? table([
      ['#', (a) => a.id], ['Time', (a) => fmtTime(a.time)],
      ['Severity', (a) => h('span', { class: `badge sev-${a.severity}` }, a.severity)],
      ['Rule', (a) => a.rule_id], ['Technique', (a) => a.technique], ['Host', (a) => a.host],
      ['Process', (a) => `${a.pid}@${a.start}`], ['Count', (a) => a.count], ['State', (a) => a.state],
      ['Trace', (a) => a.trace_id || ''],
    ], alerts, (a) => { location.hash = `#/alert/${a.id}`; }) : h('p', { class: 'muted' }, 'No alerts.'));
}

async function alertView(id) {
  const { alert: al, process: proc } = await get(`/alerts/${encodeURIComponent(id)}`);
  const head = h('div', { class: 'card', id: 'alert' },
    h('h1', {}, `Alert #${al.id}: ${al.rule_id}`),
    h('p', {}, h('span', { class: `badge sev-${al.severity}` }, al.severity), ' ', al.technique, ' · ', al.host,
      ' · pid ', al.pid, ' · ', fmtTime(al.time), ' · ', al.state, al.count > 1 ? ` · ${al.count} hits` : ''),
    h('h2', {}, 'Context'), h('pre', {}, JSON.stringify(al.context, null, 2)),
    h('p', { id: 'alert-traces' }));
  // The trace a rule or an analyst started for this alert names it
  // (traces.alert_id); alerts.trace_id is set only by some paths.
  const { traces } = await get(`/traces?host=${encodeURIComponent(al.host)}&limit=1000`);
  const ids = [...new Set([al.trace_id, ...traces.filter((t) => t.alert_id === al.id).map((t) => t.trace_id)].filter(Boolean))];
  head.querySelector('#alert-traces').append(...ids.map((tid, i) => [i ? ' · ' : '', h('a', { href: `#/trace/${encodeURIComponent(tid)}`, id: i ? null : 'open-trace' }, `Open trace ${tid}`)]).flat(),
    ids.length ? '' : h('span', { class: 'muted' }, 'No trace for this alert.'));
  show(head, h('div', { id: 'lineage' }, h('p', { class: 'muted' }, 'Loading the lineage…')));
  if (proc) await lineageView(document.getElementById('lineage'), proc, al);
  else document.getElementById('lineage').replaceChildren(h('p', { class: 'muted' }, 'The alert\'s process is not in the store.'));
}

// ---- Traces

async function tracesView() {
  const { traces } = await get('/traces?limit=200');
  show(h('h1', {}, `Traces (${traces.length})`),
    traces.length ? table([
      ['Trace', (t) => h('code', {}, t.trace_id)], ['Root', (t) => `${t.host} pid ${t.pid}`], ['State', (t) => t.state],
      ['Created', (t) => fmtTime(t.created)], ['By', (t) => t.initiated_by], ['Reason', (t) => t.reason],
      ['Stopped', (t) => t.stop_reason || ''],
    ], traces, (t) => { location.hash = `#/trace/${encodeURIComponent(t.trace_id)}`; }) : h('p', { class: 'muted' }, 'No traces.'));
}

// ---- SQL sandbox

const savedKey = 'daemoneye.savedQueries';
const loadSaved = () => { try { return JSON.parse(localStorage.getItem(savedKey)) || []; } catch (e) { return []; } };
const storeSaved = (list) => localStorage.setItem(savedKey, JSON.stringify(list));

function cell(v) {
  if (v === null) return h('span', { class: 'muted' }, 'NULL');
  if (typeof v === 'object') return h('code', {}, JSON.stringify(v));
  return String(v);
}

function sqlView() {
  const ed = h('textarea', { class: 'sql', id: 'sql-editor', spellcheck: false },
    sessionStorage.getItem('daemoneye.sql') || "SELECT host, comm, count(*) AS n FROM process_events GROUP BY host, comm ORDER BY n DESC");
  const maxRows = h('input', { type: 'number', id: 'sql-max-rows', min: 1, value: 200, style: 'width:6em' });
  const out = h('div', { id: 'sql-result' });
  const saved = h('ul', { id: 'saved-queries' });
  const renderSaved = () => {
    saved.replaceChildren(...loadSaved().map((q, i) => h('li', {},
      h('a', { href: 'javascript:void 0', class: 'saved-query', onclick: () => { ed.value = q.sql; } }, q.name), ' ',
      h('button', { onclick: () => { const l = loadSaved(); l.splice(i, 1); storeSaved(l); renderSaved(); } }, '×'))));
    if (!saved.children.length) saved.append(h('li', { class: 'muted' }, 'none yet'));
  };
  const run = async () => {
    sessionStorage.setItem('daemoneye.sql', ed.value);
    out.replaceChildren(h('p', { class: 'muted' }, 'Running…'));
    try {
      const r = await post('/query', { sql: ed.value, max_rows: Number(maxRows.value) || 0 });
      out.replaceChildren(
        h('p', { id: 'sql-status', class: 'ok' }, `${r.rows.length} row${r.rows.length === 1 ? '' : 's'}${r.truncated ? ' (truncated at the row limit)' : ''} in ${r.elapsed_ms} ms · limits: ${r.row_limit} rows, ${r.time_limit_ms} ms`),
        (r.masked_columns || []).length ? h('p', { id: 'sql-masked', class: 'muted' },
          `Masked (read as NULL): ${r.masked_columns.join(', ')}. Command lines are seen through a reveal, with a reason.`) : null,
        h('table', { id: 'sql-table' }, h('thead', {}, h('tr', {}, r.columns.map((c) => h('th', {}, c)))),
          h('tbody', {}, r.rows.map((row) => h('tr', {}, row.map((v) => h('td', {}, cell(v))))))));
    } catch (e) { out.replaceChildren(errorBox(e)); }
  };
  const save = () => {
    const name = (document.getElementById('sql-name').value || '').trim() || ed.value.slice(0, 40);
    const l = loadSaved().filter((q) => q.name !== name);
    l.push({ name, sql: ed.value });
    storeSaved(l);
    renderSaved();
  };
  renderSaved();
  show(h('h1', {}, 'Hypothesis sandbox (read-only SQL)'),
    h('div', { class: 'row' },
      h('div', { class: 'grow' }, ed,
        h('p', {}, h('button', { class: 'primary', id: 'sql-run', onclick: run }, 'Run'), ' max rows ', maxRows,
          ' · ', h('input', { type: 'text', id: 'sql-name', placeholder: 'name to save as', style: 'width:14em' }), ' ',
          h('button', { id: 'sql-save', onclick: save }, 'Save query')),
        h('p', { class: 'muted' }, 'One SELECT, WITH or VALUES statement against the center\'s store; the center caps rows and time, and records each query in the audit ledger.'),
        out),
      h('div', { class: 'card', style: 'width:260px' }, h('h2', {}, 'Saved queries (this browser)'), saved)));
  ed.addEventListener('keydown', (ev) => { if (ev.key === 'Enter' && (ev.ctrlKey || ev.metaKey)) run(); });
}

// ---- Approvals

async function approvalsView() {
  const [{ approvals: pending }, { approvals: all }] = await Promise.all([get('/approvals?decision=pending'), get('/approvals?decision=all&limit=50')]);
  const decide = async (ap, decision) => {
    const reason = await askReason(`${decision === 'approve' ? 'Approve' : 'Deny'} request #${ap.id}`,
      `${ap.subject_kind} ${ap.subject_id}, requested by ${ap.requested_by}: "${ap.reason}"`, decision === 'approve' ? 'Approve' : 'Deny');
    if (reason === null) return;
    try {
      await post(`/approvals/${ap.id}`, { decision, reason });
      await approvalsView();
    } catch (e) {
      // The decision may be recorded although what it started failed
      // (the trace command, say): show the queue as it is now, then why.
      await approvalsView();
      document.getElementById('approvals-msg').replaceChildren(errorBox(e));
    }
  };
  const mayDecide = can('approver');
  show(h('h1', {}, `Approvals (${pending.length} pending)`), h('div', { id: 'approvals-msg' }),
    pending.length ? table([
      ['#', (a) => a.id], ['Kind', (a) => a.subject_kind],
      ['Subject', (a) => a.subject_kind === 'trace' ? h('a', { href: `#/trace/${encodeURIComponent(a.subject_id)}` }, a.subject_id) : a.subject_id],
      ['Requested by', (a) => a.requested_by], ['At', (a) => fmtTime(a.requested_at)], ['Reason', (a) => a.reason],
      ['Decision', (a) => mayDecide ? [h('button', { class: 'primary approve', dataset: { id: a.id }, onclick: () => decide(a, 'approve') }, 'Approve'), ' ',
        h('button', { class: 'danger deny', dataset: { id: a.id }, onclick: () => decide(a, 'deny') }, 'Deny')] : h('span', { class: 'muted' }, 'needs the approver role')],
    ], pending) : h('p', { class: 'muted', id: 'no-pending' }, 'Nothing awaits a decision.'),
    h('h2', {}, 'Recent decisions'),
    table([['#', (a) => a.id], ['Kind', (a) => a.subject_kind], ['Subject', (a) => a.subject_id], ['Requested by', (a) => a.requested_by],
      ['Decision', (a) => h('span', { class: 'decision' }, a.decision)], ['By', (a) => a.decided_by || ''], ['At', (a) => fmtTime(a.decided_at)]],
    all.filter((a) => a.decision !== 'pending')));
}

// ---- Ledger

const seenKey = 'daemoneye.seenCheckpoint';

function verifyResult(v) {
  if (!v) return h('p', { class: 'muted', id: 'verify-result' }, 'Not verified since the center started.');
  const when = `${v.by} at ${fmtTime(v.started)}`;
  switch (v.state) {
    case 'running':
      return h('p', { id: 'verify-result', class: 'muted', dataset: { state: v.state } },
        h('progress', { max: Math.max(v.total, 1), value: v.done }), ` verifying: ${v.done} of ${v.total} entries (started by ${when})`);
    case 'ok':
      return h('div', { id: 'verify-result', class: 'ok', dataset: { state: v.state } },
        h('b', {}, `Verified: OK`), ` — ${v.entries} entries, every record, hash and checkpoint checked${v.seen ? `, and the log still extends the checkpoint this browser saw before` : ''}; root ${v.root_hex}; ${v.checkpoints} stored checkpoints; ${v.purged} purged payloads. (${when}, ${v.elapsed_ms} ms)`);
    default:
      return h('div', { id: 'verify-result', class: 'error', role: 'alert', dataset: { state: v.state, badEntry: v.bad_entry ?? '' } },
        h('b', {}, v.state === 'failed' ? 'Verification FAILED' : 'Verification could not run'),
        v.bad_entry !== undefined && v.bad_entry !== null ? [': first bad entry ', h('a', { href: `#/ledger/${v.bad_entry + 1}`, id: 'bad-entry' }, `#${v.bad_entry}`)] : '',
        v.bad_seen ? ` (the checkpoint this browser saw before is not extended by the log)` : '', ` — ${v.reason} (${when})`);
  }
}

async function ledgerView(before) {
  const l = await get(`/ledger?limit=50${before ? `&before=${encodeURIComponent(before)}` : ''}`);
  const cp = l.checkpoint;
  const result = h('div', {}, verifyResult(l.verify));
  const btn = h('button', { class: 'primary', id: 'ledger-verify' }, 'Verify the ledger');
  const poll = async () => {
    for (let i = 0; i < 3600; i++) {
      if (!document.body.contains(result)) return;
      const { verify: v } = await get('/ledger/verify');
      result.replaceChildren(verifyResult(v));
      if (!v || v.state !== 'running') {
        btn.disabled = false;
        // A verified checkpoint is remembered: the next verification
        // checks that the log still extends it.
        if (v && v.state === 'ok' && v.latest) localStorage.setItem(seenKey, v.latest.note);
        return;
      }
      await new Promise((r) => setTimeout(r, 500));
    }
  };
  btn.addEventListener('click', async () => {
    btn.disabled = true;
    const seen = localStorage.getItem(seenKey);
    try {
      const r = await post('/ledger/verify', { seen: seen ? [seen] : [] });
      result.replaceChildren(verifyResult(r.verify));
      await poll();
    } catch (e) { btn.disabled = false; result.replaceChildren(errorBox(e)); }
  });
  const payload = (e) => e.tampered ? h('b', { class: 'error' }, e.tampered)
    : e.payload === null ? h('span', { class: 'muted' }, 'purged') : h('code', {}, JSON.stringify(e.payload).slice(0, 300));
  show(h('h1', {}, 'Audit ledger'),
    h('div', { class: 'card', id: 'checkpoint' },
      h('h2', {}, 'Current checkpoint'),
      h('table', {}, h('tbody', {},
        h('tr', {}, h('th', {}, 'Origin'), h('td', {}, cp.origin)),
        h('tr', {}, h('th', {}, 'Tree size'), h('td', { id: 'cp-size' }, cp.size)),
        h('tr', {}, h('th', {}, 'Root hash'), h('td', {}, h('code', { id: 'cp-root' }, cp.root_hex))),
        h('tr', {}, h('th', {}, 'Signed note'), h('td', {}, h('pre', { id: 'cp-note' }, cp.note))),
        h('tr', {}, h('th', {}, 'Verifier key'), h('td', {}, h('code', {}, l.verifier_key))))),
      h('p', {}, btn, ' runs the center\'s full ledger check (daemoneye ledger verify): every record, hash, index and stored checkpoint, and that the log extends the checkpoint this browser last verified.'),
      result),
    h('h2', {}, `Entries${before ? ` before #${before}` : ' (newest first)'}`),
    h('div', { id: 'ledger-entries' }, table([['#', (e) => e.index], ['Time', (e) => e.tampered ? '' : fmtTime(e.time)], ['Kind', (e) => e.kind],
      ['Actor', (e) => e.actor], ['Payload', payload], ['SHA-256', (e) => e.tampered ? '' : h('code', {}, e.payload_sha256.slice(0, 16) + '…')]], l.entries)),
    l.next_before ? h('p', {}, h('a', { href: `#/ledger/${l.next_before}`, id: 'ledger-older' }, 'Older entries')) : null);
  if (l.verify && l.verify.state === 'running') { btn.disabled = true; poll(); }
}

// ---- Watches

async function watchesView() {
  const { watches } = await get('/watches');
  const msg = h('div', { id: 'watches-msg' });
  const remove = async (w) => {
    const reason = await askReason(`Delete watch rule #${w.id}`, `${w.match} ${w.exe}${w.cmdline ? ` (${w.cmdline})` : ''}, made by ${w.created_by}.`, 'Delete');
    if (reason === null) return;
    try { await del(`/watches/${w.id}`, { reason }); await watchesView(); } catch (e) { msg.replaceChildren(errorBox(e)); }
  };
  show(h('h1', {}, `Watch rules (${watches.length})`),
    h('p', { class: 'muted' }, 'Made with Mark & Watch on a process: each alerts on later execs of the same image or command line (rule id watch-N), and may request a focused trace.'),
    msg,
    watches.length ? table([
      ['#', (w) => w.id], ['Rule', (w) => w.rule_id], ['Match', (w) => w.match],
      ['Image / command line', (w) => [h('code', {}, w.exe), w.cmdline ? [h('br', {}), h('code', {}, w.cmdline)] : null]],
      ['Trace', (w) => w.trace ? 'yes' : 'no'], ['Severity', (w) => h('span', { class: `badge sev-${w.severity}` }, w.severity)],
      ['By', (w) => w.created_by], ['Reason', (w) => w.reason], ['Alerts', (w) => `${w.alerts}${w.last_alert ? ` (last ${fmtTime(w.last_alert)})` : ''}`],
      ['', (w) => can('analyst') ? h('button', { class: 'danger delete-watch', onclick: () => remove(w) }, 'Delete…') : null],
    ], watches) : h('p', { class: 'muted', id: 'no-watches' }, 'No watch rules.'));
}

// ---- router

const routes = [
  [/^#\/fleet$/, fleetView], [/^#\/alerts$/, alertsView], [/^#\/alert\/(\d+)$/, alertView],
  [/^#\/traces$/, tracesView], [/^#\/trace\/([^/]+)$/, (id) => traceView(main(), decodeURIComponent(id))],
  [/^#\/sql$/, sqlView], [/^#\/approvals$/, approvalsView],
  [/^#\/ledger$/, () => ledgerView()], [/^#\/ledger\/(\d+)$/, ledgerView], [/^#\/watches$/, watchesView],
];

let routing = 0;
async function route() {
  const n = ++routing;
  const hash = location.hash || '#/alerts';
  if (!session.me) {
    await whoami();
    if (!session.me) { loginView(); return; }
  }
  if (hash === '#/login') { location.hash = '#/alerts'; return; }
  for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', hash.startsWith(a.getAttribute('href')));
  for (const [re, view] of routes) {
    const m = hash.match(re);
    if (!m) continue;
    try {
      main().dataset.view = '';
      for (const k of ['ready', 'current', 'live', 'updates']) delete main().dataset[k];
      await view(...m.slice(1));
      if (n === routing) main().dataset.view = hash.split('/')[1];
    } catch (e) {
      if (e instanceof APIError && e.status === 401) { session.me = null; loginView(e); return; }
      show(errorBox(e));
    }
    return;
  }
  show(h('p', {}, 'No such page. ', h('a', { href: '#/alerts' }, 'Alerts')));
}

window.addEventListener('hashchange', route);
window.addEventListener('DOMContentLoaded', route);
