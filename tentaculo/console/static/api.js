// Calls to the gateway's API with the session's token in X-VX11-Token (never in a URL).
// Paths: "/operator/api/status", "/status" and "status" all mean /operator/api/status.

export class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `the gateway answered ${status}`);
    this.name = "ApiError";
    this.status = status;
    this.problem = problem || null;
  }
  get code() { return this.problem ? this.problem.code : undefined; }
}

const ROOTS = ["/operator/", "/v1/", "/health", "/ready", "/metrics"];

export function apiUrl(path) {
  if (ROOTS.some((r) => path.startsWith(r))) return path;
  return "/operator/api/" + path.replace(/^\/+/, "");
}

async function problemOf(response) {
  const type = response.headers.get("Content-Type") || "";
  if (type.includes("json")) {
    try { return await response.json(); } catch { /* fall through */ }
  }
  return { status: response.status, title: response.statusText, detail: `the gateway answered ${response.status}` };
}

function networkError(err) {
  if (err && err.name === "AbortError") return err;
  return new ApiError(0, { code: "network", title: "No answer", detail: "the gateway did not answer; check that it is running" });
}

// getToken() -> the token or null; onUnauthorized(reason) is told of every 401.
// onConfirm(problem) -> Promise<boolean>: asked when the gateway answers 428 confirmation_required
// (a high-risk action); when it resolves true the identical call is repeated once with the
// one-time token and the same correlation id, so both steps share one audit trail. The token is
// only ever held in this call's local variables.
export function createApi({ getToken, onUnauthorized, onConfirm }) {
  async function call(method, path, body, options = {}, confirmation = null) {
    const { signal, accept = "application/json", token } = options;
    const headers = { Accept: accept };
    const secret = token ?? getToken();
    if (secret) headers["X-VX11-Token"] = secret;
    if (confirmation) {
      headers["X-VX11-Confirm"] = confirmation.token;
      headers["X-Correlation-ID"] = confirmation.correlation_id;
    }
    const init = { method, headers, signal, cache: "no-store", credentials: "omit" };
    if (body !== undefined && body !== null) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(apiUrl(path), init);
    } catch (err) {
      throw networkError(err);
    }
    if (!response.ok) {
      const problem = await problemOf(response);
      if (response.status === 428 && problem && problem.code === "confirmation_required" && problem.confirmation
          && !confirmation && onConfirm) {
        const { confirmation: granted, ...asked } = problem;
        if (await onConfirm(asked)) return call(method, path, body, options, granted);
        throw new ApiError(428, { ...asked, code: "confirmation_declined", detail: "not confirmed: nothing was done" });
      }
      if (problem && problem.confirmation) delete problem.confirmation;
      const error = new ApiError(response.status, problem);
      if (response.status === 401 && token === undefined) onUnauthorized(error.message);
      throw error;
    }
    return response;
  }

  async function json(response) {
    if (response.status === 204) return null;
    const text = await response.text();
    return text ? JSON.parse(text) : null;
  }

  return {
    async get(path, options) { return json(await call("GET", path, null, options)); },
    async send(method, path, body, options) { return json(await call(method, path, body, options)); },
    // POST a body and read the answer as Server-Sent Events: yields {event, data, id}.
    async *stream(path, body, { signal } = {}) {
      const response = await call("POST", path, body, { signal, accept: "text/event-stream" });
      if (!(response.headers.get("Content-Type") || "").includes("text/event-stream")) {
        yield { event: "message", data: await json(response), id: null };
        return;
      }
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      try {
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value.replace(/\r\n?/g, "\n");
          let cut;
          while ((cut = buffer.indexOf("\n\n")) >= 0) {
            const parsed = parseRecord(buffer.slice(0, cut));
            buffer = buffer.slice(cut + 2);
            if (parsed) yield parsed;
          }
        }
      } finally {
        reader.cancel().catch(() => {});
      }
    },
  };
}

function parseRecord(block) {
  let event = "message", id = null;
  const data = [];
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") event = value;
    else if (field === "data") data.push(value);
    else if (field === "id") id = value;
  }
  if (!data.length) return null;
  const raw = data.join("\n");
  try { return { event, data: JSON.parse(raw), id }; } catch { return { event, data: raw, id }; }
}
