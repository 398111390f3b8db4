// Chat: pick a provider and model, send a message, watch the answer stream in; stop it; follow
// its correlation id to the trace. POST /operator/api/chat with stream: true (ctx.api.stream).
import { badge, fmtMs, gate, h, loadStyles, problemText } from './common.js';

export function mount(el, ctx) {
  loadStyles('chat');
  let providers = [];
  let chain = [];
  let history = [];  // completed turns, sent again as context: [{role, content}]
  let running = null;  // the AbortController of the chat in flight

  const provider = h('select', { id: 'chat-provider', testid: 'chat-provider' });
  const model = h('select', { id: 'chat-model', testid: 'chat-model' });
  const providerNote = h('p', { class: 'muted', testid: 'chat-provider-status', 'aria-live': 'polite' });
  const input = h('textarea', {
    id: 'chat-input', testid: 'chat-input', rows: 3, placeholder: 'Ask something (Enter sends, Shift+Enter: new line)',
  });
  const send = h('button', { type: 'submit', class: 'primary', testid: 'chat-send', text: 'Send' });
  const stop = h('button', { type: 'button', class: 'danger', testid: 'chat-stop', text: 'Stop', disabled: true });
  const clear = h('button', { type: 'button', text: 'New conversation' });
  const scopeNote = h('p', { class: 'note', hidden: true, testid: 'chat-scope' });
  const flagNote = h('p', { class: 'note', hidden: true, testid: 'chat-feature', role: 'status' });
  const transcript = h('div', { class: 'chat-transcript' });
  const reasoningText = h('pre', { class: 'chat-reasoning-text' });
  const reasoning = h('details', { class: 'chat-reasoning', testid: 'chat-reasoning', hidden: true },
    h('summary', { text: 'Reasoning' }), reasoningText);
  const output = h('div', { class: 'chat-answer', testid: 'chat-output', 'aria-live': 'polite' });
  const state = h('p', { class: 'muted chat-state', testid: 'chat-state', role: 'status' });
  const correlation = h('p', { class: 'muted', hidden: true });
  const error = h('div', { class: 'alert', testid: 'chat-error', role: 'alert', hidden: true });

  const form = h('form', { class: 'panel chat-form' },
    h('div', { class: 'toolbar' },
      h('label', { class: 'field', for: 'chat-provider' }, 'Provider', provider),
      h('label', { class: 'field', for: 'chat-model' }, 'Model', model)),
    providerNote,
    h('label', { class: 'field', for: 'chat-input' }, 'Message', input),
    h('div', { class: 'toolbar' }, send, stop, clear),
    scopeNote, flagNote);
  el.append(h('section', { class: 'vw vw-chat' },
    h('h2', { text: 'Chat' }), form,
    h('div', { class: 'panel chat-result' }, transcript, reasoning, output, state, correlation, error)));

  const allowed = gate(ctx, 'chat', [provider, model, input, send, clear], scopeNote);

  function chosen() { return providers.find((p) => p.name === provider.value); }

  function describe() {
    providerNote.replaceChildren();
    const p = chosen();
    if (provider.value === 'auto') {
      providerNote.append(`auto tries the chain in order: ${chain.join(' → ') || 'empty'}.`);
    } else if (p) {
      providerNote.append(badge(p.status), ' ', p.status === 'on' ? `${p.name} is available` : `${p.name}: ${p.reason || p.status}`);
      if (p.circuit && p.circuit.state && p.circuit.state !== 'closed') providerNote.append(` (circuit ${p.circuit.state})`);
    }
    const models = p ? (p.models || []) : [];
    const before = model.value;
    model.replaceChildren(h('option', { value: '', text: p && p.default_model ? `default (${p.default_model})` : 'default' }),
      ...models.map((m) => h('option', { value: m, text: m })));
    if (models.includes(before)) model.value = before;
    model.disabled = !allowed || models.length === 0;
  }

  function fill() {
    const before = provider.value;
    provider.replaceChildren(h('option', { value: 'auto', text: `auto (${chain.join(' → ') || 'no chain'})` }),
      ...providers.map((p) => h('option', { value: p.name, text: p.status === 'on' ? p.name : `${p.name} (${p.status}: ${p.reason || 'unavailable'})` })));
    if (before && [...provider.options].some((o) => o.value === before)) provider.value = before;
    describe();
  }

  async function loadProviders() {
    try {
      const data = await ctx.api.get('/operator/api/providers');
      providers = data.providers || [];
      chain = data.chain || [];
      fill();
    } catch (err) {
      showError(`Could not list the providers: ${problemText(err)}`);
    }
  }

  function showError(text, attempts) {
    error.replaceChildren(h('strong', { text: 'The chat failed: ' }), text);
    if (attempts && attempts.length) {
      error.append(h('ul', {}, attempts.map((a) => h('li', {},
        `${a.provider}: ${a.status}${a.error ? ` (${a.error})` : ''}${a.latency_ms ? `, ${fmtMs(a.latency_ms)}` : ''}`))));
    }
    error.hidden = false;
    output.classList.add('failed');
  }

  function showCorrelation(id) {
    if (!id) return;
    const href = `/operator/trace/${encodeURIComponent(id)}`;
    const link = h('a', { href, class: 'mono', testid: 'chat-correlation', text: id,
      onclick: (e) => { e.preventDefault(); ctx.navigate(href); } });
    correlation.replaceChildren('Correlation id: ', link, ' (open its trace)');
    correlation.hidden = false;
  }

  function setRunning(on) {
    stop.disabled = !on;
    send.disabled = on || !allowed;
    provider.disabled = on || !allowed;
    input.disabled = on || !allowed;
    form.setAttribute('aria-busy', on ? 'true' : 'false');
  }

  function archive(question, answer) {
    if (!question) return;
    transcript.append(h('div', { class: 'chat-turn chat-user' }, h('span', { class: 'chat-who', text: 'You' }), question),
      h('div', { class: 'chat-turn chat-bot' }, h('span', { class: 'chat-who', text: 'Answer' }), answer));
  }

  function stopped() {
    state.textContent = 'Stopped: the answer above is incomplete.';
    output.classList.add('stopped');
  }

  let lastQuestion = '';
  async function run(message) {
    archive(lastQuestion, output.textContent);
    lastQuestion = message;
    output.textContent = '';
    reasoningText.textContent = '';
    reasoning.hidden = true;
    error.hidden = true;
    correlation.hidden = true;
    state.textContent = 'Waiting for the provider…';
    output.classList.remove('stopped', 'failed');
    const controller = new AbortController();
    running = controller;
    setRunning(true);
    const messages = [...history, { role: 'user', content: message }];
    const body = { messages, provider: provider.value || 'auto', stream: true };
    if (model.value) body.model = model.value;
    let finished = false;
    try {
      for await (const ev of ctx.api.stream('/operator/api/chat', body, { signal: controller.signal })) {
        const d = ev.data || {};
        if (ev.event === 'start') {
          showCorrelation(d.correlation_id);
          state.textContent = `Answering: ${d.provider}${d.model ? ` / ${d.model}` : ''}…`;
        } else if (ev.event === 'delta') {
          if (d.reasoning) { reasoning.hidden = false; reasoningText.textContent += d.reasoning; }
          if (d.content) output.textContent += d.content;
        } else if (ev.event === 'done') {
          finished = true;
          const usage = d.usage || {};
          const tokens = usage.completion_tokens != null ? `, ${usage.prompt_tokens ?? '?'} → ${usage.completion_tokens} tokens` : '';
          state.textContent = `Done (${d.finish_reason || 'finished'}) in ${fmtMs(d.latency_ms)}${tokens}${d.degraded ? ', answered by a fallback provider' : ''}.`;
          history = [...messages, { role: 'assistant', content: output.textContent }];
        } else if (ev.event === 'error') {
          finished = true;
          showCorrelation(d.correlation_id);
          showError(d.detail || d.title || 'the provider failed', d.attempts);
          state.textContent = output.textContent ? 'Failed part way: the answer above is incomplete.' : 'Failed.';
        }
      }
      // An aborted stream may end quietly instead of throwing, depending on how it is read.
      if (!finished && controller.signal.aborted) stopped();
      else if (!finished) state.textContent = 'The stream ended without an answer.';
    } catch (err) {
      if (controller.signal.aborted) {
        stopped();
      } else {
        if (err && err.problem) showCorrelation(err.problem.correlation_id);
        showError(problemText(err), err && err.problem && err.problem.attempts);
        state.textContent = 'Failed.';
      }
    } finally {
      if (running === controller) running = null;
      const lost = document.activeElement === document.body || document.activeElement === stop;
      setRunning(false);
      describe();
      if (lost && allowed) input.focus();  // keyboard users carry on where they type
    }
  }

  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const message = input.value.trim();
    if (!message || running || !allowed) return;
    input.value = '';
    run(message);
  });
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) { e.preventDefault(); form.requestSubmit(); }
  });
  stop.addEventListener('click', () => { if (running) running.abort(); });
  clear.addEventListener('click', () => {
    history = []; lastQuestion = '';
    transcript.replaceChildren(); output.textContent = ''; output.classList.remove('stopped', 'failed'); reasoning.hidden = true;
    state.textContent = ''; error.hidden = true; correlation.hidden = true;
  });
  provider.addEventListener('change', describe);

  const offStatus = ctx.stream.on('provider_status', (env) => {
    const p = providers.find((x) => x.name === env.data.provider);
    if (!p) return;
    p.status = env.data.status; p.reason = env.data.reason;
    p.circuit = { ...(p.circuit || {}), state: env.data.circuit };
    fill();
  });
  // The chat feature's flag: say so before a send is refused with 503 feature_disabled.
  function showFlag(flag, reason, by) {
    flagNote.hidden = flag !== 'off';
    flagNote.textContent = flag === 'off' ? `Chat is turned off${by ? ` by ${by}` : ''}${reason ? `: ${reason}` : ''}. Sending is refused until an admin turns it on.` : '';
  }
  const offFlag = ctx.stream.on('feature_toggle', (env) => {
    if (env.data && env.data.feature === 'chat') showFlag(env.data.status, env.data.reason, env.data.updated_by);
  });
  ctx.api.get('/operator/api/features').then((data) => {
    const f = (data.features || []).find((x) => x.name === 'chat');
    if (f) showFlag(f.flag, f.flag_reason, f.updated_by);
  }).catch(() => { /* the send says it anyway */ });
  loadProviders();
  if (allowed) input.focus();
  return () => { offStatus(); offFlag(); if (running) running.abort(); };
}
