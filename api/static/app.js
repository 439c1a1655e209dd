// soundtag page. Everything that comes from the database is set with textContent,
// never innerHTML, so a file name like <script>…</script> stays text.
"use strict";

const $ = (id) => document.getElementById(id);
const el = (tag, text, cls) => { const e = document.createElement(tag); if (text !== undefined) e.textContent = text; if (cls) e.className = cls; return e; };
const pct = (x, digits = 1) => `${(x * 100).toFixed(digits)}%`;

const RECORD_SECONDS = 5;        // the model's window: a longer recording adds nothing a second window would not
const MAX_CANVAS_COLUMNS = 4096; // a 30-minute spectrogram is 155k frames: pooled to this for drawing

// ---------------------------------------------------------------- colour ---
// Viridis (perceptually uniform, readable with the common colour-blindnesses), 256 entries.
const VIRIDIS = (() => {
  const a = [[68,1,84],[72,40,120],[62,74,137],[49,104,142],[38,130,142],[31,158,137],[53,183,121],[109,205,89],[180,222,44],[253,231,37]];
  const lut = new Uint8ClampedArray(256 * 3);
  for (let i = 0; i < 256; i++) {
    const t = i / 255 * (a.length - 1), k = Math.min(Math.floor(t), a.length - 2), f = t - k;
    for (let c = 0; c < 3; c++) lut[i * 3 + c] = a[k][c] + (a[k + 1][c] - a[k][c]) * f;
  }
  return lut;
})();
const gradient = (dir) => `linear-gradient(${dir}, ` + [0, 0.25, 0.5, 0.75, 1].map((t) => {
  const i = Math.round(t * 255) * 3; return `rgb(${VIRIDIS[i]},${VIRIDIS[i + 1]},${VIRIDIS[i + 2]}) ${t * 100}%`; }).join(", ") + ")";

// ---------------------------------------------------------------- arrays ---
function unpack(p) {
  const bin = atob(p.data), bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return bytes;
}

// A packed (H, W) map drawn with row 0 (lowest frequency) at the bottom. Only the first
// `columns` columns are drawn (the rest is not the clip); very wide maps are max-pooled.
function drawHeatmap(canvas, packed, columns) {
  const [h, w] = packed.shape.slice(-2), q = unpack(packed);
  const used = Math.max(1, Math.min(w, columns ?? w)), pool = Math.ceil(used / MAX_CANVAS_COLUMNS);
  const out = Math.ceil(used / pool);
  canvas.width = out; canvas.height = h;
  const ctx = canvas.getContext("2d"), img = ctx.createImageData(out, h);
  for (let y = 0; y < h; y++) for (let x = 0; x < out; x++) {
    let m = 0;
    for (let k = x * pool; k < Math.min(used, (x + 1) * pool); k++) m = Math.max(m, q[y * w + k]);
    const v = Math.round(m / packed.levels * 255) * 3, o = ((h - 1 - y) * out + x) * 4;
    img.data[o] = VIRIDIS[v]; img.data[o + 1] = VIRIDIS[v + 1]; img.data[o + 2] = VIRIDIS[v + 2]; img.data[o + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
  canvas.dataset.drawn = "1";
}

function drawWaveform(canvas, packed) {
  canvas.width = Math.max(300, Math.round(canvas.clientWidth * (window.devicePixelRatio || 1))) || 1000;
  const q = unpack(packed), n = packed.shape[1], scale = (packed.hi - packed.lo) / packed.levels;
  const ctx = canvas.getContext("2d"), W = canvas.width, H = canvas.height;
  ctx.fillStyle = "#000"; ctx.fillRect(0, 0, W, H);
  const peak = Math.max(Math.abs(packed.lo), Math.abs(packed.hi), 1e-6);
  const y = (v) => H / 2 - (v / peak) * (H / 2 - 2);
  ctx.strokeStyle = "#3fb950";
  for (let i = 0; i < n; i++) {
    const x = Math.floor(i / n * W) + 0.5;
    ctx.beginPath(); ctx.moveTo(x, y(packed.lo + q[i] * scale)); ctx.lineTo(x, y(packed.lo + q[n + i] * scale) + 1); ctx.stroke();
  }
  canvas.dataset.drawn = "1";
}

// ------------------------------------------------------------------ axes ---
function niceStep(span, maxTicks) {
  for (const s of [0.1, 0.2, 0.25, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600]) if (span / s <= maxTicks) return s;
  return Math.ceil(span / maxTicks / 3600) * 3600;
}
const fmtSeconds = (t, step) => (t >= 120 && step >= 60 ? `${Math.floor(t / 60)}:${String(Math.round(t % 60)).padStart(2, "0")}` : `${+t.toFixed(step < 1 ? 1 : 0)} s`);

function tick(axis, frac, text, vertical) {
  const t = el("span", text, "tick");
  if (vertical) t.style.bottom = `${frac * 100}%`;
  else {
    t.style.left = `${frac * 100}%`;
    if (frac > 0.97) t.classList.add("end"); else if (frac < 0.03) t.classList.add("start");
  }
  axis.append(t);
}

function timeAxis(seconds, maxTicks) {
  const axis = el("div", undefined, "x-axis");
  axis.dataset.seconds = seconds.toFixed(3);
  const step = niceStep(seconds, maxTicks);
  for (let t = 0; t <= seconds + 1e-9; t += step) tick(axis, t / seconds, fmtSeconds(t, step));
  return axis;
}

const hzToMel = (f) => 2595 * Math.log10(1 + f / 700);
function melAxis(axes, rows) {
  const axis = el("div", undefined, "y-axis");
  const lo = hzToMel(axes.f_min), hi = hzToMel(axes.f_max);
  for (const f of [100, 500, 1000, 2000, 5000, 10000, 20000]) {  // about evenly spaced in mel
    // row r is the mel filter centred on point r + 1 of rows + 2 equally spaced mels
    const row = (hzToMel(f) - lo) / (hi - lo) * (rows + 1) - 1, frac = (row + 0.5) / rows;
    if (frac >= 0 && frac <= 1) tick(axis, frac, f >= 1000 ? `${f / 1000}k` : `${f}`, true);
  }
  axis.append(el("span", "Hz", "unit"));
  return axis;
}

function colourBar(lo, hi, unit) {
  const bar = el("div", undefined, "colourbar");
  const strip = el("div", undefined, "strip"); strip.style.backgroundImage = gradient("to top");
  const labels = el("div", undefined, "labels");
  labels.append(el("span", hi.toFixed(0)), el("span", ((lo + hi) / 2).toFixed(0)), el("span", lo.toFixed(0)));
  bar.append(el("span", unit, "unit"), strip, labels);
  return bar;
}

// A plot: optional y axis | a seekable track (canvas + playhead) | optional colour bar, and a time axis.
function plot(name, seconds, content, { yAxis, bar, maxTicks = 8 } = {}) {
  const box = el("div", undefined, "plot");
  const track = el("div", undefined, "track");
  track.dataset.seconds = String(seconds);
  track.tabIndex = 0;
  track.setAttribute("role", "slider");
  track.setAttribute("aria-label", `seek in ${name}`);
  track.setAttribute("aria-valuemin", "0");
  track.setAttribute("aria-valuemax", seconds.toFixed(2));
  track.setAttribute("aria-valuenow", "0");
  track.append(content, el("div", undefined, "playhead"));
  box.append(yAxis || el("div", undefined, "y-axis"), track, bar || el("div"), el("div"), timeAxis(seconds, maxTicks));
  return box;
}

// ---------------------------------------------------------------- player ---
const localAudio = new Map(); // clip id → object URL of the file or recording this page sent
let current = null;           // the clip on show: { id, duration }

function tracks() { return document.querySelectorAll("#clip-view .track"); }

function movePlayheads() {
  const t = $("player").currentTime || 0;
  for (const tr of tracks()) {
    const span = +tr.dataset.seconds, head = tr.querySelector(".playhead");
    head.hidden = t > span + 1e-3;
    head.style.left = `${Math.min(1, t / span) * 100}%`;
    tr.setAttribute("aria-valuenow", Math.min(t, span).toFixed(2));
  }
  for (const w of document.querySelectorAll("#timeline-plot .win")) w.classList.toggle("active", t >= +w.dataset.start && t < +w.dataset.end);
}

function animate() {
  movePlayheads();
  if (!$("player").paused) requestAnimationFrame(animate);
}

function seek(seconds) {
  const p = $("player");
  if (p.hidden || !p.src) { $("audio-note").classList.add("flash"); setTimeout(() => $("audio-note").classList.remove("flash"), 600); return; }
  p.currentTime = Math.max(0, Math.min(seconds, current ? current.duration : seconds));
  movePlayheads();
}

function onTrackClick(ev) {
  const tr = ev.target.closest(".track");
  if (!tr) return;
  const r = tr.getBoundingClientRect();
  seek((ev.clientX - r.left) / r.width * +tr.dataset.seconds);
}

function onTrackKey(ev) {
  const tr = ev.target.closest(".track");
  if (!tr) return;
  const p = $("player"), step = ev.shiftKey ? 5 : 0.5;
  const moves = { ArrowLeft: p.currentTime - step, ArrowRight: p.currentTime + step, Home: 0, End: +tr.dataset.seconds };
  if (ev.key in moves) { ev.preventDefault(); seek(moves[ev.key]); }
  else if (ev.key === " " || ev.key === "Enter") { ev.preventDefault(); if (!p.hidden && p.src) (p.paused ? p.play() : p.pause()); }
}

function showAudio(id) {
  const p = $("player"), url = localAudio.get(id);
  p.pause();
  if (url) { if (p.src !== url) p.src = url; p.hidden = false; $("audio-note").hidden = true; }
  else { p.removeAttribute("src"); p.load(); p.hidden = true; $("audio-note").hidden = false; }
  movePlayheads();
}

// ------------------------------------------------------------------ clip ---
function renderTop3(top3) {
  const box = $("top3"); box.replaceChildren();
  for (const t of top3) {
    const row = el("div", undefined, "row"), track = el("div", undefined, "bar-track"), fill = el("div", undefined, "fill");
    fill.style.width = pct(t.confidence); track.append(fill);
    row.append(el("span", t.label, "label"), track, el("span", pct(t.confidence), "value"));
    box.append(row);
  }
}

const VERDICT_TEXT = {
  unknown: "Unknown sound: none of the labels fits it. The network's best guesses are below.",
  silence: "Silence: nothing audible (its loudest moment is below −60 dBFS). The guesses below mean nothing.",
};

function renderVerdict(verdict) {
  const p = $("clip-verdict");
  p.hidden = !VERDICT_TEXT[verdict];
  p.className = `verdict ${verdict || ""}`;
  p.textContent = VERDICT_TEXT[verdict] || "";
  p.dataset.verdict = verdict || "";
}

function renderTimeline(timeline, events, duration) {
  $("timeline-section").hidden = !timeline.length;
  const box = $("timeline-plot"); box.replaceChildren();
  if (!timeline.length) return;
  const lanes = el("div", undefined, "lanes");
  timeline.forEach((w, i) => {
    const d = el("div", undefined, `win lane${i % 2} verdict-${w.verdict || "label"}`);
    d.style.left = `${w.start_s / duration * 100}%`; d.style.width = `${(w.end_s - w.start_s) / duration * 100}%`;
    d.dataset.start = w.start_s; d.dataset.end = w.end_s;
    d.title = `${w.start_s.toFixed(1)}–${w.end_s.toFixed(1)} s: ` + w.top3.map((t) => `${t.label} ${pct(t.confidence, 0)}`).join(", ");
    if (w.verdict && w.verdict !== "label") d.append(el("strong", w.verdict));
    else d.append(el("strong", w.top3[0].label), el("span", ` ${pct(w.top3[0].confidence, 0)}`));
    lanes.append(d);
  });
  const row = el("div", undefined, "lanes events");
  for (const e of events) {
    const d = el("div", undefined, "event");
    d.style.left = `${e.start_s / duration * 100}%`; d.style.width = `${Math.max(0.3, (e.end_s - e.start_s) / duration * 100)}%`;
    d.dataset.start = e.start_s; d.dataset.end = e.end_s;
    d.title = `${e.label} ${e.start_s.toFixed(2)}–${e.end_s.toFixed(2)} s, ${pct(e.confidence, 0)}`;
    d.append(el("strong", e.label));
    row.append(d);
  }
  const both = el("div"); both.append(lanes, row);
  box.append(plot("timeline", duration, both));
}

function renderFeatureMaps(maps, axes, duration) {
  const box = $("feature-maps"); box.replaceChildren();
  // A short clip is repeated to fill the window: only the part that is the clip is drawn.
  const shown = Math.min(duration, axes.feature_map_span_s), part = shown / axes.feature_map_span_s;
  $("fmap-note").textContent = duration > axes.feature_map_span_s
    ? `Feature maps cover the clip's first ${axes.feature_map_span_s.toFixed(0)} s.`
    : part < 0.999 ? `The network saw this ${duration.toFixed(2)} s clip repeated to fill its ${axes.feature_map_span_s} s window; only the clip itself is drawn.` : "";
  for (const [tap, m] of Object.entries(maps)) {
    const sec = el("div", undefined, "tap"), grid = el("div", undefined, "tap-maps");
    sec.append(el("h4", `${tap} — ${m.mean.shape.join("×")} (frequency × time) per channel`));
    const add = (packed, caption) => {
      const fig = el("figure"), c = el("canvas", undefined, "heatmap fmap");
      c.dataset.tap = tap;
      drawHeatmap(c, packed, Math.round(packed.shape[packed.shape.length - 1] * part));
      const bar = el("div", undefined, "hbar");
      const strip = el("span", undefined, "strip"); strip.style.backgroundImage = gradient("to right");
      bar.append(el("span", packed.lo.toFixed(2)), strip, el("span", `${packed.hi.toFixed(2)} a.u.`));
      bar.title = "activation (arbitrary units), this map's own range";
      fig.append(plot(`${tap} ${caption}`, shown, c, { maxTicks: 3 }), el("figcaption", caption), bar);
      grid.append(fig);
    };
    add(m.mean, "mean of all channels");
    m.channels.forEach((p, j) => add(p, `channel ${m.channel_index[j]}`));
    sec.append(grid); box.append(sec);
  }
}

async function api(path, opts) {
  const r = await fetch(path, opts);
  let body = null; try { body = await r.json(); } catch (_) { /* non-JSON error */ }
  if (!r.ok) throw new Error(errorText(r.status, body));
  return body;
}

function errorText(status, body) {
  if (status === 401) return "the server needs an API key (open “API key” above)";
  if (body && body.detail) return typeof body.detail === "string" ? body.detail : body.detail.map((d) => d.msg || JSON.stringify(d)).join("; ");
  return `HTTP ${status}`;
}

async function showClip(id, push) {
  const view = $("clip-view");
  const clip = await api(`/api/clips/${encodeURIComponent(id)}`);
  view.hidden = false;
  delete view.dataset.loaded;
  $("clip-id").textContent = clip.clip_id;
  $("clip-source").textContent = clip.source;
  $("clip-duration").textContent = clip.duration_s != null ? `${clip.duration_s.toFixed(2)} s` : "unknown length";
  $("clip-model").textContent = clip.model_version || "—";
  const link = `/?clip=${encodeURIComponent(clip.clip_id)}`;
  $("permalink").href = link;
  if (push) history.pushState({ clip: clip.clip_id }, "", link);
  $("clip-error").hidden = clip.status !== "failed";
  $("clip-error").textContent = clip.status === "failed" ? `Failed: ${clip.error}` : "";
  renderVerdict(clip.verdict);
  renderTop3(clip.top3);
  renderCustom(clip.custom || []);
  current = { id: clip.clip_id, duration: clip.duration_s || 0 };
  $("pictures").hidden = clip.status !== "tagged";
  $("more-like-this").hidden = clip.status !== "tagged";
  showAudio(clip.clip_id);
  if (clip.status !== "tagged") { view.dataset.loaded = clip.clip_id; return; }
  const vis = await api(`/api/clips/${encodeURIComponent(id)}/visualization`);
  const duration = vis.duration_s || vis.spectrogram.shape[1] * vis.axes.frame_s;
  current.duration = duration;

  const wave = el("canvas", undefined, "wave"); wave.id = "waveform"; wave.height = 120;
  $("wave-plot").replaceChildren(plot("waveform", duration, wave));
  drawWaveform(wave, vis.waveform);

  const spec = el("canvas", undefined, "heatmap spectro"); spec.id = "spectrogram";
  drawHeatmap(spec, vis.spectrogram);
  $("spectro-plot").replaceChildren(plot("spectrogram", duration, spec, {
    yAxis: melAxis(vis.axes, vis.spectrogram.shape[0]),
    bar: colourBar(vis.spectrogram.lo, vis.spectrogram.hi, "dB"),
  }));
  $("spectro-plot").title = vis.axes.spectrogram_unit;

  renderTimeline(vis.timeline, vis.events || [], duration);
  renderFeatureMaps(vis.feature_maps, vis.axes, duration);
  movePlayheads();
  view.dataset.loaded = clip.clip_id;
}

// --------------------------------------------------------------- uploads ---
function apiKeyHeader() { const k = $("api-key").value.trim(); return k ? { "X-API-Key": k } : {}; }

// One file per request, so each row gets its own progress and its own answer.
function sendFile(file, row) {
  return new Promise((resolve) => {
    const xhr = new XMLHttpRequest(), form = new FormData();
    form.append("files", file);
    xhr.open("POST", "/api/clips");
    for (const [k, v] of Object.entries(apiKeyHeader())) xhr.setRequestHeader(k, v);
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) setRow(row, "uploading", `uploading ${pct(e.loaded / e.total, 0)}`, e.loaded / e.total * 0.5); };
    xhr.upload.onload = () => setRow(row, "tagging", "tagging…", 0.75);
    xhr.onload = () => {
      let body = null; try { body = JSON.parse(xhr.responseText); } catch (_) { /* not JSON */ }
      const item = body && body.items && body.items[0];
      if (xhr.status === 201 && item && item.status === "tagged") resolve(done(row, item));
      else resolve(fail(row, item && item.error ? item.error : errorText(xhr.status, body)));
    };
    xhr.onerror = () => resolve(fail(row, "network error: the server could not be reached"));
    xhr.send(form);
  });
}

function setRow(row, state, text, progress) {
  row.dataset.state = state;
  row.querySelector(".result").textContent = text;
  const bar = row.querySelector("progress");
  if (progress === null) bar.style.visibility = "hidden"; else bar.value = progress;
}

function done(row, item) {
  setRow(row, "tagged", "", null);
  const a = el("a", item.verdict && item.verdict !== "label" ? `${item.verdict} (${item.top3[0].label}?)`
    : `${item.top3[0].label} ${pct(item.top3[0].confidence, 0)}`);
  a.href = `/?clip=${encodeURIComponent(item.clip_id)}`;
  a.addEventListener("click", (ev) => { ev.preventDefault(); showClip(item.clip_id, true).catch(showError); });
  row.querySelector(".result").append(a);
  row.dataset.clipId = item.clip_id;
  return item;
}

function fail(row, message) {
  setRow(row, "failed", message, null);
  row.querySelector(".result").classList.add("error");
  return null;
}

async function sendFiles(files) {
  if (!files.length) return;
  const rows = files.map((f) => {
    const row = el("li", undefined, "upload-row"), bar = el("progress");
    bar.max = 1; bar.value = 0;
    row.append(el("span", f.name, "name"), bar, el("span", "waiting", "result"));
    row.dataset.state = "waiting";
    $("uploads").prepend(row);
    return row;
  });
  let first = null;
  for (let i = 0; i < files.length; i++) {
    const item = await sendFile(files[i], rows[i]);
    if (item) {
      localAudio.set(item.clip_id, URL.createObjectURL(files[i]));
      if (!first) { first = item; showClip(item.clip_id, true).catch(showError); }
    }
  }
  refreshCollection();
}

// ---------------------------------------------------------------- record ---
let recording = null;

function microphoneProblem(e) {
  if (!window.isSecureContext) return "Recording needs a secure page (https:// or localhost).";
  switch (e && e.name) {
    case "NotAllowedError": case "SecurityError": return "Microphone permission was refused: allow it in the browser's site settings to record.";
    case "NotFoundError": case "OverconstrainedError": return "No microphone was found on this device.";
    case "NotReadableError": case "AbortError": return "The microphone is in use by another program or could not be started.";
    default: return `Recording failed: ${e && e.message ? e.message : e}`;
  }
}

async function toggleRecording() {
  if (recording) { recording.stop(); return; }
  const status = $("record-status");
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia || !window.MediaRecorder) {
    status.textContent = window.isSecureContext ? "This browser cannot record audio." : microphoneProblem(null);
    status.classList.add("error");
    return;
  }
  let stream;
  try { stream = await navigator.mediaDevices.getUserMedia({ audio: true }); }
  catch (e) { status.textContent = microphoneProblem(e); status.classList.add("error"); return; }
  status.classList.remove("error");
  const type = ["audio/webm;codecs=opus", "audio/ogg;codecs=opus", "audio/mp4"].find((t) => MediaRecorder.isTypeSupported(t)) || "";
  const rec = new MediaRecorder(stream, type ? { mimeType: type } : undefined), chunks = [];
  const ctx = new AudioContext(), analyser = ctx.createAnalyser(), samples = new Float32Array(1024);
  analyser.fftSize = 1024;
  ctx.createMediaStreamSource(stream).connect(analyser);
  const started = performance.now();
  let timer = null, frame = null;
  const meter = () => {
    analyser.getFloatTimeDomainData(samples);
    let sum = 0; for (const s of samples) sum += s * s;
    const db = 10 * Math.log10(sum / samples.length + 1e-12), level = Math.max(0, Math.min(100, (db + 60) / 60 * 100));
    $("level-fill").style.width = `${level}%`; $("level").setAttribute("aria-valuenow", level.toFixed(0));
    const left = Math.max(0, RECORD_SECONDS - (performance.now() - started) / 1000);
    status.textContent = `Recording… ${left.toFixed(1)} s left (press again to stop)`;
    frame = requestAnimationFrame(meter);
  };
  rec.ondataavailable = (e) => { if (e.data.size) chunks.push(e.data); };
  rec.onstop = () => {
    clearTimeout(timer); cancelAnimationFrame(frame);
    stream.getTracks().forEach((t) => t.stop()); ctx.close();
    recording = null;
    $("record").setAttribute("aria-pressed", "false"); $("record").textContent = "● Record";
    $("level-fill").style.width = "0"; $("level").setAttribute("aria-valuenow", "0");
    const seconds = (performance.now() - started) / 1000;
    status.textContent = `Recorded ${seconds.toFixed(1)} s; tagging…`;
    const mime = (rec.mimeType || type || "audio/webm").split(";")[0], ext = { "audio/ogg": "ogg", "audio/mp4": "m4a" }[mime] || "webm";
    const stamp = new Date().toISOString().slice(0, 19).replace(/:/g, "-");
    sendFiles([new File(chunks, `recording-${stamp}.${ext}`, { type: mime })]).then(() => { status.textContent = `Recorded ${seconds.toFixed(1)} s.`; });
  };
  recording = rec;
  rec.start();
  $("record").setAttribute("aria-pressed", "true"); $("record").textContent = "■ Stop";
  timer = setTimeout(() => { if (rec.state === "recording") rec.stop(); }, RECORD_SECONDS * 1000);
  meter();
}

// ------------------------------------------------------------ collection ---
let nextCursor = null;

async function loadClips(reset) {
  const params = new URLSearchParams({ limit: "25" });
  const label = $("label-filter").value, minc = $("min-conf").value, st = $("status-filter").value;
  const verdict = $("verdict-filter").value;
  if (verdict) params.set("verdict", verdict);
  if (label) params.set("label", label);
  if (minc) params.set("min_confidence", minc);
  if (st) params.set("status", st);
  if (!reset && nextCursor) params.set("cursor", nextCursor);
  const body = await api(`/api/clips?${params}`);
  const tbody = document.querySelector("#clip-table tbody");
  if (reset) tbody.replaceChildren();
  for (const c of body.items) {
    const tr = el("tr"), top = c.top3[0];
    tr.append(linkCell(c.clip_id), el("td", c.source, "wide"), el("td", top ? top.label : "—"),
      el("td", top ? pct(top.confidence) : "—"), el("td", c.verdict || "—", c.verdict ? `verdict-${c.verdict}` : undefined),
      el("td", c.status, c.status === "failed" ? "error" : undefined),
      el("td", (c.custom || []).map(customText).join("; ") || "—"));
    const pick = el("input", undefined, "select"); pick.type = "checkbox"; pick.value = c.clip_id;
    pick.disabled = c.status !== "tagged"; pick.setAttribute("aria-label", `select ${c.clip_id}`);
    const td = el("td"); td.append(pick); tr.append(td);
    tr.dataset.clipId = c.clip_id;
    tbody.append(tr);
  }
  nextCursor = body.next_cursor;
  $("more").hidden = !nextCursor;
}

// ----------------------------------------------------------- label sets ---
const customText = (c) => `${c.label_set}: ${c.label} ${pct(c.confidence, 0)}`;

function renderCustom(custom) {
  const p = $("clip-custom");
  p.hidden = !custom.length;
  p.replaceChildren(...(custom.length ? ["your labels: "] : []), ...custom.map((c) => {
    const s = el("span", customText(c), `status-chip custom-chip${c.label === "unknown" ? " unknown" : ""}`);
    s.dataset.labelSet = c.label_set; s.dataset.label = c.label;
    return s;
  }));
}

async function refreshLabelSets() {
  const body = await api("/api/label-sets"), list = $("label-sets");
  list.replaceChildren();
  if (!body.items.length) list.append(el("li", "None yet.", "note"));
  for (const s of body.items) {
    const li = el("li", undefined, "label-set"); li.dataset.labelSet = s.name;
    const examples = Object.entries(s.examples).map(([l, n]) => `${l} ${n}`).join(", ");
    li.append(el("strong", `${s.name} v${s.version}`), ` — ${s.labels.join(", ")}; examples: ${examples}; cross-validated accuracy ${pct(s.cv_accuracy, 0)} `);
    const del = el("button", "Delete"); del.type = "button";
    del.setAttribute("aria-label", `delete label set ${s.name}`);
    del.addEventListener("click", () => deleteLabelSet(s.name).catch((e) => { $("teach-status").textContent = e.message; }));
    li.append(del);
    list.append(li);
  }
}

async function deleteLabelSet(name) {
  await fetch(`/api/label-sets/${encodeURIComponent(name)}`, { method: "DELETE", headers: apiKeyHeader() }).then(async (r) => {
    if (!r.ok && r.status !== 204) throw new Error(errorText(r.status, await r.json().catch(() => null)));
  });
  $("teach-status").textContent = `Deleted label set ${name}.`;
  await Promise.all([refreshLabelSets(), loadClips(true)]);
}

async function teachSelected() {
  const ids = [...document.querySelectorAll("#clip-table tbody input.select:checked")].map((c) => c.value);
  const label = $("teach-label").value.trim(), set = $("teach-set").value.trim();
  if (!ids.length) { $("teach-status").textContent = "Select the clips to label first (the last column)."; return; }
  $("teach-status").textContent = `Teaching ${set}: ${ids.length} clips as ${label}…`;
  const r = await fetch(`/api/label-sets/${encodeURIComponent(set)}/examples`, {
    method: "POST", headers: { "Content-Type": "application/json", ...apiKeyHeader() }, body: JSON.stringify({ label, clip_ids: ids }) });
  const body = await r.json().catch(() => null);
  for (const c of document.querySelectorAll("#clip-table tbody input.select:checked")) c.checked = false;
  if (!r.ok) { $("teach-status").textContent = errorText(r.status, body); return; }
  $("teach-status").textContent = `Label set ${body.name} is at version ${body.version}: cross-validated accuracy ${pct(body.cv_accuracy, 0)}; every clip is labelled.`;
  await Promise.all([refreshLabelSets(), loadClips(true)]);
}

// ------------------------------------------------------------- similar ---
function filterParams(params) {
  const label = $("label-filter").value, minc = $("min-conf").value, verdict = $("verdict-filter").value;
  if (label) params.set("label", label);
  if (minc) params.set("min_confidence", minc);
  if (verdict) params.set("verdict", verdict);
  return params;
}

function renderSimilar(what, items) {
  $("similar-query").textContent = items.length ? `The ${items.length} stored clips most like ${what}:` : `No stored clip is like ${what} (with these filters).`;
  const tbody = document.querySelector("#similar-table tbody");
  tbody.replaceChildren();
  for (const c of items) {
    const tr = el("tr"), top = c.top3[0];
    tr.append(linkCell(c.clip_id), el("td", c.score.toFixed(3)), el("td", top ? `${top.label} ${pct(top.confidence, 0)}` : "—"),
      el("td", c.verdict || "—", c.verdict ? `verdict-${c.verdict}` : undefined), el("td", c.source, "wide"));
    tr.dataset.clipId = c.clip_id;
    tbody.append(tr);
  }
  $("similar-table").hidden = !items.length;
  $("similar-section").scrollIntoView({ block: "nearest" });
}

async function moreLikeThis() {
  const id = current.id;
  $("similar-query").textContent = `Looking for clips like ${id}…`;
  const body = await api(`/api/clips/${encodeURIComponent(id)}/similar?${filterParams(new URLSearchParams({ k: "10" }))}`);
  renderSimilar(`clip ${id}`, body.items);
}

async function searchWith(file) {
  if (!file) return;
  $("similar-query").textContent = `Tagging ${file.name} to search with…`;
  const form = new FormData(); form.append("file", file);
  const body = await api(`/api/search?${filterParams(new URLSearchParams({ k: "10" }))}`, { method: "POST", body: form, headers: apiKeyHeader() });
  const top = body.top3[0];
  renderSimilar(`${file.name} (${body.verdict}${top ? `, ${top.label} ${pct(top.confidence, 0)}` : ""})`, body.items);
}

function similarProblem(e) { $("similar-query").textContent = `Could not search: ${e.message}`; }

function linkCell(id) {
  const a = el("a", id.length > 16 ? id.slice(0, 16) + "…" : id), td = el("td");
  a.href = `/?clip=${encodeURIComponent(id)}`;
  a.addEventListener("click", (ev) => { ev.preventDefault(); showClip(id, true).catch(showError); window.scrollTo(0, 0); });
  td.append(a);
  return td;
}

function filterBy(changes) {
  if ("label" in changes) $("label-filter").value = changes.label;
  if ("min" in changes) $("min-conf").value = changes.min;
  if ("status" in changes) $("status-filter").value = changes.status;
  $("verdict-filter").value = changes.verdict || "";
  loadClips(true).then(() => $("clip-table").scrollIntoView({ block: "nearest" })).catch(showError);
}

async function refreshCollection() {
  const [summary, labels] = await Promise.all([api("/api/summary"), api("/api/labels")]);
  const counts = summary.status_counts, total = Object.values(counts).reduce((a, b) => a + b, 0);
  const sc = $("status-counts"); sc.replaceChildren(`${total} clips: `);
  for (const [st, n] of Object.entries(counts)) {
    const b = el("button", `${n} ${st}`, `status-chip ${st}`); b.type = "button"; b.dataset.status = st; b.dataset.count = n;
    b.addEventListener("click", () => filterBy({ status: st, label: "", min: "" }));
    sc.append(b, " ");
  }

  const vc = $("verdict-counts"); vc.replaceChildren("verdicts: ");
  for (const [v, n] of Object.entries(summary.verdict_counts || {})) {
    const b = el("button", `${n} ${v}`, `status-chip verdict-chip ${v}`); b.type = "button"; b.dataset.verdict = v; b.dataset.count = n;
    b.addEventListener("click", () => filterBy({ verdict: v, status: "", label: "", min: "" }));
    vc.append(b, " ");
  }

  const sel = $("label-filter"), chosen = sel.value;
  sel.replaceChildren(new Option("any", ""));
  for (const l of labels.items) sel.append(new Option(`${l.label} (${l.top3})`, l.label));
  sel.value = chosen;

  const chart = $("label-chart"); chart.replaceChildren();
  const used = labels.items.filter((l) => l.top1 > 0), most = Math.max(1, ...used.map((l) => l.top1));
  if (!used.length) chart.append(el("p", "No tagged clips yet.", "note"));
  for (const l of used) {
    const b = el("button", undefined, "bar-row"), fill = el("span", undefined, "fill");
    b.type = "button"; b.dataset.label = l.label; b.dataset.count = l.top1;
    b.setAttribute("aria-label", `${l.label}: ${l.top1} clips; list them`);
    fill.style.width = `${l.top1 / most * 100}%`;
    const track = el("span", undefined, "bar-track"); track.append(fill);
    b.append(el("span", l.label, "label"), track, el("span", String(l.top1), "value"));
    b.addEventListener("click", () => filterBy({ label: l.label, status: "", min: "" }));
    chart.append(b);
  }

  const hist = $("confidence-chart"); hist.replaceChildren();
  const peak = Math.max(1, ...summary.confidence_counts);
  hist.setAttribute("aria-label", "tagged clips per confidence bin: " + summary.confidence_counts.map((n, i) =>
    `${summary.confidence_bins[i]}–${summary.confidence_bins[i + 1]}: ${n}`).join(", "));
  summary.confidence_counts.forEach((n, i) => {
    const col = el("button", undefined, "col"), fill = el("span", undefined, "fill");
    col.type = "button"; col.dataset.count = n; col.title = `${n} clips with top-1 confidence ${summary.confidence_bins[i]}–${summary.confidence_bins[i + 1]}; list those ≥ ${summary.confidence_bins[i]}`;
    fill.style.height = `${n / peak * 100}%`;
    col.append(el("span", String(n), "value"), fill, el("span", summary.confidence_bins[i].toFixed(1), "edge"));
    col.addEventListener("click", () => filterBy({ min: String(summary.confidence_bins[i]), status: "tagged", label: "" }));
    hist.append(col);
  });

  $("failures-section").hidden = !summary.failures.length;
  const fb = document.querySelector("#failures tbody"); fb.replaceChildren();
  for (const f of summary.failures) {
    const tr = el("tr"); tr.dataset.clipId = f.clip_id;
    tr.append(linkCell(f.clip_id), el("td", f.source), el("td", f.error || "—", "error"));
    fb.append(tr);
  }
  await refreshLabelSets();
  $("collection").dataset.loaded = String(Date.now());
  await loadClips(true);
}

function showError(e) { const s = el("li", e.message, "upload-row error"); $("uploads").prepend(s); }

// ------------------------------------------------------------------ init ---
function init() {
  const drop = $("drop"), file = $("file");
  file.addEventListener("change", (e) => { sendFiles([...e.target.files]); e.target.value = ""; });
  drop.addEventListener("click", () => file.click());
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); file.click(); } });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); sendFiles([...e.dataTransfer.files]); });
  $("teach-form").addEventListener("submit", (e) => { e.preventDefault(); teachSelected().catch((err) => { $("teach-status").textContent = err.message; }); });
  $("more-like-this").addEventListener("click", () => moreLikeThis().catch(similarProblem));
  const searchDrop = $("search-drop"), searchFile = $("search-file");
  searchFile.addEventListener("change", (e) => { searchWith(e.target.files[0]).catch(similarProblem); e.target.value = ""; });
  searchDrop.addEventListener("click", () => searchFile.click());
  searchDrop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); searchFile.click(); } });
  searchDrop.addEventListener("dragover", (e) => { e.preventDefault(); searchDrop.classList.add("over"); });
  searchDrop.addEventListener("dragleave", () => searchDrop.classList.remove("over"));
  searchDrop.addEventListener("drop", (e) => { e.preventDefault(); searchDrop.classList.remove("over"); searchWith(e.dataTransfer.files[0]).catch(similarProblem); });
  $("record").addEventListener("click", () => toggleRecording().catch((e) => { $("record-status").textContent = microphoneProblem(e); }));
  $("api-key").value = localStorage.getItem("soundtag-api-key") || "";
  $("api-key").addEventListener("change", (e) => localStorage.setItem("soundtag-api-key", e.target.value));
  $("filter").addEventListener("submit", (e) => { e.preventDefault(); loadClips(true).catch(showError); });
  $("more").addEventListener("click", () => loadClips(false).catch(showError));
  const view = $("clip-view");
  view.addEventListener("click", onTrackClick);
  view.addEventListener("keydown", onTrackKey);
  const p = $("player");
  p.addEventListener("play", animate);
  for (const ev of ["timeupdate", "seeked", "pause", "loadedmetadata"]) p.addEventListener(ev, movePlayheads);
  window.addEventListener("popstate", () => { const id = new URLSearchParams(location.search).get("clip"); if (id) showClip(id, false).catch(showError); });
  refreshCollection().catch(showError);
  const id = new URLSearchParams(location.search).get("clip");
  if (id) showClip(id, false).catch(showError);
}
init();
