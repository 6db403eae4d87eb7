"""The HTML report of a chaos run: one self-contained page (no script or style fetched from anywhere).

A timeline (SVG): one lane per client process, each operation a bar from its invoke to its completion (green
`ok`, red `fail`, grey `info`; writes thick, reads thin), the fault windows shaded and labelled, and every
operation an anomaly names circled in red; below it, the verdict, the faults and the anomalies listed. The
page's script only marks the document ready (`data-ready="1"`), so that a headless browser can tell it ran.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from scripts.chaos_check import CheckResult
from scripts.chaos_history import Event

WIDTH, LANE, LEFT, TOP = 1100, 14, 70, 30
COLOURS = {"ok": "#2e7d32", "fail": "#c62828", "info": "#9e9e9e"}


def render(events: Sequence[Event], result: CheckResult, faults: list[dict[str, Any]], summary: dict[str, Any]
           ) -> str:
    invokes: dict[int, Event] = {}
    spans: list[tuple[Event, Event]] = []
    for e in events:
        if e.type == "invoke":
            invokes[e.op] = e
        elif (start := invokes.get(e.op)) is not None:
            spans.append((start, e))
    end = max([e.time for e in events] + [f["end"] for f in faults] + [1.0])
    processes = sorted({e.process for e in events})
    lane = {p: i for i, p in enumerate(processes)}
    height = TOP + LANE * max(len(processes), 1) + 30
    scale = (WIDTH - LEFT - 10) / end
    x = lambda t: LEFT + t * scale  # noqa: E731
    marked = {op for a in result.anomalies for op in a.ops}
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" id="timeline">']
    for f in faults:
        width = max(1.0, (f["end"] - f["start"]) * scale)
        parts.append(f'<rect class="fault" x="{x(f["start"]):.1f}" y="{TOP - 12}" width="{width:.1f}" '
                     f'height="{height - TOP}" fill="#ffcc80" fill-opacity="0.35"><title>{html.escape(f["kind"])} '
                     f'{f["nodes"]} {html.escape(f["detail"])}</title></rect>'
                     f'<text x="{x(f["start"]) + 2:.1f}" y="{TOP - 16}" font-size="9">{html.escape(f["kind"])}</text>')
    for p in processes:
        y = TOP + LANE * lane[p]
        parts.append(f'<text x="4" y="{y + 9}" font-size="9">process {p}</text>')
    for start, done in spans:
        y = TOP + LANE * lane[start.process] + 5
        thick = 6 if start.f == "write" else 2
        title = html.escape(f"op {start.op} {start.f} key {start.key} {done.type} "
                            f"{done.value or start.value or ''} {done.txid or ''} {done.error or ''}")
        parts.append(f'<rect class="op op-{done.type}" x="{x(start.time):.1f}" y="{y - thick / 2:.1f}" '
                     f'width="{max(1.0, (done.time - start.time) * scale):.1f}" height="{thick}" '
                     f'fill="{COLOURS[done.type]}"><title>{title}</title></rect>')
        if start.op in marked:
            parts.append(f'<circle class="anomaly" cx="{x(done.time):.1f}" cy="{y}" r="5" fill="none" '
                         f'stroke="#d50000" stroke-width="2"/>')
    for t in range(0, int(end) + 1, max(1, int(end) // 10 or 1)):
        parts.append(f'<text x="{x(t):.1f}" y="{height - 8}" font-size="9">{t} s</text>')
    parts.append("</svg>")
    verdict = "valid" if result.valid else f"{len(result.anomalies)} anomalies"
    rows = "".join(f'<tr class="anomaly-row"><td>{html.escape(a.kind)}</td><td>{", ".join(map(str, a.ops))}</td>'
                   f"<td>{html.escape(a.detail)}</td></tr>" for a in result.anomalies)
    fault_rows = "".join(f"<tr><td>{f['start']:.2f}-{f['end']:.2f} s</td><td>{html.escape(f['kind'])}</td>"
                         f"<td>{f['nodes']}</td><td>{html.escape(f['detail'])}</td></tr>" for f in faults)
    facts = "".join(f"<li>{html.escape(str(k))}: {html.escape(str(v))}</li>" for k, v in summary.items()
                    if k not in ("anomalies",))
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Chaos run: {verdict}</title>
<style>body{{font-family:sans-serif;margin:16px}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 6px;font-size:12px}} .bad{{color:#c62828}} .good{{color:#2e7d32}}</style>
</head><body data-ready="0">
<h1 id="verdict" class="{'good' if result.valid else 'bad'}" data-valid="{int(result.valid)}">Chaos run: {verdict}</h1>
<ul>{facts}</ul>
{''.join(parts)}
<h2>Faults</h2><table id="faults"><tr><th>window</th><th>kind</th><th>nodes</th><th>detail</th></tr>{fault_rows}</table>
<h2>Anomalies</h2><table id="anomalies"><tr><th>kind</th><th>operations</th><th>detail</th></tr>{rows}</table>
<script>document.body.setAttribute("data-ready", "1");</script>
</body></html>
"""
