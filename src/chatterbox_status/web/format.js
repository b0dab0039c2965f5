// Small formatting helpers: numbers and times as the dashboard shows them.

export function statusLabel(status) {
  return String(status || "").replaceAll("_", " ");
}

export function percent(value) {
  return `${Number(value || 0).toFixed(1)}%`;
}

export function seconds(value) {
  if (value == null || Number.isNaN(Number(value))) return "–";
  const s = Number(value);
  if (s < 60) return `${s.toFixed(s < 10 ? 2 : 1)} s`;
  const minutes = Math.floor(s / 60);
  return `${minutes} min ${Math.round(s - minutes * 60)} s`;
}

export function megabytes(value) {
  if (value == null) return "–";
  const mb = Number(value);
  return mb >= 1024 ? `${(mb / 1024).toFixed(2)} GB` : `${mb.toFixed(1)} MB`;
}

export function bytes(count) {
  if (count < 1024) return `${count} B`;
  if (count < 1024 * 1024) return `${(count / 1024).toFixed(1)} kB`;
  return `${(count / 1024 / 1024).toFixed(2)} MB`;
}

export function clock(epochSeconds) {
  return new Date(epochSeconds * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

// "done in ~4 s (12:01:33)" from an estimated completion in server epoch seconds.
// `serverNow` is the server's clock as best we know it (ours plus the measured offset).
export function eta(estimate, serverNow) {
  if (estimate == null) return "";
  const left = Math.round(estimate - serverNow);
  const when = clock(estimate);
  if (left <= 0) return `due now (${when})`;
  return `done in ~${seconds(left).replace(".00", "")} (${when})`;
}

export function position(pos) {
  if (pos == null) return "";
  return pos === 1 ? "next in queue" : `#${pos} in queue`;
}
