"""Linking a CCF JavaScript bundle's ES modules into one script QuickJS can run.

CCF stores an app's modules under absolute names (`/endpoints.js`, `/node_modules/@microsoft/ccf-app/kv.js`: the
bundle's `name` with a leading `/`), and resolves `import` specifiers relative to the importing module. The
QuickJS binding this project uses has no module loader, so `link` rewrites each module into a function registered
under its name, and its `import`/`export` statements into calls of a small loader (`__ccfModules.require`).
Modules are evaluated once, on first use, in dependency order as ES modules are.

Guarantees: `import` forms (default, named with `as`, namespace `* as`, side effect only) and `export` forms
(declarations, `default`, lists with `as`, re-exports `{...} from`, `* from`, `* as ns from`) keep their meaning;
exported bindings are live (read through getters), so a module sees a later assignment to an exported `let`;
each module body runs in strict mode, as ES modules do; a specifier that names no module of the bundle fails
with CCF's message when the importing module is first evaluated, never silently.
Not supported (refused with `ModuleLinkError`): `import()` and `import.meta`; `export` of destructuring patterns.
Imported bindings are taken when the importing module starts: between modules that import each other (a cycle),
a binding not yet initialised reads as `undefined` instead of throwing, as it would in an engine with a loader.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Mapping

from governance.js_runtime import code_only


class ModuleLinkError(Exception):
    """A module uses a form of `import`/`export` this linker cannot rewrite, or names no module."""


_IDENT = r"[A-Za-z_$][\w$]*"
# statements are found in the code with literals blanked (see code_only), at the start of a line
_IMPORT = re.compile(r"^[ \t]*import\b(?!\s*[(.])", re.M)
_EXPORT = re.compile(r"^[ \t]*export(?=\s*[{*]|\s+(?:default|function|async|class|const|let|var)\b)", re.M)
_STRING = re.compile(r"""\s*(["'])((?:\\.|(?!\1).)*)\1\s*;?""")
_DECLARATION = re.compile(rf"export\s+((?:async\s+)?function\s*\*?\s*({_IDENT})|class\s+({_IDENT})|"
                          rf"(?:const|let|var)\s+)")


def module_name(name: str) -> str:
    """The name CCF keys a bundle module by: the bundle's `name` with one leading `/`."""
    return "/" + name.lstrip("/")


def resolve(specifier: str, importer: str) -> str:
    """CCF's resolution: `./x.js` and `../x.js` relative to the importer's directory, `/x.js` absolute."""
    if specifier.startswith("/"):
        return posixpath.normpath(specifier)
    if specifier.startswith("./") or specifier.startswith("../"):
        return posixpath.normpath(posixpath.join(posixpath.dirname(importer), specifier))
    return specifier  # a bare name (e.g. "@microsoft/ccf-app"): never a bundle module's name


def _statement_end(code: str, start: int) -> int:
    """The end of the import/export statement at `start`: its `from "..."` string or the `;` or line end of a
    statement without one (in `code`, literals are blanked, so braces and semicolons are real)."""
    depth = 0
    i = start
    while i < len(code):
        c = code[i]
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0 and (c == ";" or c == "\n"):
            return i
        i += 1
    return i


def _specifier_after(source: str, code: str, position: int, module: str) -> tuple[str, int]:
    """The string literal starting at `position` (after `from` or `import`) and the end of the statement."""
    m = _STRING.match(source, position)
    if m is None:
        raise ModuleLinkError(f"{module}: expected a module specifier at offset {position}")
    return json.loads(f'"{m.group(2)}"') if m.group(1) == '"' else m.group(2).replace("\\'", "'"), m.end()


def _names(clause: str, module: str) -> list[tuple[str, str]]:
    """`a, b as c` -> [(a, a), (b, c)]: (name in the other module, name here)."""
    pairs = []
    for item in clause.split(","):
        words = item.split()
        if not words:
            continue
        if len(words) == 1:
            pairs.append((words[0], words[0]))
        elif len(words) == 3 and words[1] == "as":
            pairs.append((words[0], words[2]))
        else:
            raise ModuleLinkError(f"{module}: cannot read the names {item.strip()!r}")
    return pairs


def _declared_names(code: str, start: int, module: str) -> list[str]:
    """The names an `export const|let|var a = ..., b = ...` declares (patterns refused)."""
    end = _statement_end(code, start)
    text = code[start:end]
    names, depth, current = [], 0, ""
    for c in text:  # split at top-level commas; each part starts with its name
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        if c == "," and depth == 0:
            names.append(current)
            current = ""
        else:
            current += c
    names.append(current)
    out = []
    for part in names:
        m = re.match(rf"\s*({_IDENT})", part)
        if m is None:
            raise ModuleLinkError(f"{module}: export of a destructuring pattern is not supported")
        out.append(m.group(1))
    return out


def _rewrite(name: str, source: str) -> str:
    """One module as the body of its loader function."""
    code = code_only(source)
    if re.search(r"\bimport\s*\(", code) or re.search(r"\bimport\s*\.\s*meta\b", code):
        raise ModuleLinkError(f"{name}: dynamic import() and import.meta are not supported")
    edits: list[tuple[int, int, str]] = []
    exports: list[tuple[str, str]] = []  # (exported name, JS expression read by its getter)
    prologue: list[str] = []  # re-exports and imports, run before the body
    count = 0

    def require(specifier: str) -> str:
        return f"__ccfModules.require({json.dumps(resolve(specifier, name))}, {json.dumps(name)})"

    for m in _IMPORT.finditer(code):
        start = m.end()
        end = _statement_end(code, start)
        clause = code[start:end]
        if not clause.strip():  # `import "x";`
            specifier, stop = _specifier_after(source, code, start, name)
            edits.append((m.start(), stop, f"{require(specifier)};"))
            continue
        head = re.match(r"\s*(.*?)\s*\bfrom\s*$", clause, re.S)
        if head is None:
            raise ModuleLinkError(f"{name}: cannot read the import at offset {m.start()}")
        specifier, stop = _specifier_after(source, code, start + clause.rindex("from") + len("from"), name)
        count += 1
        ref = f"__import{count}"
        lines = [f"const {ref} = {require(specifier)};"]
        rest = head.group(1)
        default = re.match(rf"({_IDENT})\s*(,|$)", rest)
        if default:
            lines.append(f"const {default.group(1)} = {ref}.default;")
            rest = rest[default.end():].strip()
        if rest.startswith("*"):
            ns = re.fullmatch(rf"\*\s*as\s+({_IDENT})", rest)
            if ns is None:
                raise ModuleLinkError(f"{name}: cannot read the import {rest!r}")
            lines.append(f"const {ns.group(1)} = {ref};")
        elif rest.startswith("{"):
            pairs = _names(rest.strip("{} \n"), name)
            if pairs:
                lines.append("const { " + ", ".join(f"{a}: {b}" if a != b else a for a, b in pairs) + f" }} = {ref};")
        elif rest:
            raise ModuleLinkError(f"{name}: cannot read the import {rest!r}")
        edits.append((m.start(), stop, " ".join(lines)))

    for m in _EXPORT.finditer(code):
        at = m.start() + len(m.group(0)) - len("export")
        after = code[at + len("export"):]
        stripped = after.lstrip()
        offset = at + len("export") + (len(after) - len(stripped))
        if stripped.startswith("default"):
            declaration = re.match(rf"default\s+((?:async\s+)?function\s*\*?\s*({_IDENT})|class\s+({_IDENT}))",
                                   stripped)
            if declaration and (declaration.group(2) or declaration.group(3)):
                local = declaration.group(2) or declaration.group(3)
                edits.append((at, offset + len("default"), ""))
                exports.append(("default", local))
            else:
                edits.append((at, offset + len("default"), "const __default ="))
                exports.append(("default", "__default"))
        elif stripped.startswith("*"):
            star = re.match(rf"\*\s*(?:as\s+({_IDENT})\s*)?from\b", stripped)
            if star is None:
                raise ModuleLinkError(f"{name}: cannot read the export at offset {at}")
            specifier, stop = _specifier_after(source, code, offset + star.end(), name)
            if star.group(1):
                prologue.append(f"__ccfModules.reexport(__exports, {{{json.dumps(star.group(1))}: null}}, "
                                f"{require(specifier)});")
            else:
                prologue.append(f"__ccfModules.reexportAll(__exports, {require(specifier)});")
            edits.append((at, stop, ""))
        elif stripped.startswith("{"):
            close = code.index("}", offset)
            pairs = _names(code[offset + 1:close], name)
            tail = re.match(r"\s*from\b", code[close + 1:])
            if tail:
                specifier, stop = _specifier_after(source, code, close + 1 + tail.end(), name)
                mapping = ", ".join(f"{json.dumps(b)}: {json.dumps(a)}" for a, b in pairs)
                prologue.append(f"__ccfModules.reexport(__exports, {{{mapping}}}, {require(specifier)});")
            else:
                semicolon = re.match(r"\s*;?", code[close + 1:])
                stop = close + 1 + (semicolon.end() if semicolon else 0)
                exports.extend((b, a) for a, b in pairs)
            edits.append((at, stop, ""))
        else:
            declaration = _DECLARATION.match(code, at)
            if declaration is None:
                raise ModuleLinkError(f"{name}: cannot read the export at offset {at}")
            local = declaration.group(2) or declaration.group(3)
            if local:
                exports.append((local, local))
            else:
                exports.extend((n, n) for n in _declared_names(code, declaration.end(), name))
            edits.append((at, offset, ""))

    out, last = [], 0
    for start, stop, text in sorted(edits):
        if start < last:
            raise ModuleLinkError(f"{name}: overlapping import/export statements at offset {start}")
        out += [source[last:start], text]
        last = stop
    out.append(source[last:])
    getters = ", ".join(f"{json.dumps(public)}: () => {local}" for public, local in exports)
    # the getters are defined first, so a module importing this one in a cycle sees its hoisted functions
    return ("\"use strict\";\n" + f"__ccfModules.exportGetters(__exports, {{{getters}}});\n" +
            "\n".join(prologue) + "\n" + "".join(out))


def link(modules: Mapping[str, str]) -> str:
    """A script defining every module of a bundle (keyed by CCF's names, see `module_name`) for the loader of the
    app prelude; nothing runs until a module is required."""
    parts = []
    for name, source in sorted(modules.items()):
        body = _rewrite(name, source)
        parts.append(f"__ccfModules.define({json.dumps(name)}, function (__exports) {{\n{body}\n}});\n")
    return "".join(parts)
