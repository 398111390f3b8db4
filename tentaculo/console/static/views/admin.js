// Admin: API tokens (list, create with scopes and an optional expiry, revoke) and feature flags
// (turn on or off with a reason; changes from any console arrive as feature_toggle events).
import { badge, fmtDate, gate, h, loadStyles, problemText } from './common.js';

const SCOPES = [
  ['read', 'read: GET calls, events'], ['chat', 'chat'], ['operate', 'operate: non-GET proxied calls'], ['admin', 'admin: flags, tokens'],
];
const UNITS = [['60', 'minutes'], ['3600', 'hours'], ['86400', 'days']];

export function mount(el, ctx) {
  loadStyles('admin');
  const isAdmin = ctx.can('admin');
  let features = [];
  let tokens = [];
  let confirming = null;
  const pending = new Set();  // flags with a change on its way  // the token name whose revocation awaits confirmation

  // ---- feature flags
  const featureNote = h('p', { class: 'note', hidden: true, testid: 'feature-scope' });
  const featureError = h('div', { class: 'alert', role: 'alert', hidden: true, testid: 'feature-error' });
  const featureList = h('div', { class: 'admin-features', testid: 'feature-list' });

  // ---- tokens
  const tokenNote = h('p', { class: 'note', hidden: true, testid: 'token-scope' });
  const name = h('input', { id: 'token-name', testid: 'token-name', required: true, maxlength: 64, autocomplete: 'off',
    pattern: '[A-Za-z0-9][A-Za-z0-9._\\-]{0,63}', placeholder: 'e.g. ops-dashboard' });
  const scopeBoxes = SCOPES.map(([scope]) => h('input', { type: 'checkbox', value: scope, id: `token-scope-${scope}`,
    testid: `token-scope-${scope}`, checked: scope === 'read' }));
  const expiry = h('input', { id: 'token-expiry', testid: 'token-expiry', type: 'number', min: 1, step: 1, placeholder: 'never', inputmode: 'numeric' });
  const unit = h('select', { id: 'token-expiry-unit', 'aria-label': 'Expiry unit' }, UNITS.map(([v, t]) => h('option', { value: v, text: t })));
  unit.value = '86400';
  const create = h('button', { type: 'submit', class: 'primary', testid: 'token-create', text: 'Create token' });
  const createError = h('div', { class: 'alert', role: 'alert', hidden: true, testid: 'token-error' });
  const secretBox = h('div', { class: 'admin-secret', hidden: true, role: 'region', 'aria-label': 'New token secret' });
  const showRevoked = h('input', { type: 'checkbox', id: 'token-show-revoked' });
  const tokenTable = h('div', { class: 'table-wrap' });

  const createForm = h('form', { class: 'admin-create', 'aria-label': 'Create a token' },
    h('div', { class: 'toolbar' },
      h('label', { class: 'field', for: 'token-name' }, 'Name', name),
      h('fieldset', { class: 'admin-scopes' }, h('legend', { text: 'Scopes' }),
        SCOPES.map(([scope, text], i) => h('label', { for: `token-scope-${scope}` }, scopeBoxes[i], ` ${text}`))),
      h('div', { class: 'field' }, h('label', { for: 'token-expiry', text: 'Expires in (empty: never)' }),
        h('span', { class: 'admin-expiry' }, expiry, unit)),
      create),
    createError);

  el.append(h('section', { class: 'vw vw-admin' },
    h('h2', { text: 'Admin' }),
    h('section', { class: 'panel' }, h('h3', { text: 'Feature flags' }),
      h('p', { class: 'muted', text: 'Turning a feature off makes its endpoints answer 503 on every instance within a second. Give a reason: every console shows it.' }),
      featureNote, featureError, featureList),
    h('section', { class: 'panel' }, h('h3', { text: 'API tokens' }), tokenNote, createForm, secretBox,
      h('label', { class: 'admin-revoked', for: 'token-show-revoked' }, showRevoked, ' Show revoked tokens'),
      tokenTable)));

  gate(ctx, 'admin', [name, ...scopeBoxes, expiry, unit, create], tokenNote);
  if (!isAdmin) {
    featureNote.hidden = false;
    featureNote.textContent = `Read only: changing a flag needs the admin scope (signed in as ${ctx.session.name}).`;
  }

  // ---- feature flags
  function featureRow(f) {
    const on = f.flag !== 'off';
    const toggle = h('input', { type: 'checkbox', role: 'switch', id: `feature-${f.name}`, testid: 'feature-toggle',
      'data-name': f.name, 'data-flag': f.flag, checked: on, disabled: !isAdmin,
      title: isAdmin ? '' : 'needs the admin scope', 'aria-describedby': `feature-${f.name}-state` });
    const reason = h('input', { id: `feature-${f.name}-reason`, testid: 'feature-reason', 'data-name': f.name, maxlength: 500,
      placeholder: on ? 'reason for turning it off' : 'reason (optional)', disabled: !isAdmin, autocomplete: 'off' });
    toggle.addEventListener('change', () => setFlag(f, toggle, reason));
    reason.addEventListener('keydown', (e) => {
      if (e.key === 'Enter') { e.preventDefault(); toggle.checked = !toggle.checked; setFlag(f, toggle, reason); }
    });
    let said;
    if (f.flag === 'off') said = `turned off${f.flag_reason ? `: ${f.flag_reason}` : ''}`;
    else if (f.flag === 'degraded') said = `flagged degraded${f.flag_reason ? `: ${f.flag_reason}` : ''}`;
    else if (f.status !== 'on') said = `${f.reason || f.status} (its flag is on)`;
    else said = f.description || '';
    const who = f.updated_by ? ` · by ${f.updated_by}, ${fmtDate(f.updated_at)}` : '';
    return h('div', { class: 'admin-feature', testid: 'feature-row', 'data-name': f.name, 'data-status': f.status },
      h('label', { class: 'admin-switch', for: `feature-${f.name}` }, toggle, h('span', { class: 'admin-feature-name', text: f.name })),
      h('div', { class: 'admin-feature-state', id: `feature-${f.name}-state`, testid: 'feature-state' },
        badge(f.status), ' ', said, h('span', { class: 'muted', text: who })),
      h('label', { class: 'field admin-reason', for: `feature-${f.name}-reason` }, `Reason (${f.name})`, reason));
  }

  function renderFeatures() {
    featureList.replaceChildren(...features.map(featureRow));
  }

  // Replace one flag's row, keeping what the operator was typing there and where the focus was
  // (a change from another console must not wipe a reason being written).
  function renderFeature(f, { used = false } = {}) {
    const old = featureList.querySelector(`[data-testid=feature-row][data-name="${f.name}"]`);
    if (!old) { renderFeatures(); return; }
    const typed = old.querySelector('[data-testid=feature-reason]').value;
    const focused = old.contains(document.activeElement) ? document.activeElement.dataset.testid : null;
    const row = featureRow(f);
    row.querySelector('[data-testid=feature-reason]').value = used ? '' : typed;
    old.replaceWith(row);
    if (focused) row.querySelector(`[data-testid=${focused}]`)?.focus();
  }

  async function setFlag(f, toggle, reasonInput) {
    const status = toggle.checked ? 'on' : 'off';
    const reason = reasonInput.value.trim();
    featureError.hidden = true;
    if (status === 'off' && !reason) {
      toggle.checked = true;
      featureError.textContent = `Say why ${f.name} is being turned off: fill in its reason, then switch it off.`;
      featureError.hidden = false;
      reasonInput.focus();
      return;
    }
    if (pending.has(f.name)) { toggle.checked = !toggle.checked; return; }
    pending.add(f.name);
    try {
      const now = await ctx.api.send('PUT', `/operator/api/features/${encodeURIComponent(f.name)}`, { status, reason: reason || null });
      apply(now, { used: true });
    } catch (err) {
      toggle.checked = f.flag !== 'off';
      featureError.textContent = `Could not change ${f.name}: ${problemText(err)}`;
      featureError.hidden = false;
    } finally {
      pending.delete(f.name);
    }
  }

  function apply(changed, how = {}) {
    const i = features.findIndex((x) => x.name === changed.name);
    if (i >= 0) features[i] = { ...features[i], ...changed }; else features.push(changed);
    renderFeature(features[i >= 0 ? i : features.length - 1], how);
  }

  async function loadFeatures() {
    try {
      features = (await ctx.api.get('/operator/api/features')).features || [];
      renderFeatures();
    } catch (err) {
      featureError.textContent = `Could not read the feature flags: ${problemText(err)}`;
      featureError.hidden = false;
    }
  }

  const offToggle = ctx.stream.on('feature_toggle', (env) => {
    const d = env.data || {};
    const known = features.find((x) => x.name === d.feature);
    if (known && known.updated_at && d.updated_at && Date.parse(known.updated_at) > Date.parse(d.updated_at)) return;  // older than shown
    apply({ name: d.feature, flag: d.status, flag_reason: d.reason ?? null, status: d.effective_status ?? d.status,
      reason: d.effective_reason ?? d.reason ?? null, updated_by: d.updated_by ?? null, updated_at: d.updated_at ?? null });
  });

  // ---- tokens
  function renderTokens() {
    const shown = tokens.filter((t) => showRevoked.checked || !t.revoked_at);
    if (!shown.length) {
      tokenTable.replaceChildren(h('p', { class: 'muted', text: 'No tokens yet (a bootstrap token set by TENTACULO_ADMIN_TOKEN is not listed).' }));
      return;
    }
    const hasExpiry = tokens.some((t) => 'expires_at' in t);
    tokenTable.replaceChildren(h('table', { testid: 'token-table' },
      h('thead', {}, h('tr', {}, ['Name', 'Scopes', 'Created', 'By', ...(hasExpiry ? ['Expires'] : []), 'State', ''].map((c) => h('th', { scope: 'col', text: c })))),
      h('tbody', {}, shown.map((t) => {
        const row = h('tr', { testid: 'token-row', 'data-name': t.name, class: t.revoked_at ? 'revoked' : '' },
          h('td', { class: 'mono', text: t.name }),
          h('td', { text: (t.scopes || []).join(', ') }),
          h('td', { text: fmtDate(t.created_at) }),
          h('td', { text: t.created_by || '' }),
          hasExpiry ? h('td', { text: t.expires_at ? fmtDate(t.expires_at) : 'never' }) : null,
          h('td', {}, t.revoked_at ? badge('off', `revoked ${fmtDate(t.revoked_at)}`) : badge('on', 'active')),
          h('td', { class: 'admin-actions' }, t.revoked_at ? '' : revokeControls(t)));
        return row;
      }))));
  }

  function revokeControls(t) {
    if (confirming !== t.name) {
      return h('button', { type: 'button', class: 'danger', testid: 'token-revoke', 'data-name': t.name, text: 'Revoke',
        'aria-label': `Revoke ${t.name}`, onclick: () => { confirming = t.name; renderTokens(); tokenTable.querySelector('[data-testid=token-revoke-confirm]')?.focus(); } });
    }
    const self = t.name === ctx.session.name ? ' This is the token you are signed in with.' : '';
    return h('span', { class: 'admin-confirm', role: 'group', 'aria-label': `Confirm revoking ${t.name}` },
      `Revoke ${t.name}? Calls with it fail at once.${self} `,
      h('button', { type: 'button', class: 'danger', testid: 'token-revoke-confirm', text: 'Yes, revoke', onclick: () => revoke(t.name) }),
      ' ',
      h('button', { type: 'button', text: 'Cancel', onclick: () => { confirming = null; renderTokens(); } }));
  }

  async function revoke(tokenName) {
    createError.hidden = true;
    try {
      await ctx.api.send('DELETE', `/operator/api/tokens/${encodeURIComponent(tokenName)}`);
    } catch (err) {
      createError.textContent = `Could not revoke ${tokenName}: ${problemText(err)}`;
      createError.hidden = false;
    }
    confirming = null;
    await loadTokens();
  }

  async function loadTokens() {
    if (!isAdmin) { tokenTable.replaceChildren(); return; }
    try {
      tokens = (await ctx.api.get('/operator/api/tokens')).tokens || [];
      renderTokens();
    } catch (err) {
      tokenTable.replaceChildren(h('div', { class: 'alert', role: 'alert', text: `Could not list the tokens: ${problemText(err)}` }));
    }
  }

  function showSecret(created) {
    const value = h('input', { readonly: true, value: created.token, class: 'mono', testid: 'token-secret', id: 'token-secret',
      'aria-label': `Secret of ${created.name}`, onfocus: (e) => e.target.select() });
    const copied = h('span', { class: 'muted', 'aria-live': 'polite' });
    const copy = h('button', { type: 'button', testid: 'token-copy', text: 'Copy' });
    copy.addEventListener('click', async () => {
      try {
        await navigator.clipboard.writeText(created.token);
        copied.textContent = 'Copied.';
      } catch {
        value.select();
        copied.textContent = document.execCommand('copy') ? 'Copied.' : 'Select it and copy it by hand.';
      }
    });
    const done = h('button', { type: 'button', text: "I've stored it", onclick: () => { secretBox.replaceChildren(); secretBox.hidden = true; name.focus(); } });
    secretBox.replaceChildren(
      h('p', { class: 'admin-warning', testid: 'token-warning' },
        h('strong', { text: `Token ${created.name} created (${created.scopes.join(', ')}). ` }),
        'Copy its secret now: it is shown only this once and cannot be shown again.'),
      h('div', { class: 'admin-secret-value' }, value, copy, done, copied));
    secretBox.hidden = false;
    value.focus();
  }

  createForm.addEventListener('submit', async (e) => {
    e.preventDefault();
    createError.hidden = true;
    const scopes = scopeBoxes.filter((b) => b.checked).map((b) => b.value);
    if (!scopes.length) {
      createError.textContent = 'Choose at least one scope.';
      createError.hidden = false;
      return;
    }
    const body = { name: name.value.trim(), scopes };
    if (expiry.value !== '') body.expires_in = Math.round(Number(expiry.value) * Number(unit.value));
    create.disabled = true;
    try {
      const created = await ctx.api.send('POST', '/operator/api/tokens', body);
      name.value = ''; expiry.value = '';
      showSecret(created);
      await loadTokens();
    } catch (err) {
      const fields = err && err.problem && err.problem.errors;
      createError.replaceChildren(`Could not create the token: ${problemText(err)}`,
        fields && fields.length ? h('ul', {}, fields.map((f) => h('li', { text: `${f.field}: ${f.message}` }))) : '');
      createError.hidden = false;
    } finally {
      create.disabled = !isAdmin;
    }
  });
  showRevoked.addEventListener('change', renderTokens);

  loadFeatures();
  loadTokens();
  return () => { offToggle(); secretBox.replaceChildren(); };
}
