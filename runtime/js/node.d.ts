// Types of "edgecl-runtime/node" (lib/node.mjs): bundle directories from disk with onnxruntime-node, image and
// key files. Everything else (Bundle, errors, ...) comes from "edgecl-runtime".
import type { Bundle, Image, NdArray, OrtBinding, PublicKeySource } from "./index.js";

export interface OpenBundleOptions {
  /** Check file sizes and sha256 against the manifest (default true). */
  verify?: boolean;
  /** An onnxruntime binding (default: onnxruntime-node, imported on first use). */
  ort?: OrtBinding | null;
  /** onnxruntime intra-op threads (0, default: onnxruntime's choice). */
  threads?: number;
  /** Trusted Ed25519 keys: with any, unsigned or foreign-signed content is a SignatureError. */
  publicKeys?: PublicKeySource | PublicKeySource[];
}

/** A bundle directory loaded with onnxruntime-node (MissingFileError if `dir` has no manifest.json). */
export function openBundle(dir: string, options?: OpenBundleOptions): Promise<Bundle>;
/** The text of a public key file (PEM as `edgecl keygen` writes KEY.pub, or base64 of the raw key), checked. */
export function readPublicKeyFile(path: string): Promise<string>;
/** A .npy file (MissingFileError if absent). */
export function readNpyFile(path: string): Promise<NdArray>;
/** Images from files: a .npy file gives its image(s) (uint8 (N, H, W, C) 0..255 or float32 0..1), a PNG or JPEG
 * file one image, decoded as Python reads it (EXIF orientation applied, transparency composited on white). */
export function readImageFiles(paths: string[]): Promise<Image[]>;
/** Bytes of a file, or null if it does not exist. */
export function readOptional(path: string): Promise<Uint8Array | null>;
/** sha256 through node:crypto. */
export function nodeSha256(bytes: Uint8Array): Uint8Array;
