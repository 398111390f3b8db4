// Small DOM helpers shared by the console's views: elements, status badges, times.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : value);
  }
  el.append(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

export const STATUSES = ["on", "off", "degraded", "error"];

// A status badge: on | off | degraded | error (anything else shows as it is).
export function badge(status) {
  return h("span", { class: "badge", "data-status": status }, status || "unknown");
}

// A badge followed by its reason when the status is not "on".
export function statusLine(status, reason) {
  return h("span", { class: "status-line" }, badge(status),
    status !== "on" && reason ? h("span", { class: "reason" }, " " + reason) : null);
}

export function ago(iso) {
  if (!iso) return "never";
  const seconds = Math.round((Date.now() - Date.parse(iso)) / 1000);
  if (!Number.isFinite(seconds)) return iso;
  if (seconds < 5) return "just now";
  if (seconds < 90) return `${seconds} s ago`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 129600) return `${Math.round(seconds / 3600)} h ago`;
  return new Date(iso).toLocaleString();
}

export function clock(iso) {
  const d = iso ? new Date(iso) : new Date();
  return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleTimeString([], { hour12: false });
}

export function ms(value) {
  return value === null || value === undefined ? "–" : `${Math.round(value * 10) / 10} ms`;
}

export function loadStyle(href) {
  const url = new URL(href, import.meta.url).href;
  if (![...document.styleSheets].some((s) => s.href === url) && !document.querySelector(`link[href="${url}"]`)) {
    document.head.append(h("link", { rel: "stylesheet", href: url }));
  }
}
