// Files: browse the directories under the configured roots (GET /operator/api/fs/list). The path
// is in the URL, /operator/files/<root>/<relative>; no path lists the roots.
import { fmtBytes, fmtDate, followPaths, h, loadStyles, problemText } from './common.js';

function hrefOf(parts) {
  return '/operator/files' + (parts.length ? '/' + parts.map(encodeURIComponent).join('/') : '');
}

export function mount(el, ctx) {
  loadStyles('files');
  return followPaths(el, ctx, 'files', (params, navigate) => build(el, ctx, params, navigate));
}

function build(el, ctx, params, navigate) {
  const parts = params.filter((p) => p !== '');
  let listing = null;
  let alive = true;

  const go = (target) => (e) => { e.preventDefault(); navigate(hrefOf(target)); };
  const crumbs = h('ol', { class: 'files-crumbs' },
    h('li', {}, parts.length
      ? h('a', { href: hrefOf([]), testid: 'files-crumb', onclick: go([]), text: 'Roots' })
      : h('span', { 'aria-current': 'page', testid: 'files-crumb', text: 'Roots' })),
    parts.map((name, i) => h('li', {}, i === parts.length - 1
      ? h('span', { 'aria-current': 'page', testid: 'files-crumb', text: name })
      : h('a', { href: hrefOf(parts.slice(0, i + 1)), testid: 'files-crumb', onclick: go(parts.slice(0, i + 1)), text: name }))));
  const filter = h('input', { id: 'files-filter', type: 'search', placeholder: 'name contains…', autocomplete: 'off' });
  const summary = h('p', { class: 'muted', testid: 'files-summary', 'aria-live': 'polite' });
  const notice = h('p', { class: 'note', hidden: true, testid: 'files-truncated' });
  const error = h('div', { class: 'alert', role: 'alert', hidden: true, testid: 'files-error' });
  const body = h('div', { class: 'table-wrap' });

  el.append(h('section', { class: 'vw vw-files' },
    h('div', { class: 'toolbar' }, h('h2', { text: 'Files' }),
      h('label', { class: 'field', for: 'files-filter' }, 'Filter this directory', filter)),
    h('nav', { 'aria-label': 'Breadcrumb', testid: 'files-breadcrumbs' }, crumbs),
    h('div', { class: 'panel' }, summary, notice, error, body)));

  function typeLabel(e) {
    if (e.type === 'dir') return 'directory';
    if (e.type === 'symlink') return 'symlink';
    return 'file';
  }

  function render() {
    const entries = listing.entries || [];
    const needle = filter.value.trim().toLowerCase();
    const shown = needle ? entries.filter((e) => e.name.toLowerCase().includes(needle)) : entries;
    const atRoots = listing.root === null;
    if (atRoots && !entries.length) {
      summary.textContent = '';
      body.replaceChildren(h('p', { class: 'note', testid: 'files-empty',
        text: 'No roots are configured, so there is nothing to browse. An operator sets them with TENTACULO_FS_ROOTS (name=path,...).' }));
      return;
    }
    summary.textContent = atRoots
      ? `${entries.length} root${entries.length === 1 ? '' : 's'}`
      : `${listing.path}: ${entries.length} entr${entries.length === 1 ? 'y' : 'ies'}${needle ? `, ${shown.length} matching` : ''}`;
    notice.hidden = !listing.truncated;
    notice.textContent = listing.truncated
      ? `Only the first ${entries.length} entries (by name) are listed: the gateway stops there (TENTACULO_FS_LIST_MAX).` : '';
    if (!shown.length) {
      body.replaceChildren(h('p', { class: 'muted', text: entries.length ? 'No entry matches the filter.' : 'This directory is empty.' }));
      return;
    }
    body.replaceChildren(h('table', { testid: 'files-table' },
      h('thead', {}, h('tr', {},
        h('th', { scope: 'col', text: 'Name' }), h('th', { scope: 'col', text: 'Type' }),
        h('th', { scope: 'col', class: 'num', text: 'Size' }), h('th', { scope: 'col', text: 'Modified' }))),
      h('tbody', {}, shown.map((e) => {
        const target = [...parts, e.name];
        const browsable = e.type === 'dir' || e.type === 'symlink';
        const name = browsable
          ? h('a', { href: hrefOf(target), onclick: go(target), class: 'files-dir', text: e.type === 'dir' ? `${e.name}/` : e.name })
          : h('span', { text: e.name });
        const extra = e.error ? ` (${e.error})` : (e.readable === false ? ' (not readable by the gateway)' : '');
        return h('tr', { testid: 'file-entry', 'data-name': e.name, 'data-type': e.type, class: e.readable === false || e.error ? 'files-unreadable' : '' },
          h('td', { class: 'files-name' }, h('span', { class: `files-icon files-icon-${e.type}`, 'aria-hidden': 'true' }), name,
            extra ? h('span', { class: 'muted', text: extra }) : ''),
          h('td', { text: typeLabel(e) }),
          h('td', { class: 'num', text: e.type === 'file' ? fmtBytes(e.size) : '' }),
          h('td', { text: fmtDate(e.modified) }));
      }))));
  }

  async function load() {
    const query = parts.length ? `?path=${encodeURIComponent(parts.join('/'))}` : '';
    try {
      const answer = await ctx.api.get(`/operator/api/fs/list${query}`);
      if (!alive) return;
      listing = answer;
      render();
    } catch (err) {
      if (!alive) return;
      summary.textContent = parts.join('/');
      error.textContent = `Cannot list ${parts.length ? parts.join('/') : 'the roots'}: ${problemText(err)}`;
      error.hidden = false;
    }
  }

  filter.addEventListener('input', () => { if (listing) render(); });
  const offFlag = ctx.stream.on('feature_toggle', (env) => {
    if (env.data && env.data.feature === 'file_explorer') { error.hidden = true; load(); }
  });
  load();
  return () => { alive = false; offFlag(); };
}
