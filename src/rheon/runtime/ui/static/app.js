// The rheon dashboard: one snapshot a second from /api/events (server-sent events).
"use strict";

const token = new URLSearchParams(location.search).get("token");
const withToken = (path) => (token ? `${path}?token=${encodeURIComponent(token)}` : path);
const COLORS = ["#5fb3f4", "#57d38c", "#f4c95f", "#c792ea", "#f47067", "#7fdbca", "#f78c6c", "#addb67", "#82aaff", "#ff9cac"];
const KEEP = 300; // points per chart: five minutes at one a second
const history = { t: [], throughput: {}, latency: { p50: [], p99: [] }, lag: [], watermark: {} };
let previous = null;
let graphDrawn = "";

const fmt = (n) => (n === null || n === undefined ? "–" : Math.round(n).toLocaleString("en-US"));
const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);

function push(list, value) {
  list.push(value);
  if (list.length > KEEP) list.shift();
}

function rates(snap) {
  const out = {};
  if (!previous) return out;
  const dt = (snap.now_ms - previous.now_ms) / 1000;
  if (dt <= 0) return out;
  const before = Object.fromEntries(previous.nodes.map((n) => [n.id, n]));
  for (const n of snap.nodes) {
    const old = before[n.id];
    if (!old) continue;
    out[n.id] = { in: Math.max(n.records_in - old.records_in, 0) / dt, out: Math.max(n.records_out - old.records_out, 0) / dt };
  }
  return out;
}

function drawGraph(snap, rate) {
  const svg = document.getElementById("graph");
  const key = snap.nodes.map((n) => n.id).join("|");
  const depth = {};
  for (const n of snap.nodes) depth[n.id] = 0;
  for (let pass = 0; pass < snap.nodes.length; pass++) {
    for (const e of snap.edges) depth[e.to] = Math.max(depth[e.to], depth[e.from] + 1);
  }
  const rows = {};
  const pos = {};
  for (const n of snap.nodes) {
    const d = depth[n.id];
    rows[d] = (rows[d] || 0) + 1;
    pos[n.id] = { x: 10 + d * 200, y: 10 + (rows[d] - 1) * 64 };
  }
  if (key !== graphDrawn) {
    const height = 20 + Math.max(...Object.values(rows)) * 64;
    const width = 20 + (Math.max(...Object.values(depth)) + 1) * 200;
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    svg.style.height = `${height}px`;
    let html = "";
    for (const e of snap.edges) {
      const a = pos[e.from], b = pos[e.to];
      if (!a || !b) continue;
      html += `<line x1="${a.x + 170}" y1="${a.y + 22}" x2="${b.x}" y2="${b.y + 22}"></line>`;
      html += `<text class="edge-rate" data-from="${esc(e.from)}" x="${(a.x + 170 + b.x) / 2 - 14}" y="${(a.y + b.y) / 2 + 16}"></text>`;
    }
    for (const n of snap.nodes) {
      const p = pos[n.id];
      html += `<g class="node ${esc(n.role)}" data-node="${esc(n.id)}" transform="translate(${p.x},${p.y})">` +
        `<title>${esc(n.describe || "")}</title><rect width="170" height="44"></rect>` +
        `<text x="8" y="18">${esc(n.label)}</text><text class="sub" x="8" y="35"></text></g>`;
    }
    svg.innerHTML = html;
    graphDrawn = key;
  }
  for (const n of snap.nodes) {
    const sub = svg.querySelector(`g[data-node="${CSS.escape(n.id)}"] .sub`);
    if (sub) sub.textContent = `in ${fmt(n.records_in)} · out ${fmt(n.records_out)}`;
  }
  for (const label of svg.querySelectorAll(".edge-rate")) {
    const r = rate[label.dataset.from];
    label.textContent = r ? `${fmt(r.out)}/s` : "";
  }
}

const finite = (v) => v !== null && v !== undefined && Number.isFinite(v);

// An event time (epoch ms) as UTC: the date when the span covers days, milliseconds when it is short.
function clock(ms, span) {
  const iso = new Date(ms).toISOString(); // 2024-01-01T12:00:01.250Z
  if (span >= 86400000) return `${iso.slice(0, 10)} ${iso.slice(11, 16)}`;
  return span < 10000 ? iso.slice(11, 23) : iso.slice(11, 19);
}

// Draw line series on a canvas. A series has `values` (one a snapshot: newest at the right, the
// chart filling its width and then scrolling) or `points` ([x, y] pairs placed by x, for times:
// x epoch ms). Options: `unit` (of y), `yTime` (y values are epoch ms: the axis spans them and
// reads as times), `xAxis` (an element that gets the first and last x as times).
// What was drawn is left on canvas.rheonDrawn, for the tests.
function chart(canvas, series, opts = {}) {
  const ctx = canvas.getContext("2d");
  const dpr = devicePixelRatio;
  const w = (canvas.width = canvas.clientWidth * dpr);
  const h = (canvas.height = canvas.clientHeight * dpr);
  ctx.clearRect(0, 0, w, h);
  const byX = series.some((s) => s.points);
  const length = Math.max(2, ...series.map((s) => (s.values ? s.values.length : 0)));
  const lines = series.map((s) =>
    (s.points || s.values.map((v, j) => [j + length - s.values.length, v])).filter(([x, y]) => finite(x) && finite(y)),
  );
  const xs = lines.flat().map(([x]) => x);
  const ys = lines.flat().map(([, y]) => y);
  let [x0, x1] = byX && xs.length ? [Math.min(...xs), Math.max(...xs)] : [0, length - 1];
  if (x1 <= x0) [x0, x1] = [x0 - 1, x1 + 1]; // one point: in the middle
  let [y0, y1] = [0, Math.max(1e-9, ...ys) * 1.1];
  if (opts.yTime) {
    const [lo, hi] = ys.length ? [Math.min(...ys), Math.max(...ys)] : [Date.now() - 60000, Date.now()];
    const pad = Math.max((hi - lo) * 0.1, 500);
    [y0, y1] = [lo - pad, hi + pad];
  }
  const left = (opts.yTime ? 86 : 34) * dpr;
  const px = (x) => left + ((w - left - 8 * dpr) * (x - x0)) / (x1 - x0);
  const py = (y) => h - 6 * dpr - ((h - 20 * dpr) * (y - y0)) / (y1 - y0);
  ctx.font = `${11 * dpr}px sans-serif`;
  ctx.fillStyle = "#8593a1";
  if (opts.yTime) {
    ctx.fillText(clock(y1, y1 - y0), 4, 14 * dpr);
    ctx.fillText(clock(y0, y1 - y0), 4, h - 4);
  } else {
    ctx.fillText(`${y1 >= 100 ? fmt(y1) : y1.toPrecision(3)} ${opts.unit || ""}`, 4, 14 * dpr);
    ctx.fillText("0", 4, h - 4);
  }
  const drawn = lines.map((line, i) => {
    const s = series[i];
    ctx.strokeStyle = ctx.fillStyle = s.color || COLORS[i % COLORS.length];
    ctx.lineWidth = 1.5 * dpr;
    ctx.beginPath();
    const placed = line.map(([x, y], j) => {
      const at = { x, y, px: px(x), py: py(y) };
      if (j) ctx.lineTo(at.px, at.py);
      else ctx.moveTo(at.px, at.py);
      return at;
    });
    ctx.stroke();
    if (s.points) for (const at of placed) ctx.fillRect(at.px - 2 * dpr, at.py - 2 * dpr, 4 * dpr, 4 * dpr);
    return placed;
  });
  if (opts.xAxis) {
    opts.xAxis.innerHTML = xs.length ? `<span>${clock(x0, x1 - x0)}</span><span>${clock(x1, x1 - x0)}</span>` : "";
  }
  canvas.rheonDrawn = { lines: drawn, x0, x1, y0, y1 };
}

function legend(id, names) {
  document.getElementById(id).innerHTML = names
    .map((n, i) => `<span style="color:${COLORS[i % COLORS.length]}">■ ${esc(n)}</span>`)
    .join("");
}

function drawCharts(snap, rate) {
  const steps = snap.nodes.filter((n) => n.role !== "source");
  for (const n of steps) {
    if (!history.throughput[n.id]) history.throughput[n.id] = new Array(history.t.length).fill(null);
    push(history.throughput[n.id], rate[n.id] ? rate[n.id].in : null);
  }
  push(history.latency.p50, snap.latency_p50_ms);
  push(history.latency.p99, snap.latency_p99_ms);
  push(history.lag, snap.lag_s);
  // The watermark of each source and operator (sinks pass theirs on to nobody).
  const marked = snap.nodes.filter((n) => n.role !== "sink");
  for (const n of marked) {
    if (!history.watermark[n.id]) history.watermark[n.id] = new Array(history.t.length).fill(null);
    push(history.watermark[n.id], n.watermark_ms);
  }
  push(history.t, snap.now_ms);
  const names = steps.map((n) => n.id);
  chart(document.getElementById("chart-throughput"), names.map((n) => ({ values: history.throughput[n] })), { unit: "/s" });
  legend("legend-throughput", steps.map((n) => n.label));
  chart(document.getElementById("chart-latency"), [{ values: history.latency.p50 }, { values: history.latency.p99 }], { unit: "ms" });
  legend("legend-latency", ["p50", "p99"]);
  chart(document.getElementById("chart-lag"), [{ values: history.lag, color: COLORS[2] }], { unit: "s" });
  chart(document.getElementById("chart-watermark"), marked.map((n) => ({ values: history.watermark[n.id] })), { yTime: true });
  legend("legend-watermark", marked.map((n) => n.label));
}

function drawCheckpoints(snap) {
  // The run keeps the latest checkpoints (completed and failed), so a page opened late shows them too.
  const ck = snap.checkpoints;
  document.getElementById("ck-count").textContent = ck.failures
    ? `(${fmt(ck.count)} completed, ${fmt(ck.failures)} failed)`
    : `(${fmt(ck.count)} completed)`;
  document.querySelector("#checkpoints tbody").innerHTML = ck.history
    .slice()
    .reverse()
    .map((c) =>
      `<tr class="${c.ok ? "ok" : "failed"}" data-id="${c.id}"><td>${c.id}</td>` +
      `<td>${c.ok ? "ok" : `<span title="${esc(c.error || "")}">failed</span>`}</td>` +
      `<td>${c.duration_ms.toFixed(1)} ms</td><td>${c.ok ? `${fmt(c.size_bytes)} B` : "–"}</td>` +
      `<td>${new Date(c.done_ms).toLocaleTimeString()}</td></tr>`)
    .join("");
}

function drawDeadLetters(snap) {
  const filter = document.getElementById("dl-filter").value.toLowerCase();
  const rows = snap.dead_letters
    .slice()
    .reverse()
    .filter((d) => !filter || `${d.operator} ${d.reason} ${d.payload}`.toLowerCase().includes(filter));
  document.getElementById("dl-count").textContent = `(${fmt(snap.dead_total)} in all; the latest ${snap.dead_letters.length} here)`;
  document.querySelector("#dead-letters tbody").innerHTML = rows
    .map((d) => `<tr><td>${esc(d.operator)}</td><td>${esc(d.reason)}</td><td class="payload" title="${esc(d.payload)}">${esc(d.payload)}</td></tr>`)
    .join("");
}

// A shown stream of window results (the server names the column that places a row in time) gets a
// line chart over event time: one line per key of the first numeric aggregate, each row at its window's time.
function drawShownChart(section, s) {
  if (!section.querySelector("canvas")) {
    section.querySelector("h2").insertAdjacentHTML(
      "afterend", `<canvas width="560" height="200"></canvas><div class="axis"></div><div class="legend"></div>`);
  }
  const windowCols = ["window_start", "window_end"];
  const first = s.columns.findIndex((c) => windowCols.includes(c));
  const keys = s.columns.slice(0, first);
  const value = s.columns.find((c) => !windowCols.includes(c) && !keys.includes(c) && typeof s.rows[0][c] === "number");
  const lines = {};
  s.rows.forEach((r, j) => {
    const k = keys.map((c) => r[c]).join(" / ") || value;
    (lines[k] = lines[k] || []).push([s.times_ms[j], value ? r[value] : null]);
  });
  const names = Object.keys(lines).slice(0, COLORS.length);
  const series = names.map((n) => ({ points: lines[n].sort((a, b) => a[0] - b[0]) }));
  chart(section.querySelector("canvas"), series, { unit: value || "", xAxis: section.querySelector(".axis") });
  legend_in(section.querySelector(".legend"), names);
}

function drawShown(snap) {
  const box = document.getElementById("shown");
  snap.shown.forEach((s, i) => {
    let section = document.getElementById(`show-${i}`);
    if (!section) {
      section = document.createElement("section");
      section.id = `show-${i}`;
      section.className = "shown";
      section.innerHTML = `<h2>${esc(s.title)} <span class="muted"></span></h2><table><thead></thead><tbody></tbody></table>`;
      box.appendChild(section);
    }
    section.querySelector("h2 .muted").textContent = `(${fmt(s.total)} rows; the latest ${s.rows.length})`;
    section.querySelector("thead").innerHTML = `<tr>${s.columns.map((c) => `<th>${esc(c)}</th>`).join("")}</tr>`;
    section.querySelector("tbody").innerHTML = s.rows
      .slice()
      .reverse()
      .map((r) => `<tr>${s.columns.map((c) => `<td>${esc(r[c] ?? "")}</td>`).join("")}</tr>`)
      .join("");
    if (s.time_column && s.rows.length) drawShownChart(section, s);
  });
}

function legend_in(el, names) {
  el.innerHTML = names.map((n, i) => `<span style="color:${COLORS[i % COLORS.length]}">■ ${esc(n)}</span>`).join("");
}

function render(snap) {
  const rate = rates(snap);
  document.getElementById("flow-name").textContent = snap.flow;
  const status = document.getElementById("status");
  status.textContent = snap.running ? "running" : "stopped";
  status.className = `status ${snap.running ? "running" : "stopped"}`;
  const sources = snap.nodes.filter((n) => n.role === "source");
  document.getElementById("sum-in").textContent = fmt(sources.reduce((a, n) => a + n.records_out, 0));
  const totalRate = sources.reduce((a, n) => a + (rate[n.id] ? rate[n.id].out : 0), 0);
  document.getElementById("sum-rate").textContent = previous ? `${fmt(totalRate)}/s` : "–";
  document.getElementById("sum-p99").textContent = snap.latency_p99_ms === null ? "–" : `${snap.latency_p99_ms.toFixed(2)} ms`;
  document.getElementById("sum-lag").textContent = snap.lag_s === null ? "–" : `${snap.lag_s.toFixed(1)} s`;
  document.getElementById("sum-dead").textContent = fmt(snap.dead_total);
  document.getElementById("sum-ck").textContent = fmt(snap.checkpoints.count);
  drawGraph(snap, rate);
  drawCharts(snap, rate);
  drawCheckpoints(snap);
  drawDeadLetters(snap);
  drawShown(snap);
  previous = snap;
  window.rheonSnapshots = (window.rheonSnapshots || 0) + 1; // for tests: how many updates arrived
}

document.getElementById("dl-filter").addEventListener("input", () => previous && drawDeadLetters(previous));
const events = new EventSource(withToken("api/events"));
events.onmessage = (message) => render(JSON.parse(message.data));
events.onerror = () => {
  const status = document.getElementById("status");
  status.textContent = "disconnected";
  status.className = "status stopped";
};
