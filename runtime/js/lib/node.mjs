// Node-only part: bundle files from disk, sha256 from node:crypto, onnxruntime-node, .npy and image files.

import { createHash } from "node:crypto";
import { readFile } from "node:fs/promises";
import { join } from "node:path";

import { loadBundle } from "./bundle.mjs";
import { InvalidInputError, MissingFileError } from "./errors.mjs";
import { decodeImage } from "./images.mjs";
import { parseNpy } from "./npy.mjs";
import { batchImages } from "./preprocess.mjs";
import { rawPublicKey } from "./signing.mjs";

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

/** A bundle directory loaded with onnxruntime-node (imported here, on first use). `publicKeys`: trusted Ed25519
 * public keys (PEM or base64 text, raw bytes; see loadBundle): with any, unsigned or foreign-signed content is refused. */
export async function openBundle(dir, { verify = true, ort = null, threads = 0, publicKeys = [] } = {}) {
  if ((await readOptional(join(dir, "manifest.json"))) === null) throw new MissingFileError(`no bundle at ${dir} (manifest.json missing)`);
  const binding = ort || (await import("onnxruntime-node"));
  const sessionOptions = threads ? { intraOpNumThreads: threads } : {};
  const readBundleFile = (name) => readOptional(join(dir, name));
  return loadBundle({ readFile: readBundleFile, ort: binding, sha256: nodeSha256, verify, sessionOptions, publicKeys });
}

/** The text of a public key file (PEM as `edgecl keygen` writes KEY.pub, or base64 of the raw key), checked. */
export async function readPublicKeyFile(path) {
  const bytes = await readOptional(path).catch((err) => { throw new InvalidInputError(`cannot read key file ${path}: ${err.message}`); });
  if (bytes === null) throw new InvalidInputError(`cannot read key file ${path}: no such file`);
  const text = new TextDecoder().decode(bytes);
  try {
    rawPublicKey(text);
  } catch (err) {
    throw new InvalidInputError(`${path}: ${err.message}`);
  }
  return text;
}

/** A .npy file -> {dtype, shape, data}. */
export async function readNpyFile(path) {
  const bytes = await readOptional(path);
  if (bytes === null) throw new MissingFileError(`no such file: ${path}`);
  return parseNpy(bytes, path);
}

/** Images from files, as preprocess() takes them: a .npy file gives its image(s), a PNG or JPEG file one image
 * (decoded as Python reads it: EXIF orientation applied, transparency on white; lib/images.mjs). */
export async function readImageFiles(paths) {
  const out = [];
  for (const path of paths) {
    if (path.toLowerCase().endsWith(".npy")) {
      out.push(...batchImages(await readNpyFile(path)));
      continue;
    }
    const bytes = await readOptional(path);
    if (bytes === null) throw new MissingFileError(`no such file: ${path}`);
    out.push(await decodeImage(bytes, path));
  }
  if (!out.length) throw new InvalidInputError("no images given");
  return out;
}
