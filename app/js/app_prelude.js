// The globals a CCF JavaScript application sees (the `ccf` object of @microsoft/ccf-app's global.d.ts), and the
// module loader of a linked bundle. QuickJS refuses calls into the host while a time limit is set, so a request
// runs as in the governance runtime: the host passes what the handler read so far (KV entries, answers to host
// calls) and the handler runs again whenever it asked for more. One run sees one consistent state; only the
// last, complete run's writes and response count. Keys, values and bodies cross as latin-1 strings.

// --- modules --------------------------------------------------------------------------------------------
const __ccfModules = {
  defs: Object.create(null),
  cache: Object.create(null),
  define(name, fn) { this.defs[name] = fn; },
  require(name, importer) {
    const cached = this.cache[name];
    if (cached !== undefined) return cached;
    const fn = this.defs[name];
    if (fn === undefined) {
      throw new Error(importer === undefined ? `module '${name}' not found` :
        `Could not find module '${name}' (imported by '${importer}')`);
    }
    const exports = Object.create(null);
    this.cache[name] = exports;
    fn.call(undefined, exports);
    return exports;
  },
  exportGetters(exports, getters) {
    for (const name of Object.keys(getters)) {
      Object.defineProperty(exports, name, { get: getters[name], enumerable: true, configurable: true });
    }
  },
  reexport(exports, mapping, source) {
    for (const name of Object.keys(mapping)) {
      const original = mapping[name];
      Object.defineProperty(exports, name, { get: original === null ? () => source : () => source[original],
        enumerable: true, configurable: true });
    }
  },
  reexportAll(exports, source) {
    for (const name of Object.keys(source)) {
      if (name !== "default" && !(name in exports)) {
        Object.defineProperty(exports, name, { get: () => source[name], enumerable: true, configurable: true });
      }
    }
  },
};

// --- the state of one run ---------------------------------------------------------------------------------
// loaded[map][key] = value or null (absent); versions[map][key] = version of the key's last write (0: none);
// full[map]: every entry of the map is in loaded; writes[map][key] = value or null (deleted); cleared[map]: the
// handler cleared the map (entries not in writes are gone). missing: what the host must load for the next run.
let __run = null;

function __newRun(env) {
  return {
    env, loaded: env.loaded, versions: env.versions, full: env.full, answers: env.answers,
    missing: [], missingKeys: null, writes: Object.create(null), cleared: Object.create(null),
    calls: 0, requests: [], claims: null, applyWrites: false, logs: [], writable: env.mode === "readwrite",
  };
}

function __needKey(map, key) {
  const id = key === null ? "*" + map : map.length + ":" + map + key;  // unambiguous, cheaper than JSON
  if (__run.missingKeys === null) __run.missingKeys = new Set();
  if (!__run.missingKeys.has(id)) { __run.missingKeys.add(id); __run.missing.push([map, key]); }
}

// CCF's rules for application code: its own maps (private or public) read-write; the governance and internal
// maps readable only; every map read-only in a read-only endpoint.
function __fixedAccess(name) {
  if (name.startsWith("public:ccf.gov.") || name.startsWith("public:ccf.internal.")) return "read";
  if (name.startsWith("ccf.internal.") || name.startsWith("ccf.gov.")) return "none";
  return null;  // the application's own map
}

function __access(name) {
  const fixed = __fixedAccess(name);
  return fixed !== null ? fixed : __run.writable ? "readwrite" : "read";
}

class __TxMap {
  constructor(name) {
    this.name = name;
    this.appMap = __fixedAccess(name) === null;
  }
  __check(method, write) {
    if (this.appMap && (!write || __run.writable)) return;
    const access = __access(this.name);
    if (access === "none" || (write && access !== "readwrite")) {
      throw new TypeError(`Cannot call "${method}" on table named ${this.name}. This table is ${access === "none" ?
        "inaccessible" : "read-only"} in current (${__run.writable ? "application" : "read-only application"}) ` +
        "execution context. See https://microsoft.github.io/CCF/main/audit/read_write_restrictions.html for " +
        "more detail.");
    }
  }
  __base(k) {
    const w = __run.writes[this.name];
    if (w !== undefined && k in w) return w[k];
    if (__run.cleared[this.name]) return null;
    const m = __run.loaded[this.name];
    if (m !== undefined && k in m) return m[k];
    if (__run.full[this.name]) return null;
    __needKey(this.name, k);
    return null;
  }
  __keys() {
    const keys = new Set();
    if (!__run.cleared[this.name]) {
      if (!__run.full[this.name]) { __needKey(this.name, null); return []; }
      const m = __run.loaded[this.name] || {};
      for (const k of Object.keys(m)) if (m[k] !== null) keys.add(k);
    }
    const w = __run.writes[this.name] || {};
    for (const k of Object.keys(w)) { if (w[k] === null) keys.delete(k); else keys.add(k); }
    return [...keys];
  }
  __write(method, k, v) {
    this.__check(method, true);
    if (__run.writes[this.name] === undefined) __run.writes[this.name] = Object.create(null);
    __run.writes[this.name][k] = v;
  }
  has(key) { this.__check("has", false); return this.__base(__bufToLatin1(key)) !== null; }
  get(key) {
    this.__check("get", false);
    const v = this.__base(__bufToLatin1(key));
    return v === null ? undefined : __latin1ToBuf(v);
  }
  getVersionOfPreviousWrite(key) {
    this.__check("getVersionOfPreviousWrite", false);
    const k = __bufToLatin1(key);
    const versions = __run.versions[this.name];
    if (versions !== undefined && k in versions) return versions[k] ? versions[k] : undefined;
    if (!__run.full[this.name]) __needKey(this.name, k);
    return undefined;
  }
  set(key, value) { this.__write("set", __bufToLatin1(key), __bufToLatin1(value)); return this; }
  delete(key) { this.__write("delete", __bufToLatin1(key), null); }
  clear() {
    this.__check("clear", true);
    __run.cleared[this.name] = true;
    __run.writes[this.name] = Object.create(null);
  }
  forEach(callback) {
    this.__check("forEach", false);
    for (const k of this.__keys()) callback(__latin1ToBuf(this.__base(k)), __latin1ToBuf(k), this);
  }
  get size() { this.__check("size", false); return this.__keys().length; }
}

// A historical state's maps: the writes of one transaction, read-only.
class __StateMap {
  constructor(name, writes) { this.name = name; this.entries = writes[name] || {}; }
  __refuse() {
    throw new TypeError(`Cannot write to table named ${this.name}. All tables are read-only during historical ` +
      "transaction.");
  }
  has(key) { const v = this.entries[__bufToLatin1(key)]; return v !== undefined && v !== null; }
  get(key) { const v = this.entries[__bufToLatin1(key)]; return v === undefined || v === null ? undefined :
    __latin1ToBuf(v); }
  getVersionOfPreviousWrite(_key) { return undefined; }
  set() { this.__refuse(); }
  delete() { this.__refuse(); }
  clear() { this.__refuse(); }
  forEach(callback) {
    for (const k of Object.keys(this.entries)) {
      if (this.entries[k] !== null) callback(__latin1ToBuf(this.entries[k]), __latin1ToBuf(k), this);
    }
  }
  get size() { return Object.keys(this.entries).filter((k) => this.entries[k] !== null).length; }
}

function __mapsOf(make) {
  const maps = Object.create(null);
  return new Proxy({}, {
    get(_target, name) {
      if (typeof name !== "string") return undefined;
      if (maps[name] === undefined) maps[name] = make(name);
      return maps[name];
    },
  });
}

function __historicalState(state) {
  return { transactionId: state.transactionId, receipt: state.receipt,
    kv: __mapsOf((name) => new __StateMap(name, state.writes)) };
}

// ccf.historicalState: one object whose members are those of the current request's state, because modules
// (@microsoft/ccf-app's historical.js among them) keep a reference to it when they are first evaluated, and
// this interpreter evaluates them once, not once per request.
let __currentState = null;
function __stateMember(name) {
  if (__currentState === null) throw new Error("ccf.historicalState is only set in a historical endpoint");
  return __currentState[name];
}
const __historicalStateView = Object.freeze({
  get transactionId() { return __stateMember("transactionId"); },
  get receipt() { return __stateMember("receipt"); },
  get kv() { return __stateMember("kv"); },
});

// --- host calls ---------------------------------------------------------------------------------------------
// Answered between runs, keyed by their place in the run and their arguments: a run that calls the host again
// with the same arguments at the same point gets the same answer (random keys included), so every run of one
// request takes the same path. An unanswered call returns null; the host answers it and runs the handler again.
function __hostCall(name, args) {
  const key = JSON.stringify([__run.calls++, name, args]);
  const answer = __run.answers[key];
  if (answer !== undefined) {
    if (answer.error !== undefined) throw new Error(answer.error);
    return answer.value;
  }
  __run.requests.push({ key, name, args });
  return null;
}

let __untrustedTime = false;
let __metricsLogging = true;
globalThis.ccf = {
  ...__CONVERTERS,
  crypto: __crypto,
  // the older top-level names, kept by CCF next to ccf.crypto
  generateAesKey: __crypto.generateAesKey,
  generateRsaKeyPair: __crypto.generateRsaKeyPair,
  generateEcdsaKeyPair: __crypto.generateEcdsaKeyPair,
  wrapKey: __crypto.wrapKey,
  digest: __crypto.digest,
  isValidX509CertBundle: __crypto.isValidX509CertBundle,
  isValidX509CertChain: __crypto.isValidX509CertChain,
  rpc: {
    setApplyWrites: (force) => { __run.applyWrites = Boolean(force); },
    setClaimsDigest: (digest) => {
      const b = __bytesOf(digest);
      if (b.length !== 32) throw new TypeError(`claims digest must be 32 bytes, not ${b.length}`);
      __run.claims = __bufToLatin1(digest);
    },
  },
  consensus: {
    getLastCommittedTxId: () => Object.assign({}, __run.env.committed),
    getStatusForTxId: (view, seqno) => __hostCall("getStatusForTxId", [view, seqno]),
    getViewForSeqno: (seqno) => __hostCall("getViewForSeqno", [seqno]),
  },
  historical: {
    getStateRange: (handle, startSeqno, endSeqno, secondsUntilExpiry) => {
      const states = __hostCall("getStateRange", [handle, startSeqno, endSeqno, secondsUntilExpiry]);
      return states === null ? null : states.map(__historicalState);
    },
    dropCachedStates: (handle) => __hostCall("dropCachedStates", [handle]) === true,
  },
  kv: __mapsOf((name) => new __TxMap(name)),
  historicalState: __historicalStateView,
  pemToId: (pem) => { const id = __hostCall("pemToId", [String(pem)]); return id === null ? "" : id; },
  host: {
    triggerSubprocess: () => { throw new Error("ccf.host.triggerSubprocess is not supported by this service"); },
  },
  enableUntrustedDateTime: (enable) => { const previous = __untrustedTime; __untrustedTime = Boolean(enable);
    return previous; },
  enableMetricsLogging: (enable) => { const previous = __metricsLogging; __metricsLogging = Boolean(enable);
    return previous; },
};
globalThis.snp_attestation = {
  verifySnpAttestation: () => { throw new Error("SNP attestation cannot be verified by a node in virtual mode"); },
};

// Time is the epoch unless the app turns untrusted time on (CCF's default); then it is the host's time when the
// request arrived, the same in every run of the request.
const __RealDate = Date;
function __Date(...args) {
  const now = __untrustedTime && __run !== null ? __run.env.now_ms : 0;
  if (new.target === undefined) return new __RealDate(now).toString();
  return args.length === 0 ? new __RealDate(now) : new __RealDate(...args);
}
__Date.prototype = __RealDate.prototype;
__Date.now = () => (__untrustedTime && __run !== null ? __run.env.now_ms : 0);
__Date.UTC = __RealDate.UTC;
__Date.parse = __RealDate.parse;
globalThis.Date = __Date;
// Math.random (js/bytes.js) is seeded by the host per request: every run of a request draws the same numbers.
globalThis.console = Object.fromEntries(["log", "info", "warn", "error", "debug"].map((level) => [level,
  (...parts) => {
    if (__run !== null && __run.logs.length < 100) {
      __run.logs.push(`${level}: ${parts.map((p) => (typeof p === "string" ? p : JSON.stringify(p))).join(" ")}`);
    }
  }]));

// --- one run of a handler -------------------------------------------------------------------------------------
function __request(env) {
  const r = env.request;
  let text = null;
  const body = {
    // body_text: the body when it is UTF-8 (then body, its bytes as latin-1, is null, and is not sent)
    text: () => { if (text === null) text = r.body_text !== null ? r.body_text : __utf8Decode(__latin1ToBuf(
      r.body)); return text; },
    json: () => JSON.parse(body.text()),
    arrayBuffer: () => (r.body !== null ? __latin1ToBuf(r.body) : __utf8Encode(r.body_text)),
  };
  const request = { headers: r.headers, params: r.params, query: r.query, url: r.url, path: r.path,
    route: r.route, method: r.method, hostname: r.hostname, body };
  request.caller = r.caller;  // null when the endpoint names no authentication policy
  return request;
}

// CCF's conversion of a handler's return value (src/apps/js_generic/js_generic_base.cpp): an object with optional
// statusCode (default 200), headers and body (ArrayBuffer or view: bytes; string: text; anything else: JSON).
class __InvalidReturn extends Error {}
function __response(result) {
  if (result === null || typeof result !== "object") {
    throw new __InvalidReturn("Invalid endpoint function return value (not an object).");
  }
  const headers = {};
  if (result.headers !== undefined && result.headers !== null) {
    if (typeof result.headers !== "object") {
      throw new __InvalidReturn("Invalid endpoint function return value (header type).");
    }
    for (const [k, v] of Object.entries(result.headers)) headers[String(k).toLowerCase()] = String(v);
  }
  let status = result.statusCode;
  if (status === undefined || status === null) status = 200;
  else if (typeof status !== "number" || !Number.isInteger(status)) {
    throw new __InvalidReturn("Invalid endpoint function return value (status code type).");
  }
  const b = result.body;
  if (b === undefined) return { status, headers, kind: "none", body: "" };
  if (b instanceof ArrayBuffer || ArrayBuffer.isView(b)) {
    return { status, headers, kind: "bytes", body: __bufToLatin1(b) };
  }
  if (typeof b === "string") return { status, headers, kind: "text", body: b };
  let json;
  try {
    json = JSON.stringify(b);
  } catch (e) {
    throw new __InvalidReturn("Invalid endpoint function return value (error during JSON conversion of body).");
  }
  return { status, headers, kind: "json", body: json };
}

// A request: __ccfBegin with what stays the same in every run (the request, the seed, the time, the historical
// state), then __ccfRun once per run with what the host loaded and answered since the previous run.
let __env = null;
globalThis.__ccfBegin = function (envJson, bodyText, bodyLatin1, callerCert) {
  __env = JSON.parse(envJson);
  __env.request.body_text = bodyText;
  __env.request.body = bodyLatin1;
  if (callerCert !== null) __env.request.caller.cert = callerCert;
  __env.loaded = Object.create(null);
  __env.versions = Object.create(null);
  __env.full = Object.create(null);
  __env.answers = Object.create(null);
  __env.historicalState = __env.historical !== null ? __historicalState(__env.historical) : null;
  const caller = __env.request.caller;
  if (caller !== null && (caller.policy === "user_cose_sign1" || Array.isArray(caller.policy))) {
    for (const identity of [caller, ...Object.values(caller)]) {  // COSE payloads arrive as latin-1 strings
      if (identity && identity.cose && typeof identity.cose.content === "string") {
        identity.cose.content = __latin1ToBuf(identity.cose.content);
      }
    }
  }
};

function __merge(into, from) {
  for (const name of Object.keys(from)) {
    if (into[name] === undefined) into[name] = Object.create(null);
    Object.assign(into[name], from[name]);
  }
}

// The first run of a request, in the same call as __ccfBegin (one call fewer per request).
globalThis.__ccfBeginRun = function (envJson, bodyText, bodyLatin1, callerCert) {
  __ccfBegin(envJson, bodyText, bodyLatin1, callerCert);
  return __runHandler(__env);
};

globalThis.__ccfRun = function (deltaJson) {
  const env = __env;
  const delta = JSON.parse(deltaJson);
  __merge(env.loaded, delta.loaded);
  __merge(env.versions, delta.versions);
  Object.assign(env.full, delta.full);
  Object.assign(env.answers, delta.answers);
  return __runHandler(env);
};

// A later run of a request, begun again with everything loaded and answered since the first: a worker process
// serves other requests between the runs of one, so it keeps nothing of a request between calls.
globalThis.__ccfBeginRunWith = function (envJson, bodyText, bodyLatin1, callerCert, deltaJson) {
  __ccfBegin(envJson, bodyText, bodyLatin1, callerCert);
  return __ccfRun(deltaJson);
};

function __runHandler(env) {
  __run = __newRun(env);
  __seed = env.seed;
  __untrustedTime = false;
  __currentState = env.historicalState;
  const outcome = { ok: false };
  try {
    const fn = __ccfModules.require(env.module)[env.function];
    if (typeof fn !== "function") {
      throw new TypeError(`Export '${env.function}' of module '${env.module}' is not a function`);
    }
    const result = fn(__request(env));
    try {
      outcome.response = __response(result);
      outcome.ok = true;
    } catch (e) {
      if (!(e instanceof __InvalidReturn)) throw e;
      outcome.invalidReturn = e.message;
    }
  } catch (e) {
    outcome.error = e instanceof Error ? String(e) : JSON.stringify(e);
    outcome.trace = (e && e.stack) || null;
  }
  // Members left at their defaults are left out: JSON.stringify costs QuickJS about 0.5 us per member.
  if (__run.missing.length > 0) outcome.missing = __run.missing;
  if (__run.requests.length > 0) outcome.requests = __run.requests;
  outcome.writes = __run.writes;
  const cleared = Object.keys(__run.cleared);
  if (cleared.length > 0) outcome.cleared = cleared;
  if (__run.claims !== null) outcome.claims = __run.claims;
  if (__run.applyWrites) outcome.applyWrites = true;
  if (__run.logs.length > 0) outcome.logs = __run.logs;
  __run = null;
  return JSON.stringify(outcome);
}
