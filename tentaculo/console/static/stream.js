// The console's one live event stream: an EventSource opened with a short-lived ticket.
// On a drop it reports "lost", then reconnects with backoff, a fresh ticket and the last id.

const TYPES = ["service_status", "feature_toggle", "provider_status", "chat", "metrics", "reset"];
const FIRST_DELAY = 1000, MAX_DELAY = 30000, STEADY_MS = 10000;

export class EventStream {
  // api: from createApi; onRevoked(reason): the token can no longer be used.
  constructor(api, { onRevoked }) {
    this.api = api;
    this.onRevoked = onRevoked;
    this.state = "connecting";
    this.lastId = null;
    this.listeners = new Map();
    this.source = null;
    this.timer = null;
    this.delay = FIRST_DELAY;
    this.openedAt = 0;
    this.stopped = false;
    this.reason = null; // set when the stream is refused for good
    this.onOnline = () => { if (this.state === "lost") this.reconnectNow(); };
  }

  on(type, handler) {
    if (!this.listeners.has(type)) this.listeners.set(type, new Set());
    this.listeners.get(type).add(handler);
    return () => this.listeners.get(type)?.delete(handler);
  }

  emit(type, payload) {
    for (const key of [type, type === "state" ? null : "*"]) {
      if (key === null) continue;
      for (const fn of [...(this.listeners.get(key) || [])]) {
        try { fn(payload); } catch (err) { console.error("event listener failed", err); }
      }
    }
  }

  setState(state) {
    if (state === this.state) return;
    this.state = state;
    this.emit("state", state);
  }

  start() {
    window.addEventListener("online", this.onOnline);
    this.connect();
  }

  stop() {
    this.stopped = true;
    window.removeEventListener("online", this.onOnline);
    clearTimeout(this.timer);
    if (this.source) this.source.close();
    this.source = null;
    this.listeners.clear();
  }

  async connect() {
    if (this.stopped) return;
    this.setState("connecting");
    let ticket;
    try {
      ({ ticket } = await this.api.send("POST", "/operator/api/events/ticket"));
    } catch (err) {
      if (err.status === 401) return; // the api has already sent the operator back to sign-in
      if (err.status === 403) { // this token may not read events: trying again will not help
        this.reason = err.message;
        this.setState("lost");
        return;
      }
      this.lose();
      return;
    }
    if (this.stopped) return;
    const query = new URLSearchParams({ ticket });
    if (this.lastId) query.set("last_event_id", this.lastId);
    const source = new EventSource("/operator/api/events?" + query);
    this.source = source;
    source.onopen = () => {
      this.openedAt = Date.now();
      this.setState("open");
    };
    const deliver = (e) => {
      if (e.lastEventId) this.lastId = e.lastEventId;
      let envelope;
      try { envelope = JSON.parse(e.data); } catch { return; }
      this.emit(envelope.type || e.type, envelope);
    };
    for (const type of TYPES) source.addEventListener(type, deliver);
    source.addEventListener("message", deliver);
    source.addEventListener("error", (e) => {
      if (source !== this.source) return;
      if (e.data) {
        let problem = null;
        try { problem = JSON.parse(e.data).data; } catch { /* not a problem object */ }
        if (problem && problem.code === "invalid_token") {
          this.stopped = true;
          source.close();
          this.onRevoked(problem.detail || "the token was revoked");
          return;
        }
      }
      this.lose();
    });
  }

  lose() {
    if (this.stopped) return;
    if (this.source) this.source.close();
    this.source = null;
    if (this.openedAt && Date.now() - this.openedAt > STEADY_MS) this.delay = FIRST_DELAY;
    this.openedAt = 0;
    this.setState("lost");
    const wait = this.delay * (0.5 + Math.random());
    this.delay = Math.min(this.delay * 2, MAX_DELAY);
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.connect(), wait);
  }

  reconnectNow() {
    clearTimeout(this.timer);
    this.connect();
  }
}
