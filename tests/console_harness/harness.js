// A stand-in for the console shell (app.js, api.js, stream.js) for the views' own tests before the
// shell exists: sign-in, nav, routing by URL and the ctx interface the views are written against.
class ApiError extends Error {
  constructor(status, problem) {
    super((problem && problem.detail) || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}
let token = sessionStorage.getItem('harness-token');
let session = null;
let cleanup = null;

async function fail(res) {
  let problem = null;
  try { problem = await res.json(); } catch { /* not JSON */ }
  return new ApiError(res.status, problem);
}
async function call(method, path, body) {
  const headers = { 'X-VX11-Token': token, Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (!res.ok) throw await fail(res);
  return res.status === 204 ? null : res.json();
}
async function* sse(path, body, { signal } = {}) {
  const res = await fetch(path, {
    method: 'POST', signal, body: JSON.stringify(body),
    headers: { 'X-VX11-Token': token, 'Content-Type': 'application/json', Accept: 'text/event-stream' },
  });
  if (!res.ok) throw await fail(res);
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf = (buf + value).replace(/\r\n/g, '\n');
    let cut;
    while ((cut = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, cut); buf = buf.slice(cut + 2);
      let event = 'message'; const data = [];
      for (const line of block.split('\n')) {
        if (line.startsWith('event:')) event = line.slice(6).trim();
        else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
      }
      if (data.length) yield { event, data: JSON.parse(data.join('\n')) };
    }
  }
}
const handlers = new Set();
const TYPES = ['service_status', 'feature_toggle', 'provider_status', 'chat', 'metrics'];
async function openStream() {
  const { ticket } = await call('POST', '/operator/api/events/ticket');
  const es = new EventSource('/operator/api/events?ticket=' + encodeURIComponent(ticket));
  for (const type of TYPES) {
    es.addEventListener(type, (m) => {
      const env = JSON.parse(m.data);
      for (const h of handlers) if (h.type === type || h.type === '*') h.fn(env);
    });
  }
  es.onerror = () => { es.close(); setTimeout(openStream, 1000); };
}
const stream = { on(type, fn) { const h = { type, fn }; handlers.add(h); return () => handlers.delete(h); } };

function navigate(path) { history.pushState(null, '', path); route(); }
async function route() {
  if (cleanup) { cleanup(); cleanup = null; }
  const parts = location.pathname.split('/').filter(Boolean).slice(1).map(decodeURIComponent);
  const name = parts[0];
  const old = document.getElementById('view');
  const el = document.createElement('main'); el.id = 'view';
  old.replaceWith(el);
  for (const a of document.querySelectorAll('#nav a')) {
    if (a.dataset.testid === 'nav-' + name) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
  if (!name) return;
  const mod = await import(`../views/${name}.js`);
  const ctx = {
    api: { get: (p) => call('GET', p), send: call, stream: sse }, stream, session,
    can: (s) => session.scopes.includes(s), navigate, params: parts.slice(1), query: new URLSearchParams(location.search),
  };
  cleanup = mod.mount(el, ctx) || null;
}
async function signIn() {
  session = await call('GET', '/operator/api/whoami');
  sessionStorage.setItem('harness-token', token);
  document.getElementById('login').hidden = true;
  document.getElementById('nav').hidden = false;
  document.getElementById('who').textContent = `${session.name} (${session.scopes.join(', ')})`;
  openStream();
  route();
}
document.getElementById('login').addEventListener('submit', (e) => {
  e.preventDefault();
  token = document.querySelector('[data-testid=login-token]').value;
  signIn().catch((err) => { document.getElementById('login-error').textContent = err.message; });
});
document.getElementById('nav').addEventListener('click', (e) => {
  const a = e.target.closest('a');
  if (a) { e.preventDefault(); navigate(a.getAttribute('href')); }
});
window.addEventListener('popstate', route);
if (token) signIn().catch(() => sessionStorage.removeItem('harness-token'));
