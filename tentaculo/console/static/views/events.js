// Live events: the console's event stream, newest first, with a type filter, pause/resume, a
// marker where history was lost (reset), and each event linked to its correlation id's trace.
import { clock, h, loadStyle } from "../ui.js";

const TYPES = ["chat", "service_status", "provider_status", "feature_toggle", "metrics", "reset"];
const KEEP = 500;

export function mount(el, ctx) {
  loadStyle("./views/events.css");
  let alive = true;
  let paused = false;
  const held = []; // events that arrived while paused, oldest first
  const seen = new Set();
  const filter = h("select", { id: "event-type", "data-testid": "event-filter" },
    h("option", { value: "" }, "all types"), TYPES.map((t) => h("option", { value: t }, t)));
  filter.value = TYPES.includes(ctx.query.get("type")) ? ctx.query.get("type") : "";
  const pause = h("button", { type: "button", class: "secondary", "data-testid": "event-pause", "aria-pressed": "false" }, "Pause");
  const waiting = h("span", { class: "muted", "data-testid": "event-held", "aria-live": "polite" });
  const list = h("ol", { class: "event-list", "data-testid": "event-list", "aria-live": "off" });
  const empty = h("p", { class: "muted empty" }, "Waiting for events…");
  el.append(
    h("div", { class: "toolbar" }, h("h1", {}, "Live events"),
      h("label", { for: "event-type" }, "Type "), filter, pause, waiting),
    empty, list);

  function applyFilter() {
    const type = filter.value;
    for (const li of list.children) li.hidden = !!type && li.dataset.type !== type && !li.classList.contains("marker");
    const q = new URLSearchParams(location.search);
    if (type) q.set("type", type); else q.delete("type");
    const qs = q.toString();
    history.replaceState(null, "", location.pathname + (qs ? "?" + qs : ""));
  }
  filter.addEventListener("change", applyFilter);

  pause.addEventListener("click", () => {
    paused = !paused;
    pause.textContent = paused ? "Resume" : "Pause";
    pause.setAttribute("aria-pressed", String(paused));
    if (!paused) {
      for (const e of held.splice(0)) show(e, true);
      waiting.textContent = "";
    }
  });

  function show(envelope, atTop) {
    if (envelope.id) {
      if (seen.has(envelope.id)) return;
      seen.add(envelope.id);
    }
    empty.hidden = true;
    const li = item(envelope);
    li.hidden = !!filter.value && li.dataset.type !== filter.value && !li.classList.contains("marker");
    if (atTop) list.prepend(li); else list.append(li);
    while (list.children.length > KEEP) {
      const last = list.lastElementChild;
      if (last.dataset.id) seen.delete(last.dataset.id);
      last.remove();
    }
  }

  function receive(envelope) {
    if (paused) {
      held.push(envelope);
      waiting.textContent = `${held.length} new while paused`;
      return;
    }
    show(envelope, true);
  }

  const offs = [
    ctx.stream.on("*", receive),
    ctx.stream.on("state", (s) => {
      if (s === "lost") receive({ id: null, type: "stream_lost", ts: new Date().toISOString(), data: {} });
    }),
  ];

  (async () => {
    try {
      const page = await ctx.api.get("/operator/api/events?limit=50");
      if (!alive) return;
      // History arrives newest first; it goes below anything already received live.
      for (const e of page.events) show(e, false);
      if (!page.events.length && !list.children.length) empty.textContent = "No events yet. New ones appear here as they happen.";
    } catch (err) {
      if (alive) empty.textContent = `Could not read recent events: ${err.message}. New ones still appear here.`;
    }
  })();
  applyFilter();
  return () => { alive = false; offs.forEach((off) => off()); };
}

function item(e) {
  if (e.type === "reset" || e.type === "stream_lost") {
    const text = e.type === "reset"
      ? `History lost: some events before this point are gone (${e.data.reason || "the stream could not resume"})`
      : "The event stream dropped; reconnecting. Missed events follow when it resumes.";
    return h("li", { class: `marker ${e.type}`, "data-testid": "event-item", "data-type": e.type, role: "note" },
      h("span", { class: "time" }, clock(e.ts)), h("strong", {}, e.type === "reset" ? "reset " : "stream lost "), text);
  }
  const cid = e.correlation_id;
  return h("li", { class: `event sev-${e.severity || "info"}`, "data-testid": "event-item", "data-type": e.type,
    "data-id": e.id || null },
  h("span", { class: "time", title: e.ts }, clock(e.ts)),
  h("span", { class: "type" }, e.type),
  h("span", { class: "summary" }, summary(e)),
  h("span", { class: "meta" },
    e.source ? h("span", { class: "muted" }, e.source + " ") : null,
    cid ? h("a", { href: `/operator/trace/${encodeURIComponent(cid)}`, "data-testid": "event-trace",
      title: "Everything recorded for this correlation id" }, "trace " + cid.slice(0, 8)) : null),
  h("details", {}, h("summary", {}, "data"), h("pre", {}, JSON.stringify(e.data, null, 2))));
}

function summary(e) {
  const d = e.data || {};
  switch (e.type) {
    case "chat":
      return `${d.token_name || "someone"} chatted via ${d.provider || "no provider"}${d.model ? "/" + d.model : ""}: ${d.status}` +
        `${d.latency_ms != null ? ` in ${Math.round(d.latency_ms)} ms` : ""}${d.error ? ` (${d.error})` : ""}`;
    case "service_status":
      return `${d.service}: ${d.previous_status || "unknown"} → ${d.status}${d.reason ? ` (${d.reason})` : ""}`;
    case "provider_status":
      return `${d.provider}: ${d.previous_status || "unknown"} → ${d.status}, circuit ${d.circuit}${d.reason ? ` (${d.reason})` : ""}`;
    case "feature_toggle":
      return `${d.feature} set ${d.status} by ${d.updated_by || "?"}${d.reason ? `: ${d.reason}` : ""}` +
        `${d.effective_status && d.effective_status !== d.status ? ` (reports ${d.effective_status})` : ""}`;
    case "metrics":
      return `${d.requests ?? 0} requests in ${d.window || "the window"}, ${d.errors ?? 0} errors` +
        `${d.latency_ms ? `, p95 ${Math.round(d.latency_ms.p95)} ms` : ""}`;
    default:
      return JSON.stringify(d).slice(0, 160);
  }
}
