#!/usr/bin/env node
// An app using the edgecl-runtime package: `node app.mjs BUNDLE IMAGE...` prints one JSON line per image,
// {image, label, score, unknown_score, top_k}; label is null for an image the bundle's calibrated unknown
// threshold rejects (when the bundle has one). IMAGEs are PNG/JPEG files or .npy arrays (N, H, W, C).
//
//   npm install              # edgecl-runtime (and onnxruntime-node) from the npm registry
//   node app.mjs path/to/bundle photo.jpg images.npy

import { EdgeclError, IncompatibleBundleError } from "edgecl-runtime";
import { openBundle, readImageFiles } from "edgecl-runtime/node";

const [bundleDir, ...files] = process.argv.slice(2);
if (!bundleDir || !files.length) {
  console.error("usage: node app.mjs BUNDLE IMAGE...");
  process.exit(2);
}

try {
  const bundle = await openBundle(bundleDir, { threads: 1 });
  let unknown = "auto"; // the threshold calibrated at export; older bundles have none: reject nothing
  try {
    bundle.unknownThreshold(unknown);
  } catch (err) {
    if (!(err instanceof IncompatibleBundleError)) throw err;
    unknown = null;
  }
  for (const file of files) {
    const images = await readImageFiles([file]); // a .npy file may hold several images
    const preds = await bundle.predict(images, { topK: 3, unknown });
    preds.forEach((p, i) => {
      const image = images.length === 1 ? file : `${file}[${i}]`;
      console.log(JSON.stringify({ image, label: p.label, score: p.score, unknown_score: p.unknown_score, top_k: p.top_k }));
    });
  }
} catch (err) {
  if (!(err instanceof EdgeclError)) throw err;
  console.error(`error: ${err.name}: ${err.message}`);
  process.exit(1);
}
