// Overview: the gateway, its dependencies, providers, features and modules, each with a badge
// and its reason; kept current by service_status, feature_toggle and provider_status events.
import { ago, badge, clock, h, loadStyle, ms } from "../ui.js";

export function mount(el, ctx) {
  loadStyle("./views/overview.css");
  let report = null;
  let refetch = null;
  let alive = true;
  const stamp = h("span", { class: "muted", "aria-live": "polite" });
  const body = h("div", { class: "overview" }, h("p", { class: "muted" }, "Loading the instance's status…"));
  const refresh = h("button", { type: "button", class: "secondary", onclick: () => load() }, "Refresh");
  el.append(h("div", { class: "toolbar" }, h("h1", {}, "Overview"), stamp, refresh), body);

  async function load() {
    try {
      report = await ctx.api.get("/operator/api/status");
      if (!alive) return;
      render();
      stamp.textContent = `as of ${clock()}`;
    } catch (err) {
      if (!alive) return;
      body.replaceChildren(h("p", { class: "error-text", role: "alert" }, `Could not read the status: ${err.message}`));
    }
  }

  // Events are applied at once; the summary (overall status and reasons) is re-read shortly after.
  function later() {
    clearTimeout(refetch);
    refetch = setTimeout(load, 800);
  }

  function render() {
    const r = report;
    body.replaceChildren(
      h("section", { class: "card gateway", "data-testid": "overview-gateway", "data-status": r.status,
        "aria-labelledby": "ov-gw" },
      h("div", { class: "row-head" }, h("h2", { id: "ov-gw" }, "Gateway"), badge(r.status)),
      r.reasons.length
        ? h("ul", { class: "reasons" }, r.reasons.map((x) => h("li", { class: "reason" }, x)))
        : r.reason ? h("p", { class: "reason" }, r.reason) : h("p", { class: "muted" }, "Everything enabled is working."),
      h("p", { class: "facts" },
        fact("instance", r.instance), fact("version", r.version), fact("up", duration(r.uptime_s)))),
      h("div", { class: "cards" },
        card("Dependencies", "dependencies", Object.entries(r.dependencies).map(([name, d]) =>
          item(name, d.status, d.reason, d.latency_ms !== undefined ? ms(d.latency_ms) : extra(d)))),
        card("Providers", "providers", r.providers.map((p) =>
          item(p.name, p.status, p.reason, `circuit ${circuitOf(p.circuit)}${p.in_chain ? " · in chain" : ""}`))),
        card("Features", "features", Object.entries(r.features).map(([name, f]) =>
          item(name, f.status, f.reason, f.flag !== f.status ? `flag ${f.flag}` : ""))),
        card("Modules", "modules", r.services.map((s) =>
          item(s.name, s.status, s.reason, s.checked_at ? `${ms(s.latency_ms)} · ${ago(s.checked_at)}` : s.role)),
        h("a", { href: "/operator/modules" }, "Modules and topology →")),
      ),
    );
  }

  const offs = [
    ctx.stream.on("service_status", (e) => {
      const s = report && report.services.find((x) => x.name === e.data.service);
      if (!s) return later();
      Object.assign(s, pick(e.data, ["status", "reason", "latency_ms", "checked_at", "circuit"]));
      render();
      later();
    }),
    ctx.stream.on("feature_toggle", (e) => {
      if (!report) return;
      const d = e.data;
      report.features[d.feature] = {
        status: d.effective_status || d.status, reason: d.effective_reason ?? d.reason, flag: d.status,
      };
      render();
      later();
    }),
    ctx.stream.on("provider_status", (e) => {
      const p = report && report.providers.find((x) => x.name === e.data.provider);
      if (!p) return later();
      p.status = e.data.status;
      p.reason = e.data.reason;
      p.circuit = { ...(typeof p.circuit === "object" ? p.circuit : {}), state: e.data.circuit };
      render();
      later();
    }),
    ctx.stream.on("reset", () => load()),
    ctx.stream.on("state", (s) => { if (s === "open") load(); }),
  ];
  load();
  return () => {
    alive = false;
    clearTimeout(refetch);
    offs.forEach((off) => off());
  };
}

function card(title, key, items, footer) {
  return h("section", { class: "card", "data-testid": `overview-${key}`, "aria-label": title },
    h("h2", {}, title), h("ul", {}, items), footer ? h("p", { class: "more" }, footer) : null);
}

function item(name, status, reason, detail) {
  return h("li", { "data-testid": "overview-item", "data-name": name, "data-status": status },
    h("div", { class: "row-head" }, h("strong", {}, name), badge(status)),
    status !== "on" && reason ? h("div", { class: "reason" }, reason) : null,
    detail ? h("div", { class: "muted detail" }, detail) : null);
}

function fact(label, value) {
  return h("span", { class: "fact" }, h("span", { class: "muted" }, label + " "), String(value));
}

function extra(d) {
  return ["clients", "queued", "written", "dropped"].filter((k) => k in d).map((k) => `${k} ${d[k]}`).join(" · ");
}

function circuitOf(c) {
  return typeof c === "object" && c ? c.state : c || "closed";
}

function pick(source, keys) {
  return Object.fromEntries(keys.filter((k) => k in source).map((k) => [k, source[k]]));
}

function duration(seconds) {
  const s = Math.floor(seconds);
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.floor(s / 60)} min`;
  if (s < 172800) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} days`;
}

