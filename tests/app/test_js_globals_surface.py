"""Every member `@microsoft/ccf-app` 6.0.1's `global.d.ts` declares on `ccf` (and on `ccf.crypto`, `ccf.rpc`,
`ccf.consensus`, `ccf.historical` and a KV map) exists for applications, and every one CCF gives constitutions
exists for governance code (issue 14). The declarations are read from the npm package at test time, so a member
added to them is a failure here, not a silent gap."""

from __future__ import annotations

import re
from pathlib import Path

import quickjs

from app.js_interpreter import _PRELUDE as APP_PRELUDE
from governance.js_runtime import _PRELUDE as GOVERNANCE_PRELUDE
from tests.js_apps.build import bundle_dir_or_skip

# what CCF installs for applications only (src/js/extensions/ccf/{rpc,consensus,historical}.cpp are app extensions)
APP_ONLY = {"rpc", "consensus", "historical", "historicalState"}


def declarations() -> dict[str, list[str]]:
    dist = bundle_dir_or_skip("logging")
    path = dist.parent / "node_modules" / "@microsoft" / "ccf-app" / "global.d.ts"
    text = re.sub(r"/\*.*?\*/", "", Path(path).read_text(), flags=re.S)
    interfaces = {}
    for name, body in re.findall(r"export interface (\w+)(?:<[^>]*>)?(?: extends [^{]+)? \{(.*?)\n\}", text, re.S):
        members = re.findall(r"^\s{4}(?:readonly\s+)?(\w+)\??(?:<(?:[^<>]|<[^<>]*>)*>)?\s*[(:]", body, re.M)
        interfaces[name] = sorted(set(members))
    return interfaces


def missing(prelude: str, target: str, members: list[str]) -> list[str]:
    ctx = quickjs.Context()
    ctx.eval(prelude)
    found = ctx.eval(f"""(() => {{
      const t = {target};
      const proto = Object.getPrototypeOf(t);
      return JSON.stringify({members!r}.filter((m) => !(m in t) && !(proto && m in proto)));
    }})()""")
    return list(eval(found))  # noqa: S307 - a JSON list of names


def test_applications_have_every_global_ccf_app_declares() -> None:
    d = declarations()
    assert {"CCF", "CCFCrypto", "CCFRpc", "CCFConsensus", "CCFHistorical", "KvMap"} <= set(d), sorted(d)
    assert len(d["CCF"]) >= 15 and len(d["CCFCrypto"]) >= 20  # the parse found the declarations
    for interface, target in (("CCF", "ccf"), ("CCFCrypto", "ccf.crypto"), ("CCFRpc", "ccf.rpc"),
                              ("CCFConsensus", "ccf.consensus"), ("CCFHistorical", "ccf.historical"),
                              ("KvMap", 'ccf.kv["any.map"]')):
        assert missing(APP_PRELUDE, target, d[interface]) == [], interface


def test_constitutions_have_every_global_ccf_gives_governance_code() -> None:
    d = declarations()
    governance = [m for m in d["CCF"] if m not in APP_ONLY]
    assert missing(GOVERNANCE_PRELUDE, "ccf", governance) == []
    assert missing(GOVERNANCE_PRELUDE, "ccf.crypto", d["CCFCrypto"]) == []
    assert missing(GOVERNANCE_PRELUDE, 'ccf.kv["public:any.map"]', d["KvMap"]) == []
