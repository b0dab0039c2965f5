// The dashboard: a synthesis form, every request's live progress, history, statistics
// and memory. Live updates come only from the event stream (GET status/stream); the
// panels are fetched when the stream (re)starts and when a request ends, never on a timer.

import { Api, apiBaseFrom, keyMayGo, newRequestId } from "./api.js";
import { bytes, percent, position as positionLabel, seconds, statusLabel } from "./format.js";
import { LiveRequests, TERMINAL } from "./live.js";
import * as render from "./render.js";
import { pcmToWav } from "./wav.js";

// Browsers open at most 6 connections to one host: the event stream holds one, and a
// cancel or a panel refresh must still get through while syntheses are waiting.
const MAX_IN_FLIGHT = 3;
const HISTORY_LIMIT = 10;
const DEFAULT_FIELDS = ["exaggeration", "cfg_weight", "temperature"];
const NUMBER_FIELDS = ["speed", ...DEFAULT_FIELDS, "seed"];

const KEY_STORAGE = "chatterbox-status.api-key";

const state = {
  api: new Api(),
  source: null, // the EventSource
  live: new LiveRequests(),
  engine: {}, // the default engine (the header's badge)
  engines: {}, // every engine by name: loaded, loading, in use, idle, unloaded
  sampleRate: 24000,
  clockOffset: 0, // the server's clock minus ours, in seconds
  pending: new Set(), // ids of this page's syntheses still waiting for their audio
  latest: null, // the id of this page's latest synthesis
  audioUrls: [],
};

const serverNow = () => Date.now() / 1000 + state.clockOffset;

// -- live requests -----------------------------------------------------------------------

function drawRequests() {
  render.renderRequests(state.live, { serverNow: serverNow(), onCancel: cancelRequest });
}

function noteClock(timestamp) {
  if (typeof timestamp === "number") state.clockOffset = timestamp - Date.now() / 1000;
}

function onRequestEvent(event) {
  const data = JSON.parse(event.data);
  noteClock(data.timestamp);
  const record = state.live.apply(data);
  drawRequests();
  if (record && record.id === state.latest && state.pending.has(record.id)) showProgress(record);
  if (event.type === "status" && TERMINAL.has(data.status)) refreshPanels();
}

function onSnapshot(event) {
  const data = JSON.parse(event.data);
  noteClock(data.timestamp);
  state.live.apply(data);
  drawRequests();
  resync();
}

function onEngine(event) {
  const data = JSON.parse(event.data);
  const name = data.name || state.engine.name;
  state.engines[name] = { ...state.engines[name], ...data };
  if (!state.engine.name || name === state.engine.name) {
    Object.assign(state.engine, data);
    render.renderEngine(state.engine);
  }
  render.renderEngines(state.engines, state.engine.name);
}

function connect() {
  state.source?.close();
  const source = (state.source = state.api.events());
  render.renderConnection("connecting");
  source.addEventListener("open", () => render.renderConnection("live"));
  source.addEventListener("error", () => {
    if (source.readyState !== EventSource.CLOSED) {
      render.renderConnection("reconnecting"); // the browser retries by itself
      return;
    }
    render.renderConnection("closed");
    // A refused stream does not say why; one request finds out whether it wants a key.
    state.api.json("status").catch(handleError("the status"));
  });
  source.addEventListener("snapshot", onSnapshot);
  source.addEventListener("status", onRequestEvent);
  source.addEventListener("progress", onRequestEvent);
  source.addEventListener("engine", onEngine);
}

async function cancelRequest(requestId, restoreButton) {
  try {
    await state.api.cancel(requestId);
  } catch (error) {
    restoreButton();
    render.renderFormStatus(`Could not cancel ${requestId}: ${error.message}`, "error", requestId);
    if (error.status === 401) handleError("a cancellation")(error);
  }
}

// The form's status line follows the latest synthesis, so a phone sees it without scrolling.
function showProgress(record) {
  const parts = [statusLabel(record.status)];
  const position = state.live.position(record.id);
  if (position) parts.push(positionLabel(position));
  if (record.totalChunks) parts.push(`chunk ${record.chunk}/${record.totalChunks}`);
  if (!TERMINAL.has(record.status) && !position) parts.push(percent(record.percentage));
  render.renderFormStatus(`Request ${record.id}: ${parts.join(" · ")}`, "busy", record.id);
}

// -- errors and the API key ------------------------------------------------------------

function handleError(what) {
  return (error) => {
    if (error.status === 401) {
      render.renderKeyForm(state.api.key ? "That API key was refused." : "This server needs an API key.");
    } else {
      console.warn(`dashboard: ${what} failed:`, error);
    }
  };
}

function storedKey() {
  try {
    return sessionStorage.getItem(KEY_STORAGE) || "";
  } catch {
    return "";
  }
}

// A key typed here, or kept from before, never goes to another origin without asking.
function keyAllowed(base) {
  return keyMayGo(base, location.origin, (origin) =>
    window.confirm(`Send your API key to ${origin}? Only do so if you trust that server.`),
  );
}

function useKey(key) {
  if (key && !keyAllowed(state.api.base)) {
    render.renderKeyForm("The API key was not sent: that server is not this page's own.");
    return;
  }
  state.api.key = key;
  try {
    sessionStorage.setItem(KEY_STORAGE, key);
  } catch {
    // storage unavailable: the key lasts as long as the page
  }
  render.renderKeyForm(null);
  connect();
  loadSettings();
}

// -- panels: refreshed on a snapshot and when a request ends -----------------------------

// Run `task` now, or once more right after the run in progress: a burst of triggers
// costs at most one extra run, and never more runs than triggers.
function coalesced(task) {
  let running = false;
  let again = false;
  return async function run() {
    if (running) {
      again = true;
      return;
    }
    running = true;
    try {
      do {
        again = false;
        await task().catch(handleError("a refresh"));
      } while (again);
    } finally {
      running = false;
    }
  };
}

function fetchPanels() {
  return Promise.all([
    state.api.json(`status/history?limit=${HISTORY_LIMIT}`),
    state.api.json("status/statistics?include_memory=true"),
  ]);
}

function drawPanels(history, statistics) {
  render.renderHistory(history.request_history);
  render.renderStatistics(statistics);
  render.renderMemory(statistics.current_memory);
}

const refreshPanels = coalesced(async () => {
  const [history, statistics] = await fetchPanels();
  drawPanels(history, statistics);
});

// A snapshot starts (or restarts) the stream: take the queue from /status, and settle
// requests we thought were running that ended while we were not listening.
const resync = coalesced(async () => {
  const fetchedAt = performance.now();
  const [status, [history, statistics]] = await Promise.all([state.api.json("status"), fetchPanels()]);
  state.live.mergeStatus(status, fetchedAt);
  state.live.reconcile(status, history.request_history, fetchedAt);
  drawRequests();
  drawPanels(history, statistics);
});

// -- the form ------------------------------------------------------------------------------

function readForm(form) {
  const data = new FormData(form);
  const body = {
    input: String(data.get("input") || ""),
    voice: String(data.get("voice") || "default"),
    response_format: String(data.get("response_format") || "wav"),
  };
  for (const name of NUMBER_FIELDS) {
    const raw = String(data.get(name) ?? "").trim();
    if (raw !== "") body[name] = Number(raw);
  }
  return body;
}

function showAudio(requestId, blob, format) {
  state.audioUrls.forEach((url) => URL.revokeObjectURL(url));
  const download = URL.createObjectURL(blob);
  const playable = format === "pcm" ? URL.createObjectURL(pcmToWav(blob, state.sampleRate)) : download;
  state.audioUrls = [...new Set([download, playable])];
  const player = render.byId("player");
  const link = render.byId("download");
  const info = render.byId("result-info");
  const describe = (duration) =>
    [requestId, format, bytes(blob.size), duration ? seconds(duration) : ""].filter(Boolean).join(" · ");
  player.src = playable;
  player.addEventListener("loadedmetadata", () => (info.textContent = describe(player.duration)), { once: true });
  link.href = download;
  link.download = `speech-${requestId}.${format}`;
  info.textContent = describe();
  const result = render.byId("result");
  result.dataset.requestId = requestId;
  result.hidden = false;
}

async function synthesize(form) {
  const body = readForm(form);
  if (!body.input.trim()) {
    render.renderFormStatus("Type some text first.", "error");
    return;
  }
  if (state.pending.size >= MAX_IN_FLIGHT) {
    render.renderFormStatus(`${MAX_IN_FLIGHT} requests from this page are still running; wait for one.`, "error");
    return;
  }
  const requestId = newRequestId();
  state.live.markOwn(requestId);
  state.pending.add(requestId);
  state.latest = requestId;
  render.renderFormStatus(`Request ${requestId} sent…`, "busy", requestId);
  try {
    const blob = await state.api.synthesize(requestId, body);
    showAudio(requestId, blob, body.response_format);
    render.renderFormStatus(`Request ${requestId} completed.`, "ok", requestId);
  } catch (error) {
    if (error.status === 401) handleError("a synthesis")(error);
    const cancelled = error.code === "cancelled";
    const text = cancelled ? `Request ${requestId} was cancelled.` : `Request ${requestId} failed: ${error.message}`;
    render.renderFormStatus(text, cancelled ? "warn" : "error", requestId);
  } finally {
    state.pending.delete(requestId);
  }
}

function countCharacters() {
  render.byId("text-count").textContent = String(render.byId("text").value.length);
}

// -- one-off loads: settings, engine, voices -------------------------------------------

async function loadConfig() {
  const config = await state.api.json("config");
  for (const name of DEFAULT_FIELDS) {
    const value = config.defaults?.[name];
    if (value != null) render.byId(name).value = String(value);
  }
  const limit = config.defaults?.max_total_length;
  if (limit) {
    render.byId("text").maxLength = limit;
    render.byId("text-limit").textContent = String(limit);
  }
}

async function loadHealth() {
  const health = await state.api.json("health", { accept: [503] });
  state.engine = { ...health.engine, ...state.engine };
  for (const engine of health.engines || []) state.engines[engine.name] = { ...engine, ...state.engines[engine.name] };
  state.sampleRate = health.engine?.sample_rate || state.sampleRate;
  render.renderEngine(state.engine);
  render.renderEngines(state.engines, state.engine.name);
}

async function loadVoices() {
  let listing;
  try {
    listing = await state.api.json("v1/voices");
  } catch {
    return; // no voice library on this server: the default voice only
  }
  const names = (listing.voices || []).map((voice) => voice.name);
  const select = render.byId("voice");
  select.querySelector("optgroup")?.remove();
  if (!names.length) return;
  const group = document.createElement("optgroup");
  group.label = "Voice library";
  for (const name of names) group.append(new Option(name, name));
  select.append(group);
}

function loadSettings() {
  loadConfig().catch(handleError("loading the settings"));
  loadHealth().catch(handleError("loading the engine's health"));
  loadVoices();
}

// -- start ---------------------------------------------------------------------------------

function chooseApi() {
  try {
    const base = apiBaseFrom(location.search, document.documentElement.dataset.apiBase, document.baseURI);
    const key = storedKey();
    state.api = new Api(base, key && keyAllowed(base) ? key : "");
    render.renderApiBase(base, null);
  } catch (error) {
    render.renderApiBase(null, error.message);
  }
}

function start() {
  chooseApi();
  const form = render.byId("synth-form");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    synthesize(form);
  });
  render.byId("text").addEventListener("input", countCharacters);
  countCharacters();
  render.byId("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    useKey(render.byId("api-key").value.trim());
  });
  connect();
  loadSettings();
  // The countdowns tick locally; nothing here talks to the server.
  setInterval(() => render.renderEtas(state.live, serverNow()), 1000);
}

start();
