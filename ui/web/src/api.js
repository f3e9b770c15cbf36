// The center's API as the logged-in operator: the session cookie (set by
// POST /api/v1/login, HttpOnly, path /api/) or the client certificate the
// browser presented travels with every request.

export class APIError extends Error {
  constructor(status, msg) { super(msg); this.status = status; }
}

export async function api(method, path, body) {
  const opt = { method, headers: { Accept: 'application/json' }, credentials: 'same-origin' };
  if (body !== undefined) {
    opt.headers['Content-Type'] = 'application/json';
    opt.body = JSON.stringify(body);
  }
  const r = await fetch('/api/v1' + path, opt);
  let data = null;
  try { data = await r.json(); } catch (e) { data = null; }
  if (!r.ok) throw new APIError(r.status, (data && data.error) || `${r.status} ${r.statusText}`);
  return data;
}

export const get = (path) => api('GET', path);
export const post = (path, body) => api('POST', path, body === undefined ? {} : body);
export const del = (path, body) => api('DELETE', path, body === undefined ? {} : body);

export function procPath(host, pid, start) {
  return `/processes/${encodeURIComponent(host)}/${pid}/${start}`;
}
