// What the dashboard knows about requests, folded from the event stream.
//
// No DOM here: records and the queue order, kept current by `status` and `progress`
// events. Queue positions come from /status when a snapshot arrives; after that a
// `queued` event joins the queue at the back and any other status leaves it.

export const TERMINAL = new Set(["completed", "error", "cancelled"]);
export const QUEUED = "queued";

const PROGRESS_FIELDS = {
  current_step: "step",
  current_chunk: "chunk",
  total_chunks: "totalChunks",
  progress_percentage: "percentage",
  estimated_completion: "eta",
  text_preview: "preview",
  duration_seconds: "duration",
  error_message: "error",
  batched_with: "batchedWith",
};

function newRecord(id, order) {
  return {
    id,
    order,
    status: QUEUED,
    step: "",
    chunk: 0,
    totalChunks: 0,
    percentage: 0,
    eta: null,
    preview: "",
    duration: null,
    error: null,
    batchedWith: [],
    own: false,
    seenAt: 0,
    endedOrder: 0,
  };
}

export class LiveRequests {
  constructor({ keepFinished = 5 } = {}) {
    this.records = new Map();
    this.queue = [];
    this.keepFinished = keepFinished;
    this.nextOrder = 0;
    this.own = new Set();
  }

  get(id) {
    return this.records.get(id);
  }

  ensure(id) {
    let record = this.records.get(id);
    if (!record) {
      record = newRecord(id, this.nextOrder++);
      record.own = this.own.has(id);
      this.records.set(id, record);
    }
    return record;
  }

  // Requests this page sent; their cards say so once their events arrive.
  markOwn(id) {
    this.own.add(id);
    const record = this.records.get(id);
    if (record) record.own = true;
  }

  // Fold one event's data in; returns the record it touched, or null.
  apply(data, seenAt = performance.now()) {
    const id = data?.request_id;
    if (!id || !data.status || data.status === "unknown" || data.status === "idle") return null;
    const record = this.ensure(id);
    if (TERMINAL.has(record.status)) return record; // a finished request stays finished
    record.status = data.status;
    record.seenAt = seenAt;
    for (const [field, name] of Object.entries(PROGRESS_FIELDS)) {
      if (field in data && data[field] !== undefined) record[name] = data[field];
    }
    this.placeInQueue(record);
    if (TERMINAL.has(record.status)) {
      record.endedOrder = this.nextOrder++;
      this.prune();
    }
    return record;
  }

  placeInQueue(record) {
    const index = this.queue.indexOf(record.id);
    if (record.status === QUEUED && index < 0) this.queue.push(record.id);
    if (record.status !== QUEUED && index >= 0) this.queue.splice(index, 1);
  }

  // 1-based queue position, or null when the request is not waiting.
  position(id) {
    const index = this.queue.indexOf(id);
    return index < 0 ? null : index + 1;
  }

  // Merge a /status body fetched after a snapshot. `fetchedAt` is when the fetch started:
  // what events told us since then is newer than the body and wins over it.
  mergeStatus(body, fetchedAt) {
    const current = body?.request_id ? this.records.get(body.request_id) : null;
    if (body?.request_id && body.status && !(current && current.seenAt > fetchedAt)) {
      this.apply({ request_id: body.request_id, status: body.status, ...(body.progress || {}),
                   text_preview: body.text_preview, duration_seconds: body.duration_seconds }, fetchedAt);
    }
    const waiting = [];
    for (const entry of body?.queue?.requests || []) {
      const known = this.records.get(entry.request_id);
      if (known && known.status !== QUEUED) continue; // it left the queue after the fetch
      const record = this.ensure(entry.request_id);
      record.status = QUEUED;
      record.seenAt = Math.max(record.seenAt, fetchedAt);
      if (entry.estimated_completion != null) record.eta = entry.estimated_completion;
      waiting.push(entry.request_id);
    }
    const joinedSince = this.queue.filter((id) => !waiting.includes(id) && this.records.get(id).seenAt > fetchedAt);
    this.queue = [...waiting, ...joinedSince];
  }

  // After a fresh snapshot (a reconnect too late for replay): requests we still think are
  // running but the server no longer lists have ended while we were away. Their end comes
  // from the history when it is there; otherwise they are forgotten.
  reconcile(body, history, fetchedAt) {
    const alive = new Set((body?.queue?.requests || []).map((entry) => entry.request_id));
    if (body?.request_id) alive.add(body.request_id);
    const ended = new Map((history || []).map((item) => [item.request_id, item]));
    for (const record of [...this.records.values()]) {
      if (TERMINAL.has(record.status) || alive.has(record.id) || record.seenAt > fetchedAt) continue;
      const item = ended.get(record.id);
      if (item) {
        this.apply({ request_id: record.id, status: item.status, ...(item.progress || {}),
                     error_message: item.error_message }, fetchedAt);
      } else {
        this.records.delete(record.id);
        this.placeInQueue({ id: record.id, status: "gone" });
      }
    }
  }

  // Running first, then the waiting in queue order, then the finished, latest first.
  list() {
    const rank = (record) => (TERMINAL.has(record.status) ? 2 : record.status === QUEUED ? 1 : 0);
    return [...this.records.values()].sort((a, b) => {
      if (rank(a) !== rank(b)) return rank(a) - rank(b);
      if (rank(a) === 1) return this.position(a.id) - this.position(b.id);
      return rank(a) === 2 ? b.endedOrder - a.endedOrder : a.order - b.order;
    });
  }

  active() {
    return [...this.records.values()].filter((record) => !TERMINAL.has(record.status));
  }

  prune() {
    const finished = [...this.records.values()].filter((record) => TERMINAL.has(record.status));
    finished.sort((a, b) => b.endedOrder - a.endedOrder);
    for (const record of finished.slice(this.keepFinished)) this.records.delete(record.id);
  }
}
