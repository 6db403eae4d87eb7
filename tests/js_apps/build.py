"""Build the bundles of the JavaScript apps in this directory, as a CCF user does: npm, rollup, ccf-build-bundle.

    from tests.js_apps.build import BundleBuildUnavailable, build_bundle, load_bundle

    path = build_bundle("logging")        # .venv/js_apps/logging/dist/bundle.json
    bundle = load_bundle("crypto_jwt")    # {"metadata": {"endpoints": ...}, "modules": [{"name", "module"}]}

Each app directory holds package.json + package-lock.json (exact versions), rollup.config.mjs, app.json (the
endpoints' metadata) and src/. A build copies those into `.venv/js_apps/<app>/` (the source tree stays clean),
runs `npm ci` there (or `npm install` without a lock; npm's cache is `.venv/npm-cache`, offline first), rollup
(ES modules, one per source module, `@microsoft/ccf-app` resolved to `node_modules/@microsoft/ccf-app/*.js`),
copies app.json next to rollup's output and runs the package's ccf-build-bundle, which writes `dist/bundle.json`
from `dist/app.json` and every file under `dist/src`. A build is reused while the hash of the app's sources is
unchanged, and node_modules while its package.json and lock are. Builds of one app are serialised by a file lock,
so parallel test workers can share them.

`BundleBuildUnavailable` (node or npm missing or too old, or the npm install failed, e.g. offline with an empty
cache) lets a test skip with its reason; a failure after the install (rollup, bundling) is a `BundleBuildError`.

Run as `python -m tests.js_apps.build [app ...]` to build (all apps by default) and check the bundles.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

APPS_DIR = Path(__file__).resolve().parent
REPO = APPS_DIR.parents[1]
BUILD_ROOT = REPO / ".venv" / "js_apps"
NPM_CACHE = REPO / ".venv" / "npm-cache"

# Bumped when the build steps change, so that earlier builds are not reused.
BUILD_FORMAT = "1"
MIN_NODE_MAJOR = 18  # rollup 4's minimum
INSTALL_TIMEOUT = 900
STEP_TIMEOUT = 300
NPM_FLAGS = ("--prefer-offline", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error")
DEPENDENCY_FILES = ("package.json", "package-lock.json")


class BundleBuildUnavailable(RuntimeError):
    """The bundle cannot be built here (no node/npm, or the dependencies cannot be installed): skip, with reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BundleBuildError(RuntimeError):
    """The app itself does not build (rollup or ccf-build-bundle failed): a bug in the app."""


def apps() -> list[str]:
    """The apps of this directory: the subdirectories holding an app.json."""
    return sorted(p.parent.name for p in APPS_DIR.glob("*/app.json"))


def app_dir(app_name: str) -> Path:
    directory = APPS_DIR / app_name
    if not re.fullmatch(r"[A-Za-z0-9_-]+", app_name) or not (directory / "app.json").is_file():
        raise ValueError(f"No JavaScript app {app_name!r} in {APPS_DIR} (apps: {', '.join(apps())})")
    return directory


def source_files(app_name: str) -> list[Path]:
    """The files a build reads, relative to the app's directory, sorted."""
    directory = app_dir(app_name)
    files = [Path(name) for name in (*DEPENDENCY_FILES, "app.json") if (directory / name).is_file()]
    files += [p.relative_to(directory) for p in directory.glob("rollup.config.*") if p.is_file()]
    files += [p.relative_to(directory) for p in (directory / "src").rglob("*") if p.is_file()]
    return sorted(files)


def _hash_files(directory: Path, files: list[Path]) -> str:
    h = hashlib.sha256(f"format {BUILD_FORMAT}\n".encode())
    for rel in files:
        data = (directory / rel).read_bytes()
        h.update(f"{rel.as_posix()}\n{len(data)}\n".encode())
        h.update(data)
    return h.hexdigest()


def source_hash(app_name: str) -> str:
    """The hash of everything a build of the app reads (a build is reused while it is unchanged)."""
    return _hash_files(app_dir(app_name), source_files(app_name))


def build_dir(app_name: str) -> Path:
    return BUILD_ROOT / app_name


def _tools() -> tuple[str, str]:
    node = shutil.which("node")
    npm = shutil.which("npm")
    if node is None or npm is None:
        raise BundleBuildUnavailable(f"{'node' if node is None else 'npm'} is not installed (on PATH)")
    try:
        version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise BundleBuildUnavailable(f"{node} --version failed: {e}") from None
    match = re.match(r"v(\d+)\.", version.strip())
    if match is None or int(match.group(1)) < MIN_NODE_MAJOR:
        raise BundleBuildUnavailable(f"node {version.strip()} is too old: the build needs node >= {MIN_NODE_MAJOR}")
    return node, npm


def _run(command: list[str], cwd: Path, timeout: int) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "npm_config_cache": str(NPM_CACHE), "npm_config_update_notifier": "false"}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def _tail(result: subprocess.CompletedProcess[str], lines: int = 20) -> str:
    output = (result.stderr.strip() + "\n" + result.stdout.strip()).strip()
    return "\n".join(output.splitlines()[-lines:])


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        try:
            import fcntl
        except ImportError:  # not POSIX: builds are not serialised
            yield
            return
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _install(app_name: str, out: Path, npm: str) -> None:
    """node_modules for the app's package.json and lock (reused while they are unchanged)."""
    present = [Path(name) for name in DEPENDENCY_FILES if (out / name).is_file()]
    deps_hash = _hash_files(out, present)
    stamp = out / ".dependencies-hash"
    if (out / "node_modules").is_dir() and stamp.is_file() and stamp.read_text() == deps_hash:
        return
    stamp.unlink(missing_ok=True)
    command = [npm, "ci" if (out / "package-lock.json").is_file() else "install", "--cache", str(NPM_CACHE),
               *NPM_FLAGS]
    try:
        result = _run(command, out, INSTALL_TIMEOUT)
    except (OSError, subprocess.SubprocessError) as e:
        raise BundleBuildUnavailable(f"npm install for the {app_name} app failed: {e}") from None
    if result.returncode != 0:
        raise BundleBuildUnavailable(f"npm install for the {app_name} app failed ({' '.join(command[1:2])}, "
                                     f"exit {result.returncode}):\n{_tail(result)}")
    stamp.write_text(deps_hash)


def _step(name: str, command: list[str], cwd: Path) -> None:
    try:
        result = _run(command, cwd, STEP_TIMEOUT)
    except (OSError, subprocess.SubprocessError) as e:
        raise BundleBuildError(f"{name} failed: {e}") from None
    if result.returncode != 0:
        raise BundleBuildError(f"{name} failed (exit {result.returncode}):\n{_tail(result)}")


def build_bundle(app_name: str, *, force: bool = False) -> Path:
    """Build the app's bundle.json (or reuse the last build of the same sources) and return its path.

    Raises `BundleBuildUnavailable` if node/npm are missing or the dependencies cannot be installed, and
    `BundleBuildError` if the app does not build.
    """
    directory = app_dir(app_name)
    out = build_dir(app_name)
    bundle = out / "dist" / "bundle.json"
    stamp = out / ".source-hash"
    with _locked(out):
        digest = source_hash(app_name)
        if not force and bundle.is_file() and stamp.is_file() and stamp.read_text() == digest:
            return bundle
        node, npm = _tools()
        stamp.unlink(missing_ok=True)
        for stale in ("src", "dist", "app.json", "package-lock.json"):
            path = out / stale
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        for rel in source_files(app_name):
            target = out / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(directory / rel, target)
        _install(app_name, out, npm)

        configs = sorted(p.name for p in out.glob("rollup.config.*"))
        if not configs:
            raise BundleBuildError(f"The {app_name} app has no rollup.config.*")
        rollup = out / "node_modules" / "rollup" / "dist" / "bin" / "rollup"
        _step(f"rollup for the {app_name} app", [node, str(rollup), "--config", configs[0]], out)
        shutil.copyfile(out / "app.json", out / "dist" / "app.json")
        build_script = out / "node_modules" / "@microsoft" / "ccf-app" / "scripts" / "build_bundle.js"
        _step(f"ccf-build-bundle for the {app_name} app", [node, str(build_script), "dist"], out)
        if not bundle.is_file():
            raise BundleBuildError(f"ccf-build-bundle wrote no {bundle}")
        stamp.write_text(digest)
    return bundle


def load_bundle(app_name: str) -> dict[str, Any]:
    """The app's bundle ({"metadata": {"endpoints": ...}, "modules": [{"name", "module"}]}), built if need be."""
    bundle: dict[str, Any] = json.loads(build_bundle(app_name).read_text())
    return bundle


# --- checks ------------------------------------------------------------------------------------------------

_SPECIFIER = re.compile(
    r"""(?:\bimport\s*(?:[\w$*{}\s,]+?\s*from\s*)?|\bexport\s*(?:[\w$*{}\s,]+?)\s*from\s*|\bimport\s*\(\s*)"""
    r"""(["'])([^"']+)\1"""
)


_COMMENTS = re.compile(r"/\*.*?\*/|^\s*//[^\n]*", re.DOTALL | re.MULTILINE)


def module_imports(source: str) -> list[str]:
    """The module specifiers a module imports or re-exports from (static and dynamic imports; a heuristic for
    rollup's output: comments are left out, strings that look like imports are not)."""
    return [m.group(2) for m in _SPECIFIER.finditer(_COMMENTS.sub("", source))]


def resolve_specifier(importer: str, specifier: str) -> str | None:
    """A relative specifier as a bundle module name, relative to the importing module (None if not relative)."""
    if not specifier.startswith(("./", "../")):
        return None
    parts = importer.split("/")[:-1]
    for part in specifier.split("/"):
        if part == "..":
            if not parts:
                return "../" + specifier  # escapes the bundle: never a module name
            parts.pop()
        elif part not in ("", "."):
            parts.append(part)
    return "/".join(parts)


def bundle_problems(bundle: dict[str, Any]) -> list[str]:
    """What is wrong with a bundle: endpoints naming a missing module, imports not resolving to a module."""
    names = {m["name"] for m in bundle["modules"]}
    problems = []
    for path, methods in bundle["metadata"]["endpoints"].items():
        for method, properties in methods.items():
            if properties.get("js_module") not in names:
                problems.append(f"{method.upper()} {path}: js_module {properties.get('js_module')!r} not in bundle")
    for module in bundle["modules"]:
        for specifier in module_imports(module["module"]):
            resolved = resolve_specifier(module["name"], specifier)
            if resolved is None:
                problems.append(f"{module['name']}: import of {specifier!r} is not relative")
            elif resolved not in names:
                problems.append(f"{module['name']}: import of {specifier!r} ({resolved}) is not in the bundle")
    return problems


def main(argv: list[str]) -> int:
    status = 0
    for app_name in argv or apps():
        try:
            path = build_bundle(app_name)
        except BundleBuildUnavailable as e:
            print(f"{app_name}: unavailable: {e.reason}")
            status = 1
            continue
        bundle = json.loads(path.read_text())
        endpoints = sum(len(methods) for methods in bundle["metadata"]["endpoints"].values())
        print(f"{app_name}: {path} ({endpoints} endpoints)")
        for module in bundle["modules"]:
            print(f"  {module['name']}")
        for problem in bundle_problems(bundle):
            print(f"  PROBLEM: {problem}")
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


REQUIRE_VARIABLE = "PYCCF_REQUIRE_JS_BUNDLES"  # `make test` sets it: there, a bundle that cannot be built fails


def bundle_dir_or_skip(app: str) -> Path:
    """The built bundle's directory for a test. Without node or the npm registry the test is skipped with the reason,
    unless PYCCF_REQUIRE_JS_BUNDLES=1 (as `make test` runs), where it fails: the suite never hides a missing build."""
    import pytest

    try:
        return build_bundle(app).parent
    except BundleBuildUnavailable as e:
        if os.environ.get(REQUIRE_VARIABLE) == "1":
            pytest.fail(f"cannot build the {app} bundle with npm ({REQUIRE_VARIABLE}=1): {e.reason}")
        pytest.skip(f"cannot build the {app} bundle with npm: {e.reason}")
