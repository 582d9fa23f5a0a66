// "Show code": a chat request as a Python (official openai SDK) script and as a curl command.
// Both send exactly the request's fields (non-streaming, so the script prints the whole answer).

const INDENT = "    ";

function pyString(text) {
  return JSON.stringify(text); // JSON string escapes are valid Python string escapes
}

// A JSON value as a Python literal on one line.
function pyFlat(value, names) {
  if (Array.isArray(value)) return `[${value.map((v) => pyFlat(v, names)).join(", ")}]`;
  if (value && typeof value === "object") {
    return `{${Object.entries(value).map(([k, v]) => `${pyString(k)}: ${pyFlat(v, names)}`).join(", ")}}`;
  }
  return py(value, names);
}

// A JSON value as a Python literal; strings listed in `names` become those variable names.
function py(value, names, depth = 0) {
  if (value && typeof value === "object") {
    const flat = pyFlat(value, names);
    if (flat.length + 4 * (depth + 1) <= 88) return flat;
  }
  const pad = INDENT.repeat(depth + 1);
  const end = INDENT.repeat(depth);
  if (value === null || value === undefined) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (typeof value === "number") return String(value);
  if (typeof value === "string") return names.get(value) ?? pyString(value);
  if (Array.isArray(value)) {
    if (!value.length) return "[]";
    return `[\n${value.map((v) => pad + py(v, names, depth + 1)).join(",\n")},\n${end}]`;
  }
  const entries = Object.entries(value);
  if (!entries.length) return "{}";
  return `{\n${entries.map(([k, v]) => `${pad}${pyString(k)}: ${py(v, names, depth + 1)}`).join(",\n")},\n${end}}`;
}

// Data URLs (images, videos) are long: each becomes a variable above the call.
function mediaNames(request) {
  const names = new Map();
  const counts = { image: 0, video: 0 };
  for (const message of request.messages) {
    if (!Array.isArray(message.content)) continue;
    for (const part of message.content) {
      const url = part.image_url?.url ?? part.video_url?.url;
      if (!url || !url.startsWith("data:") || names.has(url)) continue;
      const kind = part.video_url ? "video" : "image";
      counts[kind] += 1;
      names.set(url, `${kind.toUpperCase()}_${counts[kind]}`);
    }
  }
  return names;
}

export function pythonSnippet(request, baseUrl) {
  const names = mediaNames(request);
  const lines = [
    "import os",
    "",
    "from openai import OpenAI",
    "",
    `client = OpenAI(base_url=${pyString(baseUrl)}, api_key=os.environ.get("VLMSERVE_API_KEY", "unused"))`,
    "",
  ];
  for (const [url, name] of names) lines.push(`${name} = ${pyString(url)}`);
  if (names.size) lines.push("");
  lines.push("reply = client.chat.completions.create(");
  for (const [key, value] of Object.entries(request)) {
    if (key === "stream" || key === "stream_options") continue;
    lines.push(`${INDENT}${key}=${py(value, names, 1)},`);
  }
  lines.push(")");
  lines.push("for choice in reply.choices:");
  lines.push(`${INDENT}message = choice.message`);
  lines.push(`${INDENT}print(message.content if not message.tool_calls else [c.function for c in message.tool_calls])`);
  lines.push("print(reply.usage)");
  return lines.join("\n") + "\n";
}

export function curlSnippet(request, baseUrl) {
  const body = { ...request };
  delete body.stream;
  delete body.stream_options;
  return [
    `curl -sS ${baseUrl}/chat/completions \\`,
    '  -H "Content-Type: application/json" \\',
    '  -H "Authorization: Bearer ${VLMSERVE_API_KEY:-unused}" \\',
    "  --data-binary @- <<'JSON'",
    JSON.stringify(body, null, 2),
    "JSON",
    "",
  ].join("\n");
}
