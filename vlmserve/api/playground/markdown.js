// A small, safe Markdown renderer for model output (vlmserve playground).
// Safe by construction: every piece of source text is HTML-escaped before any tag is added, links
// keep only http(s) and mailto targets, and nothing from the text becomes an attribute unescaped.
// Covers what chat answers use: fenced and indented code, headings, lists, quotes, tables,
// horizontal rules, emphasis, inline code, links.

const ESC = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

export function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ESC[c]);
}

function safeUrl(url) {
  const trimmed = url.trim();
  return /^(https?:\/\/|mailto:)/i.test(trimmed) ? trimmed : null;
}

// Inline spans of one already-split line or paragraph (raw text in, HTML out).
export function inline(text) {
  const codes = [];
  // Code spans first, so nothing inside them is formatted.
  let out = text.replace(/(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)/g, (_, _t, code) => {
    codes.push(`<code>${escapeHtml(code.trim())}</code>`);
    return `\u0000${codes.length - 1}\u0000`;
  });
  out = escapeHtml(out);
  out = out.replace(/\[([^\]]+)\]\(([^)\s]+)\)/g, (m, label, href) => {
    const url = safeUrl(href.replace(/&amp;/g, "&"));
    return url ? `<a href="${escapeHtml(url)}" target="_blank" rel="noopener noreferrer">${label}</a>` : m;
  });
  out = out.replace(/\*\*(?=\S)([\s\S]*?\S)\*\*/g, "<strong>$1</strong>");
  out = out.replace(/__(?=\S)([\s\S]*?\S)__/g, "<strong>$1</strong>");
  out = out.replace(/(^|[^*\w])\*(?=\S)([^*]*?\S)\*(?!\*)/g, "$1<em>$2</em>");
  out = out.replace(/(^|[^_\w])_(?=\S)([^_]*?\S)_(?![_\w])/g, "$1<em>$2</em>");
  out = out.replace(/~~(?=\S)([\s\S]*?\S)~~/g, "<del>$1</del>");
  return out.replace(/\u0000(\d+)\u0000/g, (_, i) => codes[Number(i)]);
}

const FENCE = /^(\s{0,3})(`{3,}|~{3,})\s*([\w+#.-]*)\s*$/;
const HEADING = /^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const RULE = /^\s{0,3}([-*_])(\s*\1){2,}\s*$/;
const BULLET = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;
const QUOTE = /^\s{0,3}>\s?(.*)$/;
const TABLE_SEP = /^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$/;

function splitRow(line) {
  let row = line.trim();
  if (row.startsWith("|")) row = row.slice(1);
  if (row.endsWith("|") && !row.endsWith("\\|")) row = row.slice(0, -1);
  return row.split(/(?<!\\)\|/).map((cell) => cell.trim().replace(/\\\|/g, "|"));
}

function alignments(sep) {
  return splitRow(sep).map((c) => (c.startsWith(":") && c.endsWith(":") ? "center" : c.endsWith(":") ? "right" : c.startsWith(":") ? "left" : ""));
}

function table(lines, i) {
  const head = splitRow(lines[i]);
  const align = alignments(lines[i + 1]);
  const cell = (tag, text, k) => `<${tag}${align[k] ? ` class="align-${align[k]}"` : ""}>${inline(text)}</${tag}>`;
  let html = `<div class="table-wrap"><table><thead><tr>${head.map((h, k) => cell("th", h, k)).join("")}</tr></thead><tbody>`;
  let j = i + 2;
  for (; j < lines.length && lines[j].includes("|") && lines[j].trim(); j++) {
    const cells = splitRow(lines[j]);
    html += `<tr>${head.map((_, k) => cell("td", cells[k] ?? "", k)).join("")}</tr>`;
  }
  return [html + "</tbody></table></div>", j];
}

function list(lines, i) {
  const first = BULLET.exec(lines[i]);
  const ordered = /\d/.test(first[2]);
  const indent = first[1].length;
  const start = ordered ? parseInt(first[2], 10) : 1;
  const items = [];
  let j = i;
  while (j < lines.length) {
    const m = BULLET.exec(lines[j]);
    if (m && m[1].length === indent && /\d/.test(m[2]) === ordered) {
      items.push([m[3]]);
      j++;
    } else if (lines[j].trim() && (/^\s+/.test(lines[j]) && (!m || m[1].length > indent))) {
      items[items.length - 1].push(lines[j].slice(Math.min(indent + 2, lines[j].search(/\S/))));
      j++;
    } else break;
  }
  const tag = ordered ? "ol" : "ul";
  const attr = ordered && start !== 1 ? ` start="${start}"` : "";
  const body = items.map((item) => {
    const [head, ...rest] = item;
    const nested = rest.length ? blocks(rest) : "";
    return `<li>${inline(head)}${nested}</li>`;
  });
  return [`<${tag}${attr}>${body.join("")}</${tag}>`, j];
}

function blocks(lines) {
  let html = "";
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (!line.trim()) { i++; continue; }
    const fence = FENCE.exec(line);
    if (fence) {
      const close = new RegExp(`^\\s{0,3}${fence[2][0] === "`" ? "`" : "~"}{${fence[2].length},}\\s*$`);
      const body = [];
      let j = i + 1;
      while (j < lines.length && !close.test(lines[j])) body.push(lines[j++]);
      const lang = fence[3] ? ` data-lang="${escapeHtml(fence[3])}"` : "";
      html += `<pre class="code-block"${lang}><code>${escapeHtml(body.join("\n"))}</code></pre>`;
      i = j + 1;
      continue;
    }
    const heading = HEADING.exec(line);
    if (heading) {
      const level = Math.min(heading[1].length + 2, 6); // h3..h6 inside a chat turn
      html += `<h${level}>${inline(heading[2])}</h${level}>`;
      i++;
      continue;
    }
    if (RULE.test(line)) { html += "<hr>"; i++; continue; }
    if (line.includes("|") && i + 1 < lines.length && TABLE_SEP.test(lines[i + 1])) {
      const [t, j] = table(lines, i);
      html += t; i = j; continue;
    }
    if (QUOTE.test(line)) {
      const body = [];
      while (i < lines.length && QUOTE.test(lines[i])) body.push(QUOTE.exec(lines[i++])[1]);
      html += `<blockquote>${blocks(body)}</blockquote>`;
      continue;
    }
    if (BULLET.test(line)) {
      const [l, j] = list(lines, i);
      html += l; i = j; continue;
    }
    if (/^ {4}|^\t/.test(line)) {
      const body = [];
      while (i < lines.length && (/^ {4}|^\t/.test(lines[i]) || !lines[i].trim())) body.push(lines[i++].replace(/^ {4}|^\t/, ""));
      html += `<pre class="code-block"><code>${escapeHtml(body.join("\n").replace(/\n+$/, ""))}</code></pre>`;
      continue;
    }
    const para = [];
    while (i < lines.length && lines[i].trim() && !FENCE.test(lines[i]) && !HEADING.test(lines[i]) && !QUOTE.test(lines[i]) && !BULLET.test(lines[i]) && !RULE.test(lines[i])) {
      if (lines[i].includes("|") && i + 1 < lines.length && TABLE_SEP.test(lines[i + 1]) && para.length) break;
      para.push(lines[i++]);
    }
    html += `<p>${para.map(inline).join("<br>")}</p>`;
  }
  return html;
}

export function renderMarkdown(text) {
  const clean = String(text).replace(/\u0000/g, "").replace(/\r\n?/g, "\n");
  return blocks(clean.split("\n"));
}
