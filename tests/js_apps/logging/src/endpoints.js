// The logging app (app/logging.py, after CCF's logging sample) as a CCF JavaScript application.
//
// Every endpoint takes the user_cert policy. Records live in the maps "records" (private, encrypted in the
// ledger) and "public:records"; keys are CCF's size_t encoding of the id (8 bytes little-endian), values the
// message's UTF-8 bytes, so a ledger written by this app reads as one written by app/logging.py. Each write
// also keeps "first_write_version" / "public:first_write_version" (id -> seqno of the id's first write, as an
// int64 little-endian, recorded by the id's next write), from which the range queries start by default.
//
// {scope} is "private" (map "records") or "public" (map "public:records").
//
//   POST   /log/{scope}                         readwrite   {"id": uint, "msg": string, "record_claim"?: bool}
//          -> true. 400 InvalidInput for a malformed body or "Cannot record an empty log message.";
//          record_claim: true sets the transaction's claims digest to SHA-256(msg).
//   GET    /log/{scope}?id=N                    readonly    -> {"msg"}; 400 ResourceNotFound "No such record: N."
//   DELETE /log/{scope}?id=N                    readwrite   -> whether there was a record
//   DELETE /log/{scope}/all                     readwrite   -> true, every record removed
//   GET    /log/{scope}/count                   readonly    -> the number of records
//   GET    /log/{scope}/historical?id=N         historical  (header x-ms-ccf-transaction-id: the runtime checks
//          it and fetches that transaction, answering 400/404/202 itself) -> {"msg"} as that transaction wrote
//          it; 204 if that transaction did not write the key (or removed it).
//   GET    /log/{scope}/historical_receipt?id=N historical  -> {"msg", "receipt"}; the public variant drops
//          receipt.leaf_components.claims_digest, so a verifier recomputes it as SHA-256(msg).
//   GET    /log/{scope}/historical/range?id=N[&from_seqno=&to_seqno=]   readonly (ccf.historical.getStateRange)
//          -> {"entries": [{"seqno", "id", "msg"}], "@nextLink"?}: the writes of key N in
//          from..min(to, from + 10000); while the range goes on, "@nextLink" names the next page (prefetched).
//          Defaults: from = the id's first write, to = its last write (the commit point if it is deleted now);
//          {"entries": []} for an id never written. 400 InvalidInput if to < from or to is not committed;
//          202 (retry-after: 3, text body) while the node fetches the range.
//
// Query parameter errors are 400 InvalidQueryParameterValue. Deviations from app/logging.py: ids in a POST body
// are JSON numbers, so only ids up to 2^53 - 1 are accepted there (query parameters take all 64 bits); there is
// no /log/private/historical/sparse nor /log/public/cose_receipt (the JS API offers neither).

import { ccf } from "@microsoft/ccf-app/global.js";
import { typedKv } from "@microsoft/ccf-app/kv.js";
import { int64, string, uint64 } from "@microsoft/ccf-app/converters.js";
import { setClaimsDigest } from "@microsoft/ccf-app/endpoints.js";
import { digest } from "@microsoft/ccf-app/crypto.js";
import { getStateRange, dropCachedStates } from "@microsoft/ccf-app/historical.js";
import { ErrorResponse, answer, idParam, jsonBody, parseQuery, uintParam } from "./request.js";

const PRIVATE = "records";
const PUBLIC = "public:records";
const FIRST_WRITES = { [PRIVATE]: "first_write_version", [PUBLIC]: "public:first_write_version" };
const RANGE_PAGE = 10000; // a page is from..from + RANGE_PAGE (inclusive), as app/logging.py
const RANGE_EXPIRY_SECONDS = 1800;
const RETRY_AFTER_SECONDS = "3";

// Typed views of a map (of the current transaction, or of a historical state's kv).
function recordsOf(kv, table) {
  return typedKv(kv[table], uint64, string);
}

function firstWritesOf(table) {
  return typedKv(ccf.kv[FIRST_WRITES[table]], uint64, int64);
}

// CCF's update_first_write: a key's first write is only known (as a version) to the key's next write.
function updateFirstWrite(table, id) {
  const firstWrites = firstWritesOf(table);
  if (!firstWrites.has(id)) {
    const previous = recordsOf(ccf.kv, table).getVersionOfPreviousWrite(id);
    if (previous) {
      firstWrites.set(id, BigInt(previous));
    }
  }
}

function record(table) {
  return answer(function (request) {
    const body = jsonBody(request);
    const isObject = body !== null && typeof body === "object" && !Array.isArray(body);
    const id = isObject ? body.id : undefined;
    if (!Number.isSafeInteger(id) || id < 0) {
      throw new ErrorResponse(400, "InvalidInput", 'Body must be {"id": unsigned integer, "msg": string}');
    }
    const msg = body.msg;
    if (typeof msg !== "string" || msg.length === 0) {
      throw new ErrorResponse(400, "InvalidInput", "Cannot record an empty log message.");
    }
    const key = BigInt(id);
    recordsOf(ccf.kv, table).set(key, msg);
    updateFirstWrite(table, key);
    if (body.record_claim === true) {
      setClaimsDigest(digest("SHA-256", string.encode(msg)));
    }
    return { body: true };
  });
}

function read(table) {
  return answer(function (request) {
    const id = idParam(parseQuery(request));
    const msg = recordsOf(ccf.kv, table).get(id);
    if (msg === undefined) {
      throw new ErrorResponse(400, "ResourceNotFound", `No such record: ${id}.`);
    }
    return { body: { msg } };
  });
}

function remove(table) {
  return answer(function (request) {
    const id = idParam(parseQuery(request));
    const records = recordsOf(ccf.kv, table);
    const existed = records.has(id);
    records.delete(id);
    updateFirstWrite(table, id);
    return { body: existed };
  });
}

function removeAll(table) {
  return answer(function () {
    const records = recordsOf(ccf.kv, table);
    const ids = [];
    records.forEach((_, id) => ids.push(id));
    for (const id of ids) {
      updateFirstWrite(table, id);
    }
    records.clear();
    return { body: true };
  });
}

function count(table) {
  return answer(function () {
    return { body: recordsOf(ccf.kv, table).size };
  });
}

// --- historical --------------------------------------------------------------------------------------------

function historical(table, withReceipt) {
  return answer(function (request) {
    const state = ccf.historicalState;
    const id = idParam(parseQuery(request));
    const msg = recordsOf(state.kv, table).get(id);
    if (msg === undefined) {
      return { statusCode: 204 };
    }
    if (!withReceipt) {
      return { body: { msg } };
    }
    const receipt = JSON.parse(JSON.stringify(state.receipt));
    if (table === PUBLIC && receipt.leaf_components) {
      // msg is the claim: a verifier recomputes the claims digest from it.
      delete receipt.leaf_components.claims_digest;
    }
    return { body: { msg, receipt } };
  });
}

// The default start of a range: the id's first write, else its only write; undefined if never written.
function defaultFrom(table, id) {
  const first = firstWritesOf(table).get(id);
  if (first !== undefined) {
    return Number(first);
  }
  return recordsOf(ccf.kv, table).getVersionOfPreviousWrite(id) || undefined;
}

function checkCommitted(seqno) {
  const view = ccf.consensus.getViewForSeqno(seqno);
  const txView = view === null ? ccf.consensus.getLastCommittedTxId().view : view;
  const status = ccf.consensus.getStatusForTxId(txView, seqno);
  if (status !== "Committed") {
    throw new ErrorResponse(
      400,
      "InvalidInput",
      `Only committed transactions can be queried. Transaction ${txView}.${seqno} is ${status}`,
    );
  }
}

// A deterministic handle per (table, page, id), so that a retry finds the fetch it started.
function rangeHandle(table, begin, end, id) {
  const hash = digest("SHA-256", string.encode(`${table}:${begin}-${end}:${id}`));
  return new DataView(hash).getUint32(0, true);
}

function historicalRange(table, path) {
  return answer(function (request) {
    const query = parseQuery(request);
    const id = idParam(query);
    const fromParam = uintParam(query, "from_seqno");
    const toParam = uintParam(query, "to_seqno");
    let from = fromParam === undefined ? undefined : Number(fromParam);
    if (from === undefined) {
      from = defaultFrom(table, id);
      if (from === undefined) {
        return { body: { entries: [] } };
      }
    }
    let to = toParam === undefined ? undefined : Number(toParam);
    if (to === undefined) {
      to =
        recordsOf(ccf.kv, table).getVersionOfPreviousWrite(id) || ccf.consensus.getLastCommittedTxId().seqno;
    }
    if (to < from) {
      throw new ErrorResponse(400, "InvalidInput", `Invalid range: Starts at ${from} but ends at ${to}`);
    }
    checkCommitted(to);

    const begin = Math.max(from, 1);
    const end = Math.min(to, begin + RANGE_PAGE);
    const handle = rangeHandle(table, begin, end, id);
    const states = getStateRange(handle, begin, end, RANGE_EXPIRY_SECONDS);
    if (states === null) {
      return {
        statusCode: 202,
        headers: { "retry-after": RETRY_AFTER_SECONDS, "content-type": "text/plain" },
        body: `Historical transactions from ${begin} to ${end} are not yet available, fetching now`,
      };
    }
    const entries = [];
    for (const state of states) {
      const msg = recordsOf(state.kv, table).get(id);
      if (msg !== undefined) {
        const seqno = Number(state.transactionId.split(".")[1]);
        entries.push({ seqno, id: Number(id), msg });
      }
    }
    dropCachedStates(handle); // handed over to this caller

    const response = { entries };
    if (end !== to) {
      const nextBegin = end + 1;
      const nextEnd = Math.min(to, nextBegin + RANGE_PAGE);
      getStateRange(rangeHandle(table, nextBegin, nextEnd, id), nextBegin, nextEnd, RANGE_EXPIRY_SECONDS);
      response["@nextLink"] = `/app${path}?from_seqno=${nextBegin}&to_seqno=${to}&id=${id}`;
    }
    return { body: response };
  });
}

export const post_private = record(PRIVATE);
export const post_public = record(PUBLIC);
export const get_private = read(PRIVATE);
export const get_public = read(PUBLIC);
export const delete_private = remove(PRIVATE);
export const delete_public = remove(PUBLIC);
export const clear_private = removeAll(PRIVATE);
export const clear_public = removeAll(PUBLIC);
export const count_private = count(PRIVATE);
export const count_public = count(PUBLIC);
export const get_historical_private = historical(PRIVATE, false);
export const get_historical_public = historical(PUBLIC, false);
export const get_historical_receipt_private = historical(PRIVATE, true);
export const get_historical_receipt_public = historical(PUBLIC, true);
export const get_historical_range_private = historicalRange(PRIVATE, "/log/private/historical/range");
export const get_historical_range_public = historicalRange(PUBLIC, "/log/public/historical/range");
