// Drawing the dashboard's state into the page. Server text only ever goes in through
// textContent, never as markup.

import * as fmt from "./format.js";
import { QUEUED, TERMINAL } from "./live.js";

export function byId(id) {
  return document.getElementById(id);
}

function setText(element, text) {
  if (element.textContent !== text) element.textContent = text;
}

// -- live requests ---------------------------------------------------------------------

function createCard(template, record, onCancel) {
  const card = template.content.firstElementChild.cloneNode(true);
  card.dataset.requestId = record.id;
  setText(card.querySelector(".request-id"), record.id);
  const button = card.querySelector(".cancel");
  button.addEventListener("click", () => {
    button.disabled = true;
    setText(button, "Cancelling…");
    onCancel(record.id, () => {
      button.disabled = false;
      setText(button, "Cancel");
    });
  });
  return card;
}

function chunkText(record) {
  if (!record.totalChunks) return "";
  const others = TERMINAL.has(record.status) ? 0 : (record.batchedWith || []).length;
  const batch = others ? ` · batched with ${others} other request${others === 1 ? "" : "s"}` : "";
  return `chunk ${record.chunk}/${record.totalChunks}${batch}`;
}

function updateCard(card, record, position, serverNow) {
  card.dataset.status = record.status;
  card.classList.toggle("own", record.own);
  card.classList.toggle("done", TERMINAL.has(record.status));
  const badge = card.querySelector(".status");
  badge.dataset.status = record.status;
  setText(badge, fmt.statusLabel(record.status));
  setText(card.querySelector(".queue-position"), fmt.position(position));
  setText(card.querySelector(".preview"), record.preview || "");
  const step = record.status === "error" && record.error ? record.error : record.step || "";
  setText(card.querySelector(".step"), step);
  setText(card.querySelector(".chunk"), chunkText(record));
  setText(card.querySelector(".percent"), record.status === QUEUED ? "" : fmt.percent(record.percentage));
  const bar = card.querySelector(".bar");
  bar.setAttribute("aria-valuenow", String(record.percentage || 0));
  bar.querySelector(".fill").style.width = `${Math.min(100, record.percentage || 0)}%`;
  card.querySelector(".cancel").hidden = TERMINAL.has(record.status);
  updateEta(card, record, serverNow);
}

function updateEta(card, record, serverNow) {
  const text = TERMINAL.has(record.status) ? "" : fmt.eta(record.eta, serverNow);
  setText(card.querySelector(".eta"), text);
}

export function renderRequests(live, { serverNow, onCancel }) {
  const list = byId("requests");
  const template = byId("request-template");
  const records = live.list();
  const keep = new Set(records.map((record) => record.id));
  for (const card of [...list.children]) {
    if (!keep.has(card.dataset.requestId)) card.remove();
  }
  records.forEach((record, index) => {
    let card = list.querySelector(`[data-request-id="${CSS.escape(record.id)}"]`);
    if (!card) card = createCard(template, record, onCancel);
    if (list.children[index] !== card) list.insertBefore(card, list.children[index] || null);
    updateCard(card, record, live.position(record.id), serverNow);
  });
  const waiting = live.queue.length;
  setText(byId("queue-length"), waiting ? `· ${waiting} waiting` : "");
  byId("idle").hidden = live.active().length > 0;
}

// Only the countdowns move between events: no request to the server for that.
export function renderEtas(live, serverNow) {
  for (const card of byId("requests").children) {
    const record = live.get(card.dataset.requestId);
    if (record) updateEta(card, record, serverNow);
  }
}

// -- panels ------------------------------------------------------------------------------

function renderFigures(dl, pairs) {
  const nodes = pairs.flatMap(([label, value]) => {
    const dt = document.createElement("dt");
    dt.textContent = label;
    const dd = document.createElement("dd");
    dd.textContent = value;
    return [dt, dd];
  });
  dl.replaceChildren(...nodes);
}

export function renderStatistics(stats) {
  renderFigures(byId("statistics"), [
    ["Requests", String(stats.total_requests)],
    ["Completed", String(stats.completed_requests)],
    ["Errors", String(stats.error_requests)],
    ["Cancelled", String(stats.cancelled_requests)],
    ["Success rate", fmt.percent(stats.success_rate)],
    ["Average time", fmt.seconds(stats.average_duration_seconds)],
    ["Average length", `${stats.average_text_length} chars`],
  ]);
}

export function renderMemory(memory) {
  const dl = byId("memory");
  if (!memory || memory.enabled === false) {
    renderFigures(dl, [["Memory", memory?.note || "not reported"]]);
    return;
  }
  const pairs = [
    ["Process", `${fmt.megabytes(memory.cpu_memory_mb)} (${memory.cpu_memory_percent}%)`],
    ["System free", `${fmt.megabytes(memory.system_memory_available_mb)} of ${fmt.megabytes(memory.system_memory_total_mb)}`],
  ];
  if (memory.gpu_available) {
    pairs.push(["GPU allocated", fmt.megabytes(memory.gpu_memory_allocated_mb)]);
    pairs.push(["GPU reserved", fmt.megabytes(memory.gpu_memory_reserved_mb)]);
    pairs.push(["GPU peak", fmt.megabytes(memory.gpu_memory_max_allocated_mb)]);
  } else {
    pairs.push(["GPU", "none in use"]);
  }
  renderFigures(dl, pairs);
}

function cell(text, className = "") {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

export function renderHistory(items) {
  const rows = items.map((item) => {
    const tr = document.createElement("tr");
    tr.dataset.requestId = item.request_id;
    tr.dataset.status = item.status;
    const id = cell("");
    const code = document.createElement("code");
    code.textContent = item.request_id;
    id.append(code);
    const status = cell("");
    const badge = document.createElement("span");
    badge.className = "badge status";
    badge.dataset.status = item.status;
    badge.textContent = fmt.statusLabel(item.status);
    status.append(badge);
    const audio = item.audio_duration_seconds != null ? fmt.seconds(item.audio_duration_seconds) : "–";
    const text = item.status === "error" && item.error_message ? item.error_message : item.text_preview;
    tr.append(id, status, cell(fmt.seconds(item.duration_seconds), "num"),
              cell(String(item.text_length), "num wide"), cell(audio, "num wide"), cell(text, "text"));
    return tr;
  });
  byId("history").replaceChildren(...rows);
  byId("history-table").hidden = items.length === 0;
  byId("history-empty").hidden = items.length > 0;
}

// -- header ------------------------------------------------------------------------------

export function renderEngine(engine) {
  const badge = byId("engine");
  const state = engine.state || "unknown";
  badge.dataset.state = state;
  let text = `${engine.name || "engine"} · ${state}`;
  if (state === "loading") text += ` ${Math.round(engine.load_progress || 0)}%`;
  if (engine.device) text += ` · ${engine.device}`;
  setText(badge, text);
  badge.title = engine.error || engine.reason || "engine";
}

// The other engines a request's model may choose, each with its state: loading, ready
// (in use, or idle until its keep-alive unloads it), unloaded.
export function renderEngines(engines, defaultName) {
  const badges = Object.values(engines)
    .filter((engine) => engine.name !== defaultName)
    .map((engine) => {
      const badge = document.createElement("span");
      const state = engine.state || "unknown";
      badge.className = "badge";
      badge.dataset.state = state;
      badge.dataset.engine = engine.name;
      let text = `${engine.name} · ${state}`;
      if (state === "loading") text += ` ${Math.round(engine.load_progress || 0)}%`;
      if (state === "ready") text += engine.in_use ? " · in use" : " · idle";
      badge.textContent = text;
      const unloads = engine.unloads_at ? `unloads at ${new Date(engine.unloads_at * 1000).toLocaleTimeString()}` : "";
      badge.title = engine.error || engine.unload_reason || unloads || "engine";
      return badge;
    });
  byId("engines").replaceChildren(...badges);
}

export function renderConnection(state) {
  const badge = byId("connection");
  badge.dataset.state = state;
  const labels = { connecting: "connecting…", live: "live", reconnecting: "reconnecting…", closed: "disconnected" };
  setText(badge, labels[state] || state);
}

export function renderApiBase(base, problem) {
  const line = byId("api-base");
  line.hidden = !base && !problem;
  setText(line, problem ? `API base ignored: ${problem}` : base ? `API: ${base}` : "");
}

export function renderKeyForm(message) {
  byId("key-form").hidden = !message;
  setText(byId("key-message"), message || "");
}

export function renderFormStatus(text, kind = "", requestId = "") {
  const line = byId("form-status");
  line.dataset.kind = kind;
  line.dataset.requestId = requestId;
  setText(line, text);
}
