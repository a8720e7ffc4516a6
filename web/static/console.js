// The foxctl browser console: pick or create an agent and a session, then talk to it
// over /ws/console/{session_id}. Plain JavaScript, no build step.
"use strict";

const TOKEN_KEY = "foxctl.token";
const MAX_BACKOFF_MS = 10000;
const FINAL_STATUSES = new Set(["succeeded", "failed", "cancelled"]);

const state = {
  token: sessionStorage.getItem(TOKEN_KEY) || "",
  agentId: null,
  sessionId: null,
  socket: null,
  // Highest persisted event sequence rendered; a reconnect resumes after it.
  lastSeq: 0,
  retries: 0,
  reconnectTimer: null,
  // Asks sent but not yet acknowledged, by client id. They are sent again after a
  // reconnect; the client id makes the server accept each one once.
  pendingAsks: new Map(),
  turns: new Map(),
  activeTurns: new Set(),
};

const $ = (id) => document.getElementById(id);

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  if (response.status !== 204) {
    data = await response.json().catch(() => null);
  }
  if (!response.ok) {
    const error = (data && data.error) || {};
    if (response.status === 401) showTokenForm();
    throw new ApiError(
      response.status,
      error.code || "http_error",
      error.message || `${method} ${path} answered HTTP ${response.status}`,
    );
  }
  return data;
}

function notify(message) {
  const notice = $("notice");
  notice.textContent = message;
  notice.hidden = !message;
}

function showTokenForm() {
  $("token-form").hidden = false;
  $("token-input").focus();
}

function setConnection(stateName, text) {
  const el = $("connection");
  el.dataset.state = stateName;
  el.textContent = text;
}

// -- agents and sessions -----------------------------------------------------------

async function loadAgents(selectId) {
  const page = await api("GET", "/api/agents?limit=500");
  const select = $("agent-select");
  select.replaceChildren();
  for (const agent of page.items) {
    const option = document.createElement("option");
    option.value = agent.id;
    option.textContent = `${agent.name} (${agent.role})`;
    select.append(option);
  }
  if (page.items.length === 0) {
    $("new-agent").open = true;
    state.agentId = null;
  } else {
    const wanted = page.items.find((agent) => agent.id === selectId);
    state.agentId = wanted ? wanted.id : page.items[0].id;
    select.value = state.agentId;
  }
  $("new-session").disabled = !state.agentId;
  await loadSessions();
}

async function loadSessions() {
  const list = $("session-list");
  list.replaceChildren();
  if (!state.agentId) return;
  const page = await api("GET", `/api/sessions?agent_id=${encodeURIComponent(state.agentId)}&limit=100`);
  for (const session of page.items) {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.sessionId = session.id;
    button.textContent = session.title || session.id;
    button.title = session.id;
    button.setAttribute("aria-current", String(session.id === state.sessionId));
    button.addEventListener("click", () => openSession(session.id, session.title));
    item.append(button);
    list.append(item);
  }
}

async function createAgent(event) {
  event.preventDefault();
  const form = event.target;
  const body = {
    name: form.name.value.trim(),
    role: form.role.value,
    system_prompt: form.system_prompt.value,
  };
  const model = form.model.value.trim();
  if (model) body.model = model;
  try {
    const agent = await api("POST", "/api/agents", body);
    form.reset();
    $("new-agent").open = false;
    notify("");
    await loadAgents(agent.id);
  } catch (error) {
    notify(`Could not create the agent: ${error.message}`);
  }
}

async function createSession() {
  try {
    const started = new Date().toISOString().slice(0, 16).replace("T", " ");
    const session = await api("POST", "/api/sessions", {
      agent_id: state.agentId,
      title: `Console session, ${started} UTC`,
    });
    await loadSessions();
    await openSession(session.id, session.title);
  } catch (error) {
    notify(`Could not create a session: ${error.message}`);
  }
}

// -- the conversation --------------------------------------------------------------

async function openSession(sessionId, title) {
  closeSocket();
  state.sessionId = sessionId;
  state.lastSeq = 0;
  state.retries = 0;
  state.pendingAsks.clear();
  state.turns.clear();
  state.activeTurns.clear();
  $("log").replaceChildren();
  $("session-title").textContent = title ? `${title} (${sessionId})` : `Session ${sessionId}`;
  $("turn-status").textContent = "";
  history.replaceState(null, "", `#session=${encodeURIComponent(sessionId)}`);
  for (const button of $("session-list").querySelectorAll("button")) {
    button.setAttribute("aria-current", String(button.dataset.sessionId === sessionId));
  }
  updateControls();
  await connect();
}

async function connect() {
  const sessionId = state.sessionId;
  if (!sessionId) return;
  setConnection(state.retries ? "reconnecting" : "connecting", state.retries
    ? `Reconnecting (resuming after event ${state.lastSeq})`
    : "Connecting");
  let token;
  try {
    token = (await api("POST", `/api/sessions/${encodeURIComponent(sessionId)}/console-token`)).token;
  } catch (error) {
    if (error.status === 401 || error.status === 404) {
      setConnection("failed", `Not connected: ${error.message}`);
      return;
    }
    scheduleReconnect(`cannot get a console token: ${error.message}`);
    return;
  }
  if (sessionId !== state.sessionId) return;
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const query = new URLSearchParams({ after: String(state.lastSeq), token });
  const socket = new WebSocket(
    `${scheme}//${location.host}/ws/console/${encodeURIComponent(sessionId)}?${query}`,
  );
  state.socket = socket;
  socket.addEventListener("open", () => {
    if (socket !== state.socket) return;
    state.retries = 0;
    setConnection("live", "Live");
    updateControls();
    for (const ask of state.pendingAsks.values()) send(ask);
  });
  socket.addEventListener("message", (message) => {
    if (socket !== state.socket) return;
    let frame;
    try {
      frame = JSON.parse(message.data);
    } catch {
      return;
    }
    handleFrame(frame);
  });
  socket.addEventListener("close", (close) => {
    if (socket !== state.socket) return;
    state.socket = null;
    updateControls();
    if (close.code === 4401) {
      setConnection("failed", "Not connected: the token was refused");
      showTokenForm();
    } else if (close.code === 4404) {
      setConnection("failed", "Not connected: the session does not exist");
    } else if (close.code === 4403) {
      setConnection("failed", "Not connected: this page's origin is not allowed");
    } else {
      scheduleReconnect(closeReason(close));
    }
  });
}

function closeReason(close) {
  if (close.code === 1012) return "the server restarted";
  if (close.code === 1013) return "the console fell behind";
  return `connection lost (code ${close.code})`;
}

function scheduleReconnect(reason) {
  clearTimeout(state.reconnectTimer);
  const delay = Math.min(MAX_BACKOFF_MS, 500 * 2 ** state.retries);
  state.retries += 1;
  setConnection("reconnecting", `Reconnecting in ${Math.ceil(delay / 1000)} s: ${reason}`);
  state.reconnectTimer = setTimeout(connect, delay);
}

function closeSocket() {
  clearTimeout(state.reconnectTimer);
  const socket = state.socket;
  state.socket = null;
  if (socket) socket.close(1000);
  setConnection("idle", "Not connected");
}

function send(frame) {
  if (!state.socket || state.socket.readyState !== WebSocket.OPEN) return false;
  state.socket.send(JSON.stringify(frame));
  return true;
}

function handleFrame(frame) {
  if (frame.type === "event") {
    renderEvent(frame.event);
  } else if (frame.type === "ack") {
    if (frame.request === "ask") state.pendingAsks.delete(frame.client_id);
  } else if (frame.type === "error") {
    notify(`${frame.message} (${frame.code})`);
  }
}

function turnView(turnId) {
  let view = state.turns.get(turnId);
  if (view) return view;
  const entry = document.createElement("li");
  entry.className = "entry assistant";
  entry.dataset.turnId = turnId;
  const who = document.createElement("div");
  who.className = "who";
  who.textContent = "Agent";
  const tools = document.createElement("div");
  tools.className = "tools";
  const text = document.createElement("div");
  text.className = "text";
  const status = document.createElement("div");
  status.className = "state";
  entry.append(who, tools, text, status);
  $("log").append(entry);
  view = { entry, tools, text, status, calls: new Map(), final: false };
  state.turns.set(turnId, view);
  return view;
}

function setTurnStatus(turnId, status, detail) {
  const view = turnView(turnId);
  view.status.dataset.status = status;
  view.status.textContent = detail ? `${status}: ${detail}` : status;
  view.entry.dataset.status = status;
  if (FINAL_STATUSES.has(status)) {
    state.activeTurns.delete(turnId);
    view.entry.classList.remove("streaming");
  } else {
    state.activeTurns.add(turnId);
  }
  const running = [...state.activeTurns];
  $("turn-status").textContent = running.length
    ? `Turn ${running[running.length - 1]} is ${state.turns.get(running[running.length - 1]).status.dataset.status}`
    : "";
  updateControls();
}

function renderEvent(event) {
  if (event.type === "turn.delta") {
    if (event.after_seq < state.lastSeq && state.turns.get(event.turn_id)?.final) return;
    const view = turnView(event.turn_id);
    if (view.final) return;
    view.entry.classList.add("streaming");
    view.text.textContent += event.text;
    scrollToEnd();
    return;
  }
  if (event.seq <= state.lastSeq) return;
  state.lastSeq = event.seq;
  const data = event.data || {};
  switch (event.type) {
    case "message.created":
      if (data.role === "user") {
        appendUserMessage(data.content, event.turn_id);
      } else {
        const view = turnView(event.turn_id);
        view.text.textContent = data.content;
        view.final = true;
        view.entry.classList.remove("streaming");
      }
      break;
    case "turn.queued":
      setTurnStatus(event.turn_id, "queued");
      break;
    case "turn.started":
      setTurnStatus(event.turn_id, "running");
      break;
    case "turn.requeued":
      setTurnStatus(event.turn_id, "queued", data.reason || "requeued");
      break;
    case "turn.cancel_requested":
      setTurnStatus(event.turn_id, "cancelling");
      break;
    case "tool.called":
      renderToolCall(event.turn_id, data);
      break;
    case "tool.result":
      renderToolResult(event.turn_id, data);
      break;
    case "turn.succeeded":
      setTurnStatus(event.turn_id, "succeeded");
      break;
    case "turn.failed":
      setTurnStatus(event.turn_id, "failed", data.error || data.reason || "");
      break;
    case "turn.cancelled":
      setTurnStatus(event.turn_id, "cancelled");
      break;
    default:
      break;
  }
  scrollToEnd();
}

function appendUserMessage(content, turnId) {
  const entry = document.createElement("li");
  entry.className = "entry user";
  const who = document.createElement("div");
  who.className = "who";
  who.textContent = "You";
  const text = document.createElement("div");
  text.className = "text";
  text.textContent = content;
  entry.append(who, text);
  $("log").append(entry);
  // The agent's reply to this message goes right after it.
  turnView(turnId);
}

function renderToolCall(turnId, data) {
  const view = turnView(turnId);
  const details = document.createElement("details");
  details.className = "tool";
  const summary = document.createElement("summary");
  summary.textContent = `Tool call: ${data.name}`;
  const args = document.createElement("pre");
  args.textContent = formatArguments(data.arguments);
  details.append(summary, args);
  view.tools.append(details);
  view.calls.set(data.call_id, { details, summary });
}

function renderToolResult(turnId, data) {
  const view = turnView(turnId);
  let call = view.calls.get(data.call_id);
  if (!call) {
    renderToolCall(turnId, { call_id: data.call_id, name: data.name, arguments: {} });
    call = view.calls.get(data.call_id);
  }
  call.details.dataset.ok = String(Boolean(data.ok));
  call.summary.textContent = `Tool call: ${data.name} (${data.ok ? "done" : "failed"})`;
  const output = document.createElement("pre");
  output.textContent = data.output || "";
  call.details.append(output);
}

function formatArguments(args) {
  if (typeof args === "string") return args;
  try {
    return JSON.stringify(args, null, 2);
  } catch {
    return String(args);
  }
}

function scrollToEnd() {
  const log = $("log");
  log.scrollTop = log.scrollHeight;
}

function updateControls() {
  const live = Boolean(state.socket && state.socket.readyState === WebSocket.OPEN);
  $("composer-input").disabled = !state.sessionId;
  $("send").disabled = !state.sessionId;
  $("cancel").disabled = !live || state.activeTurns.size === 0;
}

function ask(event) {
  event.preventDefault();
  const input = $("composer-input");
  const content = input.value.trim();
  if (!content || !state.sessionId) return;
  const frame = { type: "ask", content, client_id: newClientId() };
  state.pendingAsks.set(frame.client_id, frame);
  // Sent now when the socket is open, or when it reconnects.
  send(frame);
  input.value = "";
  input.focus();
}

function newClientId() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function cancelTurn() {
  send({ type: "cancel" });
}

// -- start ---------------------------------------------------------------------------

async function start() {
  $("token-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    state.token = $("token-input").value.trim();
    sessionStorage.setItem(TOKEN_KEY, state.token);
    $("token-form").hidden = true;
    await boot();
  });
  $("agent-form").addEventListener("submit", createAgent);
  $("agent-select").addEventListener("change", async (event) => {
    state.agentId = event.target.value;
    await loadSessions().catch((error) => notify(error.message));
  });
  $("new-session").addEventListener("click", createSession);
  $("composer").addEventListener("submit", ask);
  $("composer-input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("cancel").addEventListener("click", cancelTurn);
  await boot();
}

async function boot() {
  try {
    const wanted = new URLSearchParams(location.hash.slice(1)).get("session");
    let agentId = null;
    let session = null;
    if (wanted) {
      session = await api("GET", `/api/sessions/${encodeURIComponent(wanted)}`).catch(() => null);
      agentId = session && session.agent_id;
    }
    await loadAgents(agentId);
    notify("");
    if (session) await openSession(session.id, session.title);
  } catch (error) {
    if (error.status !== 401) notify(`Could not load agents: ${error.message}`);
  }
}

document.addEventListener("DOMContentLoaded", start);
