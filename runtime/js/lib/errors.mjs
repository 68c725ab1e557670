// Errors of the edgecl JS client, named like the Python runtime's (edgecl_runtime.errors).

export class EdgeclError extends Error {
  constructor(message) {
    super(message);
    this.name = new.target.name;
  }
}

/** A file of the bundle is unreadable, malformed or does not match the manifest. */
export class CorruptBundleError extends EdgeclError {}

/** A file's sha256 or size differs from the manifest (edited or damaged). */
export class TamperedFileError extends CorruptBundleError {}

/** A bundle (format version, head kind) this client does not read. */
export class IncompatibleBundleError extends EdgeclError {}

/** Bad input from the caller: images, class names, arguments. */
export class InvalidInputError extends EdgeclError {}

/** A bundle file named by the manifest is absent. */
export class MissingFileError extends EdgeclError {}

/** Trusted public keys were given and the manifest or a journal record after it is unsigned, signed by
 * another key, or modified after signing (as edgecl_runtime.errors.SignatureError). */
export class SignatureError extends EdgeclError {}
