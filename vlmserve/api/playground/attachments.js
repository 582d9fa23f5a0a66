// Attachments of the message being written: thumbnail, what the model will see (size after
// resizing, from POST /v1/images/inspect) and the token cost, with `detail` per image. Videos are
// counted with POST /v1/token/count (their frames are sampled by the server).

import { postJson } from "./api.js";

const IMAGE_TYPES = ["image/png", "image/jpeg", "image/gif", "image/webp"];
let nextId = 1;

function readDataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

function kb(bytes) {
  return bytes >= 1048576 ? `${(bytes / 1048576).toFixed(1)} MB` : `${Math.max(1, Math.round(bytes / 1024))} KB`;
}

export class Attachments {
  constructor(list, template, { model, onChange }) {
    this.list = list;
    this.template = template;
    this.model = model; // () => the selected model card
    this.onChange = onChange; // called when the set or a cost changes
    this.items = [];
  }

  get pending() {
    return this.items.some((a) => a.state === "loading");
  }

  async addFiles(files) {
    for (const file of files) {
      const kind = file.type.startsWith("video/") ? "video" : IMAGE_TYPES.includes(file.type) || file.type.startsWith("image/") ? "image" : null;
      const item = { id: nextId++, kind: kind || "image", name: file.name || `pasted.${(file.type.split("/")[1] || "bin")}`, bytes: file.size, detail: "auto", state: "loading", seq: 0 };
      this.items.push(item);
      this.render(item);
      if (!kind) { this.fail(item, `${file.type || "this file type"} is not an image or a video: attach PNG, JPEG, GIF, WebP, or a video.`); continue; }
      item.preview = URL.createObjectURL(file);
      this.render(item);
      item.url = await readDataUrl(file);
      await this.inspect(item);
    }
  }

  restore(parts) {
    // Put a sent turn's attachments back (edit and resend).
    for (const part of parts) {
      const item = { id: nextId++, kind: part.kind, name: part.name, bytes: part.bytes, detail: part.detail, url: part.url, preview: part.preview, state: "loading", seq: 0 };
      this.items.push(item);
      this.render(item);
      this.inspect(item);
    }
  }

  take() {
    const taken = this.items.filter((a) => a.url); // failed ones too: the server says why, at the turn
    this.items = [];
    this.list.replaceChildren();
    this.onChange();
    return taken.map(({ kind, name, bytes, detail, url, preview, info }) => ({ kind, name, bytes, detail, url, preview, info }));
  }

  clear() {
    this.items = [];
    this.list.replaceChildren();
    this.onChange();
  }

  reinspectAll() {
    for (const item of this.items) if (item.url) this.inspect(item);
  }

  async inspect(item) {
    const model = this.model();
    if (!model || !item.url) return;
    const seq = ++item.seq;
    item.state = "loading";
    item.error = "";
    this.render(item);
    try {
      let info;
      if (item.kind === "video") {
        if (!model.input_modalities.includes("video")) throw new Error(`${model.id} does not accept video; pick a model that lists video.`);
        const counted = await postJson("/v1/token/count", { model: model.id, messages: [{ role: "user", content: [{ type: "video_url", video_url: { url: item.url } }] }] });
        info = { tokens: counted.data.video_tokens };
      } else {
        const image_url = { url: item.url };
        if (item.detail !== "auto") image_url.detail = item.detail;
        info = await postJson("/v1/images/inspect", { model: model.id, image_url });
      }
      if (seq !== item.seq) return;
      item.info = info;
      item.state = "ready";
    } catch (err) {
      if (seq !== item.seq) return;
      this.fail(item, err.message);
      return;
    }
    this.render(item);
    this.onChange();
  }

  fail(item, message) {
    item.state = "error";
    item.error = message;
    item.info = null;
    this.render(item);
    this.onChange();
  }

  remove(item) {
    this.items = this.items.filter((a) => a !== item);
    this.list.querySelector(`[data-id="${item.id}"]`)?.remove();
    this.onChange();
  }

  render(item) {
    let li = this.list.querySelector(`[data-id="${item.id}"]`);
    if (!li) {
      li = this.template.content.firstElementChild.cloneNode(true);
      li.dataset.id = item.id;
      this.list.append(li);
      const select = li.querySelector(".att-detail");
      select.value = item.detail;
      select.addEventListener("change", () => { item.detail = select.value; this.inspect(item); });
      const remove = li.querySelector(".att-remove");
      remove.setAttribute("aria-label", `Remove ${item.name}`);
      remove.addEventListener("click", () => this.remove(item));
      select.setAttribute("aria-label", `detail for ${item.name}`);
    }
    li.classList.toggle("is-error", item.state === "error");
    li.classList.toggle("is-loading", item.state === "loading");
    li.querySelector(".detail-label").hidden = item.kind !== "image";
    const thumb = li.querySelector(".thumb");
    if (item.preview && !thumb.firstChild) {
      const media = document.createElement(item.kind === "video" ? "video" : "img");
      media.src = item.preview;
      if (item.kind === "video") { media.muted = true; media.preload = "metadata"; } else media.alt = `thumbnail of ${item.name}`;
      thumb.append(media);
    }
    li.querySelector(".att-name").textContent = item.name;
    const info = item.info;
    const size = li.querySelector(".att-size");
    const cost = li.querySelector(".att-cost");
    if (info && item.kind === "image") {
      size.textContent = `${info.format} ${info.original_size.join("×")} · ${kb(item.bytes)} → model sees ${info.size.join("×")} (${info.detail})`;
      cost.textContent = `${info.tokens.toLocaleString()} tokens`;
    } else if (info) {
      size.textContent = `video · ${kb(item.bytes)} → sampled frames`;
      cost.textContent = `${info.tokens.toLocaleString()} tokens`;
    } else {
      size.textContent = item.state === "loading" ? "measuring…" : kb(item.bytes || 0);
      cost.textContent = "";
    }
    li.querySelector(".att-error").textContent = item.error || "";
  }
}
