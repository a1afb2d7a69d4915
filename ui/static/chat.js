// The chat page: picks a flow, streams a run over SSE, and shows its answer, steps, graph and trace.
//
// Everything shown is untrusted (model output, user text, source titles, error messages): the DOM
// is built with createElement + textContent only, never from markup strings, and the page runs
// under a CSP without 'unsafe-inline' (no inline handlers or style attributes; el.style is fine).
//
// API paths used (same origin): GET /api/flows, POST /api/flows/{name}/runs (SSE),
// GET /api/runs/{id}, POST /api/runs/{id}/feedback. They are written relative ("api/flows"), as are
// the page's static files: the app may be mounted under a prefix (examples/03_embed_chat: the page
// at /assistant/ calls /assistant/api/...), and an absolute "/api" would reach the host app instead.

import { renderMarkdown } from "./markdown.js";
import { drawGraph, resetGraph, setNodeState } from "./graph.js";

const $ = (selector) => document.querySelector(selector);

const ui = {
  flowSelect: $("#flow-select"),
  description: $("#flow-description"),
  messages: $("#messages"),
  composer: $("#composer"),
  extra: $("#extra-inputs"),
  question: $("#question"),
  send: $("#send"),
  stop: $("#stop"),
  newChat: $("#new-chat"),
  steps: $("#steps"),
  stepsEmpty: $("#steps-empty"),
  graph: $("#graph"),
  trace: $("#trace"),
  auth: $("#auth"),
  authForm: $("#auth-form"),
  apiKey: $("#api-key"),
};

const app = { flows: [], flow: null, controller: null, pinned: true, traceFor: null };

// ---- small helpers ------------------------------------------------------------------------------

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function button(className, text, label) {
  const b = el("button", className, text);
  b.type = "button";
  if (label) b.setAttribute("aria-label", label);
  return b;
}

function formatMs(ms) {
  if (typeof ms !== "number" || !Number.isFinite(ms)) return "—";
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
}

function formatCost(cost) {
  if (typeof cost !== "number") return "—";
  if (cost === 0) return "$0";
  return cost < 0.001 ? `$${cost.toPrecision(2)}` : `$${cost.toFixed(4)}`;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ---- session storage: the flow choice, the API key and each flow's history, per browser tab -----

const STORE = { flow: "rillflow.flow", key: "rillflow.apiKey", history: (name) => `rillflow.history.${name}` };

function storageGet(key) {
  try {
    return sessionStorage.getItem(key);
  } catch {
    return null; // storage disabled: the chat still works, it just forgets on reload
  }
}

function storageSet(key, value) {
  try {
    if (value === null) sessionStorage.removeItem(key);
    else sessionStorage.setItem(key, value);
  } catch {
    /* full or disabled: same as above */
  }
}

function loadHistory(flowName) {
  try {
    const turns = JSON.parse(storageGet(STORE.history(flowName)) ?? "[]");
    return Array.isArray(turns) ? turns.filter((t) => t && typeof t.content === "string") : [];
  } catch {
    return [];
  }
}

function saveTurn(flowName, question, turn) {
  const turns = loadHistory(flowName);
  turns.push({ role: "user", content: question });
  turns.push({ role: "assistant", content: turn.text, runId: turn.runId, sources: turn.sources });
  storageSet(STORE.history(flowName), JSON.stringify(turns));
}

// ---- API ----------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(kind, message, { status = 0, retryAfter = null } = {}) {
    super(message);
    this.kind = kind;
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

// The key travels in a header only, never in a URL (URLs end up in logs and history).
function authHeaders() {
  const key = storageGet(STORE.key);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function api(path, { method = "GET", body, headers = {}, signal } = {}) {
  const init = { method, signal, credentials: "same-origin", headers: { Accept: "application/json", ...headers, ...authHeaders() } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (!response.ok) throw await apiError(response);
  return response;
}

async function apiError(response) {
  let kind = `http_${response.status}`;
  let message = response.statusText || "request failed";
  try {
    const payload = await response.json();
    kind = payload?.error?.kind || kind;
    message = payload?.error?.message || message;
  } catch {
    /* not JSON: keep the status line */
  }
  if (response.status === 401) showAuth();
  return new ApiError(kind, message, { status: response.status, retryAfter: parseRetryAfter(response.headers.get("Retry-After")) });
}

function parseRetryAfter(value) {
  if (!value) return null;
  const seconds = Number(value);
  const wait = Number.isFinite(seconds) ? seconds : (Date.parse(value) - Date.now()) / 1000; // seconds or an HTTP date
  return Number.isFinite(wait) ? Math.max(1, Math.ceil(wait)) : null;
}

// ---- SSE over fetch ----------------------------------------------------------------------------
// EventSource cannot POST a body or send an Authorization header, so the stream is parsed here.

const LINE_END = /\r\n|\r|\n/;

async function* readSse(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let message = { event: "message", data: [], id: null };
  try {
    for (;;) {
      const { value, done } = await reader.read();
      buffer += done ? decoder.decode() : decoder.decode(value, { stream: true });
      for (let match = LINE_END.exec(buffer); match; match = LINE_END.exec(buffer)) {
        if (!done && match[0] === "\r" && match.index === buffer.length - 1) break; // maybe half a CRLF
        const line = buffer.slice(0, match.index);
        buffer = buffer.slice(match.index + match[0].length);
        if (line !== "") {
          readField(message, line);
          continue;
        }
        const complete = message;
        message = { event: "message", data: [], id: null };
        if (complete.data.length) yield { event: complete.event, id: complete.id, data: complete.data.join("\n") };
      }
      if (done) return; // an unterminated last message is dropped, as the SSE spec says
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

function readField(message, line) {
  if (line.startsWith(":")) return; // a ping
  const colon = line.indexOf(":");
  const field = colon < 0 ? line : line.slice(0, colon);
  const value = colon < 0 ? "" : line.slice(colon + (line[colon + 1] === " " ? 2 : 1));
  if (field === "data") message.data.push(value);
  else if (field === "event") message.event = value;
  else if (field === "id") message.id = value;
}

function parseEvent(message) {
  try {
    const event = JSON.parse(message.data);
    if (event && typeof event === "object") return { ...event, type: event.type || message.event, data: event.data ?? {} };
  } catch {
    /* a malformed message is skipped, not fatal */
  }
  return null;
}

// ---- flows --------------------------------------------------------------------------------------

function chatSpec(flow) {
  const first = Object.keys(flow?.inputs ?? {})[0] ?? "question";
  return { message: first, history: null, answer: null, sources: null, ...(flow?.chat ?? {}) };
}

async function loadFlows() {
  try {
    const payload = await (await api("api/flows")).json();
    app.flows = Array.isArray(payload?.flows) ? payload.flows : [];
  } catch (err) {
    showFlowProblem(err.status === 401 ? "Enter an API key to load the flows." : `Could not load the flows: ${err.message}`);
    return;
  }
  ui.flowSelect.replaceChildren(...app.flows.map((f) => {
    const option = el("option", null, f.name);
    option.value = f.name;
    return option;
  }));
  if (!app.flows.length) return showFlowProblem("This server has no flows.");
  const saved = storageGet(STORE.flow);
  selectFlow(app.flows.some((f) => f.name === saved) ? saved : app.flows[0].name);
}

function showFlowProblem(text) {
  ui.description.textContent = text;
  ui.description.classList.add("problem");
  setRunning(false);
}

function selectFlow(name) {
  const flow = app.flows.find((f) => f.name === name);
  if (!flow) return;
  app.flow = flow;
  ui.flowSelect.value = name;
  storageSet(STORE.flow, name);
  ui.description.classList.remove("problem");
  ui.description.textContent = flow.description ?? "";
  const message = flow.inputs?.[chatSpec(flow).message];
  if (message?.max_length) ui.question.maxLength = message.max_length;
  else ui.question.removeAttribute("maxlength");
  renderExtraInputs(flow);
  drawGraph(ui.graph, flow.graph);
  resetRunPanel();
  restoreConversation(flow);
  setRunning(false);
}

// ---- extra inputs: required flow inputs besides the question ------------------------------------

const INVALID = Symbol("invalid");

function renderExtraInputs(flow) {
  const chat = chatSpec(flow);
  const fields = Object.entries(flow.inputs ?? {}).filter(([name, spec]) => spec?.required && name !== chat.message && name !== chat.history);
  ui.extra.replaceChildren(...fields.map(([name, spec]) => extraField(name, spec)));
  ui.extra.hidden = fields.length === 0;
}

function extraField(name, spec) {
  const field = el("div", "extra-field");
  const control = extraControl(spec);
  control.id = `extra-${name.replace(/[^\w-]/g, "_")}`;
  control.name = name;
  control.classList.add("extra-input");
  control.required = spec.type !== "boolean";
  if (spec.description) control.title = spec.description;
  control.addEventListener("input", () => control.setCustomValidity(""));
  const label = el("label", null, name);
  label.htmlFor = control.id;
  field.append(label, control);
  return field;
}

function extraControl(spec) {
  const input = el("input");
  if (spec.type === "boolean") {
    input.type = "checkbox";
    input.checked = Boolean(spec.default);
    return input;
  }
  input.type = spec.type === "integer" || spec.type === "number" ? "number" : "text";
  if (spec.type === "integer") input.step = "1";
  if (spec.type === "number") input.step = "any";
  if (spec.max_length && input.type === "text") input.maxLength = spec.max_length;
  if (spec.default !== undefined && spec.default !== null) input.value = typeof spec.default === "string" ? spec.default : JSON.stringify(spec.default);
  input.placeholder = { list: '["a", "b"]', object: '{"key": "value"}' }[spec.type] ?? spec.description ?? "";
  return input;
}

function readExtraInputs(flow) {
  const values = {};
  for (const control of ui.extra.querySelectorAll(".extra-input")) {
    const value = controlValue(control, flow.inputs?.[control.name] ?? {});
    if (value === INVALID) {
      control.reportValidity();
      control.focus();
      return null;
    }
    values[control.name] = value;
  }
  return values;
}

function controlValue(control, spec) {
  control.setCustomValidity("");
  if (control.type === "checkbox") return control.checked;
  const raw = control.value.trim();
  const invalid = (why) => {
    control.setCustomValidity(`${control.name} ${why}`);
    return INVALID;
  };
  if (!raw) return invalid("is required");
  if (spec.type === "integer" || spec.type === "number") {
    const n = Number(raw);
    return Number.isFinite(n) && (spec.type === "number" || Number.isInteger(n)) ? n : invalid(`must be ${spec.type === "integer" ? "a whole number" : "a number"}`);
  }
  if (spec.type === "list" || spec.type === "object") {
    let value;
    try {
      value = JSON.parse(raw);
    } catch {
      return invalid(`must be JSON (${spec.type === "list" ? "[...]" : "{...}"})`);
    }
    const ok = spec.type === "list" ? Array.isArray(value) : value !== null && typeof value === "object" && !Array.isArray(value);
    return ok ? value : invalid(`must be a JSON ${spec.type}`);
  }
  return control.value;
}

// ---- conversation -------------------------------------------------------------------------------

function clearConversation(flow) {
  ui.messages.replaceChildren(el("p", "empty-hint", flow ? `Ask ${flow.name} a question to start.` : "Ask a question to start."));
  app.pinned = true;
}

function restoreConversation(flow) {
  clearConversation(flow);
  for (const turn of loadHistory(flow.name)) {
    if (turn.role === "user") {
      addUserMessage(turn.content);
    } else {
      const assistant = new AssistantTurn(null, null);
      assistant.runId = turn.runId ?? null;
      assistant.finish({ answer: turn.content, sources: turn.sources, restored: true }); // before adding: not announced
      addMessage(assistant.root);
    }
  }
  keepPinned(true);
}

function addMessage(node) {
  ui.messages.querySelector(".empty-hint")?.remove();
  ui.messages.append(node);
}

function addUserMessage(text) {
  const msg = el("article", "msg user");
  msg.setAttribute("aria-label", "You");
  msg.append(el("div", "text", text));
  addMessage(msg);
  return msg;
}

function keepPinned(force = false) {
  if (force || app.pinned) ui.messages.scrollTop = ui.messages.scrollHeight;
}

/** The question as asked: false when it cannot start (no flow, a run going, an invalid input). */
function ask(question) {
  const flow = app.flow;
  if (!flow || app.controller || !question.trim()) return false;
  const extras = readExtraInputs(flow);
  if (!extras) return false;
  const chat = chatSpec(flow);
  const inputs = { ...extras, [chat.message]: question };
  if (chat.history) inputs[chat.history] = historyForApi(flow, chat);
  const turn = new AssistantTurn(question, addUserMessage(question));
  addMessage(turn.root);
  keepPinned(true);
  runTurn(flow, inputs, turn);
  return true;
}

function historyForApi(flow, chat) {
  const messages = loadHistory(flow.name).map(({ role, content }) => ({ role, content }));
  const max = flow.inputs?.[chat.history]?.max_length;
  return max ? messages.slice(-max) : messages;
}

async function runTurn(flow, inputs, turn) {
  const controller = new AbortController();
  app.controller = controller;
  setRunning(true);
  resetRunPanel();
  try {
    await streamRun(flow, inputs, turn, controller.signal);
  } catch (err) {
    turn.fail(controller.signal.aborted ? { kind: "cancelled" } : err instanceof ApiError ? err : { kind: "connection_lost" });
  } finally {
    if (app.controller === controller) { // else "New chat" dropped this run (and maybe started another)
      settleSteps(controller.signal.aborted ? "stopped" : "cancelled");
      app.controller = null;
    }
    setRunning(app.controller !== null);
  }
  if (turn.ok) saveTurn(flow.name, turn.question, turn);
}

async function streamRun(flow, inputs, turn, signal) {
  const response = await api(`api/flows/${encodeURIComponent(flow.name)}/runs`, {
    method: "POST", body: { inputs, stream: true }, headers: { Accept: "text/event-stream" }, signal,
  });
  const run = { turn, chat: chatSpec(flow) };
  for await (const message of readSse(response.body)) {
    const event = parseEvent(message);
    if (event && Object.prototype.hasOwnProperty.call(HANDLERS, event.type)) HANDLERS[event.type](run, event);
    if (turn.done) return;
  }
  turn.fail({ kind: "connection_lost" });
}

/** Ask the failed turn's question again, in its place. */
function retry(turn) {
  if (!ask(turn.question)) return;
  turn.userEl?.remove();
  turn.root.remove();
}

function setRunning(running) {
  ui.send.disabled = running || !app.flow;
  ui.stop.hidden = !running;
  ui.stop.disabled = !running;
  ui.flowSelect.disabled = running || app.flows.length === 0;
}

// ---- run events ---------------------------------------------------------------------------------

const RETRACTED = {
  fallback: "The first model failed part-way; the answer restarted with a fallback.",
  offline: "The models are unavailable; the partial answer was replaced.",
};

const HANDLERS = {
  run_started: (run, ev) => { run.turn.runId = ev.run_id ?? null; },
  node_started: (run, ev) => {
    const attempt = ev.data.attempt ?? 1;
    updateStep(ev.node, { state: "running", detail: attempt > 1 ? `retry ${attempt - 1}` : "", ms: null });
    run.turn.setStatus(attempt > 1 ? `Retrying ${ev.node}…` : `Running ${ev.node}…`);
  },
  node_progress: (run, ev) => {
    const { done, total, message } = ev.data;
    const text = [message, total ? `${done ?? 0}/${total}` : ""].filter(Boolean).join(" ");
    updateStep(ev.node, { detail: text });
    if (text) run.turn.setStatus(text);
  },
  chunk: (run, ev) => {
    if (run.chat.answer && ev.data.output === run.chat.answer) run.turn.append(String(ev.data.text ?? ""), ev.node);
  },
  retract: (run, ev) => {
    const check = ev.data.check ? ` (${ev.data.check})` : "";
    run.turn.retract(ev.node, RETRACTED[ev.data.reason] ?? `The answer so far was withdrawn by a safety check${check}.`);
  },
  guardrail_flagged: (run, ev) => updateStep(ev.node, { detail: `${ev.data.check}: ${ev.data.action}` }),
  route_chosen: (run, ev) => updateStep(ev.node, { detail: `→ ${ev.data.branch}` }),
  model_queued: (run, ev) => {
    updateStep(ev.node, { detail: `waiting for ${ev.data.model}` });
    run.turn.setStatus("Waiting for the model…");
  },
  node_retry: (run, ev) => {
    const kind = ev.data.error?.kind ?? "error";
    updateStep(ev.node, { state: "retrying", detail: `${kind}, retrying in ${ev.data.delay ?? 0} s` });
  },
  cache_hit: (run, ev) => updateStep(ev.node, { detail: `cache hit (${ev.data.tier})` }),
  node_fallback: (run, ev) => updateStep(ev.node, { state: "fallback", detail: `${ev.data.error?.kind ?? "failed"}, using ${ev.data.to}` }),
  node_skipped: (run, ev) => updateStep(ev.node, { state: "skipped", detail: ev.data.reason ?? "" }),
  node_finished: (run, ev) => {
    const { cached, via, attempts, duration_ms: ms } = ev.data;
    const detail = via ? `via ${via}` : cached ? `cached (${cached})` : attempts > 1 ? `${attempts} attempts` : undefined;
    updateStep(ev.node, { state: cached ? "cached" : "finished", detail, ms: ms ?? null });
  },
  node_failed: (run, ev) => updateStep(ev.node, { state: "failed", detail: ev.data.error?.message ?? ev.data.error?.kind ?? "" }),
  run_finished: (run, ev) => {
    const outputs = ev.data.outputs ?? {};
    run.turn.finish({
      answer: pickAnswer(outputs, run.chat),
      sources: run.chat.sources ? outputs[run.chat.sources] : null,
      cachedAnswer: ev.data.cached_answer,
    });
  },
  run_failed: (run, ev) => run.turn.fail(ev.data.error ?? { kind: "internal" }),
};

function pickAnswer(outputs, chat) {
  const value = chat.answer ? outputs[chat.answer] : Object.values(outputs).find((v) => typeof v === "string");
  if (value === undefined || value === null || typeof value === "string") return value ?? null;
  return `\`\`\`json\n${JSON.stringify(value, null, 2)}\n\`\`\``;
}

// ---- steps --------------------------------------------------------------------------------------

function resetRunPanel() {
  ui.steps.replaceChildren();
  ui.stepsEmpty.hidden = false;
  resetGraph(ui.graph);
}

function stepItem(node) {
  const found = [...ui.steps.children].find((li) => li.dataset.node === node);
  if (found) return found;
  const li = el("li", "step");
  li.dataset.node = node;
  li.append(el("span", "step-icon"), el("span", "step-name", node), el("span", "step-detail"), el("span", "step-time"));
  li.firstChild.setAttribute("aria-hidden", "true");
  ui.steps.append(li);
  ui.stepsEmpty.hidden = true;
  return li;
}

/** Steps still running when the run ended never finished: show them as skipped, not spinning. */
function settleSteps(why) {
  for (const li of ui.steps.querySelectorAll('li.step[data-state="running"], li.step[data-state="retrying"]')) {
    updateStep(li.dataset.node, { state: "skipped", detail: why });
  }
}

/** state: running|finished|failed|skipped|cached|retrying|fallback; detail/ms left undefined keep theirs. */
function updateStep(node, { state, detail, ms } = {}) {
  if (!node) return;
  const li = stepItem(node);
  if (state) {
    li.dataset.state = state;
    setNodeState(ui.graph, node, state);
  }
  if (detail !== undefined) li.querySelector(".step-detail").textContent = detail ? ` — ${detail}` : "";
  if (ms !== undefined) li.querySelector(".step-time").textContent = ms === null ? "" : ` ${formatMs(ms)}`;
}

// ---- one assistant message ----------------------------------------------------------------------

class AssistantTurn {
  constructor(question, userEl) {
    this.question = question;
    this.userEl = userEl;
    this.text = "";
    this.runId = null;
    this.sources = null;
    this.producers = new Set(); // nodes whose chunks are in the answer: a retract from one clears it
    this.done = false;
    this.ok = false;
    this.frame = 0;
    this.started = performance.now();
    this.root = el("article", "msg assistant");
    this.root.setAttribute("aria-label", "Answer");
    this.status = el("p", "status");
    this.typing = el("span", "typing");
    this.typing.setAttribute("aria-hidden", "true");
    this.typing.append(el("span"), el("span"), el("span"));
    this.statusText = el("span", "status-text", "Thinking…");
    this.status.append(this.typing, this.statusText);
    this.answer = el("div", "answer");
    this.answer.setAttribute("aria-live", "polite");
    this.answer.setAttribute("aria-busy", "true"); // announce the answer once, not every token
    this.notes = el("div", "notes");
    this.root.append(this.status, this.answer, this.notes);
  }

  setStatus(text) {
    this.statusText.textContent = text;
  }

  append(text, node) {
    if (!text) return;
    if (node) this.producers.add(node);
    this.text += text;
    this.typing.hidden = true;
    if (!this.frame) this.frame = requestAnimationFrame(() => this.render()); // one re-render per frame
  }

  render() {
    cancelAnimationFrame(this.frame);
    this.frame = 0;
    this.answer.replaceChildren(renderMarkdown(this.text));
    keepPinned();
  }

  retract(node, note) {
    if (node && !this.producers.has(node)) return; // another node's text, not the answer
    this.producers.clear();
    this.text = "";
    this.typing.hidden = false;
    this.render();
    this.note(note);
  }

  note(text) {
    this.notes.append(el("p", "note", text));
  }

  settle() {
    this.done = true;
    this.render();
    this.status.remove();
    this.answer.setAttribute("aria-busy", "false");
  }

  finish({ answer, sources, cachedAnswer, restored = false }) {
    if (this.done) return;
    if (typeof answer === "string" && answer) this.text = answer; // the final output is authoritative
    this.ok = true;
    this.settle();
    if (!this.text.trim()) this.note("The flow finished without an answer.");
    if (cachedAnswer) this.note("models unavailable: cached answer to a similar question");
    if (Array.isArray(sources) && sources.length) {
      this.sources = sources;
      this.root.append(sourcesList(sources));
    }
    this.root.append(this.actions(restored ? null : performance.now() - this.started));
    keepPinned();
  }

  fail(error) {
    if (this.done) return;
    this.settle();
    const box = el("div", "error");
    box.setAttribute("role", "alert");
    box.append(el("p", "error-text", friendlyError(error)));
    if (showsDetail(error) && error.message) box.append(el("p", "error-detail", error.message));
    const again = button("retry", "Try again");
    again.addEventListener("click", () => retry(this));
    box.append(again);
    this.root.append(box);
    keepPinned();
  }

  actions(elapsedMs) {
    const bar = el("div", "actions");
    if (elapsedMs !== null) bar.append(el("span", "meta", formatMs(elapsedMs)));
    if (this.runId) {
      const trace = button("open-trace ghost", "Trace");
      trace.addEventListener("click", () => openTrace(this.runId));
      bar.append(trace, feedbackWidget(this.runId));
    }
    return bar;
  }
}

// ---- errors -------------------------------------------------------------------------------------

function friendlyError(error) {
  const kind = error?.kind ?? "internal";
  const wait = error?.retryAfter ? `${error.retryAfter} s` : "a moment";
  if (error?.status === 401) return "This server needs an API key: enter it above, then try again.";
  if (error?.status === 413 || error?.status === 422) return error.message || "The question could not be accepted.";
  if (error?.status === 429) return `Too many requests, try again in ${wait}.`;
  if (error?.status === 503 && kind !== "shutdown") return `The server is busy, try again in ${wait}.`;
  switch (kind) {
    case "rate_limit":
    case "budget":
      return `Too many requests, try again in ${wait}.`;
    case "overloaded":
      return `The server is busy, try again in ${wait}.`;
    case "timeout":
      return "The answer took too long. Please try again.";
    case "shutdown":
      return "The server restarted while answering. Please ask again.";
    case "cancelled":
      return "Stopped.";
    case "connection_lost":
      return "Connection lost.";
    default:
      return `Something went wrong (${kind}).`;
  }
}

function showsDetail(error) {
  const plain = ["rate_limit", "budget", "overloaded", "timeout", "shutdown", "cancelled", "connection_lost"];
  return ![401, 413, 422, 429, 503].includes(error?.status) && !plain.includes(error?.kind);
}

// ---- sources and citation chips ----------------------------------------------------------------

function sourcesList(sources) {
  const box = el("section", "sources");
  box.setAttribute("aria-label", "Sources");
  box.append(el("p", "sources-title", "Sources"));
  const list = el("ol");
  for (const source of sources) list.append(sourceItem(source ?? {}));
  box.append(list);
  return box;
}

function sourceItem(source) {
  const li = el("li", "source");
  li.dataset.marker = String(source.marker ?? "");
  const title = source.title || source.source || source.label || "untitled";
  const where = [];
  const heading = source.title && source.heading?.startsWith(`${source.title} > `) ? source.heading.slice(source.title.length + 3) : source.heading;
  if (heading && heading !== source.title) where.push(heading);
  if (source.title && source.source) where.push(source.source);
  if (Array.isArray(source.pages)) where.push(rangeText("p.", "pp.", source.pages));
  else if (Array.isArray(source.lines)) where.push(rangeText("line", "lines", source.lines));
  li.append(el("span", "marker", source.marker ?? ""), el("span", "source-title", title));
  if (where.length) li.append(el("span", "source-where", where.join(" · ")));
  return li;
}

function rangeText(one, many, [first, last]) {
  return first === last || last === undefined ? `${one} ${first}` : `${many} ${first}–${last}`;
}

const bareMarker = (marker) => String(marker ?? "").replace(/^\[|\]$/g, "");

function highlightSources(target, on) {
  const chip = target instanceof Element ? target.closest(".cite") : null;
  if (!chip) return null;
  const matches = [...(chip.closest(".msg")?.querySelectorAll("li.source") ?? [])]
    .filter((li) => bareMarker(li.dataset.marker) === bareMarker(chip.dataset.marker));
  for (const li of matches) li.classList.toggle("highlight", on);
  return matches[0] ?? null;
}

function bindCitationChips() {
  ui.messages.addEventListener("mouseover", (e) => highlightSources(e.target, true));
  ui.messages.addEventListener("mouseout", (e) => highlightSources(e.target, false));
  ui.messages.addEventListener("focusin", (e) => highlightSources(e.target, true));
  ui.messages.addEventListener("focusout", (e) => highlightSources(e.target, false));
  const reveal = (e) => highlightSources(e.target, true)?.scrollIntoView({ block: "nearest", behavior: "smooth" });
  ui.messages.addEventListener("click", reveal);
  ui.messages.addEventListener("keydown", (e) => {
    if ((e.key === "Enter" || e.key === " ") && e.target instanceof Element && e.target.closest(".cite")) {
      e.preventDefault();
      reveal(e);
    }
  });
}

// ---- feedback -----------------------------------------------------------------------------------

function feedbackWidget(runId) {
  const box = el("div", "feedback");
  const up = button("thumb-up", undefined, "Good answer");
  const down = button("thumb-down", undefined, "Bad answer");
  up.append(thumbIcon(false));
  down.append(thumbIcon(true));
  const form = el("div", "feedback-form");
  form.hidden = true;
  const comment = el("textarea", "comment");
  comment.rows = 2;
  comment.maxLength = 2000;
  comment.placeholder = "What was good or wrong? (optional)";
  comment.setAttribute("aria-label", "Feedback comment");
  const send = button("send-feedback", "Send feedback");
  const done = el("p", "feedback-done");
  done.setAttribute("role", "status");
  form.append(comment, send);
  box.append(up, down, form, done);
  let score = 0;
  for (const [thumb, value] of [[up, 1], [down, -1]]) {
    thumb.setAttribute("aria-pressed", "false");
    thumb.addEventListener("click", () => {
      score = value;
      up.setAttribute("aria-pressed", String(value === 1));
      down.setAttribute("aria-pressed", String(value === -1));
      form.hidden = false;
      comment.focus();
    });
  }
  send.addEventListener("click", async () => {
    send.disabled = true;
    try {
      await api(`api/runs/${encodeURIComponent(runId)}/feedback`, { method: "POST", body: { score, comment: comment.value.trim() || null } });
      form.hidden = true;
      up.disabled = true;
      down.disabled = true;
      done.textContent = "Thanks for the feedback.";
    } catch (err) {
      send.disabled = false;
      done.textContent = `Could not send the feedback: ${err.message}`;
    }
  });
  return box;
}

// Drawn, not an emoji: emoji fonts are missing on some systems and no font may be fetched.
function thumbIcon(down) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("aria-hidden", "true");
  svg.setAttribute("class", "icon");
  const path = document.createElementNS("http://www.w3.org/2000/svg", "path");
  path.setAttribute("d", "M7 10v11H3V10h4zm0 0 4-8c1.7 0 3 1.3 3 3v4h5.5a2 2 0 0 1 2 2.3l-1.4 8a2 2 0 0 1-2 1.7H7");
  if (down) path.setAttribute("transform", "rotate(180 12 12)");
  svg.append(path);
  return svg;
}

// ---- trace waterfall ----------------------------------------------------------------------------

async function fetchTrace(runId) {
  const path = `api/runs/${encodeURIComponent(runId)}`;
  try {
    return await (await api(path)).json();
  } catch (err) {
    if (err.status !== 404) throw err;
    await sleep(500); // the trace is written just after the stream ends
    return (await api(path)).json();
  }
}

async function openTrace(runId) {
  app.traceFor = runId;
  const status = ui.trace.querySelector(".trace-status");
  status.textContent = "Loading the trace…";
  ui.trace.querySelector(".trace-totals").replaceChildren();
  ui.trace.querySelector(".waterfall").replaceChildren();
  ui.trace.hidden = false;
  ui.trace.scrollIntoView({ block: "nearest", behavior: "smooth" });
  try {
    const trace = await fetchTrace(runId);
    if (app.traceFor !== runId) return; // another trace was opened meanwhile
    status.textContent = `Run ${String(trace.run_id ?? runId).slice(0, 12)} · ${trace.status ?? ""}`;
    renderTrace(trace);
  } catch (err) {
    if (app.traceFor === runId) status.textContent = `Could not load the trace: ${err.message}`;
  }
}

function renderTrace(trace) {
  const spans = Array.isArray(trace.spans) ? [...trace.spans] : [];
  const total = trace.duration_ms || Math.max(1, ...spans.map((s) => s.end_ms ?? 0));
  const totals = [
    ["Duration", formatMs(trace.duration_ms)],
    ["First token", formatMs(trace.ttft_ms)],
    ["Tokens", `${trace.input_tokens ?? 0} in · ${trace.output_tokens ?? 0} out`],
    ["Cost", formatCost(trace.cost)],
    ["Cache hits", String(trace.cache_hits ?? 0)],
  ];
  ui.trace.querySelector(".trace-totals").replaceChildren(...totals.map(([name, value]) => {
    const row = el("div", "total");
    row.append(el("dt", null, name), el("dd", null, value));
    return row;
  }));
  spans.sort((a, b) => (a.start_ms ?? 0) - (b.start_ms ?? 0));
  ui.trace.querySelector(".waterfall").replaceChildren(...spans.map((s) => spanRow(s, total)));
}

const SPAN_STATUSES = ["ok", "error", "skipped", "cancelled"];

function spanRow(span, total) {
  const attrs = span.attributes ?? {};
  const start = span.start_ms ?? 0;
  const end = span.end_ms ?? start;
  const row = el("li", `span status-${SPAN_STATUSES.includes(span.status) ? span.status : "unknown"}`);
  row.dataset.node = span.node ?? "";
  const name = el("span", "span-name", span.node ?? "?");
  name.append(el("span", "span-attempt", ` #${span.attempt ?? 1}`));
  const track = el("span", "span-track");
  const bar = el("span", "span-bar");
  const width = Math.min(100, Math.max(0.5, ((end - start) / total) * 100));
  bar.style.width = `${width}%`;
  bar.style.left = `${Math.min(100 - width, Math.max(0, (start / total) * 100))}%`;
  track.append(bar);
  const tokensIn = attrs["gen_ai.usage.input_tokens"];
  const tokensOut = attrs["gen_ai.usage.output_tokens"];
  const tokens = tokensIn || tokensOut ? `${tokensIn ?? 0}→${tokensOut ?? 0} tok` : "";
  const cost = typeof attrs["rill.cost_usd"] === "number" ? formatCost(attrs["rill.cost_usd"]) : "";
  row.append(name, track, el("span", "span-duration", formatMs(end - start)), el("span", "span-tokens", tokens),
    el("span", "span-cost", cost), el("span", "span-cache", attrs["rill.cache.tier"] ?? ""));
  const why = [span.status, attrs["error.type"], attrs["rill.error.message"]].filter(Boolean).join(": ");
  row.title = `${span.node} (${span.node_type ?? "node"}), attempt ${span.attempt ?? 1}: ${why}`;
  return row;
}

// ---- API key ------------------------------------------------------------------------------------

function showAuth() {
  ui.auth.hidden = false;
  ui.apiKey.focus();
}

function bindAuth() {
  ui.authForm.addEventListener("submit", (e) => {
    e.preventDefault();
    const key = ui.apiKey.value.trim();
    if (!key) return;
    storageSet(STORE.key, key);
    ui.apiKey.value = "";
    ui.auth.hidden = true;
    if (!app.flows.length) loadFlows();
  });
}

// ---- wiring -------------------------------------------------------------------------------------

function autogrow() {
  ui.question.style.height = "auto";
  ui.question.style.height = `${Math.min(ui.question.scrollHeight, 200)}px`;
}

function bindComposer() {
  ui.composer.addEventListener("submit", (e) => {
    e.preventDefault();
    if (ask(ui.question.value.trim())) {
      ui.question.value = "";
      autogrow();
    }
  });
  ui.question.addEventListener("input", autogrow);
  ui.question.addEventListener("keydown", (e) => {
    if (e.key !== "Enter" || e.shiftKey || e.isComposing) return;
    e.preventDefault();
    if (!app.controller) ui.composer.requestSubmit();
  });
  ui.stop.addEventListener("click", () => app.controller?.abort());
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && app.controller) app.controller.abort();
  });
}

function bindPage() {
  ui.flowSelect.addEventListener("change", () => selectFlow(ui.flowSelect.value));
  ui.newChat.addEventListener("click", () => {
    app.controller?.abort();
    app.controller = null;
    setRunning(false);
    if (app.flow) storageSet(STORE.history(app.flow.name), null);
    clearConversation(app.flow);
    resetRunPanel();
    ui.trace.hidden = true;
    ui.question.focus();
  });
  ui.messages.addEventListener("scroll", () => {
    const m = ui.messages;
    app.pinned = m.scrollHeight - m.scrollTop - m.clientHeight < 48;
  });
  ui.trace.querySelector(".close-trace").addEventListener("click", () => {
    ui.trace.hidden = true;
    app.traceFor = null;
  });
}

bindComposer();
bindPage();
bindAuth();
bindCitationChips();
loadFlows();
