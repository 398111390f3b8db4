// Trace: everything recorded for one correlation id (audit rows, chat actions, events) as a
// timeline, oldest first. GET /operator/api/trace/{id}; the id is in the URL, /operator/trace/<id>.
import { badge, fmtDate, fmtMs, fmtTime, followPaths, h, loadStyles, problemText } from './common.js';

const ID = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;
const KINDS = { audit: 'Request', chat: 'Chat', event: 'Event' };

function statusClass(code) {
  if (code >= 500) return 'error';
  if (code >= 400) return 'degraded';
  return 'on';
}

function facts(pairs) {
  return h('dl', { class: 'trace-facts' }, pairs.filter(([, v]) => v !== null && v !== undefined && v !== '')
    .map(([k, v]) => h('div', {}, h('dt', { text: k }), h('dd', { text: String(v) }))));
}

function describe(item) {
  if (item.kind === 'audit') {
    return {
      title: [badge(statusClass(item.status), String(item.status)), ` ${item.method} ${item.path}`],
      body: facts([['route', item.route], ['duration', fmtMs(item.duration_ms)], ['token', item.token_name],
        ['client', item.client], ['module', item.service], ['instance', item.instance]]),
    };
  }
  if (item.kind === 'chat') {
    const usage = item.usage || {};
    const attempts = item.attempts || [];
    return {
      title: [badge(item.status === 'ok' ? 'on' : item.status === 'cancelled' ? 'degraded' : 'error', item.status),
        ` ${item.provider || 'no provider'}${item.model ? ` / ${item.model}` : ''}${item.finish_reason ? ` (${item.finish_reason})` : ''}`],
      body: [facts([['latency', fmtMs(item.latency_ms)], ['tokens', usage.completion_tokens != null ? `${usage.prompt_tokens ?? '?'} → ${usage.completion_tokens}` : null],
        ['streamed', item.streamed ? 'yes' : 'no'], ['degraded', item.degraded ? 'yes (a later provider answered)' : null],
        ['token', item.token_name], ['session', item.session_id], ['message', item.message_id], ['instance', item.instance],
        ['error', item.error]]),
      attempts.length ? h('ol', { class: 'trace-attempts', 'aria-label': 'Provider attempts' }, attempts.map((a) => h('li', {},
        `${a.provider}: ${a.status}${a.error ? ` (${a.error})` : ''}${a.latency_ms != null ? `, ${fmtMs(a.latency_ms)}` : ''}`))) : ''],
    };
  }
  const sev = { info: 'on', warning: 'degraded', error: 'error' }[item.severity] || 'off';
  return {
    title: [badge(sev, item.severity || 'event'), ` ${item.type}`, h('span', { class: 'muted', text: ` from ${item.source}` })],
    body: facts(Object.entries(item.data || {}).filter(([, v]) => v === null || typeof v !== 'object').slice(0, 12)),
  };
}

export function mount(el, ctx) {
  loadStyles('trace');
  return followPaths(el, ctx, 'trace', (params, navigate) => build(el, ctx, params[0] || '', navigate));
}

function build(el, ctx, id, navigate) {
  let alive = true;
  let timer = null;
  let rereads = 0;

  const input = h('input', { id: 'trace-id', testid: 'trace-input', value: id, required: true, autocomplete: 'off',
    class: 'mono', placeholder: 'e.g. 0b6f5c7e-1d2a-4c3b-9e8f-123456789abc', spellcheck: 'false' });
  const lookup = h('button', { type: 'submit', class: 'primary', testid: 'trace-lookup', text: 'Look up' });
  const reload = h('button', { type: 'button', testid: 'trace-reload', text: 'Reload', hidden: !id });
  const hint = h('p', { class: 'alert', role: 'alert', hidden: true, testid: 'trace-error' });
  const sources = h('p', { class: 'trace-sources', testid: 'trace-sources' });
  const list = h('ol', { class: 'trace-timeline', testid: 'trace-timeline' });
  const empty = h('p', { class: 'muted', hidden: true, testid: 'trace-empty' });

  const form = h('form', { class: 'toolbar trace-form', role: 'search' },
    h('label', { class: 'field trace-field', for: 'trace-id' }, 'Correlation id', input), lookup, reload);
  el.append(h('section', { class: 'vw vw-trace' },
    h('h2', { text: 'Trace' }),
    h('div', { class: 'panel' }, form,
      h('p', { class: 'muted', text: 'Every response carries its X-Correlation-ID; chats, events and requests with the same id are shown here in time order.' })),
    hint,
    id ? h('div', { class: 'panel' }, sources, empty, list) : ''));

  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const wanted = input.value.trim();
    if (!ID.test(wanted)) {
      hint.textContent = 'A correlation id is 1 to 128 letters, digits, ".", "_", ":" or "-", starting with a letter or digit.';
      hint.hidden = false;
      input.focus();
      return;
    }
    if (wanted === id) load(); else navigate(`/operator/trace/${encodeURIComponent(wanted)}`);
  });
  reload.addEventListener('click', () => load());

  function render(trace) {
    const items = [...(trace.items || [])].sort((a, b) => Date.parse(a.ts) - Date.parse(b.ts));
    const first = items.length ? Date.parse(items[0].ts) : 0;
    sources.replaceChildren('Sources: ', ...Object.entries(trace.sources || {}).flatMap(([name, s]) => [
      h('span', { class: 'trace-source' }, badge(s.status, name),
        s.reason ? ` ${s.reason}` : '', s.truncated ? ' (more items than shown)' : ''), ' ']));
    empty.hidden = items.length > 0;
    empty.textContent = items.length ? '' : `Nothing is recorded for ${id} (yet: requests are written within a moment of ending).`;
    list.replaceChildren(...items.map((item) => {
      const { title, body } = describe(item);
      const offset = Date.parse(item.ts) - first;
      return h('li', { class: `trace-item trace-${item.kind}`, testid: 'trace-item', 'data-kind': item.kind },
        h('div', { class: 'trace-when' },
          h('time', { datetime: item.ts, title: fmtDate(item.ts), text: fmtTime(item.ts) }),
          h('span', { class: 'muted', text: offset ? `+${fmtMs(offset)}` : '' })),
        h('div', { class: 'trace-what' },
          h('div', { class: 'trace-title' }, h('span', { class: 'trace-kind', text: KINDS[item.kind] || item.kind }), ...title),
          body,
          h('details', {}, h('summary', { text: 'Raw' }), h('pre', { class: 'mono', text: JSON.stringify(item, null, 2) }))));
    }));
    // Audit rows and chat actions are written a moment after their request ends: while the trace
    // is fresh (or still empty), read it again a few times.
    const fresh = !items.length || Date.now() - Date.parse(items[items.length - 1].ts) < 5000;
    if (fresh && rereads < 4) {
      rereads += 1;
      timer = setTimeout(load, 1000);
    }
  }

  async function load() {
    if (!id) return;
    clearTimeout(timer);
    hint.hidden = true;
    try {
      const trace = await ctx.api.get(`/operator/api/trace/${encodeURIComponent(id)}`);
      if (alive) render(trace);
    } catch (err) {
      if (!alive) return;
      hint.textContent = `Could not read the trace of ${id}: ${problemText(err)}`;
      hint.hidden = false;
    }
  }

  // Events caused by this request (a chat finishing, a flag changing) arrive live: read again.
  const off = ctx.stream.on('*', (env) => {
    if (id && env.correlation_id === id) { clearTimeout(timer); timer = setTimeout(load, 300); }
  });
  if (id) load(); else input.focus();
  return () => { alive = false; clearTimeout(timer); off(); };
}
