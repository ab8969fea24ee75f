// volcam slice viewer: decodes the embedded volumes and draws three linked planes.
// The data format is described in volcam/figures/viewer_data.py; the drawing follows
// volcam/figures/render.py (same grey levels, colour indices and blending as the PNGs).
(() => {
  "use strict";

  const META = JSON.parse(document.getElementById("volcam-meta").textContent);
  const $ = (id) => document.getElementById(id);
  const SHAPE = META.shape;
  const [NX, NY, NZ] = SHAPE;
  const STRIDE = [1, NX, NX * NY];
  const AFF = META.affine;
  const ZOOMS = [0, 1, 2].map((c) => Math.hypot(AFF[0][c], AFF[1][c], AFF[2][c]));
  const SOURCE_INV = inverseAffine(META.source.affine);
  const FLIP_ALWAYS = META.convention === "radiological";
  const NAMES = { 0: "sagittal", 1: "coronal", 2: "axial" };
  const IN_PLANE = { 2: [1, 0], 1: [2, 0], 0: [2, 1] }; // [row axis, column axis]
  const PLANES = META.planes;

  const state = {
    cursor: [0, 0, 0],
    layer: 0,
    showHeat: true,
    alpha: META.display.alpha,
    threshold: META.display.threshold,
    cmap: META.display.cmap,
    blend: META.display.blend,
    window: META.window.slice(),
    masks: META.masks.map(() => true),
    crosshair: true,
    active: PLANES[0],
  };
  const data = { image: null, heats: [], masks: {} };
  const panels = {};
  let greyLut = null;
  let heatLut = null;
  let blendTable = null;

  // ------------------------------------------------------------------ geometry

  function inverseAffine(a) {
    const m = [0, 1, 2].map((r) => [0, 1, 2].map((c) => a[r][c]));
    const det =
      m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) -
      m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0]) +
      m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
    const inv = [0, 1, 2].map(() => [0, 0, 0]);
    for (let r = 0; r < 3; r++) {
      for (let c = 0; c < 3; c++) {
        const r1 = (c + 1) % 3, r2 = (c + 2) % 3, c1 = (r + 1) % 3, c2 = (r + 2) % 3;
        inv[r][c] = (m[r1][c1] * m[r2][c2] - m[r1][c2] * m[r2][c1]) / det;
      }
    }
    const t = [0, 1, 2].map((r) => -(inv[r][0] * a[0][3] + inv[r][1] * a[1][3] + inv[r][2] * a[2][3]));
    return { m: inv, t };
  }

  function toWorld(v) {
    return [0, 1, 2].map((r) => AFF[r][0] * v[0] + AFF[r][1] * v[1] + AFF[r][2] * v[2] + AFF[r][3]);
  }

  function sourceVoxel(world) {
    const { m, t } = SOURCE_INV;
    return [0, 1, 2].map((r) => Math.round(m[r][0] * world[0] + m[r][1] * world[1] + m[r][2] * world[2] + t[r]));
  }

  function shown(world) {
    // world RAS -> the coordinate system of the read-out
    return META.coordinates === "LPS" ? [-world[0], -world[1], world[2]] : world;
  }

  function fmt(x, digits) {
    if (!Number.isFinite(x)) return "\u2013";
    const s = x.toFixed(digits);
    return x >= 0 ? "+" + s : s;
  }

  function worldText(world) {
    if (!META.anatomical) return "";
    const w = shown(world);
    return `x ${fmt(w[0], 1)}  y ${fmt(w[1], 1)}  z ${fmt(w[2], 1)} mm`;
  }

  function index(v) {
    return v[0] + NX * (v[1] + NY * v[2]);
  }

  function flipCols(a) {
    return a === 0 || FLIP_ALWAYS;
  }

  function displayOf(a, v) {
    const [r, c] = IN_PLANE[a];
    const row = SHAPE[r] - 1 - v[r];
    const col = flipCols(a) ? SHAPE[c] - 1 - v[c] : v[c];
    return [row, col];
  }

  function voxelOf(a, row, col) {
    const [r, c] = IN_PLANE[a];
    const v = state.cursor.slice();
    v[r] = SHAPE[r] - 1 - row;
    v[c] = flipCols(a) ? SHAPE[c] - 1 - col : col;
    return v;
  }

  function edgeLetters(a) {
    if (!META.anatomical) return { top: "", bottom: "", left: "", right: "" };
    const rl = FLIP_ALWAYS ? ["R", "L"] : ["L", "R"];
    if (a === 2) return { top: "A", bottom: "P", left: rl[0], right: rl[1] };
    if (a === 1) return { top: "S", bottom: "I", left: rl[0], right: rl[1] };
    return { top: "S", bottom: "I", left: "A", right: "P" };
  }

  // ------------------------------------------------------------------ decoding

  function base64Bytes(text) {
    if (typeof Uint8Array.fromBase64 === "function") return Uint8Array.fromBase64(text);
    const bin = atob(text);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }

  async function inflate(bytes) {
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
    return new Uint8Array(await new Response(stream).arrayBuffer());
  }

  async function decodeVolume(desc) {
    const wide = desc.dtype === "uint16";
    const out = wide ? new Uint16Array(NX * NY * NZ) : new Uint8Array(NX * NY * NZ);
    const slice = NX * NY;
    await Promise.all(
      desc.chunks.map(async (chunk) => {
        const el = document.getElementById(chunk.id);
        const raw = await inflate(base64Bytes(el.textContent.trim()));
        el.textContent = "";
        const count = chunk.nk * slice;
        const start = chunk.k0 * slice;
        if (raw.length !== count * (wide ? 2 : 1)) throw new Error(`chunk ${chunk.id} holds ${raw.length} bytes`);
        if (wide) {
          for (let i = 0; i < count; i++) out[start + i] = raw[i] | (raw[count + i] << 8);
        } else {
          out.set(raw, start);
        }
      })
    );
    return out;
  }

  function value(desc, code) {
    return desc.offset + desc.scale * code;
  }

  // ------------------------------------------------------------------ colours

  function updateGreyLut() {
    const d = META.volumes.image;
    const n = d.dtype === "uint16" ? 65536 : 256;
    const [lo, hi] = state.window;
    const f = Math.fround;
    const gain = f(255 / (hi - lo));
    const flo = f(lo);
    greyLut = new Uint8Array(n);
    for (let q = 0; q < n; q++) {
      let g = f(f(f(value(d, q)) - flo) * gain);
      g = g < 0 ? 0 : g > 255 ? 255 : g;
      greyLut[q] = Math.floor(f(g + 0.5));
    }
  }

  function lut() {
    return META.cmaps[state.cmap];
  }

  function updateHeatLut() {
    const layer = META.layers[state.layer];
    const d = META.volumes[layer.volume];
    const n = lut().length / 3;
    const [lo, hi] = layer.range;
    const f = Math.fround;
    const gain = f((n - 1) / (hi - lo));
    heatLut = new Uint16Array(256);
    for (let q = 0; q < 256; q++) {
      const h = f(value(d, q));
      if (!state.showHeat || !(h > state.threshold)) {
        heatLut[q] = n;
        continue;
      }
      let s = f(f(h - f(lo)) * gain);
      s = s < 0 ? 0 : s > n - 1 ? n - 1 : s;
      heatLut[q] = Math.floor(f(s + 0.5));
    }
  }

  function updateBlendTable() {
    const colours = lut();
    const n = colours.length / 3;
    blendTable = new Uint8Array((n + 1) * 256 * 3);
    for (let c = 0; c <= n; c++) {
      const w = c === n ? 0 : state.blend === "scaled" ? (state.alpha * c) / Math.max(n - 1, 1) : state.alpha;
      for (let g = 0; g < 256; g++) {
        const grey = g / 255;
        for (let ch = 0; ch < 3; ch++) {
          const colour = c === n ? 0 : colours[3 * c + ch];
          blendTable[(c * 256 + g) * 3 + ch] = Math.round((grey * (1 - w) + colour * w) * 255);
        }
      }
    }
  }

  function hexColour(hex) {
    return [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
  }

  // ------------------------------------------------------------------ rendering

  function renderSlice(a) {
    const p = panels[a];
    const [r, c] = IN_PLANE[a];
    const H = SHAPE[r], W = SHAPE[c];
    const flip = flipCols(a);
    const img = p.imageData.data;
    const image = data.image;
    const heat = data.heats[state.layer];
    const base = state.cursor[a] * STRIDE[a];
    const sr = STRIDE[r], sc = STRIDE[c];
    let o = 0;
    for (let row = 0; row < H; row++) {
      const rowBase = base + (H - 1 - row) * sr;
      for (let col = 0; col < W; col++) {
        const idx = rowBase + (flip ? W - 1 - col : col) * sc;
        const t = (heatLut[heat[idx]] * 256 + greyLut[image[idx]]) * 3;
        img[o] = blendTable[t];
        img[o + 1] = blendTable[t + 1];
        img[o + 2] = blendTable[t + 2];
        img[o + 3] = 255;
        o += 4;
      }
    }
    META.masks.forEach((m, i) => {
      if (!state.masks[i]) return;
      const vol = data.masks[m.volume];
      const bit = 1 << m.bit;
      const inside = new Uint8Array(W * H);
      for (let row = 0; row < H; row++) {
        const rowBase = base + (H - 1 - row) * sr;
        for (let col = 0; col < W; col++) {
          inside[row * W + col] = vol[rowBase + (flip ? W - 1 - col : col) * sc] & bit ? 1 : 0;
        }
      }
      const rgb = hexColour(m.color);
      for (let row = 0; row < H; row++) {
        for (let col = 0; col < W; col++) {
          const k = row * W + col;
          if (!inside[k]) continue;
          const edge =
            row === 0 || col === 0 || row === H - 1 || col === W - 1 ||
            !inside[k - 1] || !inside[k + 1] || !inside[k - W] || !inside[k + W];
          if (edge) {
            img[4 * k] = rgb[0];
            img[4 * k + 1] = rgb[1];
            img[4 * k + 2] = rgb[2];
          }
        }
      }
    });
    p.offscreen.getContext("2d").putImageData(p.imageData, 0, 0);
    p.renderedSlice = state.cursor[a];
  }

  function layoutPanel(a) {
    const p = panels[a];
    const box = p.body.getBoundingClientRect();
    const dpr = window.devicePixelRatio || 1;
    p.canvas.width = Math.max(1, Math.round(box.width * dpr));
    p.canvas.height = Math.max(1, Math.round(box.height * dpr));
    const [r, c] = IN_PLANE[a];
    const wmm = SHAPE[c] * ZOOMS[c], hmm = SHAPE[r] * ZOOMS[r];
    const s = Math.min(box.width / wmm, box.height / hmm);
    p.sx = s * ZOOMS[c];
    p.sy = s * ZOOMS[r];
    p.x0 = (box.width - SHAPE[c] * p.sx) / 2;
    p.y0 = (box.height - SHAPE[r] * p.sy) / 2;
    // the edge letters sit at the edges of the image, not of the panel
    const w = SHAPE[c] * p.sx, h = SHAPE[r] * p.sy;
    const place = (side, x, y) => Object.assign(p.root.querySelector(`.edge.${side}`).style, { left: `${x}px`, top: `${y}px` });
    place("top", p.x0 + w / 2, p.y0);
    place("bottom", p.x0 + w / 2, p.y0 + h);
    place("left", p.x0, p.y0 + h / 2);
    place("right", p.x0 + w, p.y0 + h / 2);
  }

  function drawPanel(a) {
    const p = panels[a];
    if (p.renderedSlice !== state.cursor[a]) renderSlice(a);
    const dpr = window.devicePixelRatio || 1;
    const ctx = p.canvas.getContext("2d");
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, p.canvas.width, p.canvas.height);
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.imageSmoothingEnabled = false;
    const [r, c] = IN_PLANE[a];
    ctx.drawImage(p.offscreen, p.x0, p.y0, SHAPE[c] * p.sx, SHAPE[r] * p.sy);
    if (state.crosshair) {
      const [row, col] = displayOf(a, state.cursor);
      const x = p.x0 + (col + 0.5) * p.sx, y = p.y0 + (row + 0.5) * p.sy;
      ctx.strokeStyle = "rgba(0, 255, 120, 0.7)";
      ctx.lineWidth = 1;
      ctx.beginPath();
      ctx.moveTo(p.x0, y);
      ctx.lineTo(p.x0 + SHAPE[c] * p.sx, y);
      ctx.moveTo(x, p.y0);
      ctx.lineTo(x, p.y0 + SHAPE[r] * p.sy);
      ctx.stroke();
    }
    const k = state.cursor[a];
    const centre = SHAPE.map((n) => (n - 1) / 2);
    centre[a] = k;
    const along = shown(toWorld(centre))[a];
    p.label.textContent = META.anatomical
      ? `${k} / ${SHAPE[a] - 1}   ${"xyz"[a]} ${fmt(along, 1)} mm`
      : `${k} / ${SHAPE[a] - 1}`;
    p.slider.value = String(k);
  }

  function redraw(full) {
    if (!greyLut || !heatLut || !blendTable) return; // still starting
    if (full) PLANES.forEach((a) => (panels[a].renderedSlice = -1));
    PLANES.forEach(drawPanel);
    readout("cursor", state.cursor);
  }

  // ------------------------------------------------------------------ read-out

  function describe(v) {
    const idx = index(v);
    const img = META.volumes.image;
    const layer = META.layers[state.layer];
    const world = toWorld(v);
    const imageValue = value(img, data.image[idx]);
    const digits = img.exact && img.scale === 1 ? 0 : 4;
    const imageText =
      (digits === 0 ? String(Math.round(imageValue)) : Number(imageValue.toPrecision(digits)).toString()) +
      (META.units ? " " + META.units : "");
    const heatValue = value(META.volumes[layer.volume], data.heats[state.layer][idx]);
    const inside = META.masks.filter((m) => data.masks[m.volume][idx] & (1 << m.bit)).map((m) => m.name);
    const src = sourceVoxel(world);
    return {
      voxel: v.slice(),
      world,
      worldText: worldText(world),
      sourceVoxel: src.slice(0, META.source.shape.length),
      imageValue,
      imageText,
      heatValue,
      inside,
    };
  }

  function readout(prefix, v) {
    if (!v) {
      ["world", "voxel", "image", "heat", "inside"].forEach((k) => ($(`${prefix}-${k}`).textContent = ""));
      return;
    }
    const d = describe(v);
    $(`${prefix}-world`).textContent = d.worldText;
    $(`${prefix}-voxel`).textContent = d.sourceVoxel.join(", ") + (META.anatomical ? "" : " px");
    $(`${prefix}-image`).textContent = d.imageText;
    $(`${prefix}-heat`).textContent = d.heatValue.toFixed(3);
    $(`${prefix}-inside`).textContent = d.inside.join(", ");
  }

  // ------------------------------------------------------------------ interaction

  function clamp(v) {
    return v.map((x, i) => Math.min(Math.max(Math.round(x), 0), SHAPE[i] - 1));
  }

  function setCursor(v) {
    state.cursor = clamp(v);
    redraw(false);
  }

  function step(a, delta) {
    const v = state.cursor.slice();
    v[a] += delta;
    setCursor(v);
  }

  function pointerVoxel(a, event) {
    const p = panels[a];
    const rect = p.canvas.getBoundingClientRect();
    const x = event.clientX - rect.left, y = event.clientY - rect.top;
    const [r, c] = IN_PLANE[a];
    const col = Math.floor((x - p.x0) / p.sx), row = Math.floor((y - p.y0) / p.sy);
    if (row < 0 || col < 0 || row >= SHAPE[r] || col >= SHAPE[c]) return null;
    return voxelOf(a, row, col);
  }

  function setActive(a) {
    state.active = a;
    PLANES.forEach((b) => panels[b].root.classList.toggle("active", a === b));
  }

  function setWindow(lo, hi, presetName) {
    if (!(hi > lo)) return;
    state.window = [lo, hi];
    $("level").value = String(+((lo + hi) / 2).toPrecision(6));
    $("width").value = String(+(hi - lo).toPrecision(6));
    $("preset").value = presetName || "custom";
    updateGreyLut();
    redraw(true);
  }

  function makePanel(a) {
    const root = document.createElement("div");
    root.className = "panel";
    root.dataset.plane = NAMES[a];
    root.innerHTML =
      '<div class="panel-head"><span class="plane-name"></span><span class="slice-label"></span></div>' +
      '<div class="panel-body"><canvas></canvas><div class="edge top"></div><div class="edge bottom"></div>' +
      '<div class="edge left"></div><div class="edge right"></div></div>' +
      '<input type="range" class="slice-slider" min="0" step="1">';
    const [r, c] = IN_PLANE[a];
    const p = {
      root,
      body: root.querySelector(".panel-body"),
      canvas: root.querySelector("canvas"),
      label: root.querySelector(".slice-label"),
      slider: root.querySelector(".slice-slider"),
      offscreen: document.createElement("canvas"),
      renderedSlice: -1,
    };
    root.querySelector(".plane-name").textContent = META.anatomical ? NAMES[a] : "image";
    p.offscreen.width = SHAPE[c];
    p.offscreen.height = SHAPE[r];
    p.imageData = new ImageData(SHAPE[c], SHAPE[r]);
    const letters = edgeLetters(a);
    for (const side of ["top", "bottom", "left", "right"]) root.querySelector(`.edge.${side}`).textContent = letters[side];
    p.slider.max = String(SHAPE[a] - 1);
    if (SHAPE[a] === 1) p.slider.hidden = true;
    p.slider.addEventListener("input", () => {
      const v = state.cursor.slice();
      v[a] = Number(p.slider.value);
      setCursor(v);
    });

    let drag = null;
    let wheel = 0;
    p.canvas.addEventListener("contextmenu", (e) => e.preventDefault());
    p.canvas.addEventListener("pointerdown", (e) => {
      setActive(a);
      if (e.button === 2 || e.shiftKey) {
        drag = { mode: "window", x: e.clientX, y: e.clientY, window: state.window.slice() };
      } else if (e.button === 0) {
        drag = { mode: "cursor" };
        const v = pointerVoxel(a, e);
        if (v) setCursor(v);
      }
      if (drag) p.canvas.setPointerCapture(e.pointerId);
    });
    p.canvas.addEventListener("pointermove", (e) => {
      const v = pointerVoxel(a, e);
      readout("pointer", v);
      if (!drag) return;
      if (drag.mode === "cursor" && v) setCursor(v);
      if (drag.mode === "window") {
        const [lo, hi] = drag.window;
        const width = Math.max((hi - lo) * Math.exp((e.clientX - drag.x) / 200), 1e-6);
        const level = (lo + hi) / 2 - ((e.clientY - drag.y) * (hi - lo)) / 300;
        setWindow(level - width / 2, level + width / 2, null);
      }
    });
    const stop = () => (drag = null);
    p.canvas.addEventListener("pointerup", stop);
    p.canvas.addEventListener("pointercancel", stop);
    p.canvas.addEventListener("pointerleave", () => readout("pointer", null));
    p.canvas.addEventListener("pointerenter", () => setActive(a));
    p.canvas.addEventListener(
      "wheel",
      (e) => {
        e.preventDefault();
        setActive(a);
        if (e.deltaMode !== 0) {
          step(a, e.deltaY > 0 ? -1 : 1);
          return;
        }
        wheel += e.deltaY;
        while (Math.abs(wheel) >= 50) {
          step(a, wheel > 0 ? -1 : 1);
          wheel -= 100 * Math.sign(wheel);
          if (Math.abs(wheel) < 50) wheel = 0;
        }
      },
      { passive: false }
    );
    return p;
  }

  function onKey(e) {
    const tag = e.target && e.target.tagName;
    if (tag === "INPUT" || tag === "SELECT" || tag === "TEXTAREA") return;
    const steps = { ArrowUp: 1, ArrowRight: 1, ArrowDown: -1, ArrowLeft: -1, PageUp: 10, PageDown: -10 };
    if (e.key in steps) {
      e.preventDefault();
      step(state.active, steps[e.key]);
    } else if (e.key === "Home" || e.key === "End") {
      e.preventDefault();
      const v = state.cursor.slice();
      v[state.active] = e.key === "Home" ? 0 : SHAPE[state.active] - 1;
      setCursor(v);
    } else if (e.key === "h" || e.key === "H") {
      $("show-heat").checked = !$("show-heat").checked;
      $("show-heat").dispatchEvent(new Event("change"));
    } else if (e.key === "c" || e.key === "C") {
      $("show-crosshair").checked = !$("show-crosshair").checked;
      $("show-crosshair").dispatchEvent(new Event("change"));
    }
  }

  // ------------------------------------------------------------------ controls

  function option(select, valueText, label) {
    const o = document.createElement("option");
    o.value = valueText;
    o.textContent = label;
    select.appendChild(o);
  }

  function drawColorbar() {
    const canvas = $("colorbar");
    const ctx = canvas.getContext("2d");
    const colours = lut();
    const n = colours.length / 3;
    const layer = META.layers[state.layer];
    const [lo, hi] = layer.range;
    for (let x = 0; x < canvas.width; x++) {
      const h = lo + ((x + 0.5) / canvas.width) * (hi - lo);
      const c = Math.min(n - 1, Math.floor((x / canvas.width) * n));
      const drawn = h > state.threshold;
      const rgb = [0, 1, 2].map((ch) => Math.round(colours[3 * c + ch] * 255));
      ctx.fillStyle = drawn ? `rgb(${rgb.join(",")})` : "#333";
      ctx.fillRect(x, 0, 1, canvas.height);
    }
    $("heat-lo").textContent = String(+lo.toPrecision(3));
    $("heat-hi").textContent = String(+hi.toPrecision(3));
  }

  function setThreshold(t) {
    state.threshold = t;
    $("threshold").value = String(t);
    $("threshold-value").textContent = t.toFixed(3);
    updateHeatLut();
    drawColorbar();
    redraw(true);
  }

  function setLayer(i) {
    if (typeof i === "string") i = META.layers.findIndex((l) => l.name === i);
    if (!(i >= 0 && i < META.layers.length)) return;
    state.layer = i;
    const layer = META.layers[i];
    $("layer").value = String(i);
    const t = $("threshold");
    t.min = String(layer.range[0]);
    t.max = String(layer.range[1]);
    t.step = String((layer.range[1] - layer.range[0]) / 255);
    $("hottest").disabled = !layer.peak;
    document.querySelectorAll("#figures tbody tr").forEach((tr, k) => tr.classList.toggle("current", k === i));
    setThreshold(Math.min(Math.max(state.threshold, layer.range[0]), layer.range[1]));
  }

  function hottest() {
    const peak = META.layers[state.layer].peak;
    if (peak) setCursor(peak.voxel);
    return peak ? peak.voxel : null;
  }

  function buildFigures() {
    const table = $("figures");
    const labels = [];
    META.layers.forEach((l) => l.stats.forEach(([label]) => labels.includes(label) || labels.push(label)));
    const head = ["layer", "peak heat", `peak (${META.anatomical ? META.coordinates + ", mm" : "px"})`, ...labels];
    const thead = table.createTHead().insertRow();
    head.forEach((h) => {
      const th = document.createElement("th");
      th.textContent = h;
      thead.appendChild(th);
    });
    const body = table.createTBody();
    META.layers.forEach((l, i) => {
      const tr = body.insertRow();
      const peak = l.peak;
      const where = peak
        ? META.anatomical
          ? shown(peak.world).map((w) => w.toFixed(1)).join(", ")
          : peak.source_voxel.join(", ")
        : "none (flat map)";
      const cells = [l.name, peak ? peak.value.toFixed(3) : "\u2013", where];
      labels.forEach((label) => {
        const hit = l.stats.find(([k]) => k === label);
        cells.push(hit ? hit[1] : "");
      });
      cells.forEach((text) => (tr.insertCell().textContent = text));
      tr.addEventListener("click", () => setLayer(i));
    });
  }

  function buildControls() {
    META.layers.forEach((l, i) => option($("layer"), String(i), l.name));
    $("layer").addEventListener("change", () => setLayer(Number($("layer").value)));
    Object.keys(META.cmaps).forEach((name) => option($("cmap"), name, name));
    $("cmap").value = state.cmap;
    $("cmap").addEventListener("change", () => {
      state.cmap = $("cmap").value;
      updateHeatLut();
      updateBlendTable();
      drawColorbar();
      redraw(true);
    });
    $("blend").value = state.blend;
    $("blend").addEventListener("change", () => {
      state.blend = $("blend").value;
      updateBlendTable();
      redraw(true);
    });
    $("alpha").value = String(state.alpha);
    $("alpha-value").textContent = state.alpha.toFixed(2);
    $("alpha").addEventListener("input", () => {
      state.alpha = Number($("alpha").value);
      $("alpha-value").textContent = state.alpha.toFixed(2);
      updateBlendTable();
      redraw(true);
    });
    $("threshold").addEventListener("input", () => setThreshold(Number($("threshold").value)));
    $("show-heat").addEventListener("change", () => {
      state.showHeat = $("show-heat").checked;
      updateHeatLut();
      redraw(true);
    });
    $("show-crosshair").addEventListener("change", () => {
      state.crosshair = $("show-crosshair").checked;
      redraw(false);
    });
    $("hottest").addEventListener("click", hottest);
    $("snapshot").addEventListener("click", download);

    META.presets.forEach(([name]) => option($("preset"), name, name));
    option($("preset"), "custom", "custom");
    $("preset").addEventListener("change", () => {
      const hit = META.presets.find(([name]) => name === $("preset").value);
      if (hit) setWindow(hit[1], hit[2], hit[0]);
    });
    const typed = () => {
      const level = Number($("level").value), width = Number($("width").value);
      if (Number.isFinite(level) && width > 0) setWindow(level - width / 2, level + width / 2, null);
    };
    $("level").addEventListener("change", typed);
    $("width").addEventListener("change", typed);

    if (!META.masks.length) $("outlines-section").hidden = true;
    META.masks.forEach((m, i) => {
      const label = document.createElement("label");
      label.className = "row";
      label.innerHTML = '<input type="checkbox" checked> <span class="swatch"></span> <span></span>';
      label.querySelector(".swatch").style.background = m.color;
      label.querySelector("span:last-child").textContent = m.name;
      const box = label.querySelector("input");
      box.id = `outline-${i}`;
      box.addEventListener("change", () => {
        state.masks[i] = box.checked;
        redraw(true);
      });
      $("outlines").appendChild(label);
    });
    if (!META.anatomical) $("world-label").textContent = "";
    else $("world-label").textContent = `world (${META.coordinates})`;
    $("generator").textContent = `${META.generator}; ${META.convention} convention; scan ${META.source.shape.join(" x ")}` +
      (META.source.axcodes ? ` (${META.source.axcodes})` : "");
    if (META.notice) {
      $("notice").textContent = META.notice;
      $("notice").hidden = false;
    }
    buildFigures();
  }

  // ------------------------------------------------------------------ snapshot

  function snapshot() {
    const dpr = window.devicePixelRatio || 1;
    const pad = Math.round(20 * dpr);
    const canvases = PLANES.map((a) => panels[a].canvas);
    const width = canvases.reduce((s, c) => s + c.width, 0) + (canvases.length - 1) * 2;
    const height = Math.max(...canvases.map((c) => c.height)) + 2 * pad;
    const out = document.createElement("canvas");
    out.width = width;
    out.height = height;
    const ctx = out.getContext("2d");
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, width, height);
    ctx.font = `${Math.round(12 * dpr)}px sans-serif`;
    ctx.textBaseline = "middle";
    let x = 0;
    PLANES.forEach((a) => {
      const p = panels[a];
      ctx.drawImage(p.canvas, x, pad);
      const letters = edgeLetters(a);
      ctx.fillStyle = "#fff";
      ctx.textAlign = "center";
      ctx.fillText(letters.top, x + p.canvas.width / 2, pad + 10 * dpr);
      ctx.fillText(letters.bottom, x + p.canvas.width / 2, pad + p.canvas.height - 10 * dpr);
      ctx.textAlign = "left";
      ctx.fillText(letters.left, x + 4 * dpr, pad + p.canvas.height / 2);
      ctx.fillText(`${META.anatomical ? NAMES[a] : "image"} ${p.label.textContent}`, x + 4 * dpr, pad / 2);
      ctx.textAlign = "right";
      ctx.fillText(letters.right, x + p.canvas.width - 4 * dpr, pad + p.canvas.height / 2);
      x += p.canvas.width + 2;
    });
    ctx.textAlign = "left";
    ctx.fillStyle = "#ccc";
    const d = describe(state.cursor);
    ctx.fillText(
      `${META.title} \u00b7 ${META.layers[state.layer].name} \u00b7 ${d.worldText} \u00b7 heat ${d.heatValue.toFixed(3)}`,
      4 * dpr,
      height - pad / 2
    );
    return out;
  }

  function download() {
    const canvas = snapshot();
    canvas.toBlob((blob) => {
      const url = URL.createObjectURL(blob);
      const a = document.createElement("a");
      const slices = PLANES.map((p) => state.cursor[p]).join("-");
      a.href = url;
      a.download = `${META.title}-${META.layers[state.layer].name}-${slices}.png`.replace(/[^\w.-]+/g, "_");
      document.body.appendChild(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 5000);
    }, "image/png");
  }

  // ------------------------------------------------------------------ start

  async function start() {
    if (typeof DecompressionStream !== "function") {
      throw new Error("this browser lacks DecompressionStream; open the page in a current Chromium, Firefox or Safari");
    }
    const tasks = [decodeVolume(META.volumes.image).then((v) => (data.image = v))];
    META.layers.forEach((l, i) => tasks.push(decodeVolume(META.volumes[l.volume]).then((v) => (data.heats[i] = v))));
    new Set(META.masks.map((m) => m.volume)).forEach((name) =>
      tasks.push(decodeVolume(META.volumes[name]).then((v) => (data.masks[name] = v)))
    );
    await Promise.all(tasks);

    const views = $("views");
    PLANES.forEach((a) => {
      panels[a] = makePanel(a);
      views.appendChild(panels[a].root);
    });
    if (PLANES.length === 1) views.classList.add("single");
    else views.appendChild($("info"));
    if (PLANES.length === 1) $("controls").appendChild($("info"));
    buildControls();
    const peak = META.layers[0].peak;
    state.cursor = peak ? peak.voxel.slice() : SHAPE.map((n) => Math.floor(n / 2));
    PLANES.forEach(layoutPanel);
    updateGreyLut();
    updateBlendTable();
    const match = META.presets.find(([, lo, hi]) => lo === state.window[0] && hi === state.window[1]);
    setWindow(state.window[0], state.window[1], match ? match[0] : null);
    setLayer(0);
    setActive(PLANES[0]);
    const relayout = () => {
      PLANES.forEach(layoutPanel);
      redraw(false);
    };
    new ResizeObserver(relayout).observe(views);
    document.addEventListener("keydown", onKey);
    $("status").hidden = true;
  }

  const ready = start().catch((err) => {
    $("status").textContent = `cannot show the volumes: ${err.message}`;
    $("status").classList.add("error");
    throw err;
  });

  // a small interface for scripts and tests
  window.volcamViewer = {
    ready,
    meta: META,
    state: () => ({ ...state, cursor: state.cursor.slice(), describe: describe(state.cursor) }),
    describe: (v) => describe(clamp(v)),
    setCursor,
    setLayer,
    setThreshold,
    setWindow: (lo, hi) => setWindow(lo, hi, null),
    step,
    hottest,
    snapshot: () => snapshot().toDataURL("image/png"),
    screenPoint(plane, v) {
      const a = typeof plane === "string" ? Number(Object.keys(NAMES).find((k) => NAMES[k] === plane)) : plane;
      const p = panels[a];
      const rect = p.canvas.getBoundingClientRect();
      const [row, col] = displayOf(a, v);
      return { x: rect.left + p.x0 + (col + 0.5) * p.sx, y: rect.top + p.y0 + (row + 0.5) * p.sy };
    },
    slicePixels(plane) {
      const a = typeof plane === "string" ? Number(Object.keys(NAMES).find((k) => NAMES[k] === plane)) : plane;
      renderSlice(a);
      const d = panels[a].imageData;
      return { width: d.width, height: d.height, rgba: Array.from(d.data) };
    },
  };
})();
