// Request helpers shared by the logging endpoints: query parameters, JSON bodies and CCF's error responses.

// Ids are CCF size_t keys and seqnos are unsigned: both are read as BigInt to keep all 64 bits.
export const MAX_U64 = 2n ** 64n - 1n;

// A handler throws this to answer with CCF's error body: {"error": {"code", "message"}}.
export class ErrorResponse extends Error {
  constructor(statusCode, code, message) {
    super(message);
    this.statusCode = statusCode;
    this.code = code;
  }

  toResponse() {
    return {
      statusCode: this.statusCode,
      body: { error: { code: this.code, message: this.message } },
    };
  }
}

// Runs a handler, turning a thrown ErrorResponse into its response (anything else stays a 500).
export function answer(handler) {
  return function (request) {
    try {
      return handler(request);
    } catch (e) {
      if (e instanceof ErrorResponse) {
        return e.toResponse();
      }
      throw e;
    }
  };
}

function decodeComponent(raw) {
  try {
    return decodeURIComponent(raw.replace(/\+/g, " "));
  } catch (e) {
    return raw;
  }
}

// The query string as {name: first value}; like Python's parse_qs, parameters without a value are left out.
export function parseQuery(request) {
  const params = {};
  for (const part of (request.query || "").split("&")) {
    if (part === "") {
      continue;
    }
    const eq = part.indexOf("=");
    const name = decodeComponent(eq < 0 ? part : part.slice(0, eq));
    const value = eq < 0 ? "" : decodeComponent(part.slice(eq + 1));
    if (value !== "" && !(name in params)) {
      params[name] = value;
    }
  }
  return params;
}

// An optional unsigned 64-bit query parameter as a BigInt (undefined when absent).
export function uintParam(query, name) {
  const raw = query[name];
  if (raw === undefined) {
    return undefined;
  }
  if (!/^[0-9]+$/.test(raw) || BigInt(raw) > MAX_U64) {
    throw new ErrorResponse(
      400,
      "InvalidQueryParameterValue",
      `Query parameter '${name}' must be an unsigned 64-bit integer`,
    );
  }
  return BigInt(raw);
}

// The required ?id= of a record.
export function idParam(query) {
  const id = uintParam(query, "id");
  if (id === undefined) {
    throw new ErrorResponse(400, "InvalidQueryParameterValue", "Query parameter 'id' must be an unsigned integer");
  }
  return id;
}

// The request body as JSON, or 400 InvalidInput.
export function jsonBody(request) {
  try {
    return request.body.json();
  } catch (e) {
    throw new ErrorResponse(400, "InvalidInput", `Request body is not valid JSON: ${e.message}`);
  }
}
