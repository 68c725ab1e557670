// Ed25519 verification of signed bundles (lib/signing.mjs): keys, key ids, manifest and record messages.
// Signatures here are made with node:crypto; tests/test_js_signatures.py checks against Python-signed bundles.
import assert from "node:assert/strict";
import { createHash, generateKeyPairSync, sign } from "node:crypto";
import { test } from "node:test";

import { InvalidInputError, SignatureError, genesis } from "../index.mjs";
import { nodeSha256 } from "../lib/node.mjs";
import { importPublicKeys, keyId, rawPublicKey, recordMessage, verifyEntry, verifyManifest, verifyRecords } from "../lib/signing.mjs";

/** An Ed25519 key pair: the private KeyObject, the public key as PEM, raw bytes and base64, and its key id. */
function keyPair() {
  const { privateKey, publicKey } = generateKeyPairSync("ed25519");
  const der = publicKey.export({ type: "spki", format: "der" });
  const raw = new Uint8Array(der.subarray(12));
  const id = createHash("sha256").update(raw).digest("hex").slice(0, 16);
  const pem = publicKey.export({ type: "spki", format: "pem" });
  return { privateKey, pem, raw, b64: Buffer.from(raw).toString("base64"), id };
}

const KEY = keyPair(), OTHER = keyPair();
const entry = (key, message) => ({ alg: "ed25519", key_id: key.id, sig: sign(null, message, key.privateKey).toString("base64") });
const bytes = (text) => new TextEncoder().encode(text);

test("a public key reads from PEM, base64 and raw bytes alike; its id is sha256(raw)[:16]", async () => {
  for (const source of [KEY.pem, KEY.pem.replace(/\n/g, "\r\n"), KEY.b64, KEY.raw]) {
    assert.deepEqual(rawPublicKey(source), KEY.raw);
    assert.equal(await keyId(source), KEY.id);
  }
  const [imported] = await importPublicKeys([KEY.pem]);
  assert.equal(imported.id, KEY.id);
  const privatePem = KEY.privateKey.export({ type: "pkcs8", format: "pem" });
  for (const bad of [privatePem, KEY.raw.subarray(1), "", "AAAA", KEY.b64.replace("=", ""), 42, null]) {
    assert.throws(() => rawPublicKey(bad), InvalidInputError, String(bad));
  }
});

test("verifyEntry accepts a trusted key's signature and refuses unsigned, foreign, forged and malformed ones", async () => {
  const trusted = await importPublicKeys([OTHER.b64, KEY.b64]);
  const message = bytes("edgecl-manifest\0{}");
  await verifyEntry(entry(KEY, message), message, "m", trusted);
  const { alg: _, ...noAlg } = entry(KEY, message); // record signatures carry no alg: ed25519 is the default
  await verifyEntry(noAlg, message, "m", trusted);
  const refusals = [
    [undefined, /m is not signed/], [null, /m is not signed/], [[], /m is not signed/], [{ key_id: KEY.id }, /m is not signed/],
    [{ ...entry(KEY, message), alg: "rsa" }, /m is not signed/],
    [entry(keyPair(), message), /which this client does not trust/],
    [entry(KEY, bytes("edgecl-manifest\0{\"a\":1}")), /does not match/],
    [{ ...entry(KEY, message), sig: entry(KEY, message).sig.slice(0, -2) }, /does not match/],
    [{ ...entry(KEY, message), sig: ` ${entry(KEY, message).sig}` }, /does not match/],
  ];
  for (const [e, reason] of refusals) await assert.rejects(verifyEntry(e, message, "m", trusted), (err) => err instanceof SignatureError && reason.test(err.message));
});

test("the manifest's signature covers its canonical JSON without checksum and signature", async () => {
  const message = bytes('edgecl-manifest\0{"a":[1.0,1e-05,"Caf\\u00e9"],"b":{"c":2}}');
  const sig = entry(KEY, message);
  const text = `{"b": {"c": 2}, "checksum": "x", "a": [1.0, 0.00001, "Café"], "signature": ${JSON.stringify(sig)}}`;
  const trusted = await importPublicKeys([KEY.pem]);
  await verifyManifest(text, JSON.parse(text), trusted);
  const edited = text.replace('"c": 2', '"c": 3');
  await assert.rejects(verifyManifest(edited, JSON.parse(edited), trusted), /manifest.json: the signature does not match/);
  const unsigned = '{"a": 1}';
  await assert.rejects(verifyManifest(unsigned, JSON.parse(unsigned), trusted), /manifest.json is not signed/);
});

test("a record's signed message holds the header as Python's json.dumps(sort_keys=True) writes it, without sig", async () => {
  const prev = await genesis("base", nodeSha256);
  const header = '{"z": 1.0, "class": "Caf\\u00e9", "seq": 1, "sig": {"key_id": "k", "sig": "s"}, "shape": [1, 2]}';
  const body = new Uint8Array(Float32Array.from([1, -1]).buffer);
  const python = '{"class": "Caf\\u00e9", "seq": 1, "shape": [1, 2], "z": 1.0}'; // json.dumps(h, ensure_ascii=True, sort_keys=True)
  const inner = createHash("sha256").update(Buffer.concat([Buffer.from(python + "\n"), body])).digest();
  const want = Buffer.concat([Buffer.from("edgecl-record\0"), Buffer.from(prev, "hex"), inner]);
  assert.deepEqual(Buffer.from(await recordMessage(prev, new Uint8Array(Buffer.concat([Buffer.from(header + "\n"), body])))), want);
});

/** A journal record signed (or not, `key` null) as journal.py encode writes it; returns [bytes, digest]. */
async function signedRecord(prev, seq, key, mutate = (h) => h) {
  const body = Buffer.from(Float32Array.from([seq, -seq]).buffer);
  const header = { class: `c${seq}`, id: `${seq}`.padStart(16, "0"), op: "add", seq, shape: [1, 2], time: "t" };
  const message = await recordMessage(prev, new Uint8Array(Buffer.concat([Buffer.from(JSON.stringify(header) + "\n"), body])));
  const signed = mutate(key ? { ...header, sig: { key_id: key.id, sig: sign(null, message, key.privateKey).toString("base64") } } : header);
  const payload = Buffer.concat([Buffer.from(JSON.stringify(signed) + "\n"), body]);
  const digest = createHash("sha256").update(Buffer.concat([Buffer.from(prev, "hex"), payload])).digest();
  const prefix = Buffer.alloc(8);
  prefix.write("ECJ1", 0, "ascii");
  prefix.writeUInt32LE(payload.length, 4);
  return [Buffer.concat([prefix, digest, payload]), digest.toString("hex")];
}

/** Journal bytes and the records verifyRecords takes ({seq, op, name, extra, end, digest}). */
async function journal(keys, mutate) {
  const start = await genesis("base", nodeSha256);
  let prev = start, end = 0;
  const parts = [], records = [];
  for (const [i, key] of keys.entries()) {
    const [rec, digest] = await signedRecord(prev, i + 1, key, i === keys.length - 1 ? mutate : undefined);
    parts.push(rec);
    end += rec.length;
    const header = JSON.parse(rec.subarray(40).toString().split("\n")[0]);
    records.push({ seq: i + 1, op: "add", name: header.class, extra: header.sig ? { sig: header.sig } : {}, end, digest });
    prev = digest;
  }
  return { data: new Uint8Array(Buffer.concat(parts)), records, start };
}

test("journal records after the snapshot point must each carry a trusted signature chained to their predecessor", async () => {
  const trusted = await importPublicKeys([KEY.raw]);
  const check = async (keys, mutate) => {
    const { data, records, start } = await journal(keys, mutate);
    return verifyRecords(data, records, { start: 0, prevDigest: start, trusted, where: "j" });
  };
  await check([KEY, KEY, KEY]);
  await assert.rejects(check([KEY, null]), /j: update 2 \(add "c2"\) is not signed/);
  await assert.rejects(check([KEY, OTHER]), /update 2 .* signed by key "[0-9a-f]{16}", which this client does not trust/);
  await assert.rejects(check([KEY, KEY], (h) => ({ ...h, class: "mallory" })), /update 2 \(add "mallory"\): the signature does not match/);
});
