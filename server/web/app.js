// slm-server's page: live model status and a streaming chat playground. Plain JS, no dependencies.
"use strict";

const REFRESH_MS = 4000;
const COMPARE_REFRESH_MS = 60000;  // compare results change only when a run rewrites them
const KEY_STORE = "slm-server.api-key";
const $ = (id) => document.getElementById(id);

const el = {
  serverState: $("server-state"), statusError: $("status-error"), rows: document.querySelector("#models tbody"),
  window: $("window"), form: $("chat"), model: $("model"), temperature: $("temperature"),
  maxTokens: $("max-tokens"), apiKey: $("api-key"), keyField: $("key-field"), keyNote: $("key-note"), system: $("system"), transcript: $("transcript"),
  prompt: $("prompt"), chatError: $("chat-error"), send: $("send"), stop: $("stop"), clear: $("clear"),
};

let history = [];        // [{role, content}] of finished turns
let controller = null;   // AbortController of the running request

function headers() {
  const h = {"Content-Type": "application/json"};
  const key = el.apiKey.value.trim();
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

// The key field shows once the server asks for a key (401), or when this browser holds one.
function askForKey() {
  el.keyField.hidden = false;
  el.keyNote.hidden = false;
}

async function errorMessage(response) {
  if (response.status === 401) askForKey();
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) return body.error.message;
  } catch (_) { /* not JSON */ }
  return `HTTP ${response.status} ${response.statusText}`.trim();
}

function show(node, text) {
  node.textContent = text || "";
  node.hidden = !text;
}

// ---- status ------------------------------------------------------------------------------------
// bytes as MiB/GiB: "est. 412 MiB / 367 MiB" (estimated from the GGUF / measured RSS of its workers)
function formatBytes(n) {
  return n >= 1024 ** 3 ? `${(n / 1024 ** 3).toFixed(1)} GiB` : `${Math.round(n / 1024 ** 2)} MiB`;
}

function formatMemory(res) {
  if (!res) return "—";
  const measured = res.memory_measured_bytes ? formatBytes(res.memory_measured_bytes) : "—";
  return `est. ${formatBytes(res.memory_estimated_bytes)} / ${measured}`;
}

function formatAgo(unixSeconds) {
  const s = Math.max(0, Date.now() / 1000 - unixSeconds);
  return s < 60 ? `${Math.round(s)} s ago` : s < 3600 ? `${Math.round(s / 60)} min ago` : `${Math.round(s / 3600)} h ago`;
}

function renderModels(status) {
  const chosen = el.model.value;
  el.rows.replaceChildren();
  const options = [];
  for (const m of status.models) {
    const tr = document.createElement("tr");
    tr.dataset.model = m.name;
    const name = cell(m.name, "name");
    name.dataset.label = "Model";
    tr.append(name);
    const r = m.recent || {};
    const values = [
      ["Backend", m.backend],
      ["Aliases", m.aliases.length ? m.aliases.join(", ") : "—"],
      ["State", m.state, "state state-" + m.state],
      ["Workers", m.workers == null ? "—" : String(m.workers)],
      ["Queue", m.queue_depth == null ? "—" : String(m.queue_depth)],
      ["TTFT p50", r.ttft_p50_ms == null ? "—" : formatMs(r.ttft_p50_ms)],
      ["Tokens/s", r.tokens_per_s == null ? "—" : r.tokens_per_s.toFixed(1)],
      ["Residency", m.residency ? m.residency.state : "—", m.residency ? "state state-" + m.residency.state : ""],
      ["Memory", formatMemory(m.residency)],
      ["Last used", m.residency && m.residency.last_used ? formatAgo(m.residency.last_used) : "—"],
    ];
    for (const [label, value, cls] of values) {
      // a class styles the value itself (the state's coloured dot), so that on a phone the cell's
      // label (its ::before) stays plain
      const td = cls ? document.createElement("td") : cell(value);
      if (cls) {
        const span = document.createElement("span");
        span.className = cls;
        span.textContent = value;
        td.append(span);
      }
      td.dataset.label = label;
      tr.append(td);
    }
    el.rows.append(tr);
    const opt = new Option(`${m.name} (${m.state})`, m.name);
    opt.disabled = m.state === "draining";
    options.push(opt);
  }
  // the picker holds exactly the registry's models (one removed by a reload goes); the user's choice stays
  el.model.replaceChildren(...options);
  const ready = status.models.find((m) => m.state === "ready");
  const keep = options.find((o) => o.value === chosen && !o.disabled);
  el.model.value = keep ? chosen : (ready ? ready.name : (options[0] ? options[0].value : ""));
  const win = status.models.length ? status.models[0].recent.window_s : 300;
  el.window.textContent = formatDuration(Math.max(1, win));
  el.serverState.textContent = status.status === "ok" ? `${status.models.length} models · up ${formatDuration(status.uptime_s)}`
    : status.status;
}

// The latest compare results, when the server is pointed at them (SLM_COMPARE_RESULTS); else hidden.
async function refreshCompare() {
  let response;
  try {
    response = await fetch("v1/compare", {headers: headers(), cache: "no-store"});
  } catch (_) {
    return;
  }
  const section = $("compare");
  const doc = response.ok ? (await response.json()).results : null;
  section.hidden = !doc;
  if (!doc) return;
  const fixed = (v, digits) => (v === null || v === undefined ? "—" : Number(v).toFixed(digits));
  const rows = doc.models.map((m) => {
    const tr = document.createElement("tr");
    tr.append(cell(m.model, "name"), cell(fixed(m.quality, 3)), cell(fixed(m.judge_score, 2)),
      cell(fixed(m.win_rate, 2)), cell(m.median_total_ms == null ? "—" : formatMs(m.median_total_ms)),
      cell(m.cost_per_1000 == null ? "—" : "$" + fixed(m.cost_per_1000, 4)));
    return tr;
  });
  document.querySelector("#compare-table tbody").replaceChildren(...rows);
  const judge = doc.judge ? `, judged by ${doc.judge}` + (doc.baseline ? ` against ${doc.baseline}` : "") : "";
  $("compare-about").textContent = `${doc.items} items of ${doc.eval_source}${judge}, ${doc.created}.`;
}

async function refresh() {
  if (document.hidden) return;
  let response;
  try {
    response = await fetch("v1/status", {headers: headers(), cache: "no-store"});
  } catch (err) {
    show(el.statusError, "The server cannot be reached: " + err.message);
    el.serverState.textContent = "unreachable";
    return;
  }
  if (!response.ok) {
    show(el.statusError, "Status unavailable: " + await errorMessage(response));
    el.serverState.textContent = response.status === 401 ? "API key needed" : "status unavailable";
    return;
  }
  renderModels(await response.json());
  show(el.statusError, "");
}

function formatMs(ms) {
  return ms >= 1000 ? (ms / 1000).toFixed(2) + " s" : Math.round(ms) + " ms";
}

function formatDuration(s) {
  if (s < 120) return Math.round(s) + " s";
  if (s < 7200) return Math.round(s / 60) + " min";
  return (s / 3600).toFixed(1) + " h";
}

// ---- chat --------------------------------------------------------------------------------------
function addTurn(role, text) {
  const li = document.createElement("li");
  li.className = "turn " + role;
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = role === "user" ? "You" : "Assistant";
  const body = document.createElement("div");
  body.className = "text";
  body.textContent = text;
  li.append(who, body);
  el.transcript.append(li);
  return li;
}

function timingsLine(t) {
  const parts = [
    `prompt ${t.prompt_n ?? "?"} tok in ${formatMs(t.prompt_ms)}`,
    `generation ${t.predicted_n ?? "?"} tok in ${formatMs(t.predicted_ms)}`,
  ];
  if (t.predicted_ms > 0 && t.predicted_n) parts[1] += ` (${(t.predicted_n / (t.predicted_ms / 1000)).toFixed(1)} tok/s)`;
  if (t.ttft_ms != null) parts.push(`first token ${formatMs(t.ttft_ms)}`);
  if (t.total_ms != null) parts.push(`total ${formatMs(t.total_ms)}`);
  return parts.join(" · ");
}

// Yields the JSON payload of each `data:` event of an SSE body; stops at [DONE].
async function* events(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, {stream: true});
    let cut;
    while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
      const data = block.split(/\r?\n/).filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart())
        .join("\n");
      if (!data) continue;   // a comment or keep-alive
      if (data === "[DONE]") return;
      yield JSON.parse(data);
    }
  }
}

function busy(on) {
  el.send.disabled = on;
  el.stop.disabled = !on;
  el.form.setAttribute("aria-busy", String(on));
}

async function send() {
  const text = el.prompt.value.trim();
  if (!text || controller) return;
  show(el.chatError, "");
  const messages = [];
  if (el.system.value.trim()) messages.push({role: "system", content: el.system.value.trim()});
  messages.push(...history, {role: "user", content: text});
  const request = {model: el.model.value, messages, stream: true};
  const temperature = parseFloat(el.temperature.value);
  if (!Number.isNaN(temperature)) request.temperature = temperature;
  const maxTokens = parseInt(el.maxTokens.value, 10);
  if (!Number.isNaN(maxTokens)) request.max_tokens = maxTokens;

  addTurn("user", text);
  const turn = addTurn("assistant", "");
  const answer = turn.querySelector(".text");
  answer.id = "answer-" + el.transcript.children.length;
  answer.setAttribute("aria-live", "polite");
  answer.setAttribute("aria-busy", "true");
  turn.classList.add("streaming");
  el.prompt.value = "";
  controller = new AbortController();
  busy(true);
  let reply = "";
  let outcome = "";
  try {
    const response = await fetch("v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(request), signal: controller.signal,
    });
    if (!response.ok) throw new Error(await errorMessage(response));
    refresh();   // the model's queue now holds this request
    for await (const chunk of events(response.body)) {
      if (chunk.error) throw new Error(chunk.error.message || "The generation failed.");
      if (chunk.id && !turn.dataset.completionId) turn.dataset.completionId = chunk.id;
      const choice = chunk.choices && chunk.choices[0];
      if (choice && choice.delta && choice.delta.content) {
        reply += choice.delta.content;
        answer.textContent = reply;
      }
      if (chunk.timings) {
        const meta = document.createElement("p");
        meta.className = "timings";
        meta.textContent = timingsLine(chunk.timings);
        turn.append(meta);
      }
      if (choice && choice.finish_reason === "length") outcome = "stopped at max tokens";
    }
    history.push({role: "user", content: text}, {role: "assistant", content: reply});
  } catch (err) {
    if (err.name === "AbortError") {
      outcome = "stopped";
      history.push({role: "user", content: text}, {role: "assistant", content: reply});
    } else {
      outcome = "failed";
      show(el.chatError, err.message);
      if (!reply) el.prompt.value = text;   // let the user fix and resend
    }
  } finally {
    controller = null;
    busy(false);
    turn.classList.remove("streaming");
    answer.setAttribute("aria-busy", "false");
    if (outcome) {
      const note = document.createElement("p");
      note.className = "note";
      note.textContent = "(" + outcome + ")";
      turn.append(note);
    }
    turn.dataset.outcome = outcome || "done";
    el.prompt.focus();
    refresh();   // queue depth and recent latency changed
  }
}

function stop() {
  if (controller) controller.abort();
}

// ---- wiring ------------------------------------------------------------------------------------
el.apiKey.value = localStorage.getItem(KEY_STORE) || "";
if (el.apiKey.value) askForKey();
el.apiKey.addEventListener("change", () => {
  const key = el.apiKey.value.trim();
  if (key) localStorage.setItem(KEY_STORE, key); else localStorage.removeItem(KEY_STORE);
  refresh();
});
el.form.addEventListener("submit", (e) => { e.preventDefault(); send(); });
el.stop.addEventListener("click", stop);
el.clear.addEventListener("click", () => {
  stop();
  history = [];
  el.transcript.replaceChildren();
  show(el.chatError, "");
});
el.prompt.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    el.form.requestSubmit();
  }
});
document.addEventListener("keydown", (e) => {
  if (e.key === "Escape" && controller) { e.preventDefault(); stop(); }
});
document.addEventListener("visibilitychange", refresh);
refresh();
setInterval(refresh, REFRESH_MS);
refreshCompare();
setInterval(refreshCompare, COMPARE_REFRESH_MS);
