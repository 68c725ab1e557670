// Copies what the page of `edgecl serve` loads for its in-browser mode into the Python package's static folder,
// so it works with no network and no CDN: onnxruntime-web's WebAssembly build (with its licence) from
// node_modules, and the edgecl JS client (runtime/js: bundle files, journal replay, preprocessing) without
// its Node-only module. Run after `npm ci` (.ci/setup-system.sh).
import { copyFileSync, mkdirSync, readdirSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const vendor = join(here, "..", "edgecl_runtime", "serve", "static", "vendor");

function copy(srcDir, dstDir, keep) {
  mkdirSync(dstDir, { recursive: true });
  const names = readdirSync(srcDir).filter(keep);
  for (const name of names) copyFileSync(join(srcDir, name), join(dstDir, name));
  return names;
}

rmSync(vendor, { recursive: true, force: true });
const ort = join(vendor, "onnxruntime-web");
// The plain WebAssembly build (no WebGPU/WebGL): ort.wasm.min.mjs and the wasm binary + glue it loads.
const copied = copy(join(here, "node_modules", "onnxruntime-web", "dist"), ort,
  (n) => /^(ort\.wasm\.min\.mjs|ort-wasm-simd-threaded\.(mjs|wasm))$/.test(n));
copyFileSync(join(here, "onnxruntime-web.LICENSE"), join(ort, "LICENSE"));  // the npm package has no LICENSE file
copyFileSync(join(here, "node_modules", "onnxruntime-web", "package.json"), join(ort, "package.json"));
const js = join(here, "..", "js");
const lib = copy(join(js, "lib"), join(vendor, "edgecl-js", "lib"), (n) => n.endsWith(".mjs") && n !== "node.mjs");
copyFileSync(join(js, "index.mjs"), join(vendor, "edgecl-js", "index.mjs"));
console.log(`vendored into ${vendor}: onnxruntime-web (${copied.join(", ")}, LICENSE), edgecl-js (index.mjs, ${lib.length} modules)`);
