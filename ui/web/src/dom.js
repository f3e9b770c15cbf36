// h builds elements; every piece of data goes in as text, never as HTML.
export function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k in el && typeof v !== 'string') el[k] = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const kid of kids.flat(Infinity)) {
    if (kid === undefined || kid === null || kid === false) continue;
    el.append(kid instanceof Node ? kid : String(kid));
  }
  return el;
}

export function fmtTime(t) {
  if (!t) return '';
  const d = new Date(t);
  return isNaN(d) ? String(t) : d.toISOString().replace('T', ' ').replace(/\.(\d{3})\d*Z$/, '.$1Z');
}

export function errorBox(err) {
  return h('div', { class: 'error', role: 'alert' }, err && err.message ? err.message : String(err));
}

export function table(cols, rows, onclick) {
  return h('table', {},
    h('thead', {}, h('tr', {}, cols.map((c) => h('th', {}, c[0])))),
    h('tbody', {}, rows.map((r) => h('tr', onclick ? { class: 'click', onclick: () => onclick(r) } : {},
      cols.map((c) => h('td', {}, c[1](r)))))));
}

// modal asks for a reason (reveal, trace, decisions); resolves to the text,
// or null when cancelled.
export function askReason(title, hint, okLabel) {
  const box = document.getElementById('modal');
  return new Promise((resolve) => {
    const ta = h('textarea', { id: 'reason', rows: 3, placeholder: 'at least 10 characters; recorded in the audit ledger' });
    const done = (v) => { box.hidden = true; box.replaceChildren(); resolve(v); };
    box.replaceChildren(h('div', { class: 'card', role: 'dialog', 'aria-label': title },
      h('h2', {}, title), h('p', { class: 'muted' }, hint),
      h('label', { for: 'reason' }, 'Justification'), ta,
      h('p', {}, h('button', { id: 'reason-ok', class: 'primary', onclick: () => done(ta.value) }, okLabel || 'OK'), ' ',
        h('button', { id: 'reason-cancel', onclick: () => done(null) }, 'Cancel'))));
    box.hidden = false;
    ta.focus();
  });
}

// askWatch asks how to watch a process: by its image or its exact command
// line, whether a match also requests a trace, and why. Resolves to
// {match, trace, reason}, or null when cancelled.
export function askWatch(title, hint) {
  const box = document.getElementById('modal');
  return new Promise((resolve) => {
    const exe = h('input', { type: 'radio', name: 'watch-match', id: 'watch-match-exe', value: 'exe', checked: true });
    const cmd = h('input', { type: 'radio', name: 'watch-match', id: 'watch-match-cmdline', value: 'cmdline' });
    const trace = h('input', { type: 'checkbox', id: 'watch-trace' });
    const ta = h('textarea', { id: 'reason', rows: 3, placeholder: 'at least 10 characters; recorded in the audit ledger' });
    const done = (v) => { box.hidden = true; box.replaceChildren(); resolve(v); };
    box.replaceChildren(h('div', { class: 'card', role: 'dialog', 'aria-label': title },
      h('h2', {}, title), h('p', { class: 'muted' }, hint),
      h('p', {}, h('label', {}, exe, ' the same image (any arguments)'), h('br', {}),
        h('label', {}, cmd, ' the same command line (image and exact arguments, masked here)')),
      h('p', {}, h('label', {}, trace, ' also request a focused trace on each match (center policy decides: approval or auto)')),
      h('label', { for: 'reason' }, 'Justification'), ta,
      h('p', {}, h('button', { id: 'reason-ok', class: 'primary', onclick: () => done({ match: cmd.checked ? 'cmdline' : 'exe', trace: trace.checked, reason: ta.value }) }, 'Create watch rule'), ' ',
        h('button', { id: 'reason-cancel', onclick: () => done(null) }, 'Cancel'))));
    box.hidden = false;
    ta.focus();
  });
}
