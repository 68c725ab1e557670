// edgecl JS client: everything that runs in Node and in a browser (no file system, onnxruntime injected).
export { loadBundle, Bundle, applyRecord, FORMAT_VERSIONS } from "./lib/bundle.mjs";
export * from "./lib/errors.mjs";
export { PrototypeHead } from "./lib/head.mjs";
export { genesis, scan, readCommitted, decodePayload, webSha256 } from "./lib/journal.mjs";
export { className } from "./lib/names.mjs";
export { parseNpy, writeNpy } from "./lib/npy.mjs";
export { parseNpz } from "./lib/npz.mjs";
export { readMetadataProps } from "./lib/onnxmeta.mjs";
export { preprocess, batchImages, resizeWeights } from "./lib/preprocess.mjs";
export { parseSafetensors } from "./lib/safetensors.mjs";
export { importPublicKeys, keyId, rawPublicKey, verifyEntry, verifyManifest, verifyRecords } from "./lib/signing.mjs";
export { classCosines, scoreName, unknownScores, unknownThreshold } from "./lib/unknown.mjs";
