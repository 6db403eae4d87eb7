"""The default constitution (our own JavaScript, written from CCF's documented behaviour) and its variants.

`default_constitution(resolve)` concatenates `js/constitution/actions.js`, `validate.js`, one resolve
(`"majority"`: the default, accepted once a majority of active members vote for it, never rejected;
`"veto"`: one vote against rejects; `"sandbox"`: accepted at once) and `apply.js` into the one module CCF
stores at `public:ccf.gov.constitution`.
"""

from __future__ import annotations

from importlib import resources

RESOLVES = {"majority": "resolve.js", "veto": "resolve_veto.js", "sandbox": "resolve_sandbox.js"}


def _read(name: str) -> str:
    return resources.files("governance").joinpath(f"js/constitution/{name}").read_text(encoding="utf-8")


def default_constitution(resolve: str = "majority") -> str:
    if resolve not in RESOLVES:
        raise ValueError(f"resolve must be one of {', '.join(RESOLVES)}")
    return "\n".join(_read(name) for name in ("actions.js", "validate.js", RESOLVES[resolve], "apply.js"))
