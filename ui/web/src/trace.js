// The lineage graph (Cytoscape.js, dagre layout), the process snapshot with
// reveal and Mark & Watch, and the trace's timeline player.
import cytoscape from 'cytoscape';
import dagre from 'cytoscape-dagre';
import { get, post, procPath } from './api.js';
import { h, fmtTime, errorBox, askReason } from './dom.js';
import { can } from './session.js';

cytoscape.use(dagre);

const palette = ['#1f5fbf', '#b85c00', '#2e7d32', '#7b1fa2', '#00838f', '#ad1457'];
const nodeID = (host, pid, start) => `${host}/${pid}/${start}`;

// Lineage collects processes and the edges between them: parent -> child
// within a host, and network hops (a trace's links) across hosts.
class Lineage {
  constructor() { this.procs = new Map(); this.hops = []; this.hosts = []; }

  add(p) {
    if (!p || !p.host) return;
    const id = nodeID(p.host, p.pid, p.start);
    const old = this.procs.get(id) || {};
    const merged = { ...old };
    for (const [k, v] of Object.entries(p)) if (v !== undefined && v !== null && v !== '') merged[k] = v;
    this.procs.set(id, merged);
    if (!this.hosts.includes(p.host)) this.hosts.push(p.host);
  }

  addLineage(l) {
    for (const p of [...l.ancestors, l.process, ...l.descendants]) this.add(p);
  }

  elements() {
    const els = [];
    for (const [id, p] of this.procs) {
      const color = palette[this.hosts.indexOf(p.host) % palette.length];
      els.push({ group: 'nodes', data: { id, host: p.host, pid: p.pid, start: p.start, comm: p.comm || '?', color,
        label: `${p.comm || '?'} (${p.pid})\n${p.host}` } });
    }
    for (const [id, p] of this.procs) {
      if (p.ppid === undefined || p.pstart === undefined) continue;
      const parent = nodeID(p.host, p.ppid, p.pstart);
      if (this.procs.has(parent)) els.push({ group: 'edges', data: { id: `${parent}>${id}`, source: parent, target: id, kind: 'child' } });
    }
    for (const l of this.hops) {
      const from = nodeID(l.from_host, l.from_pid, l.from_start);
      let to = l.to_pid !== null ? nodeID(l.to_host, l.to_pid, l.to_start) : null;
      if (!this.procs.has(from)) continue;
      if (!to || !this.procs.has(to)) {
        to = `peer:${l.dst}`;
        if (!els.some((e) => e.data.id === to)) els.push({ group: 'nodes', data: { id: to, label: `${l.dst}\n${l.to_host || 'not enrolled'}`, color: '#888', comm: '', host: l.to_host } });
      }
      els.push({ group: 'edges', data: { id: `link:${l.id}`, source: from, target: to, kind: 'hop', label: `${l.src} → ${l.dst}` } });
    }
    return els;
  }
}

function drawGraph(container, lin, onTap) {
  const cy = cytoscape({
    container,
    elements: lin.elements(),
    wheelSensitivity: 0.3,
    style: [
      { selector: 'node', style: { 'background-color': 'data(color)', label: 'data(label)', 'text-wrap': 'wrap', 'font-size': 10,
        'text-valign': 'bottom', 'text-margin-y': 3, width: 22, height: 22 } },
      { selector: 'node.root', style: { 'border-width': 3, 'border-color': '#b3261e' } },
      { selector: 'node.current', style: { 'background-color': '#ffcc00', 'border-width': 4, 'border-color': '#18202b', width: 30, height: 30 } },
      { selector: 'node:selected', style: { 'border-width': 3, 'border-color': '#000' } },
      { selector: 'edge', style: { width: 1.5, 'line-color': '#9aa4b0', 'target-arrow-color': '#9aa4b0', 'target-arrow-shape': 'triangle', 'curve-style': 'bezier' } },
      { selector: 'edge[kind = "hop"]', style: { 'line-style': 'dashed', 'line-color': '#b3261e', 'target-arrow-color': '#b3261e', label: 'data(label)', 'font-size': 9, 'text-rotation': 'autorotate' } },
    ],
    layout: { name: 'dagre', rankDir: 'TB', nodeSep: 30, rankSep: 50 },
  });
  cy.on('tap', 'node', (ev) => onTap(ev.target.data()));
  window.daemoneye = Object.assign(window.daemoneye || {}, { cy });
  return cy;
}

// ---- snapshot

function kv(rows) {
  return h('table', {}, h('tbody', {}, rows.filter((r) => r[1] !== undefined && r[1] !== null && r[1] !== '').map(([k, v]) => h('tr', {}, h('th', {}, k), h('td', {}, v)))));
}

async function snapshot(panel, node, events) {
  if (!node.pid) { panel.replaceChildren(h('p', {}, `${node.label}: not an enrolled host, or the accepting process is not known.`)); return; }
  panel.replaceChildren(h('p', { class: 'muted' }, 'Loading…'));
  let p;
  try { ({ process: p } = await get(procPath(node.host, node.pid, node.start))); } catch (e) { panel.replaceChildren(errorBox(e)); return; }
  const cmd = h('pre', { id: 'snap-cmdline' }, p.cmdline);
  const revealed = h('div', { id: 'snap-revealed' });
  const msg = h('div', {});
  const reveal = async () => {
    const reason = await askReason('Reveal the command line',
      `${p.exe} (pid ${p.pid} on ${p.host}): the arguments are masked; revealing them is recorded in the audit ledger with your justification.`, 'Reveal');
    if (reason === null) return;
    try {
      const r = await post('/reveal', { host: p.host, pid: p.pid, start: p.start, reason });
      cmd.textContent = r.process.cmdline;
      revealed.replaceChildren(h('h2', {}, 'Arguments (revealed)'), h('ol', {}, (r.argv || []).map((a) => h('li', {}, h('code', {}, a)))),
        r.env_recorded ? [h('h2', {}, 'Environment'), h('pre', {}, r.env === null ? '(not recorded for this exec)' : JSON.stringify(r.env, null, 1))] : null);
    } catch (e) { msg.replaceChildren(errorBox(e)); }
  };
  const watch = async () => {
    const reason = await askReason('Mark & Watch: start a focused trace',
      `Trace ${p.comm} (pid ${p.pid} on ${p.host}) and its descendants. Under the two-person rule the trace waits for an approver.`, 'Request trace');
    if (reason === null) return;
    try {
      const r = await post('/traces', { host: p.host, pid: p.pid, start: p.start, reason });
      msg.replaceChildren(h('p', { class: 'ok', id: 'watch-result' }, r.approval_id
        ? `Trace ${r.trace.trace_id} requested: awaiting approval #${r.approval_id}.`
        : `Trace ${r.trace.trace_id} is ${r.trace.state}.`, ' ', h('a', { href: `#/trace/${encodeURIComponent(r.trace.trace_id)}` }, 'Open')));
    } catch (e) { msg.replaceChildren(errorBox(e)); }
  };
  const own = events.filter((e) => e.host === p.host && e.pid === p.pid && e.start === p.start && e.table !== 'process_events');
  panel.replaceChildren(
    h('h2', { id: 'snap-title' }, `${p.comm} · pid ${p.pid} · ${p.host}`),
    kv([['exe', h('code', {}, p.exe)], ['command line', cmd], ['cwd', p.cwd], ['tty', p.tty], ['uid/euid', `${p.uid}/${p.euid}`],
      ['gid/egid', `${p.gid}/${p.egid}`], ['started', fmtTime(p.start_time)], ['exited', p.exit_time ? `${fmtTime(p.exit_time)} (code ${p.exit_code}, signal ${p.exit_signal})` : 'running'],
      ['parent', p.ppid !== null ? `${p.ppid}@${p.pstart}` : ''], ['namespaces', `pid ${p.pid_ns} · net ${p.net_ns} · mnt ${p.mnt_ns}`]]),
    h('p', {},
      p.masked && can('analyst') ? h('button', { id: 'reveal', onclick: reveal }, 'Reveal arguments…') : null, ' ',
      can('analyst') && !p.exit_time ? h('button', { id: 'watch', onclick: watch }, 'Mark & Watch (trace)…') : null),
    msg, revealed,
    own.length ? [h('h2', {}, `Files, sockets and hashes in this trace (${own.length})`),
      h('ul', {}, own.slice(0, 200).map((e) => h('li', {}, h('code', {}, `${e.kind} ${describe(e)}`))))] : null);
}

// ---- alert lineage

export async function lineageView(el, proc, alert) {
  const lin = new Lineage();
  lin.addLineage(await get(procPath(proc.host, proc.pid, proc.start) + '/lineage'));
  const panel = h('div', { id: 'snapshot', class: 'card' }, h('p', { class: 'muted' }, 'Click a process for its snapshot.'));
  const graph = h('div', { id: 'graph' });
  el.replaceChildren(h('h2', {}, 'Lineage of the alerting process'), h('div', { class: 'row' }, h('div', { class: 'grow' }, graph), panel));
  const cy = drawGraph(graph, lin, (n) => snapshot(panel, n, []));
  cy.getElementById(nodeID(proc.host, proc.pid, proc.start)).addClass('root');
  el.dataset.ready = 'true';
  void alert;
}

// ---- trace view and timeline player

function describe(e) {
  const d = e.detail || {};
  switch (e.table) {
    case 'process_events': return e.kind === 'exec' ? `${d.exe || ''} ${d.cmdline || ''}` : e.kind === 'exit' ? `code ${d.exit_code} signal ${d.exit_signal}` : `parent ${d.ppid}`;
    case 'network_events': return `${d.proto || ''} ${d.src_ip || ''}:${d.src_port || ''} → ${d.dst_ip || ''}:${d.dst_port || ''}${d.result ? ` (${d.result})` : ''}`;
    case 'file_events': return `${d.path || ''}${d.path2 ? ` → ${d.path2}` : ''}`;
    case 'exe_hashes': return `${d.path} sha256 ${String(d.sha256 || '').slice(0, 16)}…`;
    default: return JSON.stringify(d);
  }
}

async function allEvents(id) {
  let first = null;
  const events = [];
  let q = '';
  for (let page = 0; page < 40; page++) {
    const r = await get(`/traces/${encodeURIComponent(id)}?limit=5000${q}`);
    if (!first) first = r;
    events.push(...r.events);
    if (!r.next_after) break;
    q = `&after_seq=${r.next_after.after_seq}&after_host=${encodeURIComponent(r.next_after.after_host)}`;
  }
  return { ...first, events };
}

const speeds = [['0.5×', 2000], ['1×', 1000], ['2×', 500], ['5×', 200], ['20×', 50], ['100×', 10]];

export async function traceView(el, id) {
  const t = await allEvents(id);
  const tr = t.trace;
  const lin = new Lineage();
  const lineages = await Promise.all(t.targets.slice(0, 10).map((g) => get(procPath(g.host, g.pid, g.start) + '/lineage').catch(() => null)));
  for (const l of lineages) if (l) lin.addLineage(l);
  for (const e of t.events) {
    const d = e.detail || {};
    lin.add({ host: e.host, pid: e.pid, start: e.start, comm: e.comm || undefined,
      ppid: e.table === 'process_events' ? d.ppid : undefined, pstart: e.table === 'process_events' ? d.pstart : undefined });
  }
  lin.hops = t.links;

  const panel = h('div', { id: 'snapshot', class: 'card' }, h('p', { class: 'muted' }, 'Click a process for its snapshot.'));
  const graph = h('div', { id: 'graph' });
  const msg = h('div', {});
  const actions = h('p', {},
    can('analyst') ? h('button', { id: 'export', onclick: async () => {
      // The package holds the events as the agents signed them, command
      // lines included: an export is a reveal and takes a reason.
      const reason = await askReason('Export the signed package',
        `Trace ${id}: the package holds its command lines and environments as recorded. The reason is recorded with the export.`, 'Export');
      if (reason === null) return;
      const a = h('a', { href: `/api/v1/traces/${encodeURIComponent(id)}/export?reason=${encodeURIComponent(reason)}`, download: `${id}.dpkg` });
      document.body.append(a);
      a.click();
      a.remove();
    } }, 'Export signed package…') : null, ' ',
    can('analyst') && ['approved', 'active'].includes(tr.state) ? h('button', { id: 'stop-trace', onclick: async () => {
      const reason = await askReason('Stop the trace', `Trace ${id} on ${tr.host}.`, 'Stop');
      if (reason === null) return;
      try { await post(`/traces/${encodeURIComponent(id)}/stop`, { reason }); await traceView(el, id); } catch (e) { msg.replaceChildren(errorBox(e)); }
    } }, 'Stop trace…') : null);

  // timeline player
  let shown = t.events;
  let idx = -1;
  let timer = null;
  const pos = h('span', { id: 'timeline-pos', class: 'mono' });
  const rows = h('tbody', {});
  const search = h('input', { type: 'text', id: 'timeline-filter', placeholder: 'filter: text in host, process, kind, detail', style: 'width:22em' });
  const kinds = [...new Set(t.events.map((e) => e.kind))].sort();
  const kindFilter = h('select', { id: 'timeline-kind' }, h('option', { value: '' }, 'all kinds'), kinds.map((k) => h('option', { value: k }, k)));
  const jump = h('select', { id: 'timeline-jump' }, h('option', { value: '' }, 'jump to next…'), kinds.map((k) => h('option', { value: k }, k)));
  const speed = h('select', { id: 'timeline-speed' }, speeds.map(([l, ms], i) => h('option', { value: ms, selected: i === 1 }, l)));
  const playBtn = h('button', { id: 'timeline-play' }, '▶ Play');
  let cy = null;

  const render = () => {
    rows.replaceChildren(...shown.map((e, i) => h('tr', { class: 'click', dataset: { i }, onclick: () => go(i) },
      h('td', {}, e.seq), h('td', {}, fmtTime(e.time)), h('td', {}, e.host), h('td', {}, `${e.comm} (${e.pid})`),
      h('td', {}, e.kind), h('td', {}, h('code', {}, describe(e))))));
    idx = Math.min(idx, shown.length - 1);
    go(idx);
  };
  const go = (i) => {
    idx = Math.max(-1, Math.min(i, shown.length - 1));
    pos.textContent = `${idx + 1} / ${shown.length}`;
    for (const r of rows.querySelectorAll('tr.current')) r.classList.remove('current');
    if (cy) cy.nodes('.current').removeClass('current');
    if (idx < 0) return;
    const e = shown[idx];
    const row = rows.children[idx];
    row.classList.add('current');
    row.scrollIntoView({ block: 'nearest' });
    if (cy) cy.getElementById(nodeID(e.host, e.pid, e.start)).addClass('current');
    el.dataset.current = `${e.host}/${e.pid}/${e.start}`;
  };
  const pause = () => { clearInterval(timer); timer = null; playBtn.textContent = '▶ Play'; };
  const play = () => {
    if (timer) { pause(); return; }
    if (idx >= shown.length - 1) go(-1);
    playBtn.textContent = '⏸ Pause';
    timer = setInterval(() => {
      if (!document.body.contains(el) || idx >= shown.length - 1) { pause(); return; }
      go(idx + 1);
      if (idx >= shown.length - 1) pause();
    }, Number(speed.value));
  };
  playBtn.addEventListener('click', play);
  speed.addEventListener('change', () => { if (timer) { pause(); play(); } });
  const applyFilter = () => {
    const q = search.value.trim().toLowerCase();
    const k = kindFilter.value;
    shown = t.events.filter((e) => (!k || e.kind === k) &&
      (!q || `${e.host} ${e.comm} ${e.pid} ${e.kind} ${describe(e)}`.toLowerCase().includes(q)));
    idx = -1;
    render();
  };
  search.addEventListener('input', applyFilter);
  kindFilter.addEventListener('change', applyFilter);
  jump.addEventListener('change', () => {
    const k = jump.value;
    jump.value = '';
    if (!k) return;
    const next = shown.findIndex((e, i) => i > idx && e.kind === k);
    if (next >= 0) go(next);
    else msg.replaceChildren(h('p', { class: 'muted' }, `No ${k} event after this one.`));
  });

  el.replaceChildren(
    h('div', { class: 'card', id: 'trace-head' },
      h('h1', {}, `Trace ${id}`),
      h('p', {}, h('span', { class: 'badge', id: 'trace-state' }, tr.state), ` rooted at ${tr.host} pid ${tr.pid} · by ${tr.initiated_by} · ${tr.reason}`,
        tr.alert_id ? [' · ', h('a', { href: `#/alert/${tr.alert_id}` }, `alert #${tr.alert_id}`)] : null,
        tr.stop_reason ? ` · stopped: ${tr.stop_reason}` : ''),
      h('p', { class: 'muted' }, `${t.events.length} events on ${[...new Set(t.events.map((e) => e.host))].join(', ') || 'no host yet'} · targets: `,
        t.targets.map((g) => `${g.host} pid ${g.pid} (${g.state})`).join(', '), ` · ${t.links.length} network hop${t.links.length === 1 ? '' : 's'}`),
      actions, msg),
    h('div', { class: 'row' }, h('div', { class: 'grow' }, graph), panel),
    h('div', { class: 'card' },
      h('h2', {}, 'Timeline'),
      h('div', { class: 'player' },
        h('button', { id: 'timeline-first', onclick: () => { pause(); go(0); } }, '⏮'),
        h('button', { id: 'timeline-back', onclick: () => { pause(); go(idx - 1); } }, '◀ Step'),
        playBtn,
        h('button', { id: 'timeline-step', onclick: () => { pause(); go(idx + 1); } }, 'Step ▶'),
        h('button', { id: 'timeline-last', onclick: () => { pause(); go(shown.length - 1); } }, '⏭'),
        'speed ', speed, jump, kindFilter, search, pos),
      h('div', { class: 'events' }, h('table', { id: 'timeline' },
        h('thead', {}, h('tr', {}, ['seq', 'time', 'host', 'process', 'kind', 'detail'].map((c) => h('th', {}, c)))), rows))));
  cy = drawGraph(graph, lin, (n) => snapshot(panel, n, t.events));
  cy.getElementById(nodeID(tr.host, tr.pid, tr.start)).addClass('root');
  render();
  el.dataset.ready = 'true';
}
