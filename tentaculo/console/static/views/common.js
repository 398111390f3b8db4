// Small helpers shared by the metrics, chat, trace, files and admin views.

// Build an element: h('button', {class: 'x', testid: 'chat-send', type: 'button', onclick: fn}, 'Send').
// Never sets a style attribute (the CSP forbids inline styles).
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'testid') el.dataset.testid = value;
    else if (key === 'class') el.className = value;
    else if (key === 'text') el.textContent = value;
    else if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else if (key in el && typeof value !== 'string') el[key] = value;
    else el.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

// Load a stylesheet once: css(new URL('./chat.css', import.meta.url)).
export function css(url) {
  const href = String(url);
  if (![...document.querySelectorAll('link[rel=stylesheet]')].some((l) => l.href === href)) {
    document.head.append(h('link', { rel: 'stylesheet', href }));
  }
}

export function loadStyles(...names) {
  css(new URL('./common.css', import.meta.url));
  for (const name of names) css(new URL(`./${name}.css`, import.meta.url));
}

// The text an operator should read for a failed call: the problem's detail, and its code.
export function problemText(err) {
  if (err && err.problem && err.problem.detail) {
    return err.problem.code ? `${err.problem.detail} (${err.problem.code})` : err.problem.detail;
  }
  return (err && err.message) || String(err);
}

export function badge(status, text) {
  const known = ['on', 'off', 'degraded', 'error'].includes(status) ? status : 'off';
  return h('span', { class: `badge badge-${known}`, text: text || status });
}

export function fmtTime(iso, withDate = false) {
  if (!iso) return '';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  const time = d.toLocaleTimeString(undefined, { hour12: false }) + '.' + String(d.getMilliseconds()).padStart(3, '0');
  return withDate ? `${d.toLocaleDateString()} ${time}` : time;
}

export function fmtDate(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString(undefined, { hour12: false });
}

export function fmtMs(value) {
  if (value === null || value === undefined) return '–';
  return value >= 1000 ? `${(value / 1000).toFixed(2)} s` : `${value < 10 ? value.toFixed(1) : Math.round(value)} ms`;
}

export function fmtBytes(n) {
  if (n === null || n === undefined) return '';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return i === 0 ? `${n} B` : `${n.toFixed(1)} ${units[i]}`;
}

// A note saying why controls are disabled when the token lacks a scope; returns whether it may.
export function gate(ctx, scope, controls, note) {
  const allowed = ctx.can(scope);
  for (const c of controls) {
    c.disabled = !allowed;
    if (!allowed) c.title = `needs the ${scope} scope`;
  }
  if (note) {
    note.hidden = allowed;
    note.textContent = allowed ? '' : `Disabled: needs the ${scope} scope (signed in as ${ctx.session.name}).`;
  }
  return allowed;
}

// Follow navigation inside the view even if the shell does not mount it again for a new path:
// after ctx.navigate (or Back), a view that is still mounted next turn shows the new path itself.
export function followPaths(el, ctx, view, build) {
  let alive = true;
  let inner = null;
  function show(params) {
    if (!alive) return;
    if (inner) inner();
    el.replaceChildren();
    inner = build(params, (path) => {
      ctx.navigate(path);
      setTimeout(() => show(paramsOf()), 0);
    });
  }
  const onPop = () => setTimeout(() => { if (location.pathname.startsWith(`/operator/${view}`)) show(paramsOf()); }, 0);
  window.addEventListener('popstate', onPop);
  show(ctx.params);
  return () => { alive = false; window.removeEventListener('popstate', onPop); if (inner) inner(); };
}

// The path segments after /operator/<view>/ of the current URL.
function paramsOf() {
  return location.pathname.split('/').filter(Boolean).slice(2).map(decodeURIComponent);
}
