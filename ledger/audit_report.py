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
  which is also marked on the timeline and listed among the events at its seqno.
"""

from __future__ import annotations

import datetime as dt
import html
from dataclasses import dataclass

from ledger.audit import AlteredEntry, AuditReport
from ledger.audit_timeline import KINDS, Event, Timeline
from ledger.errors import LocatedError

_COLOURS = {
    "chunk": "#8a94a6", "signature": "#2f7d32", "service": "#6a1b9a", "node": "#00838f", "member": "#1565c0",
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
.axis{position:relative;height:118px;background:#fff;border:1px solid #d5dae1;border-radius:6px;overflow:hidden}
.chunk{position:absolute;top:88px;height:22px;border-right:2px solid #fff;box-sizing:border-box;
 background:#c9d1dc;font-size:11px;color:#263238;overflow:hidden;white-space:nowrap;padding-left:3px}
.chunk.open{background:repeating-linear-gradient(45deg,#c9d1dc,#c9d1dc 6px,#e3e8ee 6px,#e3e8ee 12px)}
.chunk.alt{background-color:#b4bfcd}
.mark{position:absolute;width:3px;height:22px;margin-left:-1px;cursor:pointer;border-radius:1px}
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
    if r.service_cert_checked:
        checked.append("the service identity is the trusted certificate")
    if r.ledger_secrets:
        checked.append(f"private domains (with {r.ledger_secrets} ledger secrets)")
    return (f"<div id=\"verdict\" class=\"verdict ok\">Verified up to {_esc(r.last_verified_txid)}: "
            f"{_esc(', '.join(checked))}</div>")


def _summary(timeline: Timeline, outcome: Outcome) -> str:
    rows = [
        ("chunks", f"{len(timeline.chunks)} ({sum(c.size for c in timeline.chunks):,} bytes)"),
        ("seqnos", f"{timeline.first_seqno}..{timeline.last_seqno}"),
        ("signatures", str(timeline.count("signature"))),
        ("governance events", str(sum(1 for e in timeline.events if e.kind not in ("chunk", "signature")))),
    ]
    if outcome.report is not None:
        rows.append(("last verified signature", outcome.report.last_verified_txid))
        rows.append(("service certificate", "checked against the trusted one" if outcome.report.service_cert_checked
                     else "not checked (no --service-cert given)"))
    if timeline.scan_error is not None:
        rows.append(("timeline stopped at", str(timeline.scan_error)))
    body = "".join(f"<tr><td>{_esc(k)}</td><td>{_esc(v)}</td></tr>" for k, v in rows)
    return f"<table class=\"summary\" id=\"summary-table\">{body}</table>"


def _axis(timeline: Timeline, events: list[tuple[int, Event]]) -> str:
    first, last = timeline.first_seqno, timeline.last_seqno
    parts = ['<span class="lanelabel" style="top:44px">signatures</span>',
             '<span class="lanelabel" style="top:16px">governance</span>']
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


def render_report(timeline: Timeline, outcome: Outcome, *, title: str | None = None,
                  generated_at: dt.datetime | None = None) -> str:
    """The report page (a str of HTML)."""
    events = list(timeline.events)
    failure = outcome.failure_event()
    if failure is not None:
        events.append(failure)
    events.sort(key=lambda e: (e.seqno, e.kind == "failure"))  # stable: ledger order within a seqno
    numbered = list(enumerate(events))
    when = (generated_at or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%d %H:%M:%S UTC")
    name = title or ", ".join(timeline.paths)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Ledger audit: {_esc(name)}</title><style>{_CSS}</style></head>
<body>
<header><h1>Ledger audit report</h1><p class="path">{_esc(name)}</p>{_verdict(outcome)}</header>
<section id="overview"><h2>Summary</h2>{_summary(timeline, outcome)}</section>
<section id="timeline"><h2>Timeline</h2>{_axis(timeline, numbered)}</section>
<section><h2>Events</h2>{_legend()}
<table class="events" id="event-table"><thead><tr><th>seqno</th><th>kind</th><th>event</th>
<th>where (file @ offset)</th></tr></thead><tbody>{_rows(numbered)}</tbody></table></section>
<footer>Generated {when} by <code>scripts/audit.py report</code>. Everything shown was read from the ledger; the
verdict above is the auditor's. This page is self-contained and fetches nothing.</footer>
<script>{_JS}</script>
</body></html>
"""
