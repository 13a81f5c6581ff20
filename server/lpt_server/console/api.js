// Calls to the lpt-serve HTTP API: the keys, the Authorization header, the error body.
//
// Keys are asked for when the server answers 401 (or 403 to a key that was sent), kept in
// sessionStorage only (this tab, gone when it closes) and sent as `Authorization: Bearer <key>`.
// Reads and classify use the API key (the admin key works there too); writes use the admin key.
// URLs are relative to the page, so the console works under a path prefix too.

const STORE = { api: "lpt.apiKey", admin: "lpt.adminKey" };

export function getKey(kind) {
  return sessionStorage.getItem(STORE[kind]) || "";
}

export function setKey(kind, value) {
  if (value) sessionStorage.setItem(STORE[kind], value);
  else sessionStorage.removeItem(STORE[kind]);
}

/** An error answer, with the server's own words (`{"error": {"type", "message"}}`). */
export class ApiError extends Error {
  constructor(status, type, message) {
    super(message);
    this.status = status;
    this.type = type;
  }
  toString() {
    return this.status ? `${this.status}: ${this.message}` : this.message;
  }
}

/** fetch(), with "no answer" (a restart, a dropped connection) as an ApiError of status 0 in
 * words a user can act on, not the browser's "TypeError: Failed to fetch". With onProgress, the
 * request goes by XMLHttpRequest (fetch cannot report how much of a body has gone out). */
async function reach(path, init, onProgress) {
  try {
    return await (onProgress ? sendWithProgress(path, init, onProgress) : fetch(path, init));
  } catch (_) {
    throw new ApiError(0, "network", "No answer from the server: it may be restarting, or the network is down. Try again in a moment.");
  }
}

/** A request whose body's progress is reported as onProgress(sent bytes, total bytes); the answer
 * as a fetch Response. */
function sendWithProgress(path, { method, headers, body }, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open(method, path);
    for (const [name, value] of Object.entries(headers)) xhr.setRequestHeader(name, value);
    xhr.responseType = "blob";
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) onProgress(e.loaded, e.total); };
    xhr.onload = () => {
      if (!xhr.status) return reject(new TypeError("no answer"));
      const empty = [204, 205, 304].includes(xhr.status);       // a Response that may hold no body
      try {
        resolve(new Response(empty ? null : xhr.response, { status: xhr.status, statusText: xhr.statusText }));
      } catch (_) {                                             // a status a Response cannot hold (600+)
        resolve(new Response(null, { status: 502, statusText: `status ${xhr.status} from the server` }));
      }
    };
    xhr.onerror = xhr.ontimeout = xhr.onabort = () => reject(new TypeError("no answer"));
    xhr.send(body);
  });
}

async function errorOf(response) {
  let type = "http", message = response.statusText || "request failed";
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) ({ type, message } = body.error);
  } catch (_) { /* not JSON: a proxy's page; keep the status text */ }
  return new ApiError(response.status, type, message);
}

let askForKeys = async () => false;   // set by the page: shows the key dialog, true if a key was entered

export function onKeyNeeded(handler) {
  askForKeys = handler;
}

/**
 * fetch() a path of the API and return its JSON (null for 204). Throws ApiError.
 * options: method, json (a body to send as JSON), body (sent as is), headers, admin (use the admin key),
 * ask (default true; false for reads in the background: a 401 is thrown, no dialog opens),
 * onProgress (called with (sent, total) bytes as the body goes out, and with null while a key is
 * asked for before the body goes again: for uploads).
 */
export async function api(path, options = {}) {
  const { method = "GET", json, admin = false, ask = true, onProgress } = options;
  for (let attempt = 0; ; attempt++) {
    const key = admin ? getKey("admin") : getKey("api") || getKey("admin");
    const headers = { ...(options.headers || {}) };
    if (key) headers.Authorization = `Bearer ${key}`;
    let body = options.body;
    if (json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(json);
    }
    const response = await reach(path, { method, headers, body }, onProgress);
    if (response.ok) return response.status === 204 ? null : response.json();
    const error = await errorOf(response);
    // 401: no key or a wrong API key; 403: a wrong admin key, unless the server has writes
    // disabled ("writes_disabled"): then no key helps, and the message says so.
    const keyProblem = error.status === 401 || (error.status === 403 && admin && error.type !== "writes_disabled");
    if (keyProblem && ask && attempt === 0) {
      if (onProgress) onProgress(null);          // the body went up for nothing: no "checking" while asked
      if (await askForKeys(admin ? "admin" : "api", error.message)) continue;
    }
    throw error;
  }
}

let settings = null;

/** The server's settings as GET /info shows them (its limits), read once; null if it cannot be read. */
export async function serverSettings() {
  if (!settings) settings = api("info", { ask: false }).then((info) => info.settings, () => null);
  const out = await settings;
  if (out === null) settings = null;      // not cached: asked again next time
  return out;
}

/** The body of a plain-text endpoint (/metrics), with the same error handling. */
export async function text(path) {
  const response = await reach(path);
  if (!response.ok) throw await errorOf(response);
  return response.text();
}

/** GET a probe (/ready) whose non-2xx answer is itself the information: [ok, body]. */
export async function probe(path) {
  const response = await fetch(path);
  let body = null;
  try { body = await response.json(); } catch (_) { /* empty */ }
  return [response.ok, body];
}
