"""Linking a bundle's ES modules into one script (app.js_modules): every import and export form keeps its meaning,
exported bindings are live, module bodies are strict, and what cannot be linked is refused with the reason."""

from __future__ import annotations

import json

import pytest
import quickjs

from app.js_interpreter import _PRELUDE
from app.js_modules import ModuleLinkError, link, module_name, resolve


def run(modules: dict[str, str], entry: str, expression: str) -> object:
    """Evaluate `expression` with `m` bound to the exports of module `entry`."""
    ctx = quickjs.Context()
    ctx.eval(_PRELUDE)
    ctx.eval(link(modules))
    return json.loads(ctx.eval(f"(() => {{ const m = __ccfModules.require({json.dumps(entry)}); "
                               f"return JSON.stringify({expression}); }})()"))


def test_names_and_resolution_follow_ccf() -> None:
    assert module_name("endpoints/all.js") == "/endpoints/all.js" == module_name("/endpoints/all.js")
    assert resolve("./kv.js", "/node_modules/lib/index.js") == "/node_modules/lib/kv.js"
    assert resolve("../lib/kv.js", "/src/app/e.js") == "/src/lib/kv.js"
    assert resolve("/abs.js", "/src/e.js") == "/abs.js"
    assert resolve("@microsoft/ccf-app", "/e.js") == "@microsoft/ccf-app"


def test_every_import_form_binds_what_the_exporter_exports() -> None:
    modules = {
        "/lib.js": "export default function greet(n) { return 'hi ' + n; }\n"
                   "export const one = 1, two = 2;\nexport class K { v() { return 3; } }\n"
                   "export async function later() { return 4; }\nconst hidden = 5;\nexport { hidden as shown };\n",
        "/side.js": "globalThis.sideEffect = (globalThis.sideEffect || 0) + 1;\n",
        "/main.js": 'import greet, { one, two as deux, K } from "./lib.js";\nimport * as lib from "./lib.js";\n'
                    'import "./side.js";\nimport {\n  shown\n} from "./lib.js";\n'
                    "export const out = [greet('x'), one, deux, new K().v(), shown, lib.one, typeof lib.later, "
                    "globalThis.sideEffect];\n",
    }
    assert run(modules, "/main.js", "m.out") == ["hi x", 1, 2, 3, 5, 1, "function", 1]


def test_re_exports_pass_through_and_star_leaves_out_default() -> None:
    modules = {
        "/a.js": "export const x = 1;\nexport default 9;\n",
        "/b.js": 'export * from "./a.js";\nexport { x as y } from "./a.js";\nexport * as ns from "./a.js";\n',
        "/main.js": 'import * as b from "./b.js";\nexport const out = [b.x, b.y, b.ns.default, "default" in b];\n',
    }
    assert run(modules, "/main.js", "m.out") == [1, 1, 9, False]


def test_exported_bindings_are_live_and_modules_run_once() -> None:
    modules = {
        "/counter.js": "export let count = 0;\nexport function bump() { count += 1; }\n"
                       "globalThis.evaluations = (globalThis.evaluations || 0) + 1;\n",
        "/main.js": 'import { count, bump } from "./counter.js";\nimport * as c from "./counter.js";\n'
                    "bump(); bump();\nexport const out = () => [c.count, globalThis.evaluations];\n",
        "/other.js": 'import { bump } from "./counter.js";\nexport const b = bump;\n',
    }
    assert run({**modules}, "/main.js", "(__ccfModules.require('/other.js'), m.out())") == [2, 1]


def test_module_bodies_are_strict() -> None:
    modules = {"/main.js": "export const strict = (function () { return this === undefined; })();\n"
                           "export const assigns = (() => { try { undeclared = 1; return true; } "
                           "catch (e) { return e instanceof ReferenceError; } })();\n"}
    assert run(modules, "/main.js", "[m.strict, m.assigns]") == [True, True]


def test_import_and_export_words_inside_strings_and_comments_are_left_alone() -> None:
    modules = {"/main.js": "// import { nothing } from './nowhere.js';\n/* export const no = 1; */\n"
                           "export const text = 'import x from \"y\"';\nexport const t = `export default ${1 + 1}`;\n"}
    assert run(modules, "/main.js", "[m.text, m.t, Object.keys(m).sort()]") == [
        'import x from "y"', "export default 2", ["t", "text"]]


def test_a_specifier_naming_no_module_fails_when_the_importer_is_evaluated() -> None:
    modules = {"/main.js": 'import { x } from "./missing.js";\nexport const out = x;\n'}
    with pytest.raises(quickjs.JSException, match="Could not find module '/missing.js'"):
        run(modules, "/main.js", "m.out")


@pytest.mark.parametrize("source, reason", [
    ("const m = import('./x.js');\n", "dynamic import"),
    ("export const meta = import.meta.url;\n", "import.meta"),
    ("export const { a, b } = { a: 1, b: 2 };\n", "destructuring"),
])
def test_forms_the_linker_cannot_keep_are_refused_with_the_reason(source: str, reason: str) -> None:
    with pytest.raises(ModuleLinkError, match=reason):
        link({"/main.js": source})
