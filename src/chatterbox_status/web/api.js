// The server's HTTP API, as the dashboard uses it.
//
// Paths are relative ("status/stream", never "/status/stream"): by default they resolve
// against the page's own directory, so the dashboard works at the server's root and
// behind a proxy that serves it under a prefix. ?api=URL (or data-api-base on <html>)
// points it at an API elsewhere; that server's CORS_ORIGINS must allow this page.

export class ApiError extends Error {
  constructor(status, message, code = null) {
    super(message);
    this.status = status;
    this.code = code;
  }

  // The server's {"error": {"message", "code"}} body, or the bare HTTP status.
  static async from(response) {
    let message = `${response.status} ${response.statusText}`.trim();
    let code = null;
    try {
      const body = await response.json();
      message = body?.error?.message || message;
      code = body?.error?.code ?? null;
    } catch {
      // not JSON: keep the HTTP status line
    }
    return new ApiError(response.status, message, code);
  }
}

// The API base as an absolute URL, or null for "the page's own directory".
export function apiBaseFrom(search, dataValue, documentUrl) {
  const raw = new URLSearchParams(search).get("api") || dataValue || "";
  if (!raw) return null;
  let url;
  try {
    url = new URL(raw, documentUrl);
  } catch {
    throw new Error(`api base ${JSON.stringify(raw)} is not a URL`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new Error(`api base ${JSON.stringify(raw)} must be an http or https URL`);
  }
  if (!url.pathname.endsWith("/")) url.pathname += "/";
  url.search = "";
  url.hash = "";
  return url.href;
}

// Whether the API key may go to `base`: always to the page's own origin; to another one
// (a link's ?api= can point anywhere) only when `ask(origin)` says yes.
export function keyMayGo(base, pageOrigin, ask) {
  if (!base) return true;
  const origin = new URL(base).origin;
  return origin === pageOrigin || Boolean(ask(origin));
}

export class Api {
  constructor(base = null, key = "") {
    this.base = base;
    this.key = key; // API_KEY, when the server wants one
  }

  url(path) {
    return this.base ? new URL(path, this.base).href : path;
  }

  headers(extra = {}) {
    return this.key ? { ...extra, Authorization: `Bearer ${this.key}` } : extra;
  }

  // The JSON body; an error status throws, unless `accept` lists it (/health's 503).
  async json(path, { accept = [] } = {}) {
    const response = await fetch(this.url(path), { headers: this.headers({ Accept: "application/json" }) });
    if (!response.ok && !accept.includes(response.status)) throw await ApiError.from(response);
    return response.json();
  }

  // The whole audio file for one request, under the id we chose (so its events are ours).
  async synthesize(requestId, body) {
    const response = await fetch(this.url("v1/audio/speech"), {
      method: "POST",
      headers: this.headers({ "Content-Type": "application/json", "X-Request-ID": requestId }),
      body: JSON.stringify(body),
    });
    if (!response.ok) throw await ApiError.from(response);
    return response.blob();
  }

  async cancel(requestId) {
    const response = await fetch(this.url(`v1/audio/speech/${encodeURIComponent(requestId)}`), {
      method: "DELETE",
      headers: this.headers(),
    });
    if (!response.ok) throw await ApiError.from(response);
    return response.json();
  }

  // EventSource cannot send headers: the key goes in the query, as the server allows.
  events() {
    const query = this.key ? `?api_key=${encodeURIComponent(this.key)}` : "";
    return new EventSource(this.url(`status/stream${query}`));
  }
}

// A request id of our own: 8-64 characters of [A-Za-z0-9._-], as X-Request-ID wants.
export function newRequestId() {
  const bytes = crypto.getRandomValues(new Uint8Array(6));
  return "web-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}
