// The conversation: entries (user, assistant, tool) as the page shows them and as the API
// receives them (`toWire`). Rendering only; sending lives in playground.js.

import { renderMarkdown } from "./markdown.js";
import { validate } from "./validate.js";

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

export function mediaPart(att) {
  if (att.kind === "video") return { type: "video_url", video_url: { url: att.url } };
  const image_url = { url: att.url };
  if (att.detail && att.detail !== "auto") image_url.detail = att.detail;
  return { type: "image_url", image_url };
}

export function userContent(text, attachments) {
  if (!attachments.length) return text;
  const parts = attachments.map(mediaPart);
  if (text) parts.push({ type: "text", text });
  return parts;
}

// The messages the API gets for `entries`: failed turns and errored answers are left out.
export function toWire(entries, system) {
  const messages = system ? [{ role: "system", content: system }] : [];
  for (const e of entries) {
    if (e.failed) continue;
    if (e.role === "user") messages.push({ role: "user", content: userContent(e.text, e.attachments) });
    else if (e.role === "tool") messages.push({ role: "tool", tool_call_id: e.tool_call_id, content: e.content });
    else if (e.role === "assistant" && !e.error && e.choices.length) {
      const choice = e.choices[0];
      const message = { role: "assistant", content: choice.content };
      if (choice.tool_calls.length) {
        message.tool_calls = choice.tool_calls.map((c) => ({ id: c.id, type: "function", function: { name: c.name, arguments: c.arguments } }));
      }
      messages.push(message);
    }
  }
  return messages;
}

function header(entry, label) {
  const head = el("header", "turn-head");
  head.append(el("span", "who", label));
  return head;
}

export function renderUser(entry) {
  const article = el("article", "turn user");
  article.setAttribute("aria-label", "Your message");
  const head = header(entry, "You");
  const edit = el("button", "ghost small edit", "Edit");
  edit.type = "button";
  edit.hidden = true;
  edit.setAttribute("aria-label", "Edit and resend this message");
  head.append(edit);
  article.append(head);
  if (entry.attachments.length) {
    const strip = el("div", "turn-media");
    for (const att of entry.attachments) {
      const fig = el("figure");
      const media = el(att.kind === "video" ? "video" : "img");
      media.src = att.preview || att.url;
      if (att.kind === "video") media.controls = true; else media.alt = att.name;
      const cost = att.info ? `${att.info.size ? att.info.size.join("×") + " · " : ""}${att.info.tokens} tokens` : att.name;
      fig.append(media, el("figcaption", "muted", cost));
      strip.append(fig);
    }
    article.append(strip);
  }
  if (entry.text) article.append(el("div", "user-text", entry.text));
  const error = el("div", "turn-error");
  error.setAttribute("role", "alert");
  article.append(error);
  entry.el = article;
  entry.editButton = edit;
  return article;
}

export function renderTool(entry) {
  const article = el("article", "turn tool");
  article.setAttribute("aria-label", `Tool result for ${entry.name}`);
  article.append(header(entry, `Tool result · ${entry.name}`));
  article.append(el("pre", "tool-result", entry.content));
  entry.el = article;
  return article;
}

export function renderAssistant(entry) {
  const article = el("article", "turn assistant");
  article.setAttribute("aria-label", `Answer from ${entry.model}`);
  article.setAttribute("aria-busy", "true");
  article.append(header(entry, entry.model));
  article.append(el("div", "choices"));
  const typing = el("div", "typing", "");
  typing.setAttribute("aria-label", "waiting for the first token");
  typing.append(el("span"), el("span"), el("span"));
  article.append(typing);
  article.append(el("div", "stats muted"));
  const error = el("div", "turn-error");
  error.setAttribute("role", "alert");
  article.append(error);
  entry.el = article;
  return article;
}

function choiceBox(entry, index) {
  const box = entry.el.querySelector(".choices");
  let node = box.querySelector(`[data-choice="${index}"]`);
  if (!node) {
    node = el("section", "choice");
    node.dataset.choice = index;
    if (entry.n > 1) node.append(el("h3", "choice-title", `Choice ${index + 1}${index === 0 ? " (continues the conversation)" : ""}`));
    node.append(el("div", "content markdown"), el("div", "json-check"), el("div", "tool-cards"));
    box.append(node);
  }
  return node;
}

export function updateAssistant(entry) {
  if (entry.choices.some((c) => c.content || c.tool_calls.length)) entry.el.querySelector(".typing")?.remove();
  entry.choices.forEach((choice, index) => {
    const node = choiceBox(entry, index);
    const content = node.querySelector(".content");
    if (choice.rendered !== choice.content) {
      content.innerHTML = renderMarkdown(choice.content); // escaped by the renderer
      choice.rendered = choice.content;
    }
    const cards = node.querySelector(".tool-cards");
    choice.tool_calls.forEach((call, k) => {
      let card = cards.children[k];
      if (!card) {
        card = el("section", "tool-card");
        card.setAttribute("aria-label", `Tool call ${call.name}`);
        const title = el("h4", "tool-title");
        card.append(title, el("pre", "tool-args"));
        cards.append(card);
      }
      card.querySelector(".tool-title").textContent = `Tool call · ${call.name || "…"}`;
      card.querySelector(".tool-args").textContent = call.arguments;
    });
  });
}

function pretty(text) {
  try { return JSON.stringify(JSON.parse(text), null, 2); } catch { return null; }
}

// Finished tool calls: arguments pretty-printed, or flagged when they are not JSON.
export function settleToolCalls(entry) {
  entry.choices.forEach((choice, index) => {
    const cards = choiceBox(entry, index).querySelector(".tool-cards").children;
    choice.tool_calls.forEach((call, k) => {
      const formatted = pretty(call.arguments);
      const args = cards[k].querySelector(".tool-args");
      if (formatted !== null) { args.textContent = formatted; return; }
      const cut = choice.finish === "length" ? " (cut by max_tokens: raise it)" : "";
      args.after(el("p", "bad", `✗ arguments are not valid JSON${cut}`));
    });
  });
}

// JSON mode: the answer pretty-printed, with the parse and schema verdicts.
export function checkJson(entry, format) {
  entry.choices.forEach((choice, index) => {
    const node = choiceBox(entry, index);
    const verdict = node.querySelector(".json-check");
    const formatted = pretty(choice.content);
    verdict.replaceChildren();
    if (formatted === null) {
      const cut = choice.finish === "length" ? " (cut by max_tokens: raise it)" : "";
      verdict.append(el("p", "bad", `✗ not valid JSON${cut}`));
      return;
    }
    const content = node.querySelector(".content");
    content.replaceChildren(el("pre", "code-block json", formatted));
    choice.rendered = null;
    verdict.append(el("p", "good", "✓ valid JSON"));
    if (format.type === "json_schema") {
      const errors = validate(JSON.parse(choice.content), format.json_schema.schema || {});
      if (errors.length) {
        verdict.append(el("p", "bad", `✗ does not match schema “${format.json_schema.name}”`));
        const list = el("ul", "bad");
        errors.slice(0, 8).forEach((e) => list.append(el("li", "", e)));
        verdict.append(list);
      } else verdict.append(el("p", "good", `✓ matches schema “${format.json_schema.name}”`));
    }
  });
}

// Under each tool call: a box for its result, and one button that sends them all.
export function toolResultForm(entry, onSend) {
  const choice = entry.choices[0];
  const node = choiceBox(entry, 0);
  const form = el("form", "tool-results");
  choice.tool_calls.forEach((call, k) => {
    const card = node.querySelector(".tool-cards").children[k];
    const id = `result-${call.id || k}-${Math.random().toString(36).slice(2, 7)}`;
    const label = el("label", "", `Result of ${call.name}`);
    label.htmlFor = id;
    const box = el("textarea", "code tool-result-input");
    box.id = id;
    box.rows = 2;
    box.placeholder = '{"temperature_c": 21}';
    card.append(label, box);
  });
  const send = el("button", "", "Send tool results");
  send.type = "submit";
  form.append(send);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const results = [...node.querySelectorAll(".tool-result-input")].map((box) => box.value.trim() || "{}");
    form.remove();
    node.querySelectorAll(".tool-result-input").forEach((box) => { box.disabled = true; });
    onSend(results);
  });
  node.append(form);
  return form;
}

function fmt(n) {
  return (n ?? 0).toLocaleString();
}

export function showStats(entry) {
  const u = entry.usage;
  const parts = [];
  if (u) {
    const details = u.prompt_tokens_details || {};
    const cached = details.cached_tokens ?? u.cached_tokens ?? 0;
    parts.push(`prompt ${fmt(u.prompt_tokens)} (cached ${fmt(cached)} · image ${fmt(details.image_tokens)} · video ${fmt(details.video_tokens)})`);
    parts.push(`completion ${fmt(u.completion_tokens)}`);
  }
  if (entry.ttft_ms !== undefined) parts.push(`TTFT ${Math.round(entry.ttft_ms)} ms`);
  if (u && entry.decode_s > 0 && u.completion_tokens > 1) parts.push(`${(u.completion_tokens / entry.decode_s).toFixed(1)} tok/s`);
  const reasons = [...new Set(entry.choices.map((c) => c.finish).filter(Boolean))];
  if (entry.stopped) parts.push("stopped by you");
  else if (reasons.length) parts.push(`finish: ${reasons.join(", ")}`);
  const stats = entry.el.querySelector(".stats");
  stats.textContent = parts.join(" · ");
  entry.el.setAttribute("aria-busy", "false");
  entry.el.classList.add("done");
  entry.el.querySelector(".typing")?.remove();
}

export function showError(entry, target, err) {
  const box = target.el.querySelector(".turn-error");
  const where = err.param ? ` (${err.param})` : "";
  const status = err.status ? `${err.status}${err.code ? " " + err.code : ""}: ` : "";
  box.textContent = `${status}${err.message}${where}`;
  target.el.classList.add("has-error");
  if (entry && entry !== target) {
    entry.el.setAttribute("aria-busy", "false");
    entry.el.remove();
  }
}
