// Class-name validation, as edgecl_runtime/inputs.py class_name: the same names are refused, and names are
// NFC-normalised so canonically equal names are the same class.

import { InvalidInputError } from "./errors.mjs";

export const MAX_NAME_CHARS = 200;
// Control, surrogate, private-use, line/paragraph separators and format characters except ZWNJ/ZWJ.
const BAD = /[\p{Cc}\p{Cs}\p{Co}\p{Zl}\p{Zp}\p{Cf}]/u;
const ALLOWED_FORMAT = new Set(["\u200c", "\u200d"]);
// Python's str.strip() whitespace: Unicode White_Space plus the separators \x1c-\x1f.
const PY_SPACE = /^[\s\x1c-\x1f\x85]+|[\s\x1c-\x1f\x85]+$/gu;

export function className(name) {
  if (typeof name !== "string") throw new InvalidInputError(`class name must be a string, got ${typeof name}`);
  const stripped = name.replace(PY_SPACE, "");
  if (!stripped) throw new InvalidInputError("class name must be a non-empty string");
  if (!name.isWellFormed()) throw new InvalidInputError(`class name ${JSON.stringify(name)} is not valid UTF-8 (lone surrogate)`);
  if (stripped !== name) throw new InvalidInputError(`class name ${JSON.stringify(name)} has surrounding whitespace`);
  const bad = [...name].filter((c) => BAD.test(c) && !ALLOWED_FORMAT.has(c));
  if (bad.length) throw new InvalidInputError(`class name ${JSON.stringify(name)} contains control or invisible characters ${JSON.stringify(bad)}`);
  if (name.includes("/") || name.includes("\\") || name === "." || name === "..") {
    throw new InvalidInputError(`class name ${JSON.stringify(name)} looks like a path; '/', '\\', '.' and '..' are not allowed`);
  }
  const length = [...name].length;
  if (length > MAX_NAME_CHARS) throw new InvalidInputError(`class name is ${length} characters long; the limit is ${MAX_NAME_CHARS}`);
  return name.normalize("NFC");
}
