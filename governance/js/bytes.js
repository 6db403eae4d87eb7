// Helpers shared by the governance and application preludes: UTF-8 both ways (strict decoding), hex, latin-1
// strings (one character per byte, in which the host passes keys, values and bodies to the JavaScript), CCF's
// converters, and a Math.random that the host seeds (`__seed`), so every run of one call draws the same numbers.
"use strict";

function __utf8EncodeSlow(s) {
  const out = [];
  for (let i = 0; i < s.length; i++) {
    let c = s.charCodeAt(i);
    if (c >= 0xd800 && c < 0xdc00 && i + 1 < s.length) {
      const d = s.charCodeAt(i + 1);
      if (d >= 0xdc00 && d < 0xe000) { c = 0x10000 + ((c - 0xd800) << 10) + (d - 0xdc00); i++; }
    }
    if (c < 0x80) out.push(c);
    else if (c < 0x800) out.push(0xc0 | (c >> 6), 0x80 | (c & 63));
    else if (c < 0x10000) out.push(0xe0 | (c >> 12), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
    else out.push(0xf0 | (c >> 18), 0x80 | ((c >> 12) & 63), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
  }
  return new Uint8Array(out).buffer;
}

function __bytesOf(buf) {
  if (buf instanceof ArrayBuffer) return new Uint8Array(buf);
  if (ArrayBuffer.isView(buf)) return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
  throw new TypeError("Expected an ArrayBuffer");
}

// Strict UTF-8: invalid lead bytes, stray continuations and truncated sequences become one U+FFFD each (up to
// the first byte that breaks them); a complete sequence that is overlong, a surrogate or out of range becomes
// one U+FFFD. No byte sequence can decode to a character it does not properly encode.
function __utf8DecodeSlow(buf) {
  const b = __bytesOf(buf);
  let s = "";
  let i = 0;
  while (i < b.length) {
    const c = b[i];
    if (c < 0x80) { s += String.fromCharCode(c); i++; continue; }
    let need, cp, min;
    if (c >= 0xc2 && c <= 0xdf) { need = 1; cp = c & 0x1f; min = 0x80; }
    else if (c >= 0xe0 && c <= 0xef) { need = 2; cp = c & 0x0f; min = 0x800; }
    else if (c >= 0xf0 && c <= 0xf4) { need = 3; cp = c & 0x07; min = 0x10000; }
    else { s += "\ufffd"; i++; continue; }
    let j = 1;
    for (; j <= need; j++) {
      const d = b[i + j];
      if (d === undefined || (d & 0xc0) !== 0x80) break;
      cp = (cp << 6) | (d & 0x3f);
    }
    if (j <= need || cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
      s += "\ufffd";
      i += j <= need ? j : need + 1;
      continue;
    }
    s += String.fromCodePoint(cp);
    i += need + 1;
  }
  return s;
}

// Hex, base64 and latin-1 conversions go through the engine's native codecs (Uint8Array.fromHex / toHex /
// fromBase64 / toBase64, btoa / atob): a loop over the bytes costs about 0.1 us per byte in QuickJS, 70 times more.
function __hexToBuf(h) {
  return Uint8Array.fromHex(h).buffer;
}

function __bufToHex(buf) {
  return __bytesOf(buf).toHex();
}

function __latin1ToBufSlow(s) {
  const b = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) b[i] = s.charCodeAt(i);
  return b.buffer;
}

// Every character of `s` is below 256 when it comes from the host; anything else keeps its low byte, as before.
function __latin1ToBuf(s) {
  let base64;
  try {
    base64 = btoa(s);
  } catch (e) {
    return __latin1ToBufSlow(s);
  }
  return Uint8Array.fromBase64(base64).buffer;
}

function __bufToLatin1(buf) {
  return atob(__bytesOf(buf).toBase64());
}

// The fast paths: the engine's own UTF-8 codec (encodeURIComponent / decodeURIComponent, which refuse lone
// surrogates, overlong forms, encoded surrogates and truncated sequences), about five times faster in QuickJS than
// the loops above. What they refuse goes to the loops, so every input gets the same answer either way.
function __utf8Encode(s) {
  let bytes;
  try {
    bytes = unescape(encodeURIComponent(s));
  } catch (e) {
    return __utf8EncodeSlow(s);
  }
  return __latin1ToBuf(bytes);
}

function __utf8Decode(buf) {
  const bytes = __bufToLatin1(buf);
  try {
    return decodeURIComponent(escape(bytes));
  } catch (e) {
    return __utf8DecodeSlow(buf);
  }
}

// CCF's string and JSON converters, on `ccf` for governance code and applications alike.
const __CONVERTERS = {
  strToBuf: (s) => {
    if (typeof s !== "string") throw new TypeError("Argument must be a string");
    return __utf8Encode(s);
  },
  bufToStr: (b) => __utf8Decode(b),
  jsonCompatibleToBuf: (v) => __utf8Encode(JSON.stringify(v)),
  bufToJsonCompatible: (b) => JSON.parse(__utf8Decode(b)),
};

// xorshift32: deterministic for a given `__seed`, which each prelude sets per call or request
let __seed = 0x9e3779b9;
Math.random = () => {
  __seed ^= __seed << 13; __seed >>>= 0;
  __seed ^= __seed >>> 17;
  __seed ^= __seed << 5; __seed >>>= 0;
  return __seed / 4294967296;
};
