// thermoformer explorer: the page over the JSON API of `thermoformer serve`. Plain JS and canvas,
// nothing loaded from anywhere but this server.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  info: null,
  trained: [],      // [layer][head] as trained
  temps: [],        // [layer][head] as set on the page
  layers: [],       // layers whose maps are shown
  heads: [],        // heads (in every layer) whose maps are shown
  last: null,       // the last score response
  seq: 0,           // request counter: only the newest response is drawn
  latencies: [],    // ms from a slider's input to the page showing its result
  timings: [],      // the same, in parts: debounce wait, fetch, JSON parse, draw
};
// For tests and the curious: the latest response and the measured latencies.
window.thermoformer = state;

const log10 = Math.log10;
const fmt = (x, d = 4) => (x === null || x === undefined || Number.isNaN(x)) ? "-" : x.toFixed(d);

async function api(path, body) {
  const r = await fetch(path, body === undefined ? {} : { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  if (!r.ok) {
    let msg = r.statusText;
    try { msg = (await r.json()).error; } catch (_) { /* not JSON */ }
    throw new Error(msg);
  }
  return r;
}

function status(text) { $("status").textContent = text; }

// ---- temperatures ---------------------------------------------------------------------------

function sliderFor(input, t, [lo, hi]) {
  input.min = log10(lo); input.max = log10(hi); input.value = log10(t);
}

function overrides() {
  const out = {};
  state.temps.forEach((row, l) => row.forEach((t, h) => {
    if (Math.abs(t - state.trained[l][h]) > 1e-12) out[`${l}.${h}`] = t;
  }));
  return out;
}

// ---- scoring --------------------------------------------------------------------------------

let timer = null;
function schedule(started) {
  clearTimeout(timer);
  timer = setTimeout(() => rescore(started), 16);
}

async function rescore(started) {
  const seq = ++state.seq;
  const text = $("text").value;
  status("scoring...");
  try {
    const t0 = performance.now();
    const r = await api("/api/score", { text, temperatures: overrides(), layers: state.layers });
    const t1 = performance.now();
    const res = await r.json();
    const t2 = performance.now();
    if (seq !== state.seq) return; // a newer request is on its way
    state.last = res;
    draw(res);
    const t3 = performance.now();
    if (started !== undefined) {
      state.latencies.push(t3 - started);
      state.timings.push({ wait: t0 - started, fetch: t1 - t0, parse: t2 - t1, draw: t3 - t2 });
    }
    status("");
  } catch (e) {
    if (seq === state.seq) status("error: " + e.message);
  }
}

function energyColour(e, max) {
  const x = Math.min(1, Math.max(0, e / max));
  // white -> orange -> dark red
  const r = 255 - Math.round(80 * Math.max(0, x - 0.5) * 2);
  const g = Math.round(255 - 200 * x);
  const b = Math.round(255 - 235 * Math.min(1, x * 1.5));
  return `rgb(${r},${g},${b})`;
}

function visible(t) { return t.replace(/\n/g, "\\n").replace(/\t/g, "\\t").replace(/ /g, "\u00b7"); }

function draw(res) {
  const max = Math.max(1e-9, ...res.energies, 1);
  const tokens = $("tokens");
  tokens.replaceChildren();
  res.tokens.forEach((t, i) => {
    const span = document.createElement("span");
    span.textContent = i === 0 ? "\u27e8start\u27e9" : visible(t);
    if (i === 0) span.className = "start";
    else {
      const e = res.energies[i - 1];
      span.dataset.energy = e;
      span.style.background = energyColour(e, max);
    }
    span.addEventListener("mouseenter", (ev) => tooltip(ev, res, i));
    span.addEventListener("mouseleave", () => { $("tooltip").hidden = true; });
    tokens.appendChild(span);
  });
  $("total-energy").textContent = fmt(res.energy, 4);
  $("total-energy").dataset.energy = res.energy;
  $("n-tokens").textContent = res.energies.length;
  $("energy-per-token").textContent = fmt(res.energy_per_token, 4);
  $("legend-range").textContent = `0 .. ${fmt(max, 2)} nats`;
  drawHeads(res);
}

function tooltip(ev, res, i) {
  const tip = $("tooltip");
  const lines = [];
  if (i > 0) lines.push(`${JSON.stringify(res.tokens[i])}: E = ${fmt(res.energies[i - 1])} nats, p = ${fmt(Math.exp(-res.energies[i - 1]))}`);
  lines.push("next:");
  for (const c of res.top[i]) lines.push(`  ${JSON.stringify(c.token).padEnd(12)} ${fmt(c.p, 4)}`);
  tip.textContent = lines.join("\n");
  tip.style.whiteSpace = "pre";
  tip.style.left = `${ev.clientX + 12}px`;
  tip.style.top = `${ev.clientY + 12}px`;
  tip.hidden = false;
}

// ---- heads ----------------------------------------------------------------------------------

function buildHeads() {
  const { n_layer, n_head, slider_range } = state.info;
  const root = $("heads");
  root.replaceChildren();
  for (let l = 0; l < n_layer; l++) {
    const row = document.createElement("div");
    row.className = "layer";
    row.id = `layer-${l}`;
    row.hidden = !state.layers.includes(l);
    const name = document.createElement("div");
    name.className = "layer-name";
    name.textContent = `layer ${l}`;
    row.appendChild(name);
    for (let h = 0; h < n_head; h++) {
      const box = document.createElement("div");
      box.className = "head";
      box.id = `head-${l}-${h}`;
      const title = document.createElement("div");
      title.className = "name";
      title.textContent = `${l}.${h}`;
      const canvas = document.createElement("canvas");
      canvas.width = 180; canvas.height = 180;
      canvas.addEventListener("click", () => zoom(l, h));
      const slider = document.createElement("input");
      slider.type = "range"; slider.step = "0.001";
      slider.id = `t-${l}-${h}`;
      slider.setAttribute("aria-label", `temperature of head ${l}.${h}`);
      sliderFor(slider, state.temps[l][h], slider_range);
      // A tick at the trained temperature.
      const ticks = document.createElement("datalist");
      ticks.id = `trained-${l}-${h}`;
      const tick = document.createElement("option");
      tick.value = log10(state.trained[l][h]);
      ticks.appendChild(tick);
      slider.setAttribute("list", ticks.id);
      slider.addEventListener("input", () => {
        const started = performance.now();
        state.temps[l][h] = 10 ** Number(slider.value);
        schedule(started);
      });
      const trained = document.createElement("div");
      trained.className = "trained";
      trained.textContent = `trained T = ${fmt(state.trained[l][h], 3)}`;
      const stats = document.createElement("div");
      stats.className = "stats";
      box.hidden = !state.heads.includes(h);
      box.append(title, canvas, slider, ticks, trained, stats);
      row.appendChild(box);
    }
    root.appendChild(row);
  }
}

// One pixel per weight, drawn into a small canvas and scaled up without smoothing: a single
// putImageData per map instead of a fill per cell.
const pixels = document.createElement("canvas");
function drawMap(canvas, weights) {
  const n = Math.max(weights.length, 1);
  pixels.width = n; pixels.height = n;
  const small = pixels.getContext("2d");
  const img = small.createImageData(n, n);
  for (let q = 0; q < weights.length; q++) {
    const row = weights[q];
    for (let k = 0; k < n; k++) {
      const a = k <= q ? Math.sqrt(row[k]) : 0; // sqrt: small weights stay visible
      const o = 4 * (q * n + k);
      img.data[o] = 255 - Math.round(a * 226);
      img.data[o + 1] = 255 - Math.round(a * 212);
      img.data[o + 2] = 255 - Math.round(a * 145);
      img.data[o + 3] = 255;
    }
  }
  small.putImageData(img, 0, 0);
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(pixels, 0, 0, canvas.width, canvas.height);
}

function drawHeads(res) {
  const maps = new Map(res.attention.map((m) => [`${m.layer}.${m.head}`, m.weights]));
  for (const s of res.heads) {
    const box = $(`head-${s.layer}-${s.head}`);
    if (!box) continue;
    const w = maps.get(`${s.layer}.${s.head}`);
    if (w) drawMap(box.querySelector("canvas"), w);
    const stats = box.querySelector(".stats");
    stats.textContent = [
      `T      ${fmt(s.temperature, 4)}`,
      `H      ${fmt(s.entropy, 4)}`,
      `H/ln n ${fmt(s.normalized_entropy, 4)}`,
      `ln Z   ${fmt(s.ln_z, 4)}`,
      `<E>    ${fmt(s.mean_energy, 4)}`,
      `C      ${fmt(s.heat_capacity, 4)}`,
      `sink   ${fmt(s.sink, 4)}`,
    ].join("\n");
    for (const [k, v] of Object.entries({ temperature: s.temperature, entropy: s.entropy, lnZ: s.ln_z, energy: s.mean_energy, heatCapacity: s.heat_capacity, sink: s.sink })) {
      stats.dataset[k] = v;
    }
  }
}

function zoom(l, h) {
  const res = state.last;
  if (!res) return;
  const m = res.attention.find((a) => a.layer === l && a.head === h);
  if (!m) return;
  drawMap($("zoom-canvas"), m.weights);
  const s = res.heads.find((x) => x.layer === l && x.head === h);
  $("zoom-title").textContent = `head ${l}.${h}: T ${fmt(s.temperature)}, H ${fmt(s.entropy)}, ln Z ${fmt(s.ln_z)}, <E> ${fmt(s.mean_energy)}, C ${fmt(s.heat_capacity)}; rows are queries, columns keys: ${res.tokens.map((t, i) => i === 0 ? "start" : visible(t)).join(" ")}`;
  $("zoom").showModal();
}

// ---- sweep ----------------------------------------------------------------------------------

async function runSweep() {
  status("sweeping...");
  try {
    const points = await (await api("/api/sweep", { text: $("text").value })).json();
    plotSweep(points);
    status("");
  } catch (e) { status("error: " + e.message); }
}

function plotSweep(points) {
  const c = $("sweep-plot"), ctx = c.getContext("2d");
  const W = c.width, H = c.height, pad = 40;
  ctx.clearRect(0, 0, W, H);
  const xs = points.map((p) => log10(p.temperature));
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  const X = (t) => pad + (log10(t) - x0) / Math.max(1e-9, x1 - x0) * (W - 2 * pad);
  const series = [["energy_per_token", "#b22", "E/token (nats)"], ["entropy", "#22b", "attention H (nats)"]];
  ctx.font = "11px sans-serif";
  series.forEach(([key, colour, label], si) => {
    const ys = points.map((p) => p[key]);
    const [y0, y1] = [Math.min(...ys), Math.max(...ys)];
    const Y = (v) => H - pad - (v - y0) / Math.max(1e-9, y1 - y0) * (H - 2 * pad);
    ctx.strokeStyle = colour; ctx.beginPath();
    points.forEach((p, i) => (i ? ctx.lineTo : ctx.moveTo).call(ctx, X(p.temperature), Y(p[key])));
    ctx.stroke();
    ctx.fillStyle = colour;
    ctx.fillText(`${label}: ${fmt(y0, 3)} .. ${fmt(y1, 3)}`, pad + si * 250, 14);
  });
  const t = 10 ** Number($("global-t").value);
  ctx.strokeStyle = "#888"; ctx.setLineDash([4, 3]);
  ctx.beginPath(); ctx.moveTo(X(t), pad); ctx.lineTo(X(t), H - pad); ctx.stroke(); ctx.setLineDash([]);
  ctx.fillStyle = "#444";
  ctx.fillText(`T = ${fmt(t, 3)} (every head, log scale ${fmt(10 ** x0, 2)} .. ${fmt(10 ** x1, 2)})`, pad, H - 12);
}

// ---- response -------------------------------------------------------------------------------

// Move head l.h's slider to temperature t and rescore, as a person dragging it would.
function setHead(l, h, t) {
  const [lo, hi] = state.info.slider_range;
  t = Math.min(hi, Math.max(lo, t));
  state.temps[l][h] = t;
  $(`t-${l}-${h}`).value = log10(t);
  schedule(performance.now());
}

async function runResponse() {
  status("measuring responses...");
  try {
    const res = await (await api("/api/response", { text: $("text").value, temperatures: overrides() })).json();
    state.response = res;
    drawResponse();
    $("response-summary").textContent = `E = ${fmt(res.energy, 4)} nats over ${res.tokens} tokens; chi in ${fmt(res.seconds_susceptibility, 3)} s, ${2 * res.heads.length} ablations in ${fmt(res.seconds_ablation, 3)} s`;
    status("");
  } catch (e) { status("error: " + e.message); }
}

function drawResponse() {
  const res = state.response;
  if (!res) return;
  const key = $("response-rank").value;
  const sinks = new Map((state.last ? state.last.heads : []).map((s) => [`${s.layer}.${s.head}`, s.sink]));
  const rows = res.heads.slice().sort((a, b) => Math.abs(b[key]) - Math.abs(a[key]));
  const body = $("response-table").querySelector("tbody");
  body.replaceChildren();
  const [lo, hi] = state.info.slider_range;
  for (const r of rows) {
    const tr = document.createElement("tr");
    tr.id = `response-${r.layer}-${r.head}`;
    const cells = [`${r.layer}.${r.head}`, fmt(r.temperature, 3), fmt(r.susceptibility, 4), fmt(r.ablated_hot, 4), fmt(r.ablated_cold, 4), fmt(sinks.get(`${r.layer}.${r.head}`), 3)];
    cells.forEach((text, i) => {
      const td = document.createElement("td");
      td.textContent = text;
      if (i === 3 || i === 4) {
        td.className = "ablate";
        td.dataset.kind = i === 3 ? "hot" : "cold";
        td.title = i === 3 ? `set head ${r.layer}.${r.head} to T = ${hi} (the slider's highest)` : `set head ${r.layer}.${r.head} to T = ${lo} (the slider's lowest)`;
        td.addEventListener("click", () => setHead(r.layer, r.head, i === 3 ? hi : lo));
      }
      tr.appendChild(td);
    });
    body.appendChild(tr);
  }
  $("response-table").hidden = false;
}

// ---- phase diagram ---------------------------------------------------------------------------

async function runPhase() {
  status("computing the phase diagram...");
  try {
    state.phase = await (await api("/api/phase", { text: $("text").value, temperatures: overrides() })).json();
    state.phaseLayer = 0;
    drawPhase();
    status("");
  } catch (e) { status("error: " + e.message); }
}

function drawPhase() {
  const p = state.phase;
  if (!p) return;
  const { n_layer, n_head } = state.info;
  const map = $("phase-map"), ctx = map.getContext("2d");
  ctx.clearRect(0, 0, map.width, map.height);
  const cell = Math.min(40, Math.floor((map.width - 40) / n_head), Math.floor((map.height - 30) / n_layer));
  const span = Math.max(0.1, ...p.heads.map((h) => Math.abs(Math.log(h.t_star))));
  ctx.font = "10px sans-serif";
  for (const h of p.heads) {
    const x = Math.log(h.t_star) / span; // -1 (cold, blue) .. 1 (hot, red)
    const w = Math.min(1, Math.abs(x));
    const end = x < 0 ? [33, 102, 172] : [178, 24, 43];
    ctx.fillStyle = `rgb(${end.map((e) => Math.round(247 + (e - 247) * w)).join(",")})`;
    ctx.fillRect(30 + h.head * cell, 4 + h.layer * cell, cell - 1, cell - 1);
    if (h.layer === state.phaseLayer) { ctx.strokeStyle = "#000"; ctx.strokeRect(30 + h.head * cell, 4 + h.layer * cell, cell - 1, cell - 1); }
    if (cell >= 30) { ctx.fillStyle = "#000"; ctx.fillText(fmt(h.t_star, 2), 32 + h.head * cell, 4 + h.layer * cell + cell / 2); }
  }
  ctx.fillStyle = "#000";
  for (let l = 0; l < n_layer; l++) ctx.fillText(`L${l}`, 4, 4 + l * cell + cell / 2);
  $("phase-summary").textContent = `T* per head (blue below 1, red above), over ${p.rows} query rows; click a layer for its C(T)`;
  map.onclick = (ev) => {
    const r = map.getBoundingClientRect();
    const l = Math.floor((ev.clientY - r.top - 4) / cell);
    if (l >= 0 && l < n_layer) { state.phaseLayer = l; drawPhase(); }
  };
  const c = $("phase-curves"), g = c.getContext("2d");
  const W = c.width, H = c.height, pad = 40;
  g.clearRect(0, 0, W, H);
  const heads = p.heads.filter((h) => h.layer === state.phaseLayer);
  const xs = p.temperatures.map(log10);
  const X = (i) => pad + (xs[i] - xs[0]) / (xs[xs.length - 1] - xs[0]) * (W - 2 * pad);
  const top = Math.max(1e-9, ...heads.flatMap((h) => h.heat_capacity));
  const Y = (v) => H - pad - v / top * (H - 2 * pad);
  const colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
  g.font = "11px sans-serif";
  heads.forEach((h, k) => {
    g.strokeStyle = colours[k % colours.length];
    g.beginPath();
    h.heat_capacity.forEach((v, i) => (i ? g.lineTo : g.moveTo).call(g, X(i), Y(v)));
    g.stroke();
    g.fillStyle = g.strokeStyle;
    g.fillText(`${h.layer}.${h.head} T*=${fmt(h.t_star, 2)}`, W - pad - 90, 14 + 12 * k);
  });
  g.fillStyle = "#444";
  g.fillText(`layer ${state.phaseLayer}: C(T), T from ${fmt(p.temperatures[0], 2)} to ${fmt(p.temperatures[p.temperatures.length - 1], 0)} (log scale); top ${fmt(top, 3)}`, pad, H - 12);
}

// ---- generation -----------------------------------------------------------------------------

async function generate() {
  const out = $("generated");
  out.textContent = $("prompt").value;
  const num = (id) => $(id).value === "" ? undefined : Number($(id).value);
  const body = {
    prompt: $("prompt").value, tokens: num("gen-tokens"), temperature: num("gen-temperature"),
    top_k: num("gen-top-k"), top_p: num("gen-top-p"), seed: num("gen-seed"), temperatures: overrides(),
  };
  status("sampling...");
  try {
    const r = await api("/api/generate", body);
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const msg = JSON.parse(buf.slice(0, nl));
        buf = buf.slice(nl + 1);
        if (msg.error) throw new Error(msg.error);
        if (msg.done) { out.textContent = $("prompt").value + msg.text; status(`${msg.tokens} tokens, E = ${fmt(msg.energy, 2)} nats`); }
        else out.textContent += msg.token;
      }
    }
  } catch (e) { status("error: " + e.message); }
}

// ---- start ----------------------------------------------------------------------------------

async function start() {
  const info = await (await api("/api/info")).json();
  state.info = info;
  state.trained = info.temperatures.map((r) => r.slice());
  state.temps = info.temperatures.map((r) => r.slice());
  // Up to 32 heads are all shown; a larger model starts with its first two layers.
  const all = [...Array(info.n_layer).keys()];
  state.layers = info.n_layer * info.n_head <= 32 ? all : all.slice(0, 2);
  const allHeads = [...Array(info.n_head).keys()];
  state.heads = allHeads;
  $("model").textContent = `${info.checkpoint}: ${info.n_layer} layers x ${info.n_head} heads${info.n_kv_head < info.n_head ? ` on ${info.n_kv_head} key/value heads` : ""}, context ${info.context}, vocab ${info.vocab_size} (${info.tokenizer})${info.imported_from ? ", imported from " + info.imported_from : ""}`;
  $("max-tokens").textContent = info.context - 1;
  $("text").value = info.sample_text;
  $("prompt").value = info.sample_text.split(" ")[0] || "";
  if (info.n_layer * info.n_head > 32) {
    $("layer-picker").hidden = false;
    for (const l of all) {
      const label = document.createElement("label");
      const box = document.createElement("input");
      box.type = "checkbox"; box.checked = state.layers.includes(l);
      box.addEventListener("change", () => {
        state.layers = all.filter((x) => document.querySelectorAll("#layer-boxes input")[x].checked);
        all.forEach((x) => { $(`layer-${x}`).hidden = !state.layers.includes(x); });
        schedule();
      });
      label.append(box, ` ${l} `);
      $("layer-boxes").appendChild(label);
    }
    for (const h of allHeads) {
      const label = document.createElement("label");
      const box = document.createElement("input");
      box.type = "checkbox"; box.checked = true;
      box.addEventListener("change", () => {
        state.heads = allHeads.filter((x) => document.querySelectorAll("#head-boxes input")[x].checked);
        for (let l = 0; l < info.n_layer; l++) allHeads.forEach((x) => { $(`head-${l}-${x}`).hidden = !state.heads.includes(x); });
      });
      label.append(box, ` ${h} `);
      $("head-boxes").appendChild(label);
    }
  }
  const mean = info.temperatures.flat().reduce((a, b) => a + b, 0) / (info.n_layer * info.n_head);
  sliderFor($("global-t"), mean, info.slider_range);
  $("global-t-value").textContent = fmt(mean, 3);
  $("global-t").addEventListener("input", () => {
    const started = performance.now();
    const t = 10 ** Number($("global-t").value);
    $("global-t-value").textContent = fmt(t, 3);
    state.temps = state.temps.map((r) => r.map(() => t));
    document.querySelectorAll(".head input[type=range]").forEach((s) => { s.value = log10(t); });
    schedule(started);
  });
  $("reset").addEventListener("click", () => {
    state.temps = state.trained.map((r) => r.slice());
    state.temps.forEach((r, l) => r.forEach((t, h) => { $(`t-${l}-${h}`).value = log10(t); }));
    schedule();
  });
  buildHeads();
  const legend = $("legend-bar").getContext("2d");
  for (let x = 0; x < 160; x++) { legend.fillStyle = energyColour(x / 159, 1); legend.fillRect(x, 0, 1, 10); }
  $("text").addEventListener("input", () => schedule());
  $("sweep").addEventListener("click", runSweep);
  $("response").addEventListener("click", runResponse);
  $("response-rank").addEventListener("change", drawResponse);
  $("phase").addEventListener("click", runPhase);
  $("generate").addEventListener("click", generate);
  $("zoom-close").addEventListener("click", () => $("zoom").close());
  await rescore();
}

start().catch((e) => status("error: " + e.message));
