// `ccf.crypto` as CCF gives it to governance code and to applications (src/js/extensions/ccf/crypto.cpp): every
// call is a host call (`__hostCall`, defined by each prelude) answered between runs; bytes cross as latin-1 strings.
"use strict";

function __bufCall(name, args) {
  const v = __hostCall(name, args);
  return v === null ? new ArrayBuffer(0) : __latin1ToBuf(v);
}

const __opt = (v) => (v === undefined ? null : v);
const __bufOpt = (v) => (v === undefined || v === null ? null : __bufToLatin1(v));
function __wrapParams(p) {
  if (p === null || typeof p !== "object") throw new TypeError("wrapAlgo must be an object");
  const out = Object.assign({}, p);
  if (p.label !== undefined) out.label = __bufToLatin1(p.label);
  return out;
}

const __crypto = {
  sign: (algorithm, key, data) => __bufCall("sign", [algorithm, String(key), __bufToLatin1(data)]),
  verifySignature: (algorithm, key, signature, data) =>
    __hostCall("verifySignature", [algorithm, String(key), __bufToLatin1(signature), __bufToLatin1(data)]) === true,
  generateAesKey: (size) => __bufCall("generateAesKey", [size]),
  generateRsaKeyPair: (size, exponent) => __hostCall("generateRsaKeyPair", [size, __opt(exponent)]),
  generateEcdsaKeyPair: (curve) => __hostCall("generateEcdsaKeyPair", [String(curve)]),
  generateEddsaKeyPair: (curve) => __hostCall("generateEddsaKeyPair", [String(curve)]),
  wrapKey: (key, wrappingKey, params) =>
    __bufCall("wrapKey", [__bufToLatin1(key), __bufToLatin1(wrappingKey), __wrapParams(params)]),
  unwrapKey: (key, wrappingKey, params) =>
    __bufCall("unwrapKey", [__bufToLatin1(key), __bufToLatin1(wrappingKey), __wrapParams(params)]),
  digest: (algorithm, data) => __bufCall("digest", [algorithm, __bufToLatin1(data)]),
  isValidX509CertBundle: (pem) => __hostCall("isValidX509CertBundle", [String(pem)]) === true,
  isValidX509CertChain: (chain, trusted) =>
    __hostCall("isValidX509CertChain", [String(chain), String(trusted)]) === true,
  pubPemToJwk: (pem, kid) => __hostCall("pubPemToJwk", [String(pem), __opt(kid)]),
  pemToJwk: (pem, kid) => __hostCall("pemToJwk", [String(pem), __opt(kid)]),
  pubRsaPemToJwk: (pem, kid) => __hostCall("pubRsaPemToJwk", [String(pem), __opt(kid)]),
  rsaPemToJwk: (pem, kid) => __hostCall("rsaPemToJwk", [String(pem), __opt(kid)]),
  pubEddsaPemToJwk: (pem, kid) => __hostCall("pubEddsaPemToJwk", [String(pem), __opt(kid)]),
  eddsaPemToJwk: (pem, kid) => __hostCall("eddsaPemToJwk", [String(pem), __opt(kid)]),
  pubJwkToPem: (jwk) => __hostCall("pubJwkToPem", [jwk]),
  jwkToPem: (jwk) => __hostCall("jwkToPem", [jwk]),
  pubRsaJwkToPem: (jwk) => __hostCall("pubRsaJwkToPem", [jwk]),
  rsaJwkToPem: (jwk) => __hostCall("rsaJwkToPem", [jwk]),
  pubEddsaJwkToPem: (jwk) => __hostCall("pubEddsaJwkToPem", [jwk]),
  eddsaJwkToPem: (jwk) => __hostCall("eddsaJwkToPem", [jwk]),
};

// The host calls above: the governance prelude withholds them where CCF does (ballots, resolve).
const __CRYPTO_NAMES = new Set(["sign", "verifySignature", "generateAesKey", "generateRsaKeyPair",
  "generateEcdsaKeyPair", "generateEddsaKeyPair", "wrapKey", "unwrapKey", "digest", "isValidX509CertBundle",
  "isValidX509CertChain", "pubPemToJwk", "pemToJwk", "pubRsaPemToJwk", "rsaPemToJwk", "pubEddsaPemToJwk",
  "eddsaPemToJwk", "pubJwkToPem", "jwkToPem", "pubRsaJwkToPem", "rsaJwkToPem", "pubEddsaJwkToPem",
  "eddsaJwkToPem", "isValidX509RootCACert", "isValidRsaPublicKeyPem"]);
