// The in-browser engine: the bundle's model runs in onnxruntime-web (WebAssembly), preprocessing and the
// prototype head run in JavaScript (runtime/js, vendored by runtime/web/vendor.mjs), so a prediction needs no
// server round trip, nor does its unknown score (lib/unknown.mjs: the same score and rejection as the server's).
// The head state is read from the bundle's own files (manifest, head file, journal replay);
// teaching computes feature rows here and journals them through the API (POST ... {"features": rows}).
// When the server trusts Ed25519 public keys (/api/info "public_keys"), so does the page: a bundle or update that
// none of them signed fails to load here too (SignatureError), checked with the browser's WebCrypto.
import * as ort from "./vendor/onnxruntime-web/ort.wasm.min.mjs";
import { loadBundle, SignatureError } from "./vendor/edgecl-js/index.mjs";
import { api, fetchBytes } from "./api.js";

ort.env.wasm.wasmPaths = new URL("./vendor/onnxruntime-web/", import.meta.url).href;
ort.env.wasm.numThreads = 1;  // threads need cross-origin isolation (SharedArrayBuffer); one is enough here
const THUMB = 96;

const BACKGROUND = "#ffffff";  // transparent pixels are composited on white, as edgecl_runtime.io reads files
const DECODE = { imageOrientation: "from-image", colorSpaceConversion: "none", premultiplyAlpha: "none" };

/** A canvas context of `w` x `h` filled with the background, to draw an image on. */
function whiteCanvas(w, h, options = {}) {
  const ctx = new OffscreenCanvas(w, h).getContext("2d", options);
  ctx.fillStyle = BACKGROUND;
  ctx.fillRect(0, 0, w, h);
  return ctx;
}

/** An uploaded or captured image as the RGB(A) pixels the runtime's preprocessing takes (no scaling): turned as
 * its EXIF orientation says and drawn on white, the pixels edgecl_runtime.io.decode_image gives in Python. */
export async function pixels(blob) {
  const bmp = await createImageBitmap(blob, DECODE);
  const ctx = whiteCanvas(bmp.width, bmp.height, { willReadFrequently: true });
  ctx.drawImage(bmp, 0, 0);
  const { data, width, height } = ctx.getImageData(0, 0, bmp.width, bmp.height);
  bmp.close();
  return { data, width, height, channels: 4 };
}

/** A small JPEG data: URL of the image for the class gallery (canvas scaling is fine for a thumbnail). */
async function thumbnail(blob) {
  const bmp = await createImageBitmap(blob, { imageOrientation: "from-image" });
  const s = Math.min(bmp.width, bmp.height);
  const ctx = whiteCanvas(THUMB, THUMB);
  ctx.drawImage(bmp, (bmp.width - s) / 2, (bmp.height - s) / 2, s, s, 0, 0, THUMB, THUMB);
  bmp.close();
  const jpeg = await ctx.canvas.convertToBlob({ type: "image/jpeg", quality: 0.85 });
  return new Promise((res) => {
    const r = new FileReader();
    r.onload = () => res(r.result);
    r.readAsDataURL(jpeg);
  });
}

export class BrowserEngine {
  static async create(info) {
    const engine = new BrowserEngine(info);
    await engine.refresh();
    return engine;
  }

  constructor(info) {
    this.name = "browser";
    this.info = info;
    this.model = null;  // {name, bytes}: the model file never changes after export (checksummed)
    this.session = null;
    // onnxruntime-web, with the session made once and reused across reloads of the head state
    this.ort = { Tensor: ort.Tensor, InferenceSession: { create: async (bytes, opts) => {
      this.session ??= await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"], ...opts });
      return this.session;
    } } };
  }

  async readFile(name) {
    if (this.model?.name === name) return this.model.bytes;
    const bytes = await fetchBytes(`/bundle/${encodeURIComponent(name)}`);
    if (bytes && name === this.info.model_file) this.model = { name, bytes };
    return bytes;
  }

  /** Re-read the bundle's state (head file + journal replay, verified against the manifest and, when the server
   * trusts public keys, their signatures). */
  async refresh() {
    const publicKeys = this.info.public_keys || [];
    for (let attempt = 1; ; attempt++) {
      try {
        this.bundle = await loadBundle({ readFile: (n) => this.readFile(n), ort: this.ort, verify: true, publicKeys });
        return;
      } catch (err) {  // an update between our reads replaced a file: read the new manifest (a bad signature stays bad)
        if (attempt >= 5 || err instanceof SignatureError) throw err;
      }
    }
  }

  /** Top-k and unknown score of an image, rejected above the bundle's calibrated threshold when it has one (as the
   * server's default ?unknown=auto): {top_k: [{class, score}], unknown, unknown_score, threshold}. */
  async predict(item) {
    const unknown = this.bundle.manifest.unknown?.threshold == null ? null : "auto";
    const [p] = await this.bundle.predict([await pixels(item.blob)], { topK: this.info.default_top_k, unknown });
    return { top_k: p.top_k.map(([name, score]) => ({ class: name, score })), unknown: p.unknown,
      unknown_score: p.unknown_score, threshold: this.bundle.unknownThreshold(unknown) };
  }

  /** Feature rows computed here, journaled by the server with store.add_examples. */
  async teach(name, create, items) {
    const images = await Promise.all(items.map((it) => pixels(it.blob)));
    const { features, n } = await this.bundle.run(images);
    const F = features.length / n;
    const rows = Array.from({ length: n }, (_, i) => Array.from(features.subarray(i * F, (i + 1) * F)));
    const thumbnails = await Promise.all(items.map((it) => thumbnail(it.blob)));
    const url = create ? "/api/classes" : `/api/classes/${encodeURIComponent(name)}/examples`;
    const body = JSON.stringify(create ? { name, features: rows, thumbnails } : { features: rows, thumbnails });
    return api(url, { method: "POST", headers: { "Content-Type": "application/json" }, body });
  }
}
