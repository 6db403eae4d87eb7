"""Reading a CCF JavaScript application bundle from disk, for a `set_js_app` proposal.

A bundle directory is what CCF's tools take: either a `bundle.json` (`{"metadata": {"endpoints": ...}, "modules":
[{"name", "module"}]}`, as `ccf-build-bundle` writes it), or an `app.json` (the metadata) next to a `src/`
directory whose files are the modules, named by their path under `src/` (CCF's `--js-app-bundle`). Guarantees: the
result has CCF's bundle shape and every endpoint's `js_module` names one of its modules; anything else raises
`BundleInvalid` with a one-line reason naming the file or endpoint. The bundle is not linked or run here.
"""

from __future__ import annotations

import json
import os
from typing import Any


class BundleInvalid(Exception):
    """The directory holds no bundle, or one CCF would refuse."""


JS_APP_PREFIX = "js:"  # how a node's app option names a bundle directory instead of a Python app
JS_GENERIC_APP = "app.js_generic:app"


def _load_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleInvalid(f"{path}: {e}") from None


def read_bundle(directory: str) -> dict[str, Any]:
    """The bundle in `directory` (see the module's description)."""
    if not os.path.isdir(directory):
        raise BundleInvalid(f"{directory} is not a directory")
    packed = os.path.join(directory, "bundle.json")
    if os.path.exists(packed):
        bundle = _load_json(packed)
        where = packed
    else:
        metadata_path, src = os.path.join(directory, "app.json"), os.path.join(directory, "src")
        if not os.path.exists(metadata_path) or not os.path.isdir(src):
            raise BundleInvalid(f"{directory} holds neither bundle.json nor app.json with a src/ directory")
        modules = []
        for root, _, files in sorted(os.walk(src)):
            for name in sorted(files):
                path = os.path.join(root, name)
                try:
                    with open(path, encoding="utf-8") as f:
                        modules.append({"name": os.path.relpath(path, src).replace(os.sep, "/"), "module": f.read()})
                except (OSError, UnicodeDecodeError) as e:
                    raise BundleInvalid(f"{path}: {e}") from None
        bundle = {"metadata": _load_json(metadata_path), "modules": modules}
        where = metadata_path
    check_bundle(bundle, where)
    return dict(bundle)


def check_bundle(bundle: Any, where: str = "bundle") -> None:
    """CCF's shape checks of `set_js_app`, so that a bad bundle is refused before it is proposed."""
    if not isinstance(bundle, dict) or not isinstance(bundle.get("modules"), list):
        raise BundleInvalid(f"{where}: a bundle is an object with a modules array")
    names = set()
    for i, module in enumerate(bundle["modules"]):
        if not isinstance(module, dict) or not isinstance(module.get("name"), str) or \
                not isinstance(module.get("module"), str):
            raise BundleInvalid(f"{where}: modules[{i}] must be {{name: string, module: string}}")
        names.add(module["name"])
    metadata = bundle.get("metadata")
    if not isinstance(metadata, dict) or not isinstance(metadata.get("endpoints"), dict):
        raise BundleInvalid(f"{where}: metadata.endpoints must be an object")
    for url, methods in metadata["endpoints"].items():
        if not isinstance(methods, dict):
            raise BundleInvalid(f"{where}: metadata.endpoints[{url!r}] must be an object")
        for method, info in methods.items():
            module = info.get("js_module") if isinstance(info, dict) else None
            if module not in names:
                raise BundleInvalid(f"{where}: {method.upper()} {url}: module '{module}' not found in bundle")
