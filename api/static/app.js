// soundtag page. Everything that comes from the database is set with textContent,
// never innerHTML, so a file name like <script>…</script> stays text.
"use strict";

const $ = (id) => document.getElementById(id);
const el = (tag, text, cls) => { const e = document.createElement(tag); if (text !== undefined) e.textContent = text; if (cls) e.className = cls; return e; };

// Viridis, 256 entries, interpolated from anchor colours.
const VIRIDIS = (() => {
  const a = [[68,1,84],[72,40,120],[62,74,137],[49,104,142],[38,130,142],[31,158,137],[53,183,121],[109,205,89],[180,222,44],[253,231,37]];
  const lut = new Uint8ClampedArray(256 * 3);
  for (let i = 0; i < 256; i++) {
    const t = i / 255 * (a.length - 1), k = Math.min(Math.floor(t), a.length - 2), f = t - k;
    for (let c = 0; c < 3; c++) lut[i * 3 + c] = a[k][c] + (a[k + 1][c] - a[k][c]) * f;
  }
  return lut;
})();
const CSS_GRADIENT = "linear-gradient(to top, " + [0, 0.25, 0.5, 0.75, 1].map((t) => {
  const i = Math.round(t * 255) * 3; return `rgb(${VIRIDIS[i]},${VIRIDIS[i + 1]},${VIRIDIS[i + 2]}) ${t * 100}%`; }).join(", ") + ")";

function unpack(p) {
  const bin = atob(p.data), bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return bytes;
}

// Row 0 is the lowest frequency: draw it at the bottom.
function drawHeatmap(canvas, packed) {
  const [h, w] = packed.shape.slice(-2), q = unpack(packed);
  canvas.width = w; canvas.height = h;
  const ctx = canvas.getContext("2d"), img = ctx.createImageData(w, h);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) {
    const v = Math.round(q[y * w + x] / packed.levels * 255) * 3, o = ((h - 1 - y) * w + x) * 4;
    img.data[o] = VIRIDIS[v]; img.data[o + 1] = VIRIDIS[v + 1]; img.data[o + 2] = VIRIDIS[v + 2]; img.data[o + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
  canvas.dataset.drawn = "1";
}

function drawScale(div, lo, hi, unit) {
  div.replaceChildren(el("span", `${hi.toFixed(1)}${unit}`), el("span", `${((lo + hi) / 2).toFixed(1)}${unit}`), el("span", `${lo.toFixed(1)}${unit}`));
  div.style.backgroundImage = CSS_GRADIENT;
}

function drawWaveform(canvas, packed) {
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

function renderTop3(top3) {
  const box = $("top3"); box.replaceChildren();
  for (const t of top3) {
    const row = el("div", undefined, "row"), track = el("div", undefined, "track"), fill = el("div", undefined, "fill");
    fill.style.width = `${(t.confidence * 100).toFixed(1)}%`; track.append(fill);
    row.append(el("span", t.label, "label"), track, el("span", `${(t.confidence * 100).toFixed(1)}%`));
    box.append(row);
  }
}

function renderFeatureMaps(maps) {
  const box = $("feature-maps"); box.replaceChildren();
  for (const [tap, m] of Object.entries(maps)) {
    const sec = el("div", undefined, "tap"), grid = el("div", undefined, "tap-maps");
    sec.append(el("h4", `${tap} — ${m.mean.shape.join("×")} per channel`));
    const add = (packed, caption) => {
      const fig = el("figure"), c = el("canvas", undefined, "heatmap fmap");
      c.dataset.tap = tap; drawHeatmap(c, packed);
      fig.append(c, el("figcaption", `${caption} · ${packed.lo.toFixed(2)}–${packed.hi.toFixed(2)}`)); grid.append(fig);
    };
    add(m.mean, "mean of all channels");
    m.channels.forEach((p, j) => add(p, `channel ${m.channel_index[j]}`));
    const scale = el("div", undefined, "scale"); scale.style.height = "90px"; drawScale(scale, 0, 1, "");
    scale.title = "each map is scaled to its own range, shown under it";
    sec.append(grid); box.append(sec);
  }
}

function renderTimeline(timeline) {
  $("timeline-section").hidden = !timeline.length;
  const box = $("timeline"); box.replaceChildren();
  for (const w of timeline) {
    const d = el("div", undefined, "win");
    d.append(el("div", `${w.start_s.toFixed(1)}–${w.end_s.toFixed(1)} s`), el("strong", w.top3[0].label), el("div", `${(w.top3[0].confidence * 100).toFixed(0)}%`));
    box.append(d);
  }
}

async function api(path, opts) {
  const r = await fetch(path, opts);
  let body = null; try { body = await r.json(); } catch (_) { /* non-JSON error */ }
  if (!r.ok) throw new Error(body && body.detail ? (typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail)) : `HTTP ${r.status}`);
  return body;
}

async function showClip(id, push) {
  const view = $("clip-view");
  const clip = await api(`/api/clips/${encodeURIComponent(id)}`);
  view.hidden = false;
  $("clip-id").textContent = clip.clip_id;
  $("clip-source").textContent = clip.source;
  $("clip-duration").textContent = clip.duration_s != null ? `${clip.duration_s.toFixed(2)} s` : "unknown length";
  $("clip-model").textContent = clip.model_version || "—";
  const link = `/?clip=${encodeURIComponent(clip.clip_id)}`;
  $("permalink").href = link;
  if (push) history.pushState({ clip: clip.clip_id }, "", link);
  $("clip-error").hidden = clip.status !== "failed";
  $("clip-error").textContent = clip.status === "failed" ? `Failed: ${clip.error}` : "";
  renderTop3(clip.top3);
  if (clip.status !== "tagged") { $("feature-maps").replaceChildren(); return; }
  const vis = await api(`/api/clips/${encodeURIComponent(id)}/visualization`);
  drawWaveform($("waveform"), vis.waveform);
  drawHeatmap($("spectrogram"), vis.spectrogram);
  drawScale($("spectro-scale"), vis.spectrogram.lo, vis.spectrogram.hi, " dB");
  renderTimeline(vis.timeline);
  renderFeatureMaps(vis.feature_maps);
  view.dataset.loaded = clip.clip_id;
}

async function upload(files) {
  if (!files.length) return;
  const form = new FormData();
  for (const f of files) form.append("files", f);
  const headers = {}, key = $("api-key").value.trim();
  if (key) headers["X-API-Key"] = key;
  $("upload-status").textContent = `Tagging ${files.length} file(s)…`;
  try {
    const res = await api("/api/clips", { method: "POST", body: form, headers });
    const failed = res.items.filter((c) => c.status === "failed");
    $("upload-status").textContent = `Tagged ${res.items.length - failed.length} of ${res.items.length}` +
      (failed.length ? ` — failed: ${failed.map((c) => `${c.source}: ${c.error}`).join("; ")}` : "");
    const first = res.items.find((c) => c.status === "tagged");
    if (first) await showClip(first.clip_id, true);
    loadClips(true);
  } catch (e) {
    $("upload-status").textContent = `Upload failed: ${e.message}`;
  }
}

let nextCursor = null;
async function loadClips(reset) {
  const params = new URLSearchParams({ limit: "25" });
  const label = $("label-filter").value, minc = $("min-conf").value;
  if (label) params.set("label", label);
  if (minc) params.set("min_confidence", minc);
  if (!reset && nextCursor) params.set("cursor", nextCursor);
  const body = await api(`/api/clips?${params}`);
  const tbody = document.querySelector("#clip-table tbody");
  if (reset) tbody.replaceChildren();
  for (const c of body.items) {
    const tr = el("tr"), a = el("a", c.clip_id.length > 16 ? c.clip_id.slice(0, 16) + "…" : c.clip_id);
    a.href = `/?clip=${encodeURIComponent(c.clip_id)}`;
    a.addEventListener("click", (ev) => { ev.preventDefault(); showClip(c.clip_id, true).catch(showError); window.scrollTo(0, 0); });
    const td = el("td"); td.append(a);
    const top = c.top3[0];
    tr.append(td, el("td", c.source), el("td", top ? top.label : "—"), el("td", top ? `${(top.confidence * 100).toFixed(1)}%` : "—"), el("td", c.status));
    tr.dataset.clipId = c.clip_id;
    tbody.append(tr);
  }
  nextCursor = body.next_cursor;
  $("more").hidden = !nextCursor;
}

async function loadLabels() {
  const body = await api("/api/labels"), sel = $("label-filter");
  for (const l of body.items) { const o = el("option", `${l.label} (${l.top3})`); o.value = l.label; sel.append(o); }
}

function showError(e) { $("upload-status").textContent = e.message; }

function init() {
  const drop = $("drop");
  $("file").addEventListener("change", (e) => upload([...e.target.files]));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); upload([...e.dataTransfer.files]); });
  $("api-key").value = localStorage.getItem("soundtag-api-key") || "";
  $("api-key").addEventListener("change", (e) => localStorage.setItem("soundtag-api-key", e.target.value));
  $("filter").addEventListener("submit", (e) => { e.preventDefault(); loadClips(true).catch(showError); });
  $("more").addEventListener("click", () => loadClips(false).catch(showError));
  window.addEventListener("popstate", () => { const id = new URLSearchParams(location.search).get("clip"); if (id) showClip(id, false).catch(showError); });
  loadLabels().catch(showError);
  loadClips(true).catch(showError);
  const id = new URLSearchParams(location.search).get("clip");
  if (id) showClip(id, false).catch(showError);
}
init();
