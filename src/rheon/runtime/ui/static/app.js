// The rheon dashboard: one snapshot a second from /api/events (server-sent events).
"use strict";

const token = new URLSearchParams(location.search).get("token");
const withToken = (path) => (token ? `${path}?token=${encodeURIComponent(token)}` : path);
const COLORS = ["#5fb3f4", "#57d38c", "#f4c95f", "#c792ea", "#f47067", "#7fdbca", "#f78c6c", "#addb67", "#82aaff", "#ff9cac"];
const KEEP = 300; // points per chart: five minutes at one a second
const history = { t: [], throughput: {}, latency: { p50: [], p99: [] }, lag: [] };
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

function chart(canvas, series, unit) {
  const ctx = canvas.getContext("2d");
  const w = (canvas.width = canvas.clientWidth * devicePixelRatio);
  const h = (canvas.height = canvas.clientHeight * devicePixelRatio);
  ctx.clearRect(0, 0, w, h);
  const values = series.flatMap((s) => s.values.filter((v) => v !== null && Number.isFinite(v)));
  const top = Math.max(1e-9, ...values) * 1.1;
  const pad = 34 * devicePixelRatio;
  ctx.font = `${11 * devicePixelRatio}px sans-serif`;
  ctx.fillStyle = "#8593a1";
  ctx.fillText(`${top >= 100 ? fmt(top) : top.toPrecision(3)} ${unit}`, 4, 14 * devicePixelRatio);
  ctx.fillText("0", 4, h - 4);
  const points = Math.max(2, ...series.map((s) => s.values.length)); // fills the width, then scrolls
  series.forEach((s, i) => {
    ctx.strokeStyle = s.color || COLORS[i % COLORS.length];
    ctx.lineWidth = 1.5 * devicePixelRatio;
    ctx.beginPath();
    let started = false;
    s.values.forEach((v, j) => {
      if (v === null || !Number.isFinite(v)) return;
      const x = pad + ((w - pad - 6) * (j + points - s.values.length)) / (points - 1);
      const y = h - 6 - ((h - 20) * v) / top;
      if (started) ctx.lineTo(x, y);
      else ctx.moveTo(x, y);
      started = true;
    });
    ctx.stroke();
  });
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
  push(history.t, snap.now_ms);
  const names = steps.map((n) => n.id);
  chart(document.getElementById("chart-throughput"), names.map((n) => ({ values: history.throughput[n] })), "/s");
  legend("legend-throughput", steps.map((n) => n.label));
  chart(document.getElementById("chart-latency"), [{ values: history.latency.p50 }, { values: history.latency.p99 }], "ms");
  legend("legend-latency", ["p50", "p99"]);
  chart(document.getElementById("chart-lag"), [{ values: history.lag, color: COLORS[2] }], "s");
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

function isWindowed(shown) {
  return shown.columns.includes("window_end");
}

function drawShown(snap) {
  const box = document.getElementById("shown");
  snap.shown.forEach((s, i) => {
    let section = document.getElementById(`show-${i}`);
    if (!section) {
      section = document.createElement("section");
      section.id = `show-${i}`;
      section.className = "shown";
      section.innerHTML = `<h2>${esc(s.title)} <span class="muted"></span></h2>` +
        (isWindowed(s) ? `<canvas width="560" height="200"></canvas><div class="legend"></div>` : "") +
        `<table><thead></thead><tbody></tbody></table>`;
      box.appendChild(section);
    }
    section.querySelector("h2 .muted").textContent = `(${fmt(s.total)} rows; the latest ${s.rows.length})`;
    section.querySelector("thead").innerHTML = `<tr>${s.columns.map((c) => `<th>${esc(c)}</th>`).join("")}</tr>`;
    section.querySelector("tbody").innerHTML = s.rows
      .slice()
      .reverse()
      .map((r) => `<tr>${s.columns.map((c) => `<td>${esc(r[c] ?? "")}</td>`).join("")}</tr>`)
      .join("");
    if (isWindowed(s) && s.rows.length) {
      const value = s.columns.find((c) => !["window_start", "window_end"].includes(c) && typeof s.rows[0][c] === "number");
      const keys = s.columns.slice(0, s.columns.indexOf("window_start"));
      const lines = {};
      for (const r of s.rows) {
        const k = keys.map((c) => r[c]).join(" / ") || value;
        (lines[k] = lines[k] || []).push(r[value]);
      }
      const names = Object.keys(lines).slice(0, COLORS.length);
      chart(section.querySelector("canvas"), names.map((n) => ({ values: lines[n] })), value || "");
      legend_in(section.querySelector(".legend"), names);
    }
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
