// PortraitTalk in-node player: after Face Landmarks, Audio → Landmarks or Audio → Dub Landmarks runs, the node shows
// the face mesh (MediaPipe tessellation, lips, mouth opening, eyes highlighted) over the portrait / first video frame,
// with the speech playing in sync, play/pause, a scrub bar, a frame counter and a lip-sync strip (mouth opening
// against loudness over time); ADFD Score shows its per-frame curves with a scrubbable cursor.
//
// Data: the node's UI output `ptalk_preview` (nodes/glue/preview.py, built by ptalk_models/preview.py): quantised
// points (point-major time deltas, zigzag, two byte planes, zlib, base64), curves (one byte a frame), the mesh edges
// once per payload, and temp files (speech FLAC, backdrop JPEG) served by ComfyUI's /view.
//
// ▾/▸ folds the player to its controls row (node.properties.ptalk_player = "collapsed", saved with the workflow; the
// diffusion workflows ship folded players to keep their layout).
//
// Extension API used: app.registerExtension, nodeType.prototype.onExecuted, node.addDOMWidget; browser APIs:
// DecompressionStream("deflate"), canvas 2D, <audio>. Where one is missing the player is not shown and nothing
// throws. Tested (tests/test_landmark_player.py) in frontends 1.32.9 (ComfyUI 0.3.75), 1.49.6 (ComfyUI 0.33) and
// 1.58.1 (ComfyUI 0.33, --front-end-root).
import { app } from "../../scripts/app.js";

const UI_KEY = "ptalk_preview";
const WIDGET_NAME = "ptalk_player";
const NODE_TYPES = new Set(["PTalkFaceLandmarks", "PTalkAudioToLandmarks", "PTalkDubLandmarks", "PTalkADFDScore"]);
// layout (CSS px)
const FACE_PX = 160;
const CONTROLS_PX = 24;
const STRIP_PX = 44;
const LANE_PX = 34;
const GAP_PX = 4;
const PAD_PX = 4;
const MARGIN_PX = 4; // the DOM widget's margin inside the node (frontend default 10)
const STILL_FPS = 10; // stepping rate of a frame batch without a frame rate
// colours: the mouth opening's fill and its curve share one colour (the lip-sync view reads as "this against that")
const COLORS = {
  background: "#151a1a",
  shade: "rgba(0, 0, 0, 0.35)",
  mesh: "rgba(255, 255, 255, 0.30)",
  oval: "rgba(255, 255, 255, 0.65)",
  brows_open: "rgba(255, 255, 255, 0.80)",
  eyes: "#5fd3ff",
  irises: "#5fd3ff",
  lips: "#ff8fb8",
  mouth: "rgb(255, 0, 170)",
  loudness: "rgba(127, 211, 200, 0.55)",
  cursor: "#ffffff",
  text: "#d8e6e4",
  series: ["#7fd3c8", "#ff9f43", "#ff4fa0", "#a29bfe", "#ffd166", "#5fd3ff"],
};

// ------------------------------------------------------------------------------------------------ decoding
function supported() {
  try {
    return typeof DecompressionStream === "function" && typeof atob === "function" && typeof Blob === "function" &&
      typeof Response === "function" && !!document.createElement("canvas").getContext;
  } catch (e) {
    return false;
  }
}

function base64Bytes(text) {
  const bin = atob(text);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

async function inflate(text) {
  const stream = new Blob([base64Bytes(text)]).stream().pipeThrough(new DecompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

// points: [T * N * 2] levels, frame-major (t, point, x|y), from the point-major zigzag deltas in two byte planes
async function decodePoints(p) {
  const raw = await inflate(p.points);
  const T = p.frames, C = p.n_points * 2, n = T * C;
  if (raw.length !== 2 * n) throw new Error(`point data of ${raw.length} bytes, expected ${2 * n}`);
  const out = new Uint16Array(n);
  for (let c = 0; c < C; c++) {
    let acc = 0;
    const base = c * T;
    for (let t = 0; t < T; t++) {
      const z = raw[base + t] | (raw[n + base + t] << 8);
      acc += (z >>> 1) ^ -(z & 1);
      out[t * C + c] = acc;
    }
  }
  return out;
}

async function decodeCurve(entry) {
  const q = await inflate(entry.data);
  const v = new Float32Array(q.length);
  for (let i = 0; i < q.length; i++) v[i] = q[i] === 255 ? NaN : entry.lo + (q[i] / 254) * (entry.hi - entry.lo);
  return v;
}

async function decodeEdges(text) {
  const b = await inflate(text);
  return new Uint16Array(b.buffer, b.byteOffset, b.byteLength >> 1).slice();
}

function presentFlags(p) {
  if (!p.present) return null;
  const bits = base64Bytes(p.present), out = new Uint8Array(p.frames);
  for (let t = 0; t < p.frames; t++) out[t] = (bits[t >> 3] >> (7 - (t & 7))) & 1;
  return out;
}

function viewURL(entry) {
  const q = new URLSearchParams({ filename: entry.filename, subfolder: entry.subfolder || "", type: entry.type || "temp" });
  const api = window.comfyAPI?.api?.api;
  return typeof api?.apiURL === "function" ? api.apiURL(`/view?${q}`) : `api/view?${q}`;
}

function el(tag, style, props) {
  const e = document.createElement(tag);
  if (style) e.style.cssText = style;
  if (props) Object.assign(e, props);
  return e;
}

// a canvas's 2D context at device resolution; returns [ctx, width, height] in device px
function fitCanvas(canvas) {
  const dpr = window.devicePixelRatio || 1;
  const w = Math.max(1, Math.round(canvas.clientWidth * dpr)), h = Math.max(1, Math.round(canvas.clientHeight * dpr));
  if (canvas.width !== w || canvas.height !== h) {
    canvas.width = w;
    canvas.height = h;
  }
  return [canvas.getContext("2d"), w, h, dpr];
}

// ------------------------------------------------------------------------------------------------ the player
class Player {
  constructor(node) {
    this.node = node;
    this.payload = null;
    this.frame = 0;
    this.playing = false;
    this.root = el("div", `display:flex;flex-direction:column;gap:${GAP_PX}px;width:100%;height:100%;box-sizing:border-box;` +
      `padding:${PAD_PX}px 0;overflow:hidden;font:11px sans-serif;color:${COLORS.text};`, { className: "ptalk-player" });
    this.face = el("canvas", `flex:none;width:100%;height:${FACE_PX}px;display:block;border-radius:4px;`, { className: "ptalk-face" });
    this.controls = el("div", `flex:none;display:flex;gap:6px;align-items:center;height:${CONTROLS_PX}px;`, { className: "ptalk-controls" });
    this.toggle = el("button", "width:22px;height:22px;padding:0;cursor:pointer;", { className: "ptalk-toggle", title: "Show / hide the player (kept in the node's properties)" });
    this.button = el("button", "width:28px;height:22px;padding:0;cursor:pointer;", { className: "ptalk-play", textContent: "▶", title: "Play / pause" });
    this.scrub = el("input", "flex:1;min-width:40px;", { className: "ptalk-scrub", type: "range", min: 0, max: 0, step: 1, value: 0 });
    this.counter = el("span", "white-space:nowrap;min-width:84px;text-align:right;font-variant-numeric:tabular-nums;", { className: "ptalk-counter" });
    this.strip = el("canvas", `flex:none;width:100%;height:${STRIP_PX}px;display:block;cursor:pointer;border-radius:4px;`, { className: "ptalk-strip" });
    this.audio = el("audio", "display:none", { className: "ptalk-audio", preload: "auto" });
    this.controls.append(this.toggle, this.button, this.scrub, this.counter);
    this.root.append(this.face, this.controls, this.strip, this.audio);
    this.button.addEventListener("click", () => (this.playing ? this.pause() : this.play()));
    this.toggle.addEventListener("click", () => this.setCollapsed(!this.collapsed()));
    this.scrub.addEventListener("input", () => { this.pause(); this.seek(Number(this.scrub.value)); });
    const stripSeek = (e) => {
      const r = this.strip.getBoundingClientRect(), T = this.frames();
      if (r.width > 0 && T > 0) this.seek(Math.floor(Math.min(0.9999, Math.max(0, (e.clientX - r.left) / r.width)) * T));
    };
    this.strip.addEventListener("pointerdown", (e) => {
      this.pause();
      stripSeek(e);
      const move = (ev) => stripSeek(ev), up = () => { window.removeEventListener("pointermove", move); window.removeEventListener("pointerup", up); };
      window.addEventListener("pointermove", move);
      window.addEventListener("pointerup", up);
    });
    this.tick = this.tick.bind(this);
  }

  frames() { return this.payload ? this.payload.frames : 0; }

  // collapsed: the controls row only (the node's properties.ptalk_player, saved with the workflow)
  collapsed() { return this.node.properties?.[WIDGET_NAME] === "collapsed"; }

  setCollapsed(on) {
    const node = this.node;
    if (on && node.size) this.openHeight = node.size[1]; // unfolding gives the node its height back
    if (node.properties) node.properties[WIDGET_NAME] = on ? "collapsed" : "expanded";
    this.layout();
    fitNode(node, on);
    if (!on && this.openHeight > node.size[1] && typeof node.setSize === "function") {
      node.setSize([node.size[0], this.openHeight]);
    }
    this.draw();
  }

  height() {
    const p = this.payload;
    if (!p || this.collapsed()) return CONTROLS_PX + 2 * PAD_PX;
    if (p.kind === "curves") return p.lanes.length * LANE_PX + CONTROLS_PX + GAP_PX + 2 * PAD_PX;
    return FACE_PX + CONTROLS_PX + GAP_PX + 2 * PAD_PX + (p.frames > 1 ? STRIP_PX + GAP_PX : 0);
  }

  // what is shown: the face view (landmarks), the controls row (always: the toggle), the strip or the lanes
  layout() {
    const p = this.payload, open = !this.collapsed(), multi = p.frames > 1, marks = p.kind === "landmarks";
    this.toggle.textContent = open ? "▾" : "▸";
    this.face.style.display = open && marks ? "block" : "none";
    this.button.style.display = marks && multi ? "" : "none";
    this.scrub.style.display = multi ? "" : "none";
    this.strip.style.display = open && (multi || !marks) ? "block" : "none";
    this.strip.style.height = marks ? `${STRIP_PX}px` : `${p.lanes.length * LANE_PX}px`;
    this.counter.style.flex = multi ? "" : "1";
  }

  async load(payload) {
    const decoded = { payload };
    if (payload.kind === "landmarks") {
      decoded.points = await decodePoints(payload);
      decoded.present = presentFlags(payload);
      decoded.edges = await decodeEdges(payload.topology.edges);
      decoded.curves = {};
      for (const c of payload.curves || []) decoded.curves[c.name] = { entry: c, values: await decodeCurve(c) };
    } else if (payload.kind === "curves") {
      decoded.lanes = [];
      for (const lane of payload.lanes) {
        const series = [];
        for (const s of lane.series) series.push({ entry: s, values: await decodeCurve(s) });
        decoded.lanes.push({ lane, series });
      }
    } else {
      return false;
    }
    this.pause();
    this.payload = payload;
    this.data = decoded;
    this.frame = 0;
    this.backdrop = null;
    this.backdropURL = null;
    this.fps = payload.fps > 0 ? payload.fps : STILL_FPS;
    this.scrub.max = String(Math.max(0, payload.frames - 1));
    this.scrub.value = "0";
    this.counter.style.minWidth = payload.kind === "curves" ? "0" : "84px";
    if (payload.kind === "curves") this.controls.before(this.strip);
    this.layout();
    if (payload.audio && payload.kind === "landmarks") {
      this.audio.src = viewURL(payload.audio);
      this.audio.load();
    } else {
      this.audio.removeAttribute("src");
    }
    this.root.dataset.frames = String(payload.frames);
    this.root.dataset.kind = payload.kind;
    this.stripCache = null;
    this.seek(0);
    return true;
  }

  // the backdrop image: the payload's own, else the preview image of the node feeding payload.backdrop_input
  backdropImage() {
    const p = this.payload;
    let entry = p.image;
    if (!entry && p.backdrop_input) {
      try {
        const node = this.node, slot = node.findInputSlot ? node.findInputSlot(p.backdrop_input)
          : (node.inputs || []).findIndex((i) => i.name === p.backdrop_input);
        const src = slot >= 0 && typeof node.getInputNode === "function" ? node.getInputNode(slot) : null;
        entry = src?.__ptalkPlayer?.payload?.image || null;
      } catch (e) {
        entry = null;
      }
    }
    if (!entry) return null;
    const url = viewURL(entry);
    if (url !== this.backdropURL) {
      this.backdropURL = url;
      this.backdrop = el("img");
      this.backdrop.onload = () => this.draw();
      this.backdrop.src = url;
    }
    return this.backdrop.complete && this.backdrop.naturalWidth > 0 ? this.backdrop : null;
  }

  play() {
    if (!this.payload || this.payload.kind !== "landmarks" || this.payload.frames < 2) return;
    if (this.frame >= this.payload.frames - 1) this.seek(0);
    this.playing = true;
    this.button.textContent = "❚❚";
    this.clock0 = performance.now() - (this.frame / this.fps) * 1000;
    if (this.audio.getAttribute("src")) {
      try {
        this.audio.currentTime = this.frame / this.fps;
        const r = this.audio.play();
        if (r && typeof r.catch === "function") r.catch(() => {}); // no sound (autoplay policy, no device): the clock runs
      } catch (e) { /* the clock runs */ }
    }
    requestAnimationFrame(this.tick);
  }

  pause() {
    this.playing = false;
    this.button.textContent = "▶";
    try { if (!this.audio.paused) this.audio.pause(); } catch (e) { /* nothing to stop */ }
  }

  tick() {
    if (!this.playing || !this.payload) return;
    const now = performance.now();
    const a = this.audio;
    if (a.getAttribute("src") && !a.paused && !a.ended && a.readyState >= 2) {
      this.clock0 = now - a.currentTime * 1000; // follow the sound; the clock takes over where it stops
    }
    const k = Math.floor(((now - this.clock0) / 1000) * this.fps);
    if (k >= this.payload.frames) {
      this.pause();
      this.seek(this.payload.frames - 1);
      return;
    }
    if (k !== this.frame) this.seek(k, false);
    requestAnimationFrame(this.tick);
  }

  seek(k, moveAudio = true) {
    if (!this.payload) return;
    const T = this.payload.frames;
    this.frame = Math.max(0, Math.min(T - 1, k | 0));
    this.scrub.value = String(this.frame);
    if (moveAudio && this.audio.getAttribute("src") && this.payload.fps > 0) {
      try { this.audio.currentTime = this.frame / this.payload.fps; } catch (e) { /* not loaded yet */ }
    }
    this.root.dataset.frame = String(this.frame);
    this.draw();
  }

  draw() {
    if (!this.payload || !this.root.isConnected) return;
    const open = !this.collapsed();
    if (this.payload.kind === "landmarks") {
      if (open) this.drawFace();
      if (open && this.payload.frames > 1) this.drawStrip();
      const t = this.payload.fps > 0 ? ` · ${(this.frame / this.payload.fps).toFixed(2)} s` : "";
      this.counter.textContent = this.payload.frames > 1 ? `${this.frame + 1} / ${this.payload.frames}${t}`
        : "1 frame: the face mesh on the image";
    } else {
      this.drawLanes(open);
    }
  }

  drawFace() {
    const p = this.payload, d = this.data;
    const [ctx, w, h, dpr] = fitCanvas(this.face);
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = COLORS.background;
    ctx.fillRect(0, 0, w, h);
    const s = Math.min(w, h), vx = Math.round((w - s) / 2), vy = Math.round((h - s) / 2);
    this.face.dataset.view = JSON.stringify([vx, vy, s]);
    const [bx, by, bs] = p.box, [W, H] = p.image_size;
    const img = this.backdropImage();
    if (img) {
      const kx = img.naturalWidth / W, ky = img.naturalHeight / H;
      ctx.drawImage(img, bx * kx, by * ky, bs * kx, bs * ky, vx, vy, s, s);
      ctx.fillStyle = COLORS.shade;
      ctx.fillRect(vx, vy, s, s);
    }
    const C = p.n_points * 2, base = this.frame * C, pts = d.points, scale = s / (p.levels - 1);
    const X = (i) => vx + pts[base + 2 * i] * scale, Y = (i) => vy + pts[base + 2 * i + 1] * scale;
    const present = !d.present || d.present[this.frame];
    ctx.lineJoin = "round";
    // the tessellation
    ctx.strokeStyle = COLORS.mesh;
    ctx.lineWidth = Math.max(0.5, 0.6 * dpr);
    ctx.beginPath();
    const e = d.edges;
    for (let j = 0; j < e.length; j += 2) {
      ctx.moveTo(X(e[j]), Y(e[j]));
      ctx.lineTo(X(e[j + 1]), Y(e[j + 1]));
    }
    ctx.stroke();
    // highlighted contours
    const contours = p.topology.contours || {};
    for (const name of ["oval", "brows_open", "eyes", "irises", "lips"]) {
      ctx.strokeStyle = COLORS[name];
      ctx.lineWidth = (name === "lips" || name === "eyes" ? 1.5 : 1) * dpr;
      for (const c of contours[name] || []) {
        ctx.beginPath();
        c.forEach((i, n) => (n ? ctx.lineTo(X(i), Y(i)) : ctx.moveTo(X(i), Y(i))));
        if (!name.endsWith("_open")) ctx.closePath();
        ctx.stroke();
      }
    }
    // the mouth opening, filled (over the lines: its area is what the lip-sync strip plots)
    ctx.fillStyle = COLORS.mouth;
    for (const c of contours.mouth || []) {
      ctx.beginPath();
      c.forEach((i, n) => (n ? ctx.lineTo(X(i), Y(i)) : ctx.moveTo(X(i), Y(i))));
      ctx.closePath();
      ctx.fill();
    }
    if (!present) {
      ctx.fillStyle = "rgba(0, 0, 0, 0.55)";
      ctx.fillRect(vx, vy, s, s);
      ctx.fillStyle = COLORS.text;
      ctx.font = `${12 * dpr}px sans-serif`;
      ctx.fillText("no face in this frame", vx + 6 * dpr, vy + 16 * dpr);
    }
  }

  // min/max of a curve per column of `cols` pixels: Float32Array [cols * 2] (NaN where no value)
  columns(values, cols) {
    const T = this.payload.frames, out = new Float32Array(cols * 2).fill(NaN);
    for (let c = 0; c < cols; c++) {
      const a = Math.floor((c * T) / cols), b = Math.max(a + 1, Math.floor(((c + 1) * T) / cols));
      let lo = Infinity, hi = -Infinity;
      for (let t = a; t < b && t < values.length; t++) {
        const v = values[t];
        if (v === v) { if (v < lo) lo = v; if (v > hi) hi = v; }
      }
      if (lo <= hi) { out[2 * c] = lo; out[2 * c + 1] = hi; }
    }
    return out;
  }

  drawCurve(ctx, values, entry, x0, y0, w, h, color, fill, dpr) {
    const cols = Math.max(1, Math.floor(w));
    const key = `${entry.name}|${cols}`;
    this.stripCache = this.stripCache || {};
    const colsData = this.stripCache[key] || (this.stripCache[key] = this.columns(values, cols));
    const y = (v) => y0 + h - ((v - entry.lo) / (entry.hi - entry.lo)) * h;
    if (fill) {
      ctx.fillStyle = color;
      for (let c = 0; c < cols; c++) {
        const hi = colsData[2 * c + 1];
        if (hi === hi) ctx.fillRect(x0 + c, y(hi), 1, y0 + h - y(hi));
      }
      return;
    }
    ctx.strokeStyle = color;
    ctx.lineWidth = 1.25 * dpr;
    ctx.beginPath();
    let pen = false;
    const dots = []; // values with no neighbour (a sparse series, e.g. identity every n-th frame)
    for (let c = 0; c < cols; c++) {
      const lo = colsData[2 * c], hi = colsData[2 * c + 1];
      if (lo !== lo) { pen = false; continue; }
      if (!pen) ctx.moveTo(x0 + c + 0.5, y(lo)); else ctx.lineTo(x0 + c + 0.5, y(lo));
      ctx.lineTo(x0 + c + 0.5, y(hi));
      const prev = c > 0 ? colsData[2 * c - 2] : NaN, next = c + 1 < cols ? colsData[2 * c + 2] : NaN;
      if (prev !== prev && next !== next) dots.push([x0 + c + 0.5, y(hi)]);
      pen = true;
    }
    ctx.stroke();
    ctx.fillStyle = color;
    for (const [x, yy] of dots) ctx.fillRect(x - 1.5 * dpr, yy - 1.5 * dpr, 3 * dpr, 3 * dpr);
  }

  drawCursor(ctx, x0, w, h, dpr) {
    const x = x0 + ((this.frame + 0.5) / this.payload.frames) * w;
    ctx.fillStyle = COLORS.cursor;
    ctx.fillRect(Math.round(x - 0.5 * dpr), 0, Math.max(1, Math.round(dpr)), h);
  }

  drawStrip() {
    const [ctx, w, h, dpr] = fitCanvas(this.strip);
    ctx.fillStyle = COLORS.background;
    ctx.fillRect(0, 0, w, h);
    const c = this.data.curves;
    if (c.loudness) this.drawCurve(ctx, c.loudness.values, c.loudness.entry, 0, 0, w, h, COLORS.loudness, true, dpr);
    if (c.mouth) this.drawCurve(ctx, c.mouth.values, c.mouth.entry, 0, 0, w, h, COLORS.mouth, false, dpr);
    this.drawCursor(ctx, 0, w, h, dpr);
    ctx.font = `${10 * dpr}px sans-serif`;
    const labels = [["mouth opening", COLORS.mouth]].concat(c.loudness ? [["loudness", COLORS.text]] : []);
    labels.forEach(([text, color], i) => {
      const y = (11 + 11 * i) * dpr;
      ctx.fillStyle = "rgba(21, 26, 26, 0.75)";
      ctx.fillRect(2 * dpr, y - 9 * dpr, ctx.measureText(text).width + 4 * dpr, 11 * dpr);
      ctx.fillStyle = color;
      ctx.fillText(text, 4 * dpr, y);
    });
  }

  drawLanes(open) {
    const parts = [];
    for (const { series } of this.data.lanes) {
      for (const s of series) {
        const v = s.values[this.frame];
        parts.push(`${s.entry.name} ${v === v && v !== undefined ? v.toPrecision(3) : "–"}`);
      }
    }
    this.counter.textContent = `frame ${this.frame + 1}/${this.payload.frames}: ${parts.join(" · ")}`;
    this.counter.title = this.counter.textContent;
    this.counter.style.overflow = "hidden";
    this.counter.style.textOverflow = "ellipsis";
    this.counter.style.maxWidth = "70%";
    if (!open) return;
    const [ctx, w, h, dpr] = fitCanvas(this.strip);
    ctx.fillStyle = COLORS.background;
    ctx.fillRect(0, 0, w, h);
    const lanes = this.data.lanes, lh = h / Math.max(1, lanes.length);
    ctx.font = `${10 * dpr}px sans-serif`;
    lanes.forEach(({ lane, series }, i) => {
      const y0 = i * lh;
      if (i) { ctx.fillStyle = "rgba(255, 255, 255, 0.12)"; ctx.fillRect(0, Math.round(y0), w, 1); }
      series.forEach((s, j) => {
        const color = COLORS.series[(i + j) % COLORS.series.length];
        this.drawCurve(ctx, s.values, s.entry, 0, y0 + 3 * dpr, w, lh - 6 * dpr, color, false, dpr);
      });
      ctx.fillStyle = COLORS.text;
      ctx.fillText(`${lane.label}${lane.unit ? ` (${lane.unit})` : ""}`, 4 * dpr, y0 + 11 * dpr);
    });
    this.drawCursor(ctx, 0, w, h, dpr);
  }
}

// ------------------------------------------------------------------------------------------------ node glue
// room for the player: grow the node to what its widgets need; `shrink`: also down to it (the player collapsed)
function fitNode(node, shrink) {
  if (typeof node.computeSize === "function" && typeof node.setSize === "function" && node.size) {
    const need = node.computeSize();
    if (need && (need[1] > node.size[1] || shrink)) node.setSize([node.size[0], need[1]]);
  }
  node.setDirtyCanvas?.(true, true);
}

async function showPreview(node, payload) {
  if (!payload || payload.format !== "ptalk-preview" || payload.version !== 1) return;
  if (typeof node.addDOMWidget !== "function" || !supported()) return; // an older / other frontend: no player
  // one player per node, set before the await: two "executed" events close together share it
  let player = node.__ptalkPlayer;
  if (!player) player = node.__ptalkPlayer = new Player(node);
  if (!(await player.load(payload))) return;
  if (!player.widget) { // the DOM widget is added once, by the first load that succeeds (no await in between)
    const widget = node.addDOMWidget(WIDGET_NAME, "ptalk-player", player.root, {
      serialize: false,
      hideOnZoom: true,
      getValue: () => "",
      setValue: () => {},
      margin: MARGIN_PX,
      getMinHeight: () => player.height() + 2 * MARGIN_PX,
      getMaxHeight: () => player.height() + 2 * MARGIN_PX,
    });
    if (!widget) return;
    player.widget = widget;
    widget.serialize = false; // neither in the saved workflow nor in the API prompt
    if (widget.options) widget.options.serialize = false;
    const onRemoved = node.onRemoved;
    node.onRemoved = function () {
      player.pause();
      return onRemoved?.apply(this, arguments);
    };
  }
  fitNode(node, false);
  requestAnimationFrame(() => player.draw());
}

if (typeof app?.registerExtension === "function") {
  app.registerExtension({
    name: "PortraitTalk.landmarkPlayer",
    async beforeRegisterNodeDef(nodeType, nodeData) {
      if (!NODE_TYPES.has(nodeData?.name) || !nodeType?.prototype) return;
      const onExecuted = nodeType.prototype.onExecuted;
      nodeType.prototype.onExecuted = function (output) {
        const r = onExecuted?.apply(this, arguments);
        const payload = output?.[UI_KEY]?.[0];
        if (payload) showPreview(this, payload).catch(() => {}); // a preview that cannot be shown is left out
        return r;
      };
    },
  });
}
