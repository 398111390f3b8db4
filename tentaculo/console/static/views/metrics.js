// Metrics: request rate, error rate and latency (p50/p95/p99) by route and by provider over a
// window, as uPlot bar charts and as tables. GET /operator/api/metrics?window=...; refreshed on
// each `metrics` event and when the window changes.
import uPlot from '../vendor/uplot/uPlot.esm.js';
import { css, fmtDate, fmtMs, h, loadStyles, problemText } from './common.js';

const WINDOWS = [['1m', 'last minute'], ['5m', 'last 5 minutes'], ['1h', 'last hour'], ['24h', 'last 24 hours']];
const COLORS = { rate: '#1f5fbf', errors: '#b3261e', p99: '#c9d6ea', p95: '#7f9fcf', p50: '#1f4f99' };

function pct(v) { return v == null ? '–' : `${(v * 100).toFixed(v > 0 && v < 0.01 ? 2 : 1)} %`; }
function num(v, digits = 2) { return v == null ? '–' : Number(v).toFixed(digits); }
function shortRoute(r) {
  return `${r.method} ${r.route.replace(/^\/operator\/api(?=\/)/, '')}`;
}

// One bar chart over categories (routes or providers) with one or more series drawn on top of
// each other, widest first (latency: p99 behind p95 behind p50).
function barChart(container, title, names, series, { unit = '', format = (v) => v, log = false } = {}) {
  const n = names.length;
  const labels = names.map((l) => (l.length > 20 ? `${l.slice(0, 19)}…` : l));
  const rotate = labels.some((l) => l.length > 12) || n > 5;
  const longest = Math.max(...labels.map((l) => l.length), 1);
  // Axis ticks: as many decimals as the step between them needs.
  const ticks = (u, splits, ax, space, incr) => {
    const exp = Math.floor(Math.log10(incr || 1));
    const digits = Math.max(0, Math.min(6, -exp + (Number.isInteger(+(incr / 10 ** exp).toFixed(6)) ? 0 : 1)));
    return splits.map((v) => `${v.toFixed(digits)}${unit}`);
  };
  const opts = {
    title,
    width: Math.max(container.clientWidth, 200),
    height: 190 + (rotate ? longest * 5 : 0),
    cursor: { drag: { x: false, y: false }, points: { show: false } },
    legend: { live: false },
    scales: {
      x: { time: false, range: () => [-0.5, n - 0.5] },
      // Latencies span microseconds to seconds: a log scale keeps p50 visible next to a slow p99.
      // Bars rise from the scale's floor, so the floor sits well below the smallest figure.
      y: log
        ? { distr: 3, log: 10, range: (u, min, max) => [10 ** Math.floor(Math.log10(min || 0.1) - 0.3), 10 ** Math.ceil(Math.log10(max || 1) + 0.01)] }
        : { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] },
    },
    axes: [
      {
        splits: () => labels.map((_, i) => i),
        values: (u, splits) => splits.map((i) => labels[i] ?? ''),
        rotate: rotate ? 55 : 0,  // text ends at its tick, leaning left over the y axis
        size: rotate ? longest * 5.5 + 12 : 36,
        gap: 4,
        grid: { show: false },
      },
      log ? {
        values: (u, splits) => splits.map((v) => (v == null ? '' : `${+v.toPrecision(3)}${unit}`)),
        // One tick and grid line per decade.
        splits: (u, i, min, max) => {
          const out = [];
          for (let e = Math.ceil(Math.log10(min) - 1e-9); e <= Math.floor(Math.log10(max) + 1e-9); e += 1) out.push(10 ** e);
          return out;
        },
        size: 80,
      } : { values: ticks, size: 80 },
    ],
    series: [
      {},
      ...series.map((s) => ({
        label: s.label,
        stroke: s.color,
        fill: s.color,
        width: 0,
        points: { show: false },
        value: (u, v) => (v == null ? '–' : `${format(v)}${unit}`),
        paths: uPlot.paths.bars({ size: [s.size ?? 0.6, 120 * (s.size ?? 0.6)], align: 0 }),
      })),
    ],
  };
  const data = [labels.map((_, i) => i), ...series.map((s) => s.values)];
  return new uPlot(opts, data, container);
}

export function mount(el, ctx) {
  loadStyles('metrics');
  css(new URL('../vendor/uplot/uPlot.min.css', import.meta.url));
  let current = null;  // the last answer
  let charts = [];
  let loading = 0;

  const windowSel = h('select', { id: 'metrics-window', testid: 'metrics-window' },
    WINDOWS.map(([value, text]) => h('option', { value, text: `${value} (${text})` })));
  windowSel.value = ['1m', '5m', '1h', '24h'].includes(ctx.query.get('window')) ? ctx.query.get('window') : '5m';
  const refresh = h('button', { type: 'button', text: 'Refresh', testid: 'metrics-refresh' });
  const updated = h('span', { class: 'muted', testid: 'metrics-updated', 'aria-live': 'polite' });
  const incomplete = h('p', { class: 'note', hidden: true, testid: 'metrics-incomplete' });
  const error = h('div', { class: 'alert', role: 'alert', hidden: true, testid: 'metrics-error' });
  const totals = h('dl', { class: 'metrics-totals', testid: 'metrics-totals' });
  const routeCharts = h('div', { class: 'metrics-charts' });
  const providerCharts = h('div', { class: 'metrics-charts' });
  const routeTable = h('div', { class: 'table-wrap' });
  const providerTable = h('div', { class: 'table-wrap' });

  el.append(h('section', { class: 'vw vw-metrics' },
    h('div', { class: 'toolbar' },
      h('h2', { text: 'Metrics' }),
      h('label', { class: 'field', for: 'metrics-window' }, 'Window', windowSel),
      refresh, updated),
    incomplete, error, totals,
    h('section', { class: 'panel' }, h('h3', { text: 'By route' }), routeCharts, routeTable),
    h('section', { class: 'panel' }, h('h3', { text: 'By provider (chat calls)' }), providerCharts, providerTable)));

  function destroyCharts() { for (const c of charts) c.destroy(); charts = []; }

  function chartBox(name) {
    const box = h('div', { class: 'metrics-chart', testid: 'metrics-chart', 'data-chart': name });
    return box;
  }

  function drawGroup(holder, prefix, items, labelOf) {
    holder.replaceChildren();
    if (!items.length) {
      holder.append(h('p', { class: 'muted', text: 'Nothing recorded in this window.' }));
      return;
    }
    const labels = items.map(labelOf);
    const boxes = [chartBox(`${prefix}-rate`), chartBox(`${prefix}-errors`), chartBox(`${prefix}-latency`)];
    holder.append(...boxes);
    charts.push(
      barChart(boxes[0], 'Rate (per second)', labels,
        [{ label: 'rate', color: COLORS.rate, values: items.map((x) => x.rate_per_s) }], { unit: '/s', format: (v) => num(v, v < 1 ? 3 : 1) }),
      barChart(boxes[1], 'Error rate', labels,
        [{ label: 'errors', color: COLORS.errors, values: items.map((x) => x.error_rate * 100) }], { unit: ' %', format: (v) => num(v, 1) }),
      barChart(boxes[2], 'Latency (ms, log scale)', labels, [
        { label: 'p99', color: COLORS.p99, size: 0.75, values: items.map((x) => x.latency_ms?.p99 ?? null) },
        { label: 'p95', color: COLORS.p95, size: 0.5, values: items.map((x) => x.latency_ms?.p95 ?? null) },
        { label: 'p50', color: COLORS.p50, size: 0.25, values: items.map((x) => x.latency_ms?.p50 ?? null) },
      ], { unit: ' ms', format: (v) => num(v, v < 10 ? 2 : 0), log: true }),
    );
  }

  function table(columns, rows, testid) {
    return h('table', { testid },
      h('thead', {}, h('tr', {}, columns.map(([label, , numeric]) => h('th', { class: numeric ? 'num' : '', scope: 'col', text: label })))),
      h('tbody', {}, rows.map((r) => h('tr', {}, columns.map(([, get, numeric]) => h('td', { class: numeric ? 'num' : '', text: get(r) }))))));
  }

  const figureColumns = [
    ['Rate/s', (r) => num(r.rate_per_s, 3), true],
    ['Errors', (r) => String(r.errors), true],
    ['Error rate', (r) => pct(r.error_rate), true],
    ['p50', (r) => fmtMs(r.latency_ms?.p50), true],
    ['p95', (r) => fmtMs(r.latency_ms?.p95), true],
    ['p99', (r) => fmtMs(r.latency_ms?.p99), true],
    ['max', (r) => fmtMs(r.latency_ms?.max), true],
  ];

  function render(m) {
    destroyCharts();
    const t = m.totals || {};
    totals.replaceChildren(...[
      ['Requests', t.requests ?? 0], ['Rate', `${num(t.rate_per_s, 3)}/s`], ['Errors', t.errors ?? 0],
      ['Error rate', pct(t.error_rate)], ['p50', fmtMs(t.latency_ms?.p50)], ['p95', fmtMs(t.latency_ms?.p95)],
      ['p99', fmtMs(t.latency_ms?.p99)],
    ].map(([k, v]) => h('div', {}, h('dt', { text: k }), h('dd', { text: String(v) }))));
    incomplete.hidden = m.complete !== false;
    incomplete.textContent = m.complete === false
      ? `Incomplete: only this instance's latest figures are shown (${m.reason || 'the database could not be read'}).` : '';
    const routes = [...(m.routes || [])].sort((a, b) => b.requests - a.requests);
    const providers = [...(m.providers || [])].sort((a, b) => a.provider.localeCompare(b.provider));
    drawGroup(routeCharts, 'route', routes, shortRoute);
    drawGroup(providerCharts, 'provider', providers, (p) => p.provider);
    routeTable.replaceChildren(routes.length ? table([
      ['Method', (r) => r.method], ['Route', (r) => r.route], ['Requests', (r) => String(r.requests), true],
      ...figureColumns,
      ['Status', (r) => Object.entries(r.status_classes || {}).map(([k, v]) => `${k}: ${v}`).join(', ')],
    ], routes, 'metrics-routes') : '');
    providerTable.replaceChildren(providers.length ? table([
      ['Provider', (r) => r.provider], ['Calls', (r) => String(r.calls ?? 0), true], ...figureColumns,
      ['Outcomes', (r) => Object.entries(r.outcomes || {}).map(([k, v]) => `${k}: ${v}`).join(', ')],
    ], providers, 'metrics-providers') : '');
    updated.textContent = `${m.instances?.length ?? 0} instance(s), ${fmtDate(m.from)} – ${fmtDate(m.to)}; updated ${new Date().toLocaleTimeString(undefined, { hour12: false })}`;
  }

  async function load() {
    const ticket = ++loading;
    el.querySelector('.vw-metrics')?.setAttribute('aria-busy', 'true');
    try {
      const m = await ctx.api.get(`/operator/api/metrics?window=${encodeURIComponent(windowSel.value)}`);
      if (ticket !== loading) return;
      error.hidden = true;
      current = m;
      render(m);
    } catch (err) {
      if (ticket !== loading) return;
      error.textContent = `Could not read the metrics: ${problemText(err)}`;
      error.hidden = false;
    } finally {
      if (ticket === loading) el.querySelector('.vw-metrics')?.setAttribute('aria-busy', 'false');
    }
  }

  windowSel.addEventListener('change', load);
  refresh.addEventListener('click', load);
  const off = ctx.stream.on('metrics', () => load());
  // Turned off, the endpoint answers 503 (shown as such); turned back on, read again at once.
  const offFlag = ctx.stream.on('feature_toggle', (env) => { if (env.data && env.data.feature === 'metrics') load(); });
  let width = 0;
  const resize = new ResizeObserver(() => {
    const w = routeCharts.clientWidth;
    if (w && Math.abs(w - width) > 8 && current) { width = w; for (const c of charts) c.setSize({ width: Math.max(c.root.parentElement.clientWidth, 200), height: c.height }); }
  });
  resize.observe(el);
  load();
  return () => { off(); offFlag(); resize.disconnect(); destroyCharts(); loading += 1; };
}
