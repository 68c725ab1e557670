// Types of edgecl-runtime's main entry ("edgecl-runtime", index.mjs): runs in Node and in browsers; files,
// the onnxruntime binding and sha256 are injected. The Node helpers are in "edgecl-runtime/node" (node.d.ts).

/** One image: HWC pixels, RGB order; `channels` 1 (grey), 3 (RGB) or 4 (RGBA: alpha ignored). `data` is
 * Uint8Array/Uint8ClampedArray 0..255 (e.g. a canvas's ImageData with channels 4) or Float32Array 0..1. */
export interface Image {
  data: Uint8Array | Uint8ClampedArray | Float32Array;
  height: number;
  width: number;
  channels: 1 | 3 | 4;
}

/** A parsed array (.npy, .npz, safetensors): shape and row-major data. */
export interface NdArray<T extends ArrayLike<number | bigint> = ArrayLike<number | bigint>> {
  dtype: string;
  shape: number[];
  data: T;
}

/** Bytes of a bundle file by its name in the bundle ("manifest.json", "model.onnx", ...), or null when absent. */
export type ReadFile = (name: string) => Promise<Uint8Array | null>;

/** sha256 of bytes, 32 bytes, sync or async (default: WebCrypto, `webSha256`). */
export type Sha256 = (bytes: Uint8Array) => Uint8Array | Promise<Uint8Array>;

/** An Ed25519 public key: PEM text (as `edgecl keygen` writes KEY.pub), base64 text of the 32 raw bytes, or the bytes. */
export type PublicKeySource = string | Uint8Array;

/** The part of an onnxruntime binding (onnxruntime-node or onnxruntime-web, `import * as ort`) the client uses. */
export interface OrtBinding {
  InferenceSession: { create(model: Uint8Array, options?: any): Promise<OrtSession> };
  Tensor: new (type: "float32", data: Float32Array, dims: readonly number[]) => any;
}

export interface OrtSession {
  run(feeds: Record<string, any>): Promise<Record<string, { data: unknown }>>;
}

export interface LoadBundleOptions {
  /** Bundle files by name: null when a file is absent. */
  readFile: ReadFile;
  /** onnxruntime binding; null or omitted: the bundle can be inspected but not run (predict/addClass throw). */
  ort?: OrtBinding | null;
  sha256?: Sha256;
  /** Check file sizes and sha256 against the manifest, and the manifest's own checksum (default true). */
  verify?: boolean;
  /** Passed to ort.InferenceSession.create. */
  sessionOptions?: Record<string, unknown>;
  /** Trusted Ed25519 keys (one or a list): with any, an unsigned or foreign-signed manifest or journal update is a
   * SignatureError (as Python's Bundle.load(public_key=...)); none (default): signatures are not checked. */
  publicKeys?: PublicKeySource | PublicKeySource[];
}

/** Unknown-image rejection: "auto" (the bundle's calibrated threshold), a threshold number, or null (none). */
export type UnknownOption = "auto" | number | null;

export interface PredictOptions {
  /** How many classes per image in `top_k` (default 1). */
  topK?: number;
  /** Reject images whose unknown score is above this threshold (default null: no rejection). */
  unknown?: UnknownOption;
}

export interface Prediction {
  /** Index of the best class (also when the image is rejected as unknown). */
  index: number;
  /** Name of the best class; null when rejected as unknown. */
  label: string | null;
  /** Score (cosine) of the best class. */
  score: number;
  /** The topK best classes, best first: [class name, score]. */
  top_k: Array<[string, number]>;
  /** Higher: less like any class the bundle knows (the bundle's unknown score, see unknownScoreName). */
  unknown_score: number;
  /** True when `unknown` was given and unknown_score is above its threshold. */
  unknown: boolean;
}

export interface AddClassResult {
  name: string;
  /** True: a new class; false: more examples of an existing class. */
  created: boolean;
  examples_added: number;
  total_examples: number;
  num_classes: number;
  index: number;
}

/** The unknown scores this client computes (manifest.unknown.score). */
export type UnknownScoreName = "max_score" | "msp" | "energy" | "margin" | "nearest_cosine";

/** A journal record (decoded). */
export interface JournalRecord {
  seq: number;
  op: "add" | "remove_class";
  name: string;
  id: string;
  time: string;
  /** The k example embeddings of an "add" record (Float32Array k*dim); null for "remove_class". */
  rows: { k: number; dim: number; data: Float32Array } | null;
  extra: Record<string, unknown>;
  digest?: string;
  /** File offset after the record. */
  end?: number;
}

export interface JournalScan {
  records: JournalRecord[];
  end: number;
  digest: string;
  seq: number;
  /** Bytes after the last valid record (a torn write), not read. */
  discarded: number;
  problem: string;
}

export interface CommittedJournal extends JournalScan {
  /** Complete records after the manifest's commit point: replayed on the head file when the bundle loads. */
  lagging: JournalRecord[];
}

/** Bundle formats this client reads: [2, 3]. */
export const FORMAT_VERSIONS: number[];

/** Open a bundle: read and check the manifest (and its checksum and signature), the head file, the journal (replayed
 * after the commit point) and the model (its metadata_props against the manifest); create the onnxruntime session. */
export function loadBundle(options: LoadBundleOptions): Promise<Bundle>;

/** (head, classes) after one journal record, as edgecl_runtime.store.apply. */
export function applyRecord(head: PrototypeHead, classes: string[], record: Pick<JournalRecord, "op" | "name" | "rows">): [PrototypeHead, string[]];

export class Bundle {
  /** The parsed manifest.json. */
  manifest: Record<string, any>;
  head: PrototypeHead;
  /** Class names, in the head's order (after journal replay and in-memory updates). */
  classes: string[];
  /** Journal sequence number reached when the bundle was loaded. */
  seq: number;
  journal: CommittedJournal;
  session: OrtSession | null;
  ort: OrtBinding | null;
  /** The model's ONNX metadata_props. */
  metadata: Record<string, string>;

  get formatVersion(): number;
  /** Key id of the manifest's signature (verified only when loadBundle was given publicKeys), or null. */
  get signedBy(): string | null;
  /** The model input [channels, height, width]. */
  get inputSize(): [number, number, number];
  /** The unknown score this bundle reports (manifest.unknown.score, else "nearest_cosine"). */
  get unknownScoreName(): UnknownScoreName;

  /** Images -> the normalised NCHW float32 model input. */
  preprocess(images: Image[]): Float32Array;
  /** Features (n*F) and class scores (n*C) of n images, run in batches of 64 like the Python runtime. */
  run(images: Image[]): Promise<{ features: Float32Array; scores: Float32Array; n: number }>;
  /** Top-k classes and the unknown score of each image (Python's Bundle.predict). */
  predict(images: Image[], options?: PredictOptions): Promise<Prediction[]>;
  /** The threshold predict applies for `unknown` ("auto" without a calibrated threshold: IncompatibleBundleError). */
  unknownThreshold(unknown: UnknownOption | undefined): number | null;
  /** Add k feature rows (Float32Array k*F) to class `name` in memory, as store.add_examples. */
  addFeatures(name: string, rows: Float32Array, k: number): AddClassResult;
  /** Learn (or extend) class `name` from images, in memory (as Python's Bundle.add_class computes it; nothing is
   * written: this client does not write bundles). */
  addClass(name: string, images: Image[]): Promise<AddClassResult>;
  /** Forget class `name`, in memory (nothing is written). */
  removeClass(name: string): void;
}

/** The prototype_cosine head (immutable: updates return a new head). */
export class PrototypeHead {
  constructor(prototypes: Float32Array, counts: number[], dim: number);
  static readonly kind: "prototype_cosine";
  static fromArrays(arrays: Record<string, NdArray>, numClasses: number, dim: number): PrototypeHead;
  /** (C*dim) raw class means. */
  prototypes: Float32Array;
  /** Examples per class. */
  counts: number[];
  dim: number;
  get numClasses(): number;
  prototype(index: number): Float32Array;
  /** (C*dim) float32 L2-normalised prototypes (the model's `prototypes` input). */
  normalized(): Float32Array;
  /** (C*dim) float64 L2-normalised prototypes (what the unknown score compares with). */
  normalized64(): Float64Array;
  /** (n*C) cosine scores of raw features (n*dim). */
  scores(features: Float32Array, n: number): Float32Array;
  /** New head with k rows (k*dim) added to class `index` (null: a new last class). */
  withExamples(index: number | null, rows: Float32Array, k: number): PrototypeHead;
  withoutClass(index: number): PrototypeHead;
}

// Errors, named like the Python runtime's (edgecl_runtime.errors); `name` is the class name.
export class EdgeclError extends Error {}
/** A file of the bundle is unreadable, malformed or does not match the manifest. */
export class CorruptBundleError extends EdgeclError {}
/** A file's sha256 or size differs from the manifest (edited or damaged). */
export class TamperedFileError extends CorruptBundleError {}
/** A bundle (format version, head kind) this client does not read, or "auto" without a calibrated threshold. */
export class IncompatibleBundleError extends EdgeclError {}
/** Bad input from the caller: images, class names, arguments. */
export class InvalidInputError extends EdgeclError {}
/** A bundle file named by the manifest is absent. */
export class MissingFileError extends EdgeclError {}
/** Trusted keys were given and the manifest or a journal update is unsigned, signed by another key, or modified. */
export class SignatureError extends EdgeclError {}

// Journal (lib/journal.mjs)
export function genesis(baseId: string, sha256?: Sha256): Promise<string>;
export function scan(data: Uint8Array, options: { start?: number; startDigest: string; startSeq: number; sha256?: Sha256; where?: string }): Promise<JournalScan>;
export function readCommitted(data: Uint8Array | null, manifest: Record<string, any>, options?: { sha256?: Sha256; where?: string }): Promise<CommittedJournal>;
/** A record from its payload (throws Error on anything Python's journal refuses). */
export function decodePayload(payload: Uint8Array): JournalRecord;
/** sha256 through WebCrypto (browsers in secure contexts, Node >= 19). */
export function webSha256(bytes: Uint8Array): Promise<Uint8Array>;

/** A class name as Python normalises it (NFC, stripped, checked); InvalidInputError if not allowed. */
export function className(name: string): string;

// Array files
export function parseNpy(bytes: Uint8Array, where?: string): NdArray<Uint8Array | Int8Array | Float32Array | Float64Array | Int32Array | Uint32Array | BigInt64Array | BigUint64Array>;
export function writeNpy(data: Float32Array | Uint8Array | Float64Array, shape: number[]): Uint8Array;
export function parseNpz(bytes: Uint8Array, where?: string): Record<string, NdArray>;
export function parseSafetensors(bytes: Uint8Array, where?: string): { tensors: Record<string, NdArray>; metadata: Record<string, string> };
/** {key: value} of ModelProto.metadata_props in ONNX model bytes. */
export function readMetadataProps(bytes: Uint8Array): Record<string, string>;

// Preprocessing (as edgecl_runtime.preprocess)
/** Images -> normalised NCHW Float32Array for inputSize [3, H, W]. */
export function preprocess(images: Image[], inputSize: [number, number, number] | number[], mean: number[], std: number[]): Float32Array;
/** A (N, H, W, C) or (H, W, C) array (e.g. from a .npy file) as the image list preprocess() and predict() take. */
export function batchImages(array: { data: Uint8Array | Float32Array; shape: number[] }): Image[];
/** (nOut x nIn) weights of the bilinear resize filter. */
export function resizeWeights(nIn: number, nOut: number): Float64Array;

// Signing (Ed25519 through WebCrypto)
export interface TrustedKey { id: string; key: CryptoKey }
export function importPublicKeys(sources: PublicKeySource[]): Promise<TrustedKey[]>;
/** 16 hex digits naming a public key (Python's signing.key_id). */
export function keyId(source: PublicKeySource): Promise<string>;
/** The raw 32 bytes of a public key (InvalidInputError if it is none). */
export function rawPublicKey(source: PublicKeySource): Uint8Array;
export function verifyEntry(entry: Record<string, unknown>, message: Uint8Array, where: string, trusted: TrustedKey[]): Promise<void>;
export function verifyManifest(text: string, manifest: Record<string, any>, trusted: TrustedKey[], where?: string): Promise<void>;
export function verifyRecords(data: Uint8Array, records: JournalRecord[], options: { start: number; prevDigest: string; trusted: TrustedKey[]; sha256?: Sha256; where?: string }): Promise<void>;

// Unknown scores (as edgecl_runtime.unknown)
/** (n*C) float64 cosines of features (n*dim) to the prototypes, each scaled by sqrt(1 + ratio / n_c). */
export function classCosines(head: PrototypeHead, features: Float32Array, n: number, ratio?: number | null): Float64Array;
/** The unknown score a bundle's manifest names (else "nearest_cosine"). */
export function scoreName(manifest: Record<string, any>): UnknownScoreName;
/** (n) unknown scores of n images from their features (n*dim) and class scores (n*C). */
export function unknownScores(manifest: Record<string, any>, head: PrototypeHead, features: Float32Array, scores: Float32Array, n: number): Float64Array;
/** The threshold for `unknown` ("auto": manifest.unknown.threshold), or null. */
export function unknownThreshold(manifest: Record<string, any>, unknown: UnknownOption | undefined): number | null;
