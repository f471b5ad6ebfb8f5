// hairseg browser page: camera -> letterbox (model.json) -> ONNX Runtime Web -> smoothing -> Lab recolouring.
// Every step mirrors the Python app (hairseg_core.deploy.inference, .temporal, .coloring) so the same model gives
// the same mask; tests/test_web.py compares this page's mask with ONNX Runtime in Python.

const $ = (id) => document.getElementById(id);
const stats = { frames: 0, fps: 0, backend: "loading", hairFraction: 0, ready: false };
window.hairsegStats = stats;

const params = new URLSearchParams(location.search);
const cfg = await (await fetch("/config.json")).json();
const meta = await (await fetch("/model/model.json")).json();
$("ort-version").textContent = cfg.ort_version;

// ------------------------------------------------------------------------------------- model.json contract
const SIZE = meta.input.size;
const MEAN = meta.normalization.mean;
const STD = meta.normalization.std;
const PIXEL_SCALE = meta.normalization.pixel_scale;
const HAIR = meta.output.hair_channel;
const NUM_CLASSES = meta.class_names.length;
if (meta.preprocess.mode !== "letterbox") throw new Error(`preprocess mode ${meta.preprocess.mode} not implemented`);
if (meta.input.layout !== "NCHW" || meta.input.dtype !== "float32" || meta.input.color_order !== "RGB") {
  throw new Error("model.json asks for an input layout this page does not implement");
}
if (Math.abs(PIXEL_SCALE * 255 - 1) > 1e-9) throw new Error(`pixel_scale ${PIXEL_SCALE} is not 1/255`);
if (meta.output.kind !== "softmax_probabilities") throw new Error(`output kind ${meta.output.kind} not implemented`);
// Normalizer: pixel * scale + bias in float32, exactly as hairseg_core.artifact.Normalizer computes it
const NSCALE = new Float32Array(3), NBIAS = new Float32Array(3);
for (let c = 0; c < 3; c++) {
  const std = Math.fround(STD[c]);
  NSCALE[c] = Math.fround(1 / Math.fround(255 * std));
  NBIAS[c] = Math.fround(-Math.fround(MEAN[c]) / std);
}

// Python's round(): half to even (Letterbox.fit uses it)
function pyRound(x) {
  const r = Math.round(x);
  return Math.abs(x - Math.trunc(x)) === 0.5 ? 2 * Math.round(x / 2) : r;
}

function letterboxFit(h, w, size) {
  const scale = size / Math.max(h, w);
  const nh = Math.min(size, Math.max(1, pyRound(h * scale)));
  const nw = Math.min(size, Math.max(1, pyRound(w * scale)));
  return { h, w, nh, nw, top: Math.floor((size - nh) / 2), left: Math.floor((size - nw) / 2) };
}

// cv2.INTER_AREA weights along one axis (OpenCV's computeResizeAreaTab), src size -> dst size (shrinking)
function areaTab(ssize, dsize) {
  const scale = ssize / dsize, tab = [];
  for (let dx = 0; dx < dsize; dx++) {
    const fsx1 = dx * scale, fsx2 = fsx1 + scale, cell = Math.min(scale, ssize - fsx1);
    let sx2 = Math.min(Math.floor(fsx2), ssize - 1);
    const sx1 = Math.min(Math.ceil(fsx1), sx2);
    const idx = [], wts = [];
    if (sx1 - fsx1 > 1e-3) { idx.push(sx1 - 1); wts.push((sx1 - fsx1) / cell); }
    for (let sx = sx1; sx < sx2; sx++) { idx.push(sx); wts.push(1 / cell); }
    if (fsx2 - sx2 > 1e-3) { idx.push(sx2); wts.push(Math.min(Math.min(fsx2 - sx2, 1), cell) / cell); }
    tab.push({ idx, wts });
  }
  return tab;
}

// cv2.INTER_LINEAR taps along one axis: half-pixel centres, clamped at the borders
function linearTab(ssize, dsize) {
  const scale = ssize / dsize, tab = [];
  for (let dx = 0; dx < dsize; dx++) {
    let fx = Math.fround((dx + 0.5) * scale - 0.5);
    let sx = Math.floor(fx);
    fx -= sx;
    if (sx < 0) { fx = 0; sx = 0; }
    if (sx >= ssize - 1) { fx = 0; sx = ssize - 1; }
    tab.push({ idx: [sx, Math.min(sx + 1, ssize - 1)], wts: [1 - fx, fx] });
  }
  return tab;
}

const tabCache = new Map();
function tabs(kind, ssize, dsize) {
  const key = `${kind}:${ssize}:${dsize}`;
  if (!tabCache.has(key)) tabCache.set(key, kind === "area" ? areaTab(ssize, dsize) : linearTab(ssize, dsize));
  return tabCache.get(key);
}

// Separable resize of an RGBA uint8 image to an RGB uint8 image (rounded, like cv2.resize on uint8)
function resizeRGB(rgba, h, w, nh, nw) {
  const out = new Uint8Array(nh * nw * 3);
  if (nh === h && nw === w) {
    for (let i = 0, j = 0; i < h * w; i++) { out[j++] = rgba[4 * i]; out[j++] = rgba[4 * i + 1]; out[j++] = rgba[4 * i + 2]; }
    return out;
  }
  const kind = nh < h ? "area" : "linear"; // hairseg_core.deploy.inference.Preprocessor's choice
  const tx = tabs(kind, w, nw), ty = tabs(kind, h, nh);
  const rows = new Float32Array(h * nw * 3); // horizontal pass
  for (let y = 0; y < h; y++) {
    const src = y * w * 4, dst = y * nw * 3;
    for (let x = 0; x < nw; x++) {
      const { idx, wts } = tx[x];
      let r = 0, g = 0, b = 0;
      for (let k = 0; k < idx.length; k++) {
        const p = src + 4 * idx[k], wk = wts[k];
        r += rgba[p] * wk; g += rgba[p + 1] * wk; b += rgba[p + 2] * wk;
      }
      rows[dst + 3 * x] = r; rows[dst + 3 * x + 1] = g; rows[dst + 3 * x + 2] = b;
    }
  }
  for (let y = 0; y < nh; y++) { // vertical pass
    const { idx, wts } = ty[y], dst = y * nw * 3;
    for (let i = 0; i < nw * 3; i++) {
      let s = 0;
      for (let k = 0; k < idx.length; k++) s += rows[idx[k] * nw * 3 + i] * wts[k];
      out[dst + i] = Math.min(255, Math.max(0, Math.round(s)));
    }
  }
  return out;
}

// Letterbox + normalise into the NCHW float32 canvas; padding is 0 (the ImageNet mean after normalisation).
// A fresh buffer per frame: with the proxy worker two frames are in flight.
function preprocess(rgba, h, w) {
  const box = letterboxFit(h, w, SIZE);
  const small = resizeRGB(rgba, h, w, box.nh, box.nw);
  const inputData = new Float32Array(3 * SIZE * SIZE);
  const plane = SIZE * SIZE;
  for (let y = 0; y < box.nh; y++) {
    for (let x = 0; x < box.nw; x++) {
      const s = 3 * (y * box.nw + x), d = (box.top + y) * SIZE + box.left + x;
      for (let c = 0; c < 3; c++) inputData[c * plane + d] = Math.fround(Math.fround(small[s + c] * NSCALE[c]) + NBIAS[c]);
    }
  }
  return { box, small, inputData };
}

// The hair channel of the pasted region, as an nh x nw map (clipped to [0, 1] later, as the app does)
function cropHair(probs, box) {
  const crop = new Float32Array(box.nh * box.nw), base = HAIR * SIZE * SIZE;
  for (let y = 0; y < box.nh; y++) {
    const row = base + (box.top + y) * SIZE + box.left;
    crop.set(probs.subarray(row, row + box.nw), y * box.nw);
  }
  return crop;
}

// unletterbox: bilinear (cv2.INTER_LINEAR on float32) back to the frame size, clipped to [0, 1]; also the mean
function linearArrays(ssize, dsize) { // the same taps as linearTab, flat typed arrays for the per-pixel loop
  const key = `flat:${ssize}:${dsize}`;
  if (!tabCache.has(key)) {
    const tab = linearTab(ssize, dsize), i0 = new Int32Array(dsize), i1 = new Int32Array(dsize), f = new Float32Array(dsize);
    tab.forEach((t, d) => { i0[d] = t.idx[0]; i1[d] = t.idx[1]; f[d] = t.wts[1]; });
    tabCache.set(key, { i0, i1, f });
  }
  return tabCache.get(key);
}
let probBuffer = new Float32Array(0);
function upsample(crop, box) {
  const { nh, nw, h, w } = box;
  if (probBuffer.length !== h * w) probBuffer = new Float32Array(h * w);
  const out = probBuffer, tx = linearArrays(nw, w), ty = linearArrays(nh, h);
  let sum = 0;
  for (let y = 0; y < h; y++) {
    const r0 = ty.i0[y] * nw, r1 = ty.i1[y] * nw, fy = ty.f[y], o = y * w;
    for (let x = 0; x < w; x++) {
      const a = tx.i0[x], b = tx.i1[x], fx = tx.f[x];
      const top = crop[r0 + a] + (crop[r0 + b] - crop[r0 + a]) * fx;
      const bottom = crop[r1 + a] + (crop[r1 + b] - crop[r1 + a]) * fx;
      let v = top + (bottom - top) * fy;
      v = v < 0 ? 0 : v > 1 ? 1 : v;
      out[o + x] = v;
      sum += v;
    }
  }
  return { prob: out, mean: sum / (h * w) };
}

// ------------------------------------------------------------------------------------------------ smoothing
// The Python app's default is flow_ema: an EMA carried along the optical flow (temporal.FlowEmaSmoother,
// OpenCV DIS flow at half resolution). Here the state lives at the letterbox crop's resolution (the
// network's own output grid, ~20x fewer pixels than the frame) and the flow is a pyramidal dense
// Lucas-Kanade on the resized grey frame at half of that: DIS is not available in the browser, LK is
// its cheap cousin. "ema" (momentum 0.5) and "none" are the other choices.
function grey(small, nh, nw) {
  const g = new Float32Array(nh * nw);
  for (let i = 0; i < nh * nw; i++) g[i] = 0.299 * small[3 * i] + 0.587 * small[3 * i + 1] + 0.114 * small[3 * i + 2];
  return g;
}
function half(img, h, w) {
  const hh = Math.max(1, h >> 1), hw = Math.max(1, w >> 1), out = new Float32Array(hh * hw);
  for (let y = 0; y < hh; y++) for (let x = 0; x < hw; x++) {
    const y0 = Math.min(2 * y, h - 1), y1 = Math.min(2 * y + 1, h - 1), x0 = Math.min(2 * x, w - 1), x1 = Math.min(2 * x + 1, w - 1);
    out[y * hw + x] = 0.25 * (img[y0 * w + x0] + img[y0 * w + x1] + img[y1 * w + x0] + img[y1 * w + x1]);
  }
  return { img: out, h: hh, w: hw };
}
function sample(img, h, w, x, y) { // bilinear, border replicate
  x = Math.min(Math.max(x, 0), w - 1); y = Math.min(Math.max(y, 0), h - 1);
  const x0 = Math.floor(x), y0 = Math.floor(y), x1 = Math.min(x0 + 1, w - 1), y1 = Math.min(y0 + 1, h - 1);
  const fx = x - x0, fy = y - y0;
  const a = img[y0 * w + x0] + (img[y0 * w + x1] - img[y0 * w + x0]) * fx;
  const b = img[y1 * w + x0] + (img[y1 * w + x1] - img[y1 * w + x0]) * fx;
  return a + (b - a) * fy;
}
function boxSum(src, h, w, r) { // (2r+1)^2 window sums, clamped
  const tmp = new Float32Array(h * w), out = new Float32Array(h * w);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) {
    let s = 0; for (let k = -r; k <= r; k++) s += src[y * w + Math.min(Math.max(x + k, 0), w - 1)]; tmp[y * w + x] = s;
  }
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) {
    let s = 0; for (let k = -r; k <= r; k++) s += tmp[Math.min(Math.max(y + k, 0), h - 1) * w + x]; out[y * w + x] = s;
  }
  return out;
}
// flow (u, v) per pixel of `cur`: where that point was in `prev` (prev(x + u) ~ cur(x)), like the Python code
function lkFlow(prev, cur, h, w, levels = 3, iters = 2, radius = 2) {
  const pyr = [{ p: prev, c: cur, h, w }];
  for (let l = 1; l < levels && pyr[l - 1].h >= 16 && pyr[l - 1].w >= 16; l++) {
    const a = half(pyr[l - 1].p, pyr[l - 1].h, pyr[l - 1].w), b = half(pyr[l - 1].c, pyr[l - 1].h, pyr[l - 1].w);
    pyr.push({ p: a.img, c: b.img, h: a.h, w: a.w });
  }
  let u = null, v = null, uh = 0, uw = 0;
  for (let l = pyr.length - 1; l >= 0; l--) {
    const { p, c, h: lh, w: lw } = pyr[l], n = lh * lw;
    const nu = new Float32Array(n), nv = new Float32Array(n);
    if (u) for (let y = 0; y < lh; y++) for (let x = 0; x < lw; x++) {
      nu[y * lw + x] = 2 * sample(u, uh, uw, x / 2, y / 2); nv[y * lw + x] = 2 * sample(v, uh, uw, x / 2, y / 2);
    }
    u = nu; v = nv; uh = lh; uw = lw;
    const ix = new Float32Array(n), iy = new Float32Array(n), warped = new Float32Array(n);
    for (let it = 0; it < iters; it++) {
      for (let y = 0; y < lh; y++) for (let x = 0; x < lw; x++) warped[y * lw + x] = sample(p, lh, lw, x + u[y * lw + x], y + v[y * lw + x]);
      for (let y = 0; y < lh; y++) for (let x = 0; x < lw; x++) {
        const i = y * lw + x;
        ix[i] = 0.5 * (warped[y * lw + Math.min(x + 1, lw - 1)] - warped[y * lw + Math.max(x - 1, 0)]);
        iy[i] = 0.5 * (warped[Math.min(y + 1, lh - 1) * lw + x] - warped[Math.max(y - 1, 0) * lw + x]);
      }
      const xx = new Float32Array(n), xy = new Float32Array(n), yy = new Float32Array(n), xt = new Float32Array(n), yt = new Float32Array(n);
      for (let i = 0; i < n; i++) {
        const t = c[i] - warped[i];
        xx[i] = ix[i] * ix[i]; xy[i] = ix[i] * iy[i]; yy[i] = iy[i] * iy[i]; xt[i] = ix[i] * t; yt[i] = iy[i] * t;
      }
      const sxx = boxSum(xx, lh, lw, radius), sxy = boxSum(xy, lh, lw, radius), syy = boxSum(yy, lh, lw, radius);
      const sxt = boxSum(xt, lh, lw, radius), syt = boxSum(yt, lh, lw, radius);
      for (let i = 0; i < n; i++) {
        const a = sxx[i] + 1e-2, b = sxy[i], d = syy[i] + 1e-2, det = a * d - b * b;
        if (det < 1e-6) continue;
        u[i] += (d * sxt[i] - b * syt[i]) / det;
        v[i] += (a * syt[i] - b * sxt[i]) / det;
      }
    }
  }
  return { u, v, h: uh, w: uw };
}

class Smoother {
  constructor(kind) { this.kind = kind; this.reset(); }
  reset() { this.state = null; this.grey = null; this.shape = ""; }
  update(prob, small, nh, nw) {
    const shape = `${nh}x${nw}`;
    if (this.kind === "none") return prob;
    if (!this.state || this.shape !== shape) {
      this.state = prob.slice(); this.shape = shape;
      if (this.kind === "flow_ema") this.grey = half(grey(small, nh, nw), nh, nw);
      return this.state.slice();
    }
    if (this.kind === "ema") {
      for (let i = 0; i < prob.length; i++) this.state[i] = 0.5 * this.state[i] + 0.5 * prob[i];
      return this.state.slice();
    }
    const g = half(grey(small, nh, nw), nh, nw); // flow_ema, momentum 0.8, flow at half the crop size
    const flow = lkFlow(this.grey.img, g.img, g.h, g.w);
    const sx = g.w / nw, sy = g.h / nh, warped = new Float32Array(nh * nw);
    for (let y = 0; y < nh; y++) for (let x = 0; x < nw; x++) {
      const fx = (x + 0.5) * sx - 0.5, fy = (y + 0.5) * sy - 0.5;
      const du = sample(flow.u, flow.h, flow.w, fx, fy) / sx, dv = sample(flow.v, flow.h, flow.w, fx, fy) / sy;
      warped[y * nw + x] = sample(this.state, nh, nw, x + du, y + dv);
    }
    for (let i = 0; i < prob.length; i++) this.state[i] = 0.8 * warped[i] + 0.2 * prob[i];
    this.grey = g;
    return this.state.slice();
  }
}

// --------------------------------------------------------------------------------------------- colouring
// hairseg_core.deploy.coloring.recolor: Lab shift of the hair's mean lightness and its chroma toward the target,
// blended with weight strength * prob; pixels with weight < 1/510 are left untouched. OpenCV float Lab (D65).
const LIN = new Float32Array(256);
for (let i = 0; i < 256; i++) { const v = i / 255; LIN[i] = v <= 0.04045 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); }
const fLab = (t) => (t > 0.008856 ? Math.cbrt(t) : 7.787 * t + 16 / 116);
function rgbToLab(r, g, b, out) { // r, g, b: linear
  const X = (0.412453 * r + 0.35758 * g + 0.180423 * b) / 0.950456;
  const Y = 0.212671 * r + 0.71516 * g + 0.072169 * b;
  const Z = (0.019334 * r + 0.119193 * g + 0.950227 * b) / 1.088754;
  const fy = fLab(Y);
  out[0] = Y > 0.008856 ? 116 * fy - 16 : 903.3 * Y;
  out[1] = 500 * (fLab(X) - fy);
  out[2] = 200 * (fy - fLab(Z));
}
// linear [0, 1] -> sRGB uint8 by table: 2^16 steps keep it within one grey level of the exact curve
const OUT_STEPS = 65535, OUT = new Uint8Array(OUT_STEPS + 1);
for (let i = 0; i <= OUT_STEPS; i++) {
  const v = i / OUT_STEPS;
  OUT[i] = Math.floor(255 * (v <= 0.0031308 ? 12.92 * v : 1.055 * Math.pow(v, 1 / 2.4) - 0.055) + 0.5);
}
const gamma8 = (v) => OUT[v <= 0 ? 0 : v >= 1 ? OUT_STEPS : (v * OUT_STEPS + 0.5) | 0];
function labToRgb8(L, a, b, out, o) {
  let fy, Y;
  if (L <= 7.9996) { Y = L / 903.3; fy = 7.787 * Y + 16 / 116; } else { fy = (L + 16) / 116; Y = fy * fy * fy; }
  const fx = a / 500 + fy, fz = fy - b / 200;
  const X = 0.950456 * (fx > 0.206893 ? fx * fx * fx : (fx - 16 / 116) / 7.787);
  const Z = 1.088754 * (fz > 0.206893 ? fz * fz * fz : (fz - 16 / 116) / 7.787);
  out[o] = gamma8(3.240479 * X - 1.53715 * Y - 0.498535 * Z);
  out[o + 1] = gamma8(-0.969256 * X + 1.875991 * Y + 0.041556 * Z);
  out[o + 2] = gamma8(0.055648 * X - 0.204043 * Y + 1.057311 * Z);
}
const MIN_WEIGHT = 1 / 510;
let labBuffer = new Float32Array(0);
function recolor(rgba, prob, h, w, hex, strength, lumShift = 0.5) {
  const tr = parseInt(hex.slice(1, 3), 16), tg = parseInt(hex.slice(3, 5), 16), tb = parseInt(hex.slice(5, 7), 16);
  const target = [0, 0, 0];
  rgbToLab(LIN[tr], LIN[tg], LIN[tb], target);
  let y0 = h, y1 = -1, x0 = w, x1 = -1; // bounding box of the region
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) {
    if (prob[y * w + x] * strength >= MIN_WEIGHT) { if (y < y0) y0 = y; if (y > y1) y1 = y; if (x < x0) x0 = x; if (x > x1) x1 = x; }
  }
  if (y1 < 0) return;
  const bw = x1 - x0 + 1, bh = y1 - y0 + 1, t = [0, 0, 0];
  if (labBuffer.length < bw * bh * 3) labBuffer = new Float32Array(bw * bh * 3);
  const lab = labBuffer;
  let sumLW = 0, sumW = 0;
  for (let y = 0; y < bh; y++) for (let x = 0; x < bw; x++) {
    const p = (y0 + y) * w + x0 + x, o = 3 * (y * bw + x), wgt = prob[p] * strength;
    // Python's mean also counts the box's pixels below 1/510; their share of the weighted mean is
    // negligible, and skipping their Lab conversion halves the colouring time of a typical frame
    if (wgt < MIN_WEIGHT) continue;
    rgbToLab(LIN[rgba[4 * p]], LIN[rgba[4 * p + 1]], LIN[rgba[4 * p + 2]], t);
    lab[o] = t[0]; lab[o + 1] = t[1]; lab[o + 2] = t[2];
    sumLW += t[0] * wgt; sumW += wgt;
  }
  const shift = lumShift * (target[0] - sumLW / sumW), invTL = 1 / Math.max(target[0], 1);
  for (let y = 0; y < bh; y++) for (let x = 0; x < bw; x++) {
    const p = (y0 + y) * w + x0 + x, wgt = prob[p] * strength;
    if (wgt < MIN_WEIGHT) continue;
    const o = 3 * (y * bw + x), L = lab[o];
    const nl = Math.min(100, Math.max(0, L + shift)), cs = Math.min(1, Math.max(0.25, nl * invTL));
    labToRgb8(L + wgt * (nl - L), lab[o + 1] + wgt * (cs * target[1] - lab[o + 1]), lab[o + 2] + wgt * (cs * target[2] - lab[o + 2]), rgba, 4 * p);
  }
}

// -------------------------------------------------------------------------------------------- the runtime
async function createSession() {
  const modelBytes = new Uint8Array(await (await fetch("/model/model.onnx")).arrayBuffer());
  const wanted = params.get("backend"); // ?backend=wasm|webgpu (benchmarks); default: WebGPU when usable
  let useGpu = false;
  if (wanted !== "wasm" && cfg.webgpu_installed && navigator.gpu) {
    try { useGpu = !!(await navigator.gpu.requestAdapter()); } catch { useGpu = false; }
  }
  const ort = await import(useGpu ? "/ort/ort.webgpu.min.mjs" : "/ort/ort.wasm.min.mjs");
  ort.env.wasm.wasmPaths = "/ort/";
  // WASM runs in a worker (ORT's proxy): the page colours frame t while the network runs on frame t+1
  const proxy = !useGpu && params.get("proxy") !== "0";
  ort.env.wasm.proxy = proxy;
  // Default threads: the cores the page's own thread leaves free when the network runs in the worker, up to
  // 4 (on 2 cores, 1 network thread in the worker beat 2: benchmarks/README.md, "Browser page")
  const cores = navigator.hardwareConcurrency || 1, threadsParam = params.get("threads");
  const threads = crossOriginIsolated
    ? (threadsParam ? Number(threadsParam) : cfg.threads || Math.max(1, Math.min(4, proxy ? cores - 1 : cores)))
    : 1;
  ort.env.wasm.numThreads = threads;
  ort.env.wasm.simd = true;
  const options = {
    executionProviders: useGpu ? ["webgpu", "wasm"] : ["wasm"],
    graphOptimizationLevel: "all",
    // no busy-waiting pool threads between runs: the page's own JavaScript needs those cores (as in Python)
    extra: { session: { "intra_op.allow_spinning": "0" } },
  };
  const modelSize = modelBytes.length; // read before the proxy worker takes the buffer
  const session = await ort.InferenceSession.create(modelBytes, options);
  const where = proxy ? " in a worker" : "";
  const backend = useGpu
    ? "webgpu"
    : `wasm (SIMD, ${threads} thread${threads > 1 ? "s" : ""}${where}${crossOriginIsolated ? "" : ", not cross-origin isolated"})`;
  return { ort, session, backend, threads, proxy, modelBytes: modelSize };
}

const t0 = performance.now();
let rt;
try {
  rt = await createSession();
} catch (err) {
  $("error").textContent = `could not start ONNX Runtime Web: ${err}`;
  stats.backend = "error";
  throw err;
}
stats.backend = rt.backend;
stats.threads = rt.threads;
stats.modelBytes = rt.modelBytes;
stats.modelLoadMs = performance.now() - t0;

const timing = { preMs: 0, inferMs: 0, smoothMs: 0, postMs: 0 }; // EMAs of each stage, ms
stats.timing = timing;
const ema = (key, start) => { const ms = performance.now() - start; timing[key] = timing[key] ? 0.9 * timing[key] + 0.1 * ms : ms; };

async function infer(rgba, h, w) {
  let ts = performance.now();
  const { box, small, inputData } = preprocess(rgba, h, w);
  ema("preMs", ts);
  const input = new rt.ort.Tensor("float32", inputData, [1, 3, SIZE, SIZE]);
  ts = performance.now();
  const result = await rt.session.run({ [rt.session.inputNames[0]]: input });
  ema("inferMs", ts);
  const out = result[rt.session.outputNames[0]];
  if (out.dims.length !== 4 || out.dims[1] !== NUM_CLASSES || out.dims[2] !== SIZE || out.dims[3] !== SIZE) {
    throw new Error(`model output ${out.dims} is not [1, ${NUM_CLASSES}, ${SIZE}, ${SIZE}]`);
  }
  return { crop: cropHair(out.data, box), box, small };
}

// The page's mask for one image, no smoothing: what tests compare with ONNX Runtime in Python.
window.hairsegPredictImage = async (url) => {
  const img = new Image();
  img.src = url;
  await img.decode();
  const c = new OffscreenCanvas(img.naturalWidth, img.naturalHeight), ctx = c.getContext("2d");
  ctx.drawImage(img, 0, 0);
  const data = ctx.getImageData(0, 0, c.width, c.height, { colorSpace: "srgb" }).data;
  const { crop, box } = await infer(data, c.height, c.width);
  const { prob } = upsample(crop, box);
  return { width: c.width, height: c.height, prob: Array.from(prob) };
};
stats.ready = true;

// ---------------------------------------------------------------------------------------------- the page
const presets = $("preset");
presets.add(new Option("—", ""));
for (const [name, hex] of Object.entries(cfg.named_colors)) presets.add(new Option(name, hex));
presets.onchange = () => { if (presets.value) $("color").value = presets.value; };
$("color").value = cfg.color;
$("strength").value = cfg.strength;
const showStrength = () => { $("strength-value").textContent = Number($("strength").value).toFixed(2); };
$("strength").oninput = showStrength;
showStrength();
for (const name of cfg.smoothers) $("smoothing").add(new Option(name, name));
$("smoothing").value = params.get("smoothing") || cfg.smoothing;
let smoother = new Smoother($("smoothing").value);
$("smoothing").onchange = () => { smoother = new Smoother($("smoothing").value); };

async function runCamera() {
  const video = $("camera");
  video.srcObject = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
  await video.play();
  const canvas = $("output"), ctx = canvas.getContext("2d");
  const grab = new OffscreenCanvas(1, 1), grabCtx = grab.getContext("2d", { willReadFrequently: true });
  const times = [];

  function finish(job) { // smoothing, colouring and drawing of a frame whose network output is in
    const { frame, h, w, out } = job, { crop, box, small } = out;
    let ts = performance.now();
    const smoothed = smoother.update(crop, small, box.nh, box.nw);
    ema("smoothMs", ts);
    ts = performance.now();
    const { prob, mean } = upsample(smoothed, box);
    recolor(frame.data, prob, h, w, $("color").value, Number($("strength").value));
    if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
    ctx.putImageData(frame, 0, 0);
    ema("postMs", ts);
    const now = performance.now();
    if (stats.frames === 0) stats.firstFrameMs = now; // since navigation start: time to first coloured frame
    stats.frames += 1;
    stats.hairFraction = mean;
    times.push(now);
    while (times.length > 2 && now - times[0] > 3000) times.shift();
    stats.fps = times.length > 1 ? (1000 * (times.length - 1)) / (now - times[0]) : 0;
    $("status").textContent = `${stats.fps.toFixed(1)} fps · ${rt.backend} · smoothing ${smoother.kind} · hair ${(100 * mean).toFixed(1)} % · letterbox ${SIZE} px · first frame ${(stats.firstFrameMs / 1000).toFixed(1)} s`;
  }

  let previous = null;
  for (;;) {
    const h = video.videoHeight, w = video.videoWidth;
    if (!h || !w) { await new Promise((r) => setTimeout(r, 20)); continue; }
    if (grab.width !== w || grab.height !== h) { grab.width = w; grab.height = h; }
    grabCtx.drawImage(video, 0, 0, w, h);
    const job = { frame: grabCtx.getImageData(0, 0, w, h), h, w };
    job.pending = infer(job.frame.data, h, w).then((out) => { job.out = out; });
    if (previous) finish(previous); // overlaps the network run of this frame (in the worker)
    await job.pending;
    previous = job;
    await new Promise((r) => setTimeout(r, 0)); // let the page breathe (controls, rendering)
  }
}

if (params.get("camera") === "0") {
  $("status").textContent = `ready · ${rt.backend} · camera off`;
} else {
  runCamera().catch((err) => {
    $("error").textContent = `camera: ${err}`;
    stats.cameraError = String(err);
  });
}
