// Node-only part: bundle files from disk, sha256 from node:crypto, onnxruntime-node, .npy files.

import { createHash } from "node:crypto";
import { readFile } from "node:fs/promises";
import { join } from "node:path";

import { loadBundle } from "./bundle.mjs";
import { MissingFileError } from "./errors.mjs";
import { parseNpy } from "./npy.mjs";

export const nodeSha256 = (bytes) => new Uint8Array(createHash("sha256").update(bytes).digest());

/** Bytes of a file, or null if it does not exist. */
export async function readOptional(path) {
  try {
    return new Uint8Array(await readFile(path));
  } catch (err) {
    if (err.code === "ENOENT") return null;
    throw err;
  }
}

/** A bundle directory loaded with onnxruntime-node (imported here, on first use). */
export async function openBundle(dir, { verify = true, ort = null, threads = 0 } = {}) {
  if ((await readOptional(join(dir, "manifest.json"))) === null) throw new MissingFileError(`no bundle at ${dir} (manifest.json missing)`);
  const binding = ort || (await import("onnxruntime-node"));
  const sessionOptions = threads ? { intraOpNumThreads: threads } : {};
  return loadBundle({ readFile: (name) => readOptional(join(dir, name)), ort: binding, sha256: nodeSha256, verify, sessionOptions });
}

/** A .npy file -> {dtype, shape, data}. */
export async function readNpyFile(path) {
  const bytes = await readOptional(path);
  if (bytes === null) throw new MissingFileError(`no such file: ${path}`);
  return parseNpy(bytes, path);
}
