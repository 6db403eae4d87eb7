// A small CCF JavaScript application exercising ccf.crypto, ccf.historical.getStateRange and the jwt policy.
//
// Errors are CCF's body {"error": {"code", "message"}}; a malformed request is 400 InvalidInput (body) or
// InvalidQueryParameterValue (query). Hex strings are lowercase.
//
//   POST /crypto/digest   readonly  user_cert  {"data": string, "algorithm"?: "SHA-256" | "SHA-384" | "SHA-512"}
//        -> {"algorithm", "digest": hex of the digest of data's UTF-8 bytes} (ccf.crypto.digest).
//   POST /crypto/wrap     readonly  user_cert  {"algorithm"?: "AES-KWP" | "RSA-OAEP" | "RSA-OAEP-AES-KWP",
//        "size"?: 128 | 192 | 256} -> {"algorithm", "key_size", "wrapped_size", "round_trip"}: a fresh AES key of
//        `size` bits (default 256) is wrapped and unwrapped again, with a fresh AES-256 wrapping key for AES-KWP
//        or a fresh RSA-2048 key pair for the RSA algorithms (generateAesKey, generateRsaKeyPair, wrapKey,
//        unwrapKey); round_trip says whether the unwrapped key equals the original; sizes are in bytes.
//   POST /crypto/sign     readonly  user_cert  {"message": string, "curve"?: "secp256r1" | "secp384r1"}
//        -> {"curve", "public_key": PEM, "jwk", "signature": hex, "verified", "tampered_verified",
//        "jwk_round_trip"}: a fresh ECDSA key pair (generateEcdsaKeyPair) signs the message with SHA-256
//        (SHA-384 on secp384r1); the signature is CCF's IEEE P1363 r || s; verified checks it
//        (verifySignature), tampered_verified checks it against the message + "!" (false);
//        jwk = pubPemToJwk(public_key, "signing-key"), and jwk_round_trip says whether
//        pubPemToJwk(pubJwkToPem(jwk)) gives jwk back.
//   POST /crypto/verify   readonly  user_cert  {"public_key": PEM or EC JWK, "message": string, "signature": hex
//        (P1363 r || s), "hash"?: "SHA-256" | "SHA-384" | "SHA-512"} -> {"valid": bool} (ECDSA verifySignature;
//        a JWK is converted with pubJwkToPem first).
//   POST /values          readwrite user_cert  {"id": uint, "value": string} -> true; map "public:values",
//        key the id as 8 bytes little-endian, value the UTF-8 string.
//   GET  /history?id=N&from=A&to=B   readonly  user_cert  -> {"entries": [{"seqno", "value"}]}: the writes of
//        key N in seqnos A..B (inclusive, at most 1000 seqnos) read with ccf.historical.getStateRange;
//        202 {"retry": true} (header retry-after: 1) while the node fetches the range, so the caller asks again.
//        400 InvalidInput if B < A, A < 1, the range is too long or B is not committed.
//   GET  /jwt             readonly  jwt        -> {"policy", "issuer": caller.jwt.keyIssuer,
//        "sub": caller.jwt.payload.sub, "kid": caller.jwt.header.kid}.
//   GET  /whoami          readonly  jwt, user_cert  -> {"policy", "id"} where id is the user's id (user_cert) or
//        the token's sub (jwt).

import { ccf } from "@microsoft/ccf-app/global.js";
import { typedKv } from "@microsoft/ccf-app/kv.js";
import { string, uint64 } from "@microsoft/ccf-app/converters.js";
import * as crypto from "@microsoft/ccf-app/crypto.js";
import { getStateRange } from "@microsoft/ccf-app/historical.js";
import { equalBytes, fromHex, toHex } from "./encoding.js";

const VALUES = "public:values";
const DIGESTS = ["SHA-256", "SHA-384", "SHA-512"];
const CURVE_HASHES = { secp256r1: "SHA-256", secp384r1: "SHA-384" };
const AES_SIZES = [128, 192, 256];
const MAX_HISTORY_SEQNOS = 1000;
const HISTORY_EXPIRY_SECONDS = 300;

function error(statusCode, code, message) {
  return { statusCode, body: { error: { code, message } } };
}

function invalid(message) {
  return error(400, "InvalidInput", message);
}

// The JSON object body, or undefined (the caller answers 400).
function objectBody(request) {
  try {
    const body = request.body.json();
    return body !== null && typeof body === "object" && !Array.isArray(body) ? body : undefined;
  } catch (e) {
    return undefined;
  }
}

function decode(component) {
  try {
    return decodeURIComponent(component.replace(/\+/g, " "));
  } catch (e) {
    return component;
  }
}

// The query string as {name: first non-empty value}.
function queryParams(request) {
  const params = {};
  for (const part of (request.query || "").split("&")) {
    const eq = part.indexOf("=");
    const name = decode(part.slice(0, eq));
    const value = decode(part.slice(eq + 1));
    if (eq > 0 && value !== "" && !(name in params)) {
      params[name] = value;
    }
  }
  return params;
}

function values() {
  return typedKv(VALUES, uint64, string);
}

// --- ccf.crypto --------------------------------------------------------------------------------------------

export function digest(request) {
  const body = objectBody(request);
  if (body === undefined || typeof body.data !== "string") {
    return invalid('Body must be {"data": string, "algorithm"?: string}');
  }
  const algorithm = body.algorithm === undefined ? "SHA-256" : body.algorithm;
  if (!DIGESTS.includes(algorithm)) {
    return invalid(`Unsupported digest algorithm: ${algorithm}`);
  }
  return { body: { algorithm, digest: toHex(crypto.digest(algorithm, string.encode(body.data))) } };
}

export function wrap(request) {
  const body = objectBody(request);
  if (body === undefined) {
    return invalid('Body must be {"algorithm"?: string, "size"?: 128 | 192 | 256}');
  }
  const algorithm = body.algorithm === undefined ? "AES-KWP" : body.algorithm;
  const size = body.size === undefined ? 256 : body.size;
  if (!AES_SIZES.includes(size)) {
    return invalid(`Unsupported AES key size: ${size}`);
  }
  const key = crypto.generateAesKey(size);
  let wrapped;
  let unwrapped;
  if (algorithm === "AES-KWP") {
    const wrappingKey = crypto.generateAesKey(256);
    const params = { name: "AES-KWP" };
    wrapped = crypto.wrapKey(key, wrappingKey, params);
    unwrapped = crypto.unwrapKey(wrapped, wrappingKey, params);
  } else if (algorithm === "RSA-OAEP" || algorithm === "RSA-OAEP-AES-KWP") {
    const pair = crypto.generateRsaKeyPair(2048);
    const params = algorithm === "RSA-OAEP" ? { name: algorithm } : { name: algorithm, aesKeySize: 256 };
    wrapped = crypto.wrapKey(key, string.encode(pair.publicKey), params);
    unwrapped = crypto.unwrapKey(wrapped, string.encode(pair.privateKey), params);
  } else {
    return invalid(`Unsupported wrapping algorithm: ${algorithm}`);
  }
  return {
    body: {
      algorithm,
      key_size: key.byteLength,
      wrapped_size: wrapped.byteLength,
      round_trip: equalBytes(key, unwrapped),
    },
  };
}

export function sign(request) {
  const body = objectBody(request);
  if (body === undefined || typeof body.message !== "string") {
    return invalid('Body must be {"message": string, "curve"?: string}');
  }
  const curve = body.curve === undefined ? "secp256r1" : body.curve;
  const hash = CURVE_HASHES[curve];
  if (hash === undefined) {
    return invalid(`Unsupported curve: ${curve}`);
  }
  const pair = crypto.generateEcdsaKeyPair(curve);
  const algorithm = { name: "ECDSA", hash };
  const signature = crypto.sign(algorithm, pair.privateKey, string.encode(body.message));
  const verified = crypto.verifySignature(algorithm, pair.publicKey, signature, string.encode(body.message));
  const tampered = crypto.verifySignature(algorithm, pair.publicKey, signature, string.encode(body.message + "!"));
  const jwk = crypto.pubPemToJwk(pair.publicKey, "signing-key");
  const again = crypto.pubPemToJwk(crypto.pubJwkToPem(jwk), "signing-key");
  return {
    body: {
      curve,
      public_key: pair.publicKey,
      jwk,
      signature: toHex(signature),
      verified,
      tampered_verified: tampered,
      jwk_round_trip: JSON.stringify(again) === JSON.stringify(jwk),
    },
  };
}

export function verify(request) {
  const body = objectBody(request);
  const signature = body === undefined ? undefined : fromHex(body.signature);
  if (body === undefined || typeof body.message !== "string" || signature === undefined) {
    return invalid('Body must be {"public_key": PEM or JWK, "message": string, "signature": hex, "hash"?: string}');
  }
  const hash = body.hash === undefined ? "SHA-256" : body.hash;
  if (!DIGESTS.includes(hash)) {
    return invalid(`Unsupported hash: ${hash}`);
  }
  let pem = body.public_key;
  if (pem !== null && typeof pem === "object") {
    pem = crypto.pubJwkToPem(pem);
  }
  if (typeof pem !== "string") {
    return invalid("public_key must be a PEM string or an EC JWK");
  }
  const valid = crypto.verifySignature({ name: "ECDSA", hash }, pem, signature, string.encode(body.message));
  return { body: { valid } };
}

// --- ccf.historical.getStateRange --------------------------------------------------------------------------

export function put_value(request) {
  const body = objectBody(request);
  if (
    body === undefined ||
    !Number.isSafeInteger(body.id) ||
    body.id < 0 ||
    typeof body.value !== "string"
  ) {
    return invalid('Body must be {"id": unsigned integer, "value": string}');
  }
  values().set(BigInt(body.id), body.value);
  return { body: true };
}

function seqnoParam(query, name) {
  const raw = query[name];
  return raw !== undefined && /^[0-9]{1,15}$/.test(raw) ? Number(raw) : undefined;
}

export function history(request) {
  const query = queryParams(request);
  const id = query.id !== undefined && /^[0-9]{1,19}$/.test(query.id) ? BigInt(query.id) : undefined;
  const from = seqnoParam(query, "from");
  const to = seqnoParam(query, "to");
  if (id === undefined || from === undefined || to === undefined) {
    return error(400, "InvalidQueryParameterValue", "Query parameters id, from and to must be unsigned integers");
  }
  if (from < 1 || to < from || to - from + 1 > MAX_HISTORY_SEQNOS) {
    return invalid(`Invalid range ${from}..${to}: seqnos start at 1, at most ${MAX_HISTORY_SEQNOS} per query`);
  }
  const view = ccf.consensus.getViewForSeqno(to);
  if (view === null || ccf.consensus.getStatusForTxId(view, to) !== "Committed") {
    return invalid(`Seqno ${to} is not committed`);
  }
  // One handle per query: asking again for the same range finds the fetch the first call started.
  const handle = new DataView(crypto.digest("SHA-256", string.encode(`history:${id}:${from}-${to}`))).getUint32(0);
  const states = getStateRange(handle, from, to, HISTORY_EXPIRY_SECONDS);
  if (states === null) {
    return { statusCode: 202, headers: { "retry-after": "1" }, body: { retry: true } };
  }
  const entries = [];
  for (const state of states) {
    const value = typedKv(state.kv[VALUES], uint64, string).get(id);
    if (value !== undefined) {
      entries.push({ seqno: Number(state.transactionId.split(".")[1]), value });
    }
  }
  return { body: { entries } };
}

// --- authentication ----------------------------------------------------------------------------------------

export function jwt_caller(request) {
  const caller = request.caller;
  return {
    body: {
      policy: caller.policy,
      issuer: caller.jwt.keyIssuer,
      sub: caller.jwt.payload.sub,
      kid: caller.jwt.header.kid,
    },
  };
}

export function whoami(request) {
  const caller = request.caller;
  const id = caller.policy === "jwt" ? caller.jwt.payload.sub : caller.id;
  return { body: { policy: caller.policy, id } };
}
