// The HTTP side of the playground: JSON calls with the tab's API key, errors as the server sent
// them, and a server-sent-events reader for streamed chat completions.

const KEY = "vlmserve.apiKey";

export function apiKey() {
  return sessionStorage.getItem(KEY) || "";
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY, key);
  else sessionStorage.removeItem(KEY);
}

export class ApiError extends Error {
  constructor(status, body) {
    const err = body?.error ?? {};
    super(err.message || `HTTP ${status}`);
    this.status = status;
    this.type = err.type || "";
    this.code = err.code || "";
    this.param = err.param ?? null;
  }
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = apiKey();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

// fetch() itself fails (TypeError) only when no HTTP answer came at all.
async function request(path, init) {
  try {
    return await fetch(path, init);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, { error: { message: "The server did not answer: is vlmserve still running?" } });
  }
}

async function failure(resp) {
  let body = null;
  try { body = await resp.json(); } catch { /* not JSON: the status says it */ }
  return new ApiError(resp.status, body);
}

export async function getJson(path) {
  const resp = await request(path, { headers: headers() });
  if (!resp.ok) throw await failure(resp);
  return resp.json();
}

export async function postJson(path, body, signal) {
  const resp = await request(path, { method: "POST", headers: headers(), body: JSON.stringify(body), signal });
  if (!resp.ok) throw await failure(resp);
  return resp.json();
}

// POST a streaming chat request; calls onChunk(obj) for each SSE data object until [DONE].
// Aborting `signal` closes the connection, which makes the server abort the generation.
export async function streamChat(body, signal, onChunk) {
  const resp = await request("/v1/chat/completions", { method: "POST", headers: headers(), body: JSON.stringify(body), signal });
  if (!resp.ok) throw await failure(resp);
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = frame.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
      if (!data) continue; // keep-alive comment
      if (data === "[DONE]") return;
      const obj = JSON.parse(data);
      if (obj.error) throw new ApiError(500, obj);
      onChunk(obj);
    }
  }
}
