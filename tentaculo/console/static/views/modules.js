// Modules and topology: every module with its live health, and the modules as a graph laid out
// around the entrypoint; selecting a node shows its details. Kept current by service_status events.
import { ago, badge, clock, h, loadStyle, ms } from "../ui.js";

const SVG = "http://www.w3.org/2000/svg";
const W = 900, H = 500, NODE_R = 24;

function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== null && v !== undefined) el.setAttribute(k, v);
  el.append(...children);
  return el;
}

export function mount(el, ctx) {
  loadStyle("./views/modules.css");
  let alive = true;
  let modules = new Map(); // name -> module (from /modules)
  let topology = null;
  let selected = ctx.query.get("node");
  const nodes = new Map(); // name -> <g>
  const rows = new Map(); // name -> <tr>
  const stamp = h("span", { class: "muted", "aria-live": "polite" });
  const graphBox = h("div", { class: "topology-wrap" });
  const details = h("aside", { class: "node-details card", "data-testid": "node-details", "aria-live": "polite" });
  const tbody = h("tbody");
  const tableBox = h("div", { class: "table-wrap" },
    h("table", { "data-testid": "module-table" },
      h("caption", { class: "visually-hidden" }, "VX11 modules and their health"),
      h("thead", {}, h("tr", {}, ["Module", "Role", "Status", "Latency", "Last check", "Circuit"].map((t) =>
        h("th", { scope: "col", class: "col-" + t.toLowerCase().replace(" ", "-") }, t)))),
      tbody));
  const problem = h("p", { class: "error-text", role: "alert" });
  el.append(
    h("div", { class: "toolbar" }, h("h1", {}, "Modules and topology"), stamp,
      h("button", { type: "button", class: "secondary", onclick: () => load() }, "Refresh")),
    problem,
    h("section", { class: "topology card", "aria-labelledby": "topo-title" },
      h("h2", { id: "topo-title" }, "Topology"),
      h("p", { class: "muted hint" }, "The gateway is in the middle; select a module (click, or Tab then Enter) for its details."),
      h("div", { class: "topology-grid" }, graphBox, details),
      h("p", { class: "legend muted" }, "Colours: ", ["on", "off", "degraded", "error"].map((x) => [badge(x), " "]),
        "· arrows point from caller to callee; dashed: pub/sub")),
    h("section", { class: "modules", "aria-label": "Modules" }, tableBox),
  );

  async function load() {
    try {
      const [m, t] = await Promise.all([ctx.api.get("/operator/api/modules"), ctx.api.get("/operator/api/topology")]);
      if (!alive) return;
      problem.textContent = "";
      modules = new Map(m.modules.map((x) => [x.name, x]));
      topology = t;
      renderTable();
      renderGraph();
      renderDetails();
      stamp.textContent = `as of ${clock()}`;
    } catch (err) {
      if (alive) problem.textContent = `Could not read the modules: ${err.message}`;
    }
  }

  function renderTable() {
    rows.clear();
    tbody.replaceChildren(...[...modules.values()].map((m) => {
      const tr = row(m);
      rows.set(m.name, tr);
      return tr;
    }));
  }

  function row(m) {
    return h("tr", { "data-testid": "module-row", "data-name": m.name, "data-status": m.status,
      class: m.name === selected ? "selected" : null },
    h("td", {}, h("button", { type: "button", class: "link", title: "Show in the topology",
      onclick: () => select(m.name, true) }, m.display_name || m.name),
    m.display_name && m.display_name !== m.name ? h("small", { class: "name" }, m.name) : null),
    h("td", { class: "col-role" }, m.role, m.enabled ? null : h("small", {}, " (disabled)")),
    h("td", {}, badge(m.status), m.status !== "on" && m.reason ? h("div", { class: "reason" }, m.reason) : null),
    h("td", { class: "col-latency" }, ms(m.latency_ms)),
    h("td", { title: m.checked_at || "" }, ago(m.checked_at)),
    h("td", { class: "col-circuit" }, circuit(m.circuit)));
  }

  function renderGraph() {
    nodes.clear();
    const positions = layout(topology);
    // Fit the drawing: symmetric around the entrypoint horizontally, tight vertically.
    const all = [...positions.values()];
    const cx = W / 2, half = Math.max(...all.map((p) => Math.abs(p.x - cx))) + 160;
    const top = Math.min(...all.map((p) => p.y)) - 45, bottom = Math.max(...all.map((p) => p.y)) + 55;
    const svg = s("svg", { viewBox: `${cx - half} ${top} ${2 * half} ${bottom - top}`, class: "topology-graph", role: "group",
      "aria-label": `Topology: ${topology.nodes.length} modules, ${topology.edges.length} connections` });
    svg.append(s("defs", {}, s("marker", { id: "arrow", viewBox: "0 0 10 10", refX: "9", refY: "5",
      markerWidth: "7", markerHeight: "7", orient: "auto-start-reverse" }, s("path", { d: "M0,0 L10,5 L0,10 z", class: "arrowhead" }))));
    const edges = s("g", { class: "edges" });
    for (const e of topology.edges) {
      const a = positions.get(e.source), b = positions.get(e.target);
      if (!a || !b) continue;
      const dx = b.x - a.x, dy = b.y - a.y, len = Math.hypot(dx, dy) || 1;
      const pad = NODE_R + 3;
      edges.append(s("line", {
        x1: a.x + (dx / len) * pad, y1: a.y + (dy / len) * pad,
        x2: b.x - (dx / len) * pad, y2: b.y - (dy / len) * pad,
        class: `edge kind-${e.kind}`, "marker-end": "url(#arrow)", "data-source": e.source, "data-target": e.target,
      }, s("title", {}, `${e.source} → ${e.target} (${e.kind})`)));
    }
    svg.append(edges);
    for (const n of topology.nodes) {
      const p = positions.get(n.name);
      const m = modules.get(n.name) || n;
      const g = s("g", {
        class: `node${n.entrypoint ? " entry" : ""}${n.name === selected ? " selected" : ""}`,
        transform: `translate(${p.x} ${p.y})`, tabindex: "0", role: "button",
        "data-testid": "topology-node", "data-name": n.name, "data-status": m.status,
        "aria-pressed": String(n.name === selected), "aria-label": label(n, m),
      },
      s("title", {}, label(n, m)),
      s("circle", { r: (n.entrypoint ? NODE_R + 8 : NODE_R) + 6, class: "halo" }),
      s("circle", { r: n.entrypoint ? NODE_R + 8 : NODE_R, class: "dot" }),
      s("text", { class: "glyph", "text-anchor": "middle", dy: "0.35em" }, initials(n.display_name || n.name)),
      nodeLabel(n, p, topology.edges.filter((e) => e.source === n.name || e.target === n.name).map((e) => {
        const other = positions.get(e.source === n.name ? e.target : e.source);
        return other ? Math.atan2(other.y - p.y, other.x - p.x) : 0;
      })));
      g.addEventListener("click", () => select(n.name));
      g.addEventListener("keydown", (e) => {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); select(n.name); }
      });
      nodes.set(n.name, g);
      svg.append(g);
    }
    graphBox.replaceChildren(svg);
    // On a narrow screen the drawing scrolls sideways: start with the gateway in view.
    requestAnimationFrame(() => { graphBox.scrollLeft = (graphBox.scrollWidth - graphBox.clientWidth) / 2; });
  }

  function select(name, focusNode = false) {
    selected = name;
    for (const [n, g] of nodes) {
      g.classList.toggle("selected", n === name);
      g.setAttribute("aria-pressed", String(n === name));
    }
    for (const [n, tr] of rows) tr.classList.toggle("selected", n === name);
    renderDetails();
    const q = new URLSearchParams(location.search);
    q.set("node", name);
    history.replaceState(null, "", `${location.pathname}?${q}`);
    if (focusNode && nodes.get(name)) nodes.get(name).focus();
  }

  function renderDetails() {
    const m = selected && modules.get(selected);
    const n = selected && topology && topology.nodes.find((x) => x.name === selected);
    if (!m && !n) {
      details.replaceChildren(h("h2", {}, "Details"), h("p", { class: "muted" }, "Select a module to see its details."));
      return;
    }
    const x = { ...n, ...m };
    const out = topology.edges.filter((e) => e.source === x.name).map((e) => `${e.target} (${e.kind})`);
    const inc = topology.edges.filter((e) => e.target === x.name).map((e) => `${e.source} (${e.kind})`);
    details.replaceChildren(...[
      h("div", { class: "row-head" }, h("h2", {}, x.display_name || x.name), badge(x.status)),
      x.status !== "on" && x.reason ? h("p", { class: "reason", "data-testid": "node-reason" }, x.reason) : null,
      x.description ? h("p", {}, x.description) : null,
      h("dl", {},
        dt("name", x.name), dt("role", x.role + (x.entrypoint ? " (entrypoint)" : "")),
        dt("enabled", x.enabled === false ? "no" : "yes"),
        dt("last check", x.checked_at ? `${ago(x.checked_at)} (${clock(x.checked_at)})` : "never"),
        dt("latency", ms(x.latency_ms)),
        x.http_status ? dt("health answer", `HTTP ${x.http_status}`) : null,
        dt("circuit", circuit(x.circuit)),
        x.changed_at ? dt("status since", `${ago(x.changed_at)} (${clock(x.changed_at)})`) : null,
        dt("calls", out.length ? out.join(", ") : "none"),
        dt("called by", inc.length ? inc.join(", ") : "none")),
    ].filter(Boolean));
  }

  const offs = [
    ctx.stream.on("service_status", (e) => {
      const d = e.data;
      const m = modules.get(d.service);
      if (!m) { load(); return; }
      for (const k of ["status", "reason", "latency_ms", "checked_at"]) if (k in d) m[k] = d[k];
      if (d.circuit) m.circuit = { ...(typeof m.circuit === "object" ? m.circuit : {}), state: d.circuit };
      m.changed_at = e.ts;
      const old = rows.get(m.name);
      if (old) {
        const fresh = row(m);
        if (m.name === selected) fresh.classList.add("selected");
        old.replaceWith(fresh);
        rows.set(m.name, fresh);
      }
      const g = nodes.get(m.name);
      const n = topology && topology.nodes.find((x) => x.name === m.name);
      if (g && n) {
        n.status = m.status;
        n.reason = m.reason;
        g.setAttribute("data-status", m.status);
        g.setAttribute("aria-label", label(n, m));
        g.querySelector("title").textContent = label(n, m);
      }
      if (m.name === selected) renderDetails();
    }),
    ctx.stream.on("reset", () => load()),
    ctx.stream.on("state", (st) => { if (st === "open") load(); }),
  ];
  load();
  return () => { alive = false; offs.forEach((off) => off()); };
}

// A label goes on the side of its node (right, left, below, above) furthest from its edges.
function nodeLabel(n, p, edgeAngles) {
  const text = n.display_name || n.name;
  const r = n.entrypoint ? NODE_R + 8 : NODE_R;
  const sides = [
    { a: 0, attrs: { "text-anchor": "start", x: r + 7, dy: "0.35em" } },
    { a: Math.PI, attrs: { "text-anchor": "end", x: -r - 7, dy: "0.35em" } },
    { a: Math.PI / 2, attrs: { "text-anchor": "middle", y: r + 18 } },
    { a: -Math.PI / 2, attrs: { "text-anchor": "middle", y: -r - 9 } },
  ];
  const gap = (a, b) => { const d = Math.abs(a - b) % (2 * Math.PI); return d > Math.PI ? 2 * Math.PI - d : d; };
  const clearance = (side) => Math.min(Math.PI, ...edgeAngles.map((e) => gap(side.a, e)));
  const best = sides.reduce((x, y) => (clearance(y) > clearance(x) + 0.01 ? y : x));
  return s("text", { class: "label", ...best.attrs }, text);
}

function dt(term, value) {
  return [h("dt", {}, term), h("dd", {}, value)];
}

function circuit(c) {
  if (!c) return "closed";
  if (typeof c === "string") return c.replace("_", "-");
  const state = c.state.replace("_", "-");
  return c.failures ? `${state}, ${c.failures} failure(s)` : state;
}

function label(n, m) {
  const reason = m.status !== "on" && m.reason ? `, ${m.reason}` : "";
  return `${n.display_name || n.name} (${n.role}): ${m.status}${reason}`;
}

function initials(name) {
  const words = name.split(/[\s_-]+/).filter(Boolean);
  return (words.length > 1 ? words[0][0] + words[1][0] : name.slice(0, 2)).toUpperCase();
}

// Rings around the entrypoint: each module at its distance (in edges) from it; a module's
// neighbours further out sit around its angle. Unreachable modules form the outermost ring.
export function layout(topology) {
  const names = topology.nodes.map((n) => n.name);
  const entry = topology.entrypoint && names.includes(topology.entrypoint) ? topology.entrypoint : names[0];
  const near = new Map(names.map((n) => [n, []]));
  for (const e of topology.edges) {
    if (near.has(e.source) && near.has(e.target)) { near.get(e.source).push(e.target); near.get(e.target).push(e.source); }
  }
  for (const list of near.values()) list.sort();
  const depth = new Map([[entry, 0]]), parent = new Map();
  const queue = [entry];
  while (queue.length) {
    const cur = queue.shift();
    for (const next of near.get(cur) || []) {
      if (!depth.has(next)) { depth.set(next, depth.get(cur) + 1); parent.set(next, cur); queue.push(next); }
    }
  }
  const deepest = Math.max(0, ...depth.values());
  for (const n of names) if (!depth.has(n)) depth.set(n, deepest + 1);
  const rings = Math.max(1, ...depth.values());
  const cx = W / 2, cy = H / 2 - 5;
  const pos = new Map([[entry, { x: cx, y: cy, angle: Math.PI / 2 }]]);
  const angle = new Map();
  for (let d = 1; d <= rings; d++) {
    const ring = names.filter((n) => depth.get(n) === d);
    // Group by parent (in the parent's angular order), so children sit next to their parent.
    ring.sort((a, b) => (angle.get(parent.get(a)) ?? 99) - (angle.get(parent.get(b)) ?? 99) || a.localeCompare(b));
    const share = (d + 0.6) / (rings + 0.6); // inner rings a little wider than linear: room for edges
    const rx = (W / 2 - 170) * share, ry = (H / 2 - 45) * share;
    const step = (2 * Math.PI) / Math.max(ring.length, 1);
    const offset = d === 1 ? -Math.PI / 2 : null;
    ring.forEach((n, i) => {
      let a;
      if (offset !== null || !parent.has(n)) a = (offset ?? -Math.PI / 2) + i * step;
      else {
        const siblings = ring.filter((m) => parent.get(m) === parent.get(n));
        const k = siblings.indexOf(n);
        const spread = Math.min(step, (2 * Math.PI) / Math.max(1, names.filter((m) => depth.get(m) === d - 1).length) / siblings.length);
        a = angle.get(parent.get(n)) + (k - (siblings.length - 1) / 2) * spread;
      }
      angle.set(n, a);
      pos.set(n, { x: cx + rx * Math.cos(a), y: cy + ry * Math.sin(a), angle: a });
    });
  }
  return pos;
}
