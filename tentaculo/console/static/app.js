// The console shell: sign-in, navigation, the router, and the session's one event stream.
import { ApiError, createApi } from "./api.js";
import { EventStream } from "./stream.js";
import { h } from "./ui.js";

const TOKEN_KEY = "vx11.token";
const REASON_KEY = "vx11.signin-reason";
const BASE = "/operator";
// A view opens for a token holding any of its scopes; inside, a view disables (with the reason)
// the controls the token's scopes do not allow, e.g. sending a chat without the chat scope.
const VIEWS = [
  { name: "overview", label: "Overview", scopes: ["read"] },
  { name: "modules", label: "Modules", scopes: ["read"] },
  { name: "events", label: "Events", scopes: ["read"] },
  { name: "metrics", label: "Metrics", scopes: ["read"] },
  { name: "chat", label: "Chat", scopes: ["chat", "read"] },
  { name: "trace", label: "Trace", scopes: ["read"] },
  { name: "files", label: "Files", scopes: ["read"] },
  { name: "admin", label: "Admin", scopes: ["admin"] },
];
const opens = (view, scopes) => view.scopes.some((s) => scopes.includes(s));
const needs = (view) => `needs the ${view.scopes.join(" or ")} scope`;
const STATE_TEXT = { open: "live", connecting: "connecting…", lost: "stream lost, reconnecting" };

const root = document.getElementById("app");
let session = null; // {name, scopes, stream, main, cleanup, routeSeq}

const token = () => sessionStorage.getItem(TOKEN_KEY);

const api = createApi({
  getToken: token,
  onUnauthorized: (reason) => signOut(`Signed out: ${reason}`),
  onConfirm: askConfirmation,
});

// A high-risk action (428 confirmation_required) waits for the operator: a dialog names the
// action and its risk; only "Confirm" repeats the call. The token never reaches the page.
function askConfirmation(problem) {
  return new Promise((resolve) => {
    const action = problem.action || {};
    const confirm = h("button", { type: "button", class: "danger", "data-testid": "confirm-dialog-confirm" }, "Confirm");
    const cancel = h("button", { type: "button", "data-testid": "confirm-dialog-cancel" }, "Cancel");
    const dialog = h("dialog", { class: "confirm-dialog", "data-testid": "confirm-dialog",
      "aria-labelledby": "confirm-dialog-title", "aria-describedby": "confirm-dialog-text" },
      h("h2", { id: "confirm-dialog-title" }, `Confirm a ${problem.risk || "high"}-risk action`),
      h("p", { id: "confirm-dialog-text" },
        h("code", { "data-testid": "confirm-dialog-action" }, `${action.method || ""} ${action.path || ""}`.trim()),
        " is ", h("strong", { "data-testid": "confirm-dialog-risk" }, `${problem.risk || "high"} risk`),
        problem.reason ? `: ${problem.reason}.` : "."),
      h("div", { class: "confirm-dialog-buttons" }, cancel, " ", confirm));
    const finish = (answer) => { dialog.close(); dialog.remove(); resolve(answer); };
    confirm.addEventListener("click", () => finish(true));
    cancel.addEventListener("click", () => finish(false));
    dialog.addEventListener("cancel", (event) => { event.preventDefault(); finish(false); });
    document.body.append(dialog);
    dialog.showModal();
    cancel.focus();
  });
}

// ---- sign-in -------------------------------------------------------------------------------

function showSignIn(message) {
  const error = h("p", { class: "login-error", role: "alert", "data-testid": "login-error", id: "login-error" });
  if (message) error.textContent = message;
  const input = h("input", {
    id: "login-token", type: "password", name: "token", autocomplete: "off", spellcheck: "false",
    required: true, "data-testid": "login-token", "aria-describedby": "login-help login-error",
  });
  const submit = h("button", { type: "submit", "data-testid": "login-submit" }, "Sign in");
  const form = h("form", { class: "login", "aria-labelledby": "login-title" },
    h("h1", { id: "login-title" }, "tentaculo operator console"),
    h("label", { for: "login-token" }, "Operator token"),
    input,
    h("p", { class: "hint", id: "login-help" },
      "Paste a token once. It is kept in this tab only and sent in the X-VX11-Token header."),
    submit,
    error,
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const candidate = input.value.trim();
    if (!candidate) { error.textContent = "Paste a token first."; return; }
    submit.disabled = true;
    error.textContent = "";
    try {
      const who = await api.get("/operator/api/whoami", { token: candidate });
      sessionStorage.setItem(TOKEN_KEY, candidate);
      sessionStorage.removeItem(REASON_KEY);
      startSession(who);
    } catch (err) {
      error.textContent = err instanceof ApiError ? `Sign-in refused: ${err.message}` : `Sign-in failed: ${err}`;
      submit.disabled = false;
      input.select();
    }
  });
  root.replaceChildren(h("main", { class: "login-page" }, form));
  document.title = "Sign in · tentaculo console";
  input.focus();
}

function signOut(reason) {
  if (session) {
    session.stream.stop();
    runCleanup();
    session = null;
  }
  sessionStorage.removeItem(TOKEN_KEY);
  if (reason) sessionStorage.setItem(REASON_KEY, reason);
  else sessionStorage.removeItem(REASON_KEY);
  showSignIn(reason);
}

// ---- the shell -----------------------------------------------------------------------------

const can = (scope) => !!session && session.scopes.includes(scope);

function startSession(who) {
  const stream = new EventStream(api, { onRevoked: (reason) => signOut(`Signed out: ${reason}`) });
  const main = h("main", { id: "main", class: "view", tabindex: "-1" });
  const state = h("span", { class: "stream-state", "data-testid": "stream-state", role: "status" });
  const nav = h("nav", { class: "nav", "aria-label": "Views" },
    h("ul", {}, VIEWS.map((v) => h("li", {}, navItem(v, who.scopes)))));
  const header = h("header", { class: "top" },
    h("a", { class: "brand", href: BASE + "/" }, "tentaculo"),
    nav,
    h("div", { class: "session" },
      state,
      h("span", { class: "who", title: "scopes: " + who.scopes.join(", ") },
        who.name, h("small", {}, " · " + who.scopes.join(", "))),
      h("button", { type: "button", class: "secondary", "data-testid": "logout",
        onclick: () => signOut("You signed out.") }, "Sign out")),
  );
  root.replaceChildren(h("a", { class: "skip", href: "#main" }, "Skip to content"), header, main);
  session = { name: who.name, scopes: who.scopes, stream, main, nav, cleanup: null, leave: null, routeSeq: 0 };
  const showState = (s) => {
    state.dataset.state = s;
    state.textContent = stream.reason ? "no live events" : STATE_TEXT[s] || s;
    state.title = stream.reason || (s === "lost" ? "The live event stream dropped; reconnecting with backoff"
      : "Live event stream");
  };
  showState(stream.state);
  stream.on("state", showState);
  stream.start();
  route();
}

function navItem(view, scopes) {
  const href = view.name === "overview" ? BASE + "/" : `${BASE}/${view.name}`;
  const attrs = { href, "data-testid": "nav-" + view.name, "data-view": view.name };
  if (!opens(view, scopes)) {
    const reason = needs(view);
    return h("a", { ...attrs, href: null, role: "link", tabindex: "0", "aria-disabled": "true",
      class: "disabled", title: reason, "aria-describedby": `why-${view.name}` },
    view.label, h("small", { id: `why-${view.name}`, class: "why" }, reason));
  }
  return h("a", attrs, view.label);
}

function runCleanup() {
  if (!session) return;
  const { cleanup, leave } = session;
  session.cleanup = null;
  session.leave = null;
  if (typeof cleanup === "function") {
    try { cleanup(); } catch (err) { console.error("view cleanup failed", err); }
  }
  if (leave) leave();
}

// What a view gets of the stream: its subscriptions end when the view is left, whatever it forgets.
function viewStream(stream) {
  const offs = new Set();
  return {
    facade: {
      get state() { return stream.state; },
      on(type, handler) {
        const off = stream.on(type, handler);
        offs.add(off);
        return () => { offs.delete(off); off(); };
      },
    },
    close() { for (const off of offs) off(); offs.clear(); },
  };
}

function parseLocation() {
  let rest = location.pathname.startsWith(BASE + "/") ? location.pathname.slice(BASE.length + 1) : "";
  const segments = rest.split("/").filter(Boolean).map((s) => {
    try { return decodeURIComponent(s); } catch { return s; }
  });
  return { name: segments[0] || "overview", params: segments.slice(1), query: new URLSearchParams(location.search) };
}

export function navigate(path, { replace = false } = {}) {
  const target = path.startsWith(BASE + "/") || path === BASE ? path : BASE + (path.startsWith("/") ? "" : "/") + path;
  if (target !== location.pathname + location.search) history[replace ? "replaceState" : "pushState"](null, "", target);
  route();
}

function message(title, text) {
  return h("section", { class: "unavailable" }, h("h1", {}, title), h("p", {}, text));
}

async function route() {
  if (!session) return;
  const seq = ++session.routeSeq;
  const { name, params, query } = parseLocation();
  const view = VIEWS.find((v) => v.name === name);
  runCleanup();
  for (const a of session.nav.querySelectorAll("a[data-view]")) {
    if (a.dataset.view === name) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const main = session.main;
  main.replaceChildren();
  main.dataset.view = name;
  document.title = `${view ? view.label : "Not found"} · tentaculo console`;
  if (!view) {
    main.append(message("No such view", `There is no view called “${name}”.`));
    return;
  }
  if (!opens(view, session.scopes)) {
    // Reached by its address: the navigation keeps it disabled, but what the token may read is
    // still shown, read-only (the view disables what it cannot do, and says why).
    main.append(h("p", { class: "scope-note", role: "note", "data-testid": "scope-note" },
      `${view.label} ${needs(view)}; your token has ${session.scopes.join(", ")}, so what it shows is read-only.`));
  }
  let module;
  try {
    module = await import(`./views/${name}.js`);
  } catch (err) {
    if (seq !== session?.routeSeq) return;
    console.warn(`view ${name} could not be loaded`, err);
    main.append(message(view.label, "This view is not available in this build of the console."));
    return;
  }
  if (!session || seq !== session.routeSeq) return;
  const el = h("div", { class: "view-body" });
  main.append(el);
  const scoped = viewStream(session.stream);
  const left = new AbortController();
  session.leave = () => { scoped.close(); left.abort(); };
  const ctx = {
    api, stream: scoped.facade, session: { name: session.name, scopes: [...session.scopes] },
    can, navigate, params, query, signal: left.signal,
  };
  try {
    session.cleanup = module.mount(el, ctx) || null;
  } catch (err) {
    console.error(`view ${name} failed`, err);
    el.replaceChildren(message(view.label, `This view failed to start: ${err.message || err}`));
  }
}

// Same-origin links to console addresses navigate without reloading the page.
document.addEventListener("click", (e) => {
  if (e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
  const a = e.target.closest && e.target.closest("a");
  if (!a) return;
  if (a.getAttribute("aria-disabled") === "true") { e.preventDefault(); return; }
  const href = a.getAttribute("href");
  if (!href || a.target || a.hasAttribute("download") || !session) return;
  const url = new URL(href, location.href);
  if (url.origin !== location.origin || !url.pathname.startsWith(BASE + "/") || url.pathname.startsWith(BASE + "/api/")
      || url.pathname.startsWith(BASE + "/static/")) return;
  if (url.hash && url.pathname === location.pathname) return;
  e.preventDefault();
  navigate(url.pathname + url.search);
  session?.main.focus({ preventScroll: true });
});
window.addEventListener("popstate", () => route());

async function boot() {
  const saved = token();
  if (!saved) { showSignIn(sessionStorage.getItem(REASON_KEY)); return; }
  try {
    startSession(await api.get("/operator/api/whoami"));
  } catch (err) {
    // A 401 has already brought the sign-in form back with its reason.
    if (err.status !== 401) showSignIn(`The gateway could not confirm your token: ${err.message}`);
  }
}

boot();
