// Copies the onnxruntime-web files the page loads (and the package's licence) into the Python package's
// static folder, so `edgecl serve` works with no network and no CDN. Run by `npm ci` (postinstall).
import { copyFileSync, mkdirSync, readdirSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const src = join(here, "node_modules", "onnxruntime-web");
const dst = join(here, "..", "edgecl_runtime", "serve", "static", "vendor", "onnxruntime-web");
// The plain WebAssembly build (no WebGPU/WebGL): ort.wasm.min.mjs and the wasm binary it loads.
const wanted = /^(ort\.wasm\.min\.mjs|ort-wasm-simd-threaded\.(mjs|wasm))$/;

rmSync(dst, { recursive: true, force: true });
mkdirSync(dst, { recursive: true });
const copied = [];
for (const name of readdirSync(join(src, "dist"))) {
  if (wanted.test(name)) {
    copyFileSync(join(src, "dist", name), join(dst, name));
    copied.push(name);
  }
}
copyFileSync(join(here, "onnxruntime-web.LICENSE"), join(dst, "LICENSE"));  // the npm package has no LICENSE file
copyFileSync(join(src, "package.json"), join(dst, "package.json"));
console.log(`onnxruntime-web -> ${dst}: ${copied.join(", ")}, LICENSE`);
