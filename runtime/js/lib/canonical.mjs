// The manifest's seal: sha256 of its canonical JSON without `checksum`, byte for byte as Python's
// json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True) writes it
// (edgecl_runtime/manifest.py manifest_checksum). JSON.parse cannot tell 1.0 from 1, and Python writes
// them differently, so the manifest text is parsed here with number lexemes kept.

import { CorruptBundleError } from "./errors.mjs";

const TOKEN = /\s*(?:([{}[\]:,])|("(?:[^"\\]|\\.)*")|(-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)|(true|false|null))/y;

function tokens(text) {
  const out = [];
  TOKEN.lastIndex = 0;
  while (TOKEN.lastIndex < text.length && !/^\s*$/.test(text.slice(TOKEN.lastIndex))) {
    const at = TOKEN.lastIndex, m = TOKEN.exec(text);
    if (!m) throw new CorruptBundleError(`manifest.json: invalid JSON at character ${at}`);
    out.push(m[1] ? { p: m[1] } : m[2] ? { s: JSON.parse(m[2]) } : m[3] ? { n: m[3] } : { l: m[4] });
  }
  return out;
}

/** Python's repr of a float lexeme: shortest round-trip digits, exponent form below 1e-4 and from 1e16. */
export function pyFloat(lexeme) {
  const x = Number(lexeme);
  if (!Number.isFinite(x)) throw new CorruptBundleError(`manifest.json: number ${lexeme} out of range`);
  if (x === 0) return Object.is(x, -0) ? "-0.0" : "0.0";
  const [mant, exp] = x.toExponential().split("e");
  const e = Number(exp), sign = x < 0 ? "-" : "", digits = mant.replace(/^-/, "").replace(".", "");
  if (e < -4 || e >= 16) return `${sign}${digits[0]}${digits.length > 1 ? "." + digits.slice(1) : ""}e${e < 0 ? "-" : "+"}${String(Math.abs(e)).padStart(2, "0")}`;
  if (e < 0) return `${sign}0.${"0".repeat(-e - 1)}${digits}`;
  const int = digits.slice(0, e + 1).padEnd(e + 1, "0"), frac = digits.slice(e + 1);
  return `${sign}${int}.${frac || "0"}`;
}

// ensure_ascii escapes everything outside " " to "~" (so DEL 0x7f too); JSON.stringify already escapes what is below " "
const pyString = (s) => JSON.stringify(s).replace(/[\u007f-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
const byCodePoint = (a, b) => {
  const x = [...a], y = [...b];
  for (let i = 0; i < Math.min(x.length, y.length); i++) if (x[i] !== y[i]) return x[i].codePointAt(0) - y[i].codePointAt(0);
  return x.length - y.length;
};

function value(toks, i) {
  const t = toks[i];
  if (!t) throw new CorruptBundleError("manifest.json: truncated JSON");
  if (t.s !== undefined) return [{ s: t.s }, i + 1];
  if (t.n !== undefined) return [{ n: /[.eE]/.test(t.n) ? pyFloat(t.n) : BigInt(t.n).toString() }, i + 1];
  if (t.l) return [{ n: t.l }, i + 1];
  const close = t.p === "{" ? "}" : t.p === "[" ? "]" : null;
  if (!close) throw new CorruptBundleError(`manifest.json: unexpected '${t.p}'`);
  const items = [];
  i += 1;
  while (toks[i]?.p !== close) {
    if (items.length && toks[i++]?.p !== ",") throw new CorruptBundleError("manifest.json: expected ','");
    let key = null;
    if (close === "}") {
      key = toks[i]?.s;
      if (key === undefined || toks[i + 1]?.p !== ":") throw new CorruptBundleError("manifest.json: expected a key");
      i += 2;
    }
    const [v, j] = value(toks, i);
    items.push([key, v]);
    i = j;
  }
  return [close === "}" ? { o: items } : { a: items.map(([, v]) => v) }, i + 1];
}

function dump(v, [item, key] = [",", ":"]) {
  if (v.s !== undefined) return pyString(v.s);
  if (v.n !== undefined) return v.n;
  if (v.a) return `[${v.a.map((x) => dump(x, [item, key])).join(item)}]`;
  const last = new Map(v.o); // a later duplicate key wins, as in Python
  return `{${[...last.keys()].sort(byCodePoint).map((k) => `${pyString(k)}${key}${dump(last.get(k), [item, key])}`).join(item)}}`;
}

/** Python's json.dumps(obj, sort_keys=True, ensure_ascii=True) of the JSON object `text` without the keys `drop`,
 * with compact separators (",", ":") or, `compact: false`, Python's default ones (", ", ": "). */
export function pyJsonDumps(text, { drop = [], compact = true } = {}) {
  const [root] = value(tokens(text), 0);
  if (!root.o) throw new CorruptBundleError("manifest.json: not a JSON object");
  return dump({ o: root.o.filter(([k]) => !drop.includes(k)) }, compact ? [",", ":"] : [", ", ": "]);
}

/** The canonical text Python's manifest_checksum hashes: `text` (a JSON object) without its `checksum` key. */
export function canonicalManifest(text) {
  return pyJsonDumps(text, { drop: ["checksum"] });
}
