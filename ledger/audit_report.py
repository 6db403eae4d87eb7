"""The auditor's HTML report: one self-contained page with the timeline of a ledger and the verdict.

`render_report(timeline, outcome)` returns the page. Guarantees:
- self-contained: inline CSS and JavaScript only; no URL to fetch (no scripts, styles, fonts or images from
  anywhere), so it opens offline and from `file://`;
- every string taken from the ledger (ids, states, action names, file names) is HTML-escaped: the ledger is
  what is being audited, not something to trust with markup;
- the events are rendered in the HTML itself, one table row per event (`tr.ev.ev-<kind>`, `data-kind`,
  `data-seqno`), so the page reads without JavaScript; the script only adds counts per kind, filters by kind,
  and jumps from a timeline mark to its row, then sets `data-ready="1"` on `<body>`;
- the verdict is at the top: verified (with what was checked), or the failure with its file, offset and seqno,
  which is also marked on the timeline and listed among the events at its seqno;
- a ledger that spans disaster recoveries shows each recovery as an event (`recovery`: txid, recovery_count,
  the previous and new certificates' fingerprints) and, once verified, a table of its service identities with
  how each came to be trusted (`#identities`).

`report_json(timeline, outcome)` is the same report as one JSON object (what `audit.py report --json` prints):
`{"ok", "path", "verdict", "first_seqno", "last_seqno", "chunks", "epochs", "recoveries", "counts",
"events"}`, events in the page's order, each `{"seqno", "kind", "title", "detail", "file", "offset"}` (and
`"data"` for recoveries).
"""

from __future__ import annotations

import datetime as dt
import html
from dataclasses import dataclass
from typing import Any

from ledger.audit import TRUST_GIVEN, TRUST_NAMED, TRUST_NOT_SIGNED, AlteredEntry, AuditReport
from ledger.audit_timeline import KINDS, Event, Timeline
from ledger.errors import LocatedError

_COLOURS = {
    "chunk": "#8a94a6", "signature": "#2f7d32", "service": "#6a1b9a", "recovery": "#c62828", "node": "#00838f",
    "member": "#1565c0",
    "user": "#5d4037", "proposal": "#ef6c00", "rekey": "#ad1457", "constitution": "#455a64", "failure": "#d50000",
}
_LANES = {"signature": 0, "failure": 2}  # everything else (governance) in lane 1

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;color:#1c2330;background:#f6f7f9}
header,section,footer{margin:0 24px}
header{padding:18px 0 6px}
h1{font-size:22px;margin:0 0 4px}
h2{font-size:16px;margin:22px 0 8px}
.path{font-family:ui-monospace,Menlo,Consolas,monospace;color:#4a5568;margin:0 0 10px;word-break:break-all}
.verdict{padding:10px 14px;border-radius:6px;font-weight:600}
.verdict.ok{background:#e3f4e4;color:#1b5e20;border:1px solid #a5d6a7}
.verdict.failed{background:#fde7e7;color:#b71c1c;border:1px solid #ef9a9a}
.verdict .where{font-family:ui-monospace,Menlo,Consolas,monospace;font-weight:400;display:block;margin-top:4px}
table.summary{border-collapse:collapse}
table.summary td{padding:2px 14px 2px 0}
table.summary td:first-child{color:#4a5568}
table.identities{border-collapse:collapse;background:#fff;border:1px solid #d5dae1}
table.identities th{text-align:left;background:#eef1f5;padding:4px 8px}
table.identities td{padding:3px 8px;border-top:1px solid #eef1f5;font-size:13px}
td.fp{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;word-break:break-all}
.axis{position:relative;height:118px;background:#fff;border:1px solid #d5dae1;border-radius:6px;overflow:hidden}
.chunk{position:absolute;top:88px;height:22px;border-right:2px solid #fff;box-sizing:border-box;
 background:#c9d1dc;font-size:11px;color:#263238;overflow:hidden;white-space:nowrap;padding-left:3px}
.chunk.open{background:repeating-linear-gradient(45deg,#c9d1dc,#c9d1dc 6px,#e3e8ee 6px,#e3e8ee 12px)}
.chunk.alt{background-color:#b4bfcd}
.mark{position:absolute;width:3px;height:22px;margin-left:-1px;cursor:pointer;border-radius:1px}
.epoch{position:absolute;top:0;bottom:0;border-left:2px dashed #c62828}
.lane0{top:58px}.lane1{top:30px;width:9px;height:9px;margin-left:-4px;border-radius:50%}
.lane2{top:4px;width:0;height:0;background:none!important;border-left:8px solid transparent;
 border-right:8px solid transparent;border-top:14px solid #d50000;margin-left:-8px}
.lanelabel{position:absolute;left:4px;font-size:10px;color:#6b7685}
.scale{display:flex;justify-content:space-between;font-size:12px;color:#4a5568;margin-top:2px}
#legend label{display:inline-block;margin:0 14px 6px 0;cursor:pointer}
.swatch{display:inline-block;width:10px;height:10px;border-radius:2px;margin:0 4px 0 2px;vertical-align:-1px}
table.events{border-collapse:collapse;width:100%;background:#fff;border:1px solid #d5dae1}
table.events th{text-align:left;background:#eef1f5;padding:5px 8px;position:sticky;top:0}
table.events td{padding:4px 8px;border-top:1px solid #eef1f5;vertical-align:top}
td.seqno{font-family:ui-monospace,Menlo,Consolas,monospace;text-align:right;width:70px}
td.where{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;color:#4a5568;white-space:nowrap}
.kind{display:inline-block;padding:0 6px;border-radius:8px;color:#fff;font-size:12px}
.detail{color:#4a5568;font-size:12px;word-break:break-all}
tr.ev-failure{background:#fde7e7}
tr.flash{outline:2px solid #ffb300}
.hidden{display:none!important}
footer{color:#6b7685;font-size:12px;padding:18px 0}
"""

_JS = """
(function () {
  var rows = document.querySelectorAll('#event-table tbody tr.ev');
  var counts = {};
  rows.forEach(function (r) { var k = r.getAttribute('data-kind'); counts[k] = (counts[k] || 0) + 1; });
  document.querySelectorAll('[data-count]').forEach(function (el) {
    el.textContent = String(counts[el.getAttribute('data-count')] || 0);
  });
  document.querySelectorAll('#legend input[type=checkbox]').forEach(function (cb) {
    cb.addEventListener('change', function () {
      var k = cb.getAttribute('data-kind');
      document.querySelectorAll('.ev-' + k + ', .mk-' + k).forEach(function (el) {
        el.classList.toggle('hidden', !cb.checked);
      });
    });
  });
  document.querySelectorAll('.mark').forEach(function (m) {
    m.addEventListener('click', function () {
      var row = document.getElementById(m.getAttribute('data-target'));
      if (!row) { return; }
      row.scrollIntoView({block: 'center'});
      row.classList.add('flash');
      setTimeout(function () { row.classList.remove('flash'); }, 1500);
    });
  });
  document.body.setAttribute('data-ready', '1');
})();
"""


@dataclass(frozen=True)
class Outcome:
    """What the auditor concluded: a report, or the error it raised."""

    report: AuditReport | None
    error: LocatedError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.report is not None

    def failure_event(self) -> Event | None:
        e = self.error
        if e is None:
            return None
        if isinstance(e, AlteredEntry):
            return Event(e.altered_seqno, "failure", "verification failed: entry altered", str(e),
                         e.altered_file, e.altered_offset)
        return Event(e.seqno or 0, "failure", "verification failed", str(e), e.file, e.offset)


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _pct(seqno: int, first: int, last: int, margin: float = 0.0) -> float:
    """Where seqno lies on the axis first..last, in percent, kept `margin` away from the edges."""
    return round(margin + (100.0 - 2 * margin) * (seqno - first) / max(1, last - first), 3)


def _verdict(outcome: Outcome) -> str:
    if outcome.error is not None:
        e = outcome.error
        where = ", ".join(f"{k} {_esc(v)}" for k, v in (("file", e.file), ("offset", e.offset), ("seqno", e.seqno))
                          if v is not None)
        extra = ""
        if isinstance(e, AlteredEntry):
            extra = (f"<span class=\"where\">altered entry: file {_esc(e.altered_file)}, offset {e.altered_offset}, "
                     f"seqno {e.altered_seqno}</span>")
        return (f"<div id=\"verdict\" class=\"verdict failed\">Verification FAILED: {_esc(e.reason)}"
                f"<span class=\"where\">failed check: {where}</span>{extra}</div>")
    r = outcome.report
    assert r is not None
    checked = ["signatures by trusted nodes", "Merkle roots", "COSE signatures", "service status transitions",
               "chunk contiguity"]
    if r.service_cert_checked and len(r.epochs) > 1:
        checked.append(f"the {'last audited' if r.not_audited_from is not None else 'newest'} service identity is "
                       f"the trusted certificate and each of the {len(r.recoveries)} recoveries names the one "
                       "before it")
    elif r.service_cert_checked:
        checked.append("the service identity is the trusted certificate")
    if r.ledger_secrets:
        checked.append(f"private domains (with {r.ledger_secrets} ledger secrets)")
    prefix = ""
    if r.not_audited_from is not None:
        prefix = (f"<span class=\"where\">only the prefix up to seqno {r.not_audited_from - 1} (--prefix): from the "
                  f"recovery at seqno {r.not_audited_from} on, the ledger is under a later service identity that the "
                  "given certificate cannot vouch for, and was not audited</span>")
    return (f"<div id=\"verdict\" class=\"verdict ok\">Verified up to {_esc(r.last_verified_txid)}: "
            f"{_esc(', '.join(checked))}{prefix}</div>")


def _summary(timeline: Timeline, outcome: Outcome) -> str:
    rows = [
        ("chunks", f"{len(timeline.chunks)} ({sum(c.size for c in timeline.chunks):,} bytes)"),
        ("seqnos", f"{timeline.first_seqno}..{timeline.last_seqno}"),
        ("signatures", str(timeline.count("signature"))),
        ("governance events", str(sum(1 for e in timeline.events if e.kind not in ("chunk", "signature")))),
        ("recoveries", str(len(timeline.recoveries))),
    ]
    if outcome.report is not None:
        rows.append(("last verified signature", outcome.report.last_verified_txid))
        r = outcome.report
        if not r.service_cert_checked:
            checked = "not checked (no --service-cert given)"
        elif len(r.epochs) > 1:
            checked = (f"{'the last audited' if r.not_audited_from is not None else 'the newest'} of "
                       f"{len(r.epochs)} identities checked against the trusted one, the others through the "
                       "recoveries that name them")
        else:
            checked = "checked against the trusted one"
        rows.append(("service certificate", checked))
        if r.not_audited_from is not None:
            rows.append(("not audited (--prefix)", f"seqnos from {r.not_audited_from} on"))
    if timeline.scan_error is not None:
        rows.append(("timeline stopped at", str(timeline.scan_error)))
    body = "".join(f"<tr><td>{_esc(k)}</td><td>{_esc(v)}</td></tr>" for k, v in rows)
    return f"<table class=\"summary\" id=\"summary-table\">{body}</table>"


_TRUST = {TRUST_GIVEN: "the trusted certificate (given)",
          TRUST_NAMED: "named as previous identity by the recovery after it",
          TRUST_NOT_SIGNED: "not covered by any signature yet"}


def _identities(outcome: Outcome) -> str:
    """The service identities (epochs) the auditor verified, with how each came to be trusted."""
    r = outcome.report
    if r is None or not r.epochs:
        return ""
    rows = "".join(
        f'<tr class="identity" data-first-seqno="{e.first_seqno}"><td>{e.index}</td><td>{e.first_seqno}..'
        f'{e.last_seqno}</td><td>{_esc(e.first_txid)}</td><td>{e.recovery_count}</td>'
        f'<td class="fp">{_esc(e.previous_cert_fingerprint or "")}</td><td class="fp">{_esc(e.cert_fingerprint)}</td>'
        f'<td>{e.signatures}</td><td>{_esc(_TRUST.get(e.trust, "not checked (no --service-cert given)"))}</td></tr>'
        for e in r.epochs)
    return ('<section id="identities"><h2>Service identities</h2><table class="identities" id="identity-table">'
            "<thead><tr><th>#</th><th>seqnos</th><th>set at</th><th>recovery_count</th>"
            "<th>previous certificate (sha256)</th><th>certificate (sha256)</th><th>signatures</th><th>trust</th>"
            f"</tr></thead><tbody>{rows}</tbody></table></section>")


def _axis(timeline: Timeline, events: list[tuple[int, Event]]) -> str:
    first, last = timeline.first_seqno, timeline.last_seqno
    parts = ['<span class="lanelabel" style="top:44px">signatures</span>',
             '<span class="lanelabel" style="top:16px">governance</span>']
    for e in timeline.recoveries:  # where each recovered service's identity starts
        parts.append(f'<div class="epoch" style="left:{_pct(e.seqno, first, last + 1)}%" '
                     f'title="{_esc(e.title)}"></div>')
    for n, c in enumerate(timeline.chunks):
        left = _pct(c.start, first, last + 1)
        width = max(_pct(c.end + 1, first, last + 1) - left, 0.2)
        cls = ("chunk" if c.committed else "chunk open") + (" alt" if n % 2 else "")
        parts.append(f'<div class="{cls}" style="left:{left}%;width:{width}%" '
                     f'title="{_esc(c.file)}: seqnos {c.start}..{c.end}">{_esc(c.file)}</div>')
    for i, e in events:
        if e.kind == "chunk":
            continue
        lane = _LANES.get(e.kind, 1)
        parts.append(f'<div class="mark mk-{e.kind} lane{lane}" style="left:{_pct(e.seqno, first, last + 1, 0.8)}%;'
                     f'background:{_COLOURS[e.kind]}" data-target="ev-{i}" '
                     f'title="{_esc(f"{e.seqno}: {e.title}")}"></div>')
    return (f'<div class="axis" id="axis">{"".join(parts)}</div>'
            f'<div class="scale"><span>seqno {first}</span><span>seqno {last}</span></div>')


def _legend() -> str:
    items = "".join(
        f'<label><input type="checkbox" data-kind="{k}" checked><span class="swatch" '
        f'style="background:{_COLOURS[k]}"></span>{k} (<span id="count-{k}" data-count="{k}">0</span>)</label>'
        for k in KINDS)
    return f'<div id="legend">{items}</div>'


def _rows(events: list[tuple[int, Event]]) -> str:
    out = []
    for i, e in events:
        where = "" if e.file is None else _esc(e.file) + ("" if e.offset is None else f" @ {e.offset}")
        out.append(
            f'<tr class="ev ev-{e.kind}" id="ev-{i}" data-kind="{e.kind}" data-seqno="{e.seqno}">'
            f'<td class="seqno">{e.seqno}</td><td><span class="kind" style="background:{_COLOURS[e.kind]}">'
            f'{e.kind}</span></td><td><b>{_esc(e.title)}</b><div class="detail">{_esc(e.detail)}</div></td>'
            f'<td class="where">{where}</td></tr>')
    return "".join(out)


def _events(timeline: Timeline, outcome: Outcome) -> list[Event]:
    events = list(timeline.events)
    failure = outcome.failure_event()
    if failure is not None:
        events.append(failure)
    events.sort(key=lambda e: (e.seqno, e.kind == "failure"))  # stable: ledger order within a seqno
    return events


def report_json(timeline: Timeline, outcome: Outcome, *, title: str | None = None) -> dict[str, Any]:
    """The report as one JSON-ready object: the verdict, the service identities, the recoveries, the events."""
    events = _events(timeline, outcome)
    verdict: dict[str, Any] = {"ok": outcome.ok}
    if outcome.report is not None:
        verdict.update(outcome.report.to_json())
    if outcome.error is not None:
        e = outcome.error
        verdict["error"] = {"message": str(e), "reason": e.reason, "file": e.file, "offset": e.offset,
                            "seqno": e.seqno, "altered": None}
        if isinstance(e, AlteredEntry):
            verdict["error"]["altered"] = {"file": e.altered_file, "offset": e.altered_offset,
                                           "seqno": e.altered_seqno}
    return {
        "ok": outcome.ok,
        "path": title or ", ".join(timeline.paths),
        "verdict": verdict,
        "first_seqno": timeline.first_seqno,
        "last_seqno": timeline.last_seqno,
        "timeline_error": str(timeline.scan_error) if timeline.scan_error is not None else None,
        "chunks": [c.__dict__ for c in timeline.chunks],
        "epochs": verdict.get("epochs", []),
        "recoveries": [e.data for e in timeline.recoveries],
        "counts": {k: sum(1 for e in events if e.kind == k) for k in KINDS},
        "events": [e.to_json() for e in events],
    }


def render_report(timeline: Timeline, outcome: Outcome, *, title: str | None = None,
                  generated_at: dt.datetime | None = None) -> str:
    """The report page (a str of HTML)."""
    numbered = list(enumerate(_events(timeline, outcome)))
    when = (generated_at or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%d %H:%M:%S UTC")
    name = title or ", ".join(timeline.paths)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Ledger audit: {_esc(name)}</title><style>{_CSS}</style></head>
<body>
<header><h1>Ledger audit report</h1><p class="path">{_esc(name)}</p>{_verdict(outcome)}</header>
<section id="overview"><h2>Summary</h2>{_summary(timeline, outcome)}</section>
{_identities(outcome)}
<section id="timeline"><h2>Timeline</h2>{_axis(timeline, numbered)}</section>
<section><h2>Events</h2>{_legend()}
<table class="events" id="event-table"><thead><tr><th>seqno</th><th>kind</th><th>event</th>
<th>where (file @ offset)</th></tr></thead><tbody>{_rows(numbered)}</tbody></table></section>
<footer>Generated {when} by <code>scripts/audit.py report</code>. Everything shown was read from the ledger; the
verdict above is the auditor's. This page is self-contained and fetches nothing.</footer>
<script>{_JS}</script>
</body></html>
"""
