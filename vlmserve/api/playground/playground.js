// vlmserve playground: wiring of the page (models, composer, settings, sending, stop, edit, code).

import { ApiError, apiKey, getJson, postJson, setApiKey, streamChat } from "./api.js";
import { Attachments } from "./attachments.js";
import { curlSnippet, pythonSnippet } from "./codegen.js";
import { checkJson, renderAssistant, settleToolCalls, renderTool, renderUser, showError, showStats, toolResultForm, toWire, updateAssistant, userContent } from "./turns.js";

const $ = (id) => document.getElementById(id);

const DEFAULT_SCHEMA = {
  type: "object",
  properties: {
    subject: { type: "string", maxLength: 40 },
    colors: { type: "array", items: { enum: ["red", "green", "blue", "other"] }, maxItems: 3 },
    outdoors: { type: "boolean" },
  },
  required: ["subject", "colors", "outdoors"],
  additionalProperties: false,
};
const DEFAULT_TOOLS = [
  {
    type: "function",
    function: {
      name: "get_weather",
      description: "Current weather for a city",
      parameters: {
        type: "object",
        properties: { city: { type: "string", maxLength: 20 }, unit: { enum: ["celsius", "fahrenheit"] } },
        required: ["city", "unit"],
        additionalProperties: false,
      },
    },
  },
];

const state = {
  models: [],
  entries: [],
  running: null, // { controller, entry } while a generation streams
};

const attachments = new Attachments($("attachments"), $("attachment-template"), {
  model: () => currentModel(),
  onChange: () => scheduleDraftCost(),
});

function currentModel() {
  return state.models.find((m) => m.id === $("model").value);
}

// ---- models and API key -------------------------------------------------------------------

async function loadModels() {
  try {
    const list = await getJson("/v1/models");
    state.models = list.data;
    if (apiKey()) $("key-note").textContent = "Key accepted. Kept in this tab only (session storage).";
  } catch (err) {
    if (err.status === 401) showKeyBar(err.message);
    $("model-limits").textContent = err.message;
    return;
  }
  const select = $("model");
  const previous = select.value || sessionStorage.getItem("vlmserve.model");
  select.replaceChildren(...state.models.map((m) => new Option(m.id, m.id)));
  if (state.models.some((m) => m.id === previous)) select.value = previous;
  showLimits();
}

function showLimits() {
  const m = currentModel();
  if (!m) return;
  const video = m.input_modalities.includes("video");
  $("model-limits").textContent = `context ${m.context_window.toLocaleString()} tokens · up to ${m.max_images} images · ${video ? "video ✓" : "no video"}`;
  $("file-input").accept = ["image/png", "image/jpeg", "image/gif", "image/webp", ...(video ? ["video/*"] : [])].join(",");
  sessionStorage.setItem("vlmserve.model", m.id);
}

function showKeyBar(message) {
  $("key-bar").hidden = false;
  $("show-key").setAttribute("aria-expanded", "true");
  if (message) $("key-note").textContent = `${message} Kept in this tab only (session storage).`;
  $("api-key").focus();
}

// ---- the draft's cost ---------------------------------------------------------------------

let costTimer = 0;
let costSeq = 0;
function scheduleDraftCost() {
  clearTimeout(costTimer);
  costTimer = setTimeout(draftCost, 300);
}

async function draftCost() {
  const model = currentModel();
  const out = $("draft-cost");
  const seq = ++costSeq;
  const draft = $("prompt").value.trim();
  const atts = attachments.items.filter((a) => a.url && a.state !== "error");
  const messages = toWire(state.entries, $("system").value.trim());
  if (draft || atts.length) messages.push({ role: "user", content: userContent(draft, atts) });
  if (!model || !messages.length || attachments.pending) { out.textContent = attachments.pending ? "measuring attachments…" : ""; return; }
  const images = messages.flatMap((m) => (Array.isArray(m.content) ? m.content : [])).filter((p) => p.type === "image_url").length;
  try {
    let body;
    try { body = buildRequest(messages); } catch { body = { model: model.id, messages }; } // tools count too
    const counted = await postJson("/v1/token/count", body);
    if (seq !== costSeq) return;
    const d = counted.data;
    const media = [d.image_tokens ? `${d.image_tokens.toLocaleString()} for images` : "", d.video_tokens ? `${d.video_tokens.toLocaleString()} for video` : ""].filter(Boolean).join(", ");
    const what = draft || atts.length ? "With this message" : "Conversation so far";
    out.textContent = `${what}: ${d.total_tokens.toLocaleString()} prompt tokens${media ? ` (${media})` : ""} of ${model.context_window.toLocaleString()} · ${images}/${model.max_images} images`;
    out.classList.remove("bad");
  } catch (err) {
    if (seq !== costSeq) return;
    out.textContent = `Next request would fail: ${err.message}`;
    out.classList.add("bad");
  }
}

// ---- settings -------------------------------------------------------------------------------

function numberField(id) {
  const raw = $(id).value.trim();
  return raw === "" ? undefined : Number(raw);
}

function parseJsonField(id, statusId, check) {
  const status = $(statusId);
  try {
    const value = JSON.parse($(id).value);
    const problem = check(value);
    status.textContent = problem || "✓ valid";
    status.className = `field-status ${problem ? "bad" : "good"}`;
    return problem ? undefined : value;
  } catch (err) {
    status.textContent = `✗ ${err.message}`;
    status.className = "field-status bad";
    return undefined;
  }
}

function responseFormat() {
  const type = document.querySelector('input[name="format"]:checked').value;
  if (type === "text") return undefined;
  if (type === "json_object") return { type };
  const schema = parseJsonField("schema", "schema-status", (v) => (v && typeof v === "object" && !Array.isArray(v) ? "" : "a schema is a JSON object"));
  if (!schema) throw new ApiError(0, { error: { message: "Fix the JSON schema first (JSON mode panel)." } });
  return { type, json_schema: { name: $("schema-name").value.trim() || "answer", schema, strict: $("schema-strict").checked } };
}

function toolSettings() {
  const choice = $("tool-choice").value;
  if (choice === "off") return {};
  const tools = parseJsonField("tools", "tools-status", (v) => (Array.isArray(v) ? "" : "tools are a JSON array"));
  if (!tools) throw new ApiError(0, { error: { message: "Fix the tool definitions first (Tools panel)." } });
  const settings = { tools, tool_choice: choice };
  if (!$("parallel-calls").checked) settings.parallel_tool_calls = false;
  return settings;
}

function buildRequest(messages) {
  const model = currentModel();
  const body = { model: model ? model.id : $("model").value, messages };
  for (const key of ["temperature", "top_p", "max_tokens", "seed", "n"]) {
    const value = numberField(key);
    if (value !== undefined && !Number.isNaN(value)) body[key] = value;
  }
  const format = responseFormat();
  if (format) body.response_format = format;
  Object.assign(body, toolSettings());
  return body;
}

// ---- sending --------------------------------------------------------------------------------

function append(node) {
  $("empty")?.remove();
  $("log").append(node);
  node.scrollIntoView({ block: "end", behavior: "smooth" });
}

function setRunning(running) {
  $("send").hidden = running;
  $("stop").hidden = !running;
  if (running) $("stop").focus(); else if (document.activeElement === $("stop") || document.activeElement === document.body) $("prompt").focus();
  refreshEdit();
}

function refreshEdit() {
  const users = state.entries.filter((e) => e.role === "user");
  for (const e of users) e.editButton.hidden = true;
  const last = users[users.length - 1];
  if (last && !state.running) last.editButton.hidden = false;
}

async function send() {
  if (state.running) return;
  const text = $("prompt").value.trim();
  if (!text && !attachments.items.length) { $("prompt").focus(); return; }
  const entry = { role: "user", text, attachments: attachments.take() };
  $("prompt").value = "";
  state.entries.push(entry);
  append(renderUser(entry));
  entry.editButton.addEventListener("click", () => editLast(entry));
  await generate(entry);
}

async function generate(trigger) {
  let body;
  try {
    body = { ...buildRequest(toWire(state.entries, $("system").value.trim())), stream: true, stream_options: { include_usage: true } };
  } catch (err) {
    failTurn(trigger, null, err);
    return;
  }
  const entry = { role: "assistant", model: body.model, n: body.n || 1, choices: [], usage: null, format: body.response_format };
  state.entries.push(entry);
  append(renderAssistant(entry));
  const controller = new AbortController();
  state.running = { controller, entry };
  setRunning(true);
  const started = performance.now();
  let firstAt = 0;
  let frame = 0;
  const paint = () => { frame = 0; updateAssistant(entry); };
  try {
    await streamChat(body, controller.signal, (chunk) => {
      if (chunk.usage) entry.usage = chunk.usage; // the final usage chunk, or running totals
      for (const c of chunk.choices || []) {
        const choice = (entry.choices[c.index] ||= { content: "", tool_calls: [], finish: null });
        const delta = c.delta || {};
        if (delta.content) choice.content += delta.content;
        for (const piece of delta.tool_calls || []) {
          const call = (choice.tool_calls[piece.index ?? choice.tool_calls.length] ||= { id: "", name: "", arguments: "" });
          if (piece.id) call.id = piece.id;
          if (piece.function?.name) call.name = piece.function.name;
          if (piece.function?.arguments) call.arguments += piece.function.arguments;
        }
        if (!firstAt && (delta.content || delta.tool_calls)) firstAt = performance.now();
        if (c.finish_reason) choice.finish = c.finish_reason;
      }
      if (!frame) frame = requestAnimationFrame(paint);
    });
  } catch (err) {
    if (err.name === "AbortError") entry.stopped = true;
    else { state.running = null; failTurn(trigger, entry, err); setRunning(false); return; }
  } finally {
    cancelAnimationFrame(frame);
  }
  state.running = null;
  finish(entry, started, firstAt);
  setRunning(false);
}

function finish(entry, started, firstAt) {
  entry.choices = Array.from(entry.choices, (c) => c || { content: "", tool_calls: [], finish: null });
  updateAssistant(entry);
  if (firstAt) { entry.ttft_ms = firstAt - started; entry.decode_s = (performance.now() - firstAt) / 1000; }
  showStats(entry);
  settleToolCalls(entry);
  if (entry.format && !entry.stopped) checkJson(entry, entry.format);
  const calls = entry.choices[0]?.tool_calls || [];
  if (calls.length && !entry.stopped) toolResultForm(entry, (results) => continueWithTools(entry, results));
  scheduleDraftCost();
}

function failTurn(trigger, entry, err) {
  if (err.status === 401) showKeyBar(err.message);
  if (entry) {
    entry.error = true;
    state.entries = state.entries.filter((e) => e !== entry);
  }
  if (trigger.role === "user") {
    trigger.failed = true;
    showError(entry, trigger, err);
  } else if (entry) {
    // A continuation (tool results): the error stays where the answer would have been.
    state.entries.push(entry);
    entry.el.querySelector(".typing")?.remove();
    showError(null, entry, err);
    entry.el.setAttribute("aria-busy", "false");
  } else {
    showError(null, trigger, err);
  }
  refreshEdit();
}

async function continueWithTools(entry, results) {
  const calls = entry.choices[0].tool_calls;
  let last = entry;
  calls.forEach((call, k) => {
    const tool = { role: "tool", tool_call_id: call.id, name: call.name, content: results[k] };
    state.entries.push(tool);
    append(renderTool(tool));
    last = tool;
  });
  await generate(last);
}

function stop() {
  state.running?.controller.abort();
}

function editLast(entry) {
  if (state.running) return;
  const at = state.entries.indexOf(entry);
  for (const e of state.entries.slice(at)) e.el?.remove();
  state.entries = state.entries.slice(0, at);
  $("prompt").value = entry.text;
  attachments.restore(entry.attachments);
  refreshEdit();
  $("prompt").focus();
  scheduleDraftCost();
}

function newChat() {
  stop();
  state.entries = [];
  $("log").replaceChildren();
  attachments.clear();
  $("prompt").value = "";
  $("draft-cost").textContent = "";
  $("prompt").focus();
}

// ---- show code ------------------------------------------------------------------------------

// The conversation as one request: the draft as the next user turn, else the request that
// produced the last answer (so the code reproduces what the page shows).
function codeRequest() {
  const draft = $("prompt").value.trim();
  const atts = attachments.items.filter((a) => a.url);
  let entries = state.entries.filter((e) => !e.failed && !e.error);
  if (!draft && !atts.length) {
    while (entries.length && entries[entries.length - 1].role === "assistant") entries = entries.slice(0, -1);
  }
  const messages = toWire(entries, $("system").value.trim());
  if (draft || atts.length) messages.push({ role: "user", content: userContent(draft, atts) });
  if (!messages.length) messages.push({ role: "user", content: "Hello!" });
  return buildRequest(messages);
}

function showCode() {
  let request;
  try { request = codeRequest(); } catch (err) { alert(err.message); return; }
  const base = `${location.origin}/v1`;
  $("code-python").textContent = pythonSnippet(request, base);
  $("code-curl").textContent = curlSnippet(request, base);
  $("code-dialog").showModal();
}

function selectTab(name) {
  for (const tab of ["python", "curl"]) {
    $(`tab-${tab}`).setAttribute("aria-selected", String(tab === name));
    $(`code-${tab}`).hidden = tab !== name;
  }
}

async function copyCode() {
  const visible = $("code-python").hidden ? $("code-curl") : $("code-python");
  try {
    await navigator.clipboard.writeText(visible.textContent);
    $("copy-code").textContent = "Copied";
  } catch {
    getSelection().selectAllChildren(visible);
    $("copy-code").textContent = "Selected: press Ctrl+C";
  }
  setTimeout(() => { $("copy-code").textContent = "Copy"; }, 1500);
}

// ---- wiring ---------------------------------------------------------------------------------

function wire() {
  $("schema").value = JSON.stringify(DEFAULT_SCHEMA, null, 2);
  $("tools").value = JSON.stringify(DEFAULT_TOOLS, null, 2);
  $("composer").addEventListener("submit", (e) => { e.preventDefault(); send(); });
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); send(); }
  });
  $("prompt").addEventListener("input", scheduleDraftCost);
  $("system").addEventListener("input", scheduleDraftCost);
  document.addEventListener("keydown", (e) => { if (e.key === "Escape" && state.running) stop(); });
  $("stop").addEventListener("click", stop);
  $("new-chat").addEventListener("click", newChat);
  $("attach").addEventListener("click", () => $("file-input").click());
  $("file-input").addEventListener("change", (e) => { attachments.addFiles([...e.target.files]); e.target.value = ""; });
  $("model").addEventListener("change", () => { showLimits(); attachments.reinspectAll(); scheduleDraftCost(); });
  for (const radio of document.querySelectorAll('input[name="format"]')) {
    radio.addEventListener("change", () => { $("schema-box").hidden = radio.value !== "json_schema" || !radio.checked; });
  }
  $("schema").addEventListener("input", () => parseJsonField("schema", "schema-status", () => ""));
  $("tools").addEventListener("input", () => parseJsonField("tools", "tools-status", (v) => (Array.isArray(v) ? "" : "tools are a JSON array")));
  $("show-code").addEventListener("click", showCode);
  $("close-code").addEventListener("click", () => $("code-dialog").close());
  $("tab-python").addEventListener("click", () => selectTab("python"));
  $("tab-curl").addEventListener("click", () => selectTab("curl"));
  $("copy-code").addEventListener("click", copyCode);
  $("show-key").addEventListener("click", () => {
    const bar = $("key-bar");
    bar.hidden = !bar.hidden;
    $("show-key").setAttribute("aria-expanded", String(!bar.hidden));
    if (!bar.hidden) $("api-key").focus();
  });
  $("key-bar").addEventListener("submit", (e) => { e.preventDefault(); setApiKey($("api-key").value.trim()); loadModels(); });
  $("toggle-settings").addEventListener("click", () => {
    const open = $("settings").classList.toggle("open");
    $("toggle-settings").setAttribute("aria-expanded", String(open));
  });
  wireDrop();
}

function wireDrop() {
  const overlay = $("drop-overlay");
  let depth = 0;
  const hasFiles = (e) => [...(e.dataTransfer?.types || [])].includes("Files");
  window.addEventListener("dragenter", (e) => { if (hasFiles(e)) { depth++; overlay.hidden = false; } });
  window.addEventListener("dragleave", () => { if (--depth <= 0) { depth = 0; overlay.hidden = true; } });
  window.addEventListener("dragover", (e) => { if (hasFiles(e)) e.preventDefault(); });
  window.addEventListener("drop", (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    depth = 0;
    overlay.hidden = true;
    attachments.addFiles([...e.dataTransfer.files]);
  });
  document.addEventListener("paste", (e) => {
    const files = [...(e.clipboardData?.items || [])].filter((i) => i.kind === "file").map((i) => i.getAsFile()).filter(Boolean);
    if (files.length) { e.preventDefault(); attachments.addFiles(files); }
  });
}

wire();
if (apiKey()) { $("api-key").value = apiKey(); }
loadModels();
