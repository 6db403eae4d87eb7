// The `ccf` globals a constitution or ballot sees, as CCF provides them to governance code, over a snapshot of the KV the host
// passes in. Keys and values are ArrayBuffers, as in CCF. Maps are loaded on demand: reading a map the host
// did not pass records it in __kv.missing and reads it as empty; the host then runs the call again with that
// map loaded (execution is deterministic, so the second run takes the same path up to that point).
"use strict";

const __kv = { maps: {}, versions: {}, missing: [], writes: {}, writable: false, failedWrite: null, crypto: true };
// Effects on the node (ccf.node.*) are recorded here and carried out by the node after the transaction
// commits; __host holds the values the host provides (e.g. the latest ledger secret's seqno).
const __effects = [];
let __host = {};
// Host calls (crypto, certificates): answered by the host between runs, like map loads. An unanswered call
// is recorded and returns null; the host computes the answers and runs the call again.
let __answers = {};
const __requests = [];

// Answers are keyed by the call's place in the run and its arguments: every run of one call takes the same path,
// so a call asked for again gets the answer it had (a generated key included), and two calls two answers.
let __calls = 0;
function __hostCall(name, args) {
  if (!__kv.crypto && __CRYPTO_NAMES.has(name)) {
    throw new Error(`ccf.crypto.${name} is only available in validate and apply`);
  }
  const key = JSON.stringify([__calls++, name, args]);
  if (Object.prototype.hasOwnProperty.call(__answers, key)) {
    const answer = __answers[key];
    if (answer.error !== undefined) throw new Error(answer.error);
    return answer.value;
  }
  if (!__requests.some((r) => r.key === key)) __requests.push({ key, name, args });
  return null;
}


// CCF's permissions for governance code: private maps are inaccessible, internal maps read-only,
// governance maps read-write in apply and read-only elsewhere, public application maps write-only in apply
// and read-only elsewhere.
function __access(name) {
  if (!name.startsWith("public:")) return "none";
  if (name.startsWith("public:ccf.internal.")) return "read";
  if (name.startsWith("public:ccf.gov.")) return __kv.writable ? "readwrite" : "read";
  return __kv.writable ? "write" : "read";
}

class __KVMap {
  constructor(name) { this.name = name; this.access = __access(name); }
  __readable() { return this.access === "read" || this.access === "readwrite"; }
  __base() {
    if (!this.__readable()) {
      throw new Error(`Cannot read from ${this.name}: this table is ${this.access === "none" ? "inaccessible" :
        "write-only"} in the current (governance) execution context`);
    }
    const m = __kv.maps[this.name];
    if (m === undefined) {
      if (!__kv.missing.includes(this.name)) __kv.missing.push(this.name);
      return {};
    }
    return m;
  }
  __overlay() { return __kv.writes[this.name]; }
  __get(kh) {
    const w = this.__overlay();
    if (w !== undefined && Object.prototype.hasOwnProperty.call(w, kh)) return w[kh];
    const base = this.__base();
    return Object.prototype.hasOwnProperty.call(base, kh) ? base[kh] : null;
  }
  __write(kh, vh) {
    if (this.access !== "write" && this.access !== "readwrite") {
      const why = this.access === "none" ? "inaccessible" : "read-only";
      const e = new Error(`Cannot write to map ${this.name}: this table is ${why} in the current (governance) ` +
        "execution context");
      __kv.failedWrite = e.message;
      throw e;
    }
    if (__kv.writes[this.name] === undefined) __kv.writes[this.name] = {};
    __kv.writes[this.name][kh] = vh;
  }
  __keys() {
    const keys = new Set(Object.keys(this.__base()));
    const w = this.__overlay();
    if (w !== undefined) for (const k of Object.keys(w)) keys.add(k);
    return [...keys].filter((k) => this.__get(k) !== null).sort();
  }
  get(key) { const v = this.__get(__bufToHex(key)); return v === null ? undefined : __hexToBuf(v); }
  has(key) { return this.__get(__bufToHex(key)) !== null; }
  set(key, value) { this.__write(__bufToHex(key), value === undefined ? "" : __bufToHex(value)); return this; }
  delete(key) {
    const kh = __bufToHex(key);
    const had = this.__readable() ? this.__get(kh) !== null : undefined;
    this.__write(kh, null);
    return had;
  }
  clear() { for (const k of this.__keys()) this.__write(k, null); }
  forEach(callback) { for (const k of this.__keys()) callback(__hexToBuf(this.__get(k)), __hexToBuf(k), this); }
  get size() { return this.__keys().length; }
  getVersionOfPreviousWrite(key) {
    this.__base();  // a read: access checks, and the map is loaded if it was not
    const versions = __kv.versions[this.name] || {};
    const v = versions[__bufToHex(key)];
    return v === undefined ? undefined : v;
  }
}

const __maps = {};
let __metricsLogging = true;
globalThis.ccf = {
  kv: new Proxy({}, {
    get(_target, name) {
      if (typeof name !== "string") return undefined;
      if (__maps[name] === undefined) __maps[name] = new __KVMap(name);
      return __maps[name];
    },
  }),
  ...__CONVERTERS,
  // Governance time stays the epoch, so every node decides the same: the previous setting (off) is returned.
  enableUntrustedDateTime: () => false,
  enableMetricsLogging: (enable) => { const previous = __metricsLogging; __metricsLogging = Boolean(enable);
    return previous; },
  node: {
    triggerLedgerRekey: () => __effect("trigger_ledger_rekey", {}),
    transitionServiceToOpen: (previousIdentity, nextIdentity) =>
      __effect("transition_service_to_open", { previous_identity: previousIdentity === undefined ? null :
        __bufToHex(previousIdentity), next_identity: nextIdentity === undefined ? null : __bufToHex(nextIdentity) }),
    triggerRecoverySharesRefresh: () => __effect("trigger_recovery_shares_refresh", {}),
    triggerLedgerChunk: () => __effect("trigger_ledger_chunk", {}),
    triggerSnapshot: () => __effect("trigger_snapshot", {}),
  },
  network: {
    getLatestLedgerSecretSeqno: () => __hostValue("latest_ledger_secret_seqno"),
    generateEndorsedCertificate: (csr, validFrom, validityPeriodDays) =>
      __hostCall("generateEndorsedCertificate", [csr, validFrom, validityPeriodDays]),
    generateNetworkCertificate: (validFrom, validityPeriodDays) =>
      __hostCall("generateNetworkCertificate", [validFrom, validityPeriodDays]),
  },
  // CCF's crypto extension (js/crypto.js), plus the checks CCF adds for constitutions
  crypto: Object.assign({}, __crypto, {
    isValidX509RootCACert: (pem) => __hostCall("isValidX509RootCACert", [String(pem)]) === true,
    isValidRsaPublicKeyPem: (pem) => __hostCall("isValidRsaPublicKeyPem", [String(pem)]) === true,
  }),
  setJwtPublicSigningKeys: (issuer, metadata, jwks) => __setJwtKeys(issuer, jwks),
  removeJwtPublicSigningKeys: (issuer) => __removeJwtKeys(issuer),
  refreshAppBytecodeCache: () => __effect("refresh_app_bytecode_cache", {}),
  pemToId: (pem) => {
    const id = __hostCall("pemToId", [String(pem)]);
    return id === null ? "" : id;
  },
};

// CCF still gives the older top-level names next to ccf.crypto (deprecated there, used by older constitutions).
for (const name of ["digest", "isValidX509CertBundle", "isValidX509CertChain", "generateAesKey", "generateRsaKeyPair",
  "generateEcdsaKeyPair", "wrapKey"]) {
  ccf[name] = ccf.crypto[name];
}

function __effect(name, args) {
  if (!__kv.writable) throw new Error(`ccf.node effects are only available in apply()`);
  __effects.push({ name, args });
}

function __hostValue(name) {
  if (!(name in __host)) throw new Error(`${name} is not available here`);
  return __host[name];
}

// Deterministic execution: a call is re-run when it asks for maps or host answers, and every run must take
// the same path. Time is the epoch (as CCF's governance sees it with untrusted time off), Math.random is a
// PRNG seeded by the host from the call itself, and console output is kept, not printed.
const __RealDate = Date;
function __FixedDate(...args) {
  if (new.target === undefined) return new __RealDate(0).toString();
  return args.length === 0 ? new __RealDate(0) : new __RealDate(...args);
}
__FixedDate.prototype = __RealDate.prototype;
__FixedDate.now = () => 0;
__FixedDate.UTC = __RealDate.UTC;
__FixedDate.parse = __RealDate.parse;
globalThis.Date = __FixedDate;
delete globalThis.performance;
const __logs = [];
globalThis.console = Object.fromEntries(["log", "info", "warn", "error", "debug"].map((level) =>
  [level, (...parts) => { if (__logs.length < 100) __logs.push(`${level}: ${parts.map(String).join(" ")}`); }]));

globalThis.__call = function (exports, name, args) {
  const f = exports[name];
  if (typeof f !== "function") return { ok: false, error: `the module exports no function ${name}`, trace: null };
  try {
    const result = f(...args);
    const kind = typeof result;
    return { ok: true, result: result === undefined || kind === "function" || kind === "symbol" ? null : result };
  } catch (e) {
    const message = e instanceof Error ? `${e.name}: ${e.message}` : String(e);
    return { ok: false, error: message, trace: (e && e.stack) || null };
  }
};

// JWT signing keys, by kid: [{issuer, jwk}] (ccf.setJwtPublicSigningKeys / removeJwtPublicSigningKeys).
const __JWT_KEYS = "public:ccf.gov.jwt.public_signing_keys_metadata_v2";

function __removeJwtKeys(issuer) {
  const map = ccf.kv[__JWT_KEYS];
  const updates = [];
  map.forEach((v, k) => updates.push([k, ccf.bufToJsonCompatible(v).filter((entry) => entry.issuer !== issuer)]));
  for (const [k, kept] of updates) {
    if (kept.length === 0) map.delete(k);
    else map.set(k, ccf.jsonCompatibleToBuf(kept));
  }
}

function __setJwtKeys(issuer, jwks) {
  __removeJwtKeys(issuer);
  const map = ccf.kv[__JWT_KEYS];
  for (const jwk of jwks.keys) {
    const key = ccf.strToBuf(jwk.kid);
    const current = map.has(key) ? ccf.bufToJsonCompatible(map.get(key)) : [];
    current.push({ issuer, jwk });
    map.set(key, ccf.jsonCompatibleToBuf(current));
  }
}
