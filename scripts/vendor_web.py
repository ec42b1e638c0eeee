#!/usr/bin/env python3
"""Vendor the web client's pinned npm libraries into web/vendor, as browser-ready ES modules.

The client (web/) runs without a build step, so the libraries must load as they are in a
browser under `script-src 'self'`. Each pinned tarball is downloaded and checked against the
registry's sha512 integrity (as scripts/vendor_graphiql.py does for GraphiQL); then the few
changes a bundler would make are applied, and nothing else:

- bare import specifiers ("wonka", "@0no-co/graphql.web") become relative paths to the
  vendored files (an import map would need an inline script, which the CSP forbids);
- `process.env.NODE_ENV` becomes "production" (what every bundler defines; a browser has no
  `process`);
- `//# sourceMappingURL=` lines are dropped (the maps are not shipped).

web/vendor/MANIFEST.json records each package's tarball and integrity and each written file's
sha256. `--check` re-downloads everything and fails unless the files on disk are exactly what
this script writes; `--verify` checks the files against the manifest offline (the test suite
does that).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import posixpath
import re
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vendor_graphiql import DEFAULT_REGISTRY, Extracted, fetch_package

# package -> (version, files to keep). LICENSE files ride along (MIT requires the notice).
# "urql" itself is the React binding; without a framework the client uses @urql/core, its
# framework-free core, with its two dependencies.
PINS: dict[str, tuple[str, tuple[str, ...]]] = {
    "wonka": ("6.3.6", ("dist/wonka.mjs", "LICENSE.md")),
    "@0no-co/graphql.web": ("1.3.4", ("dist/graphql.web.mjs", "LICENSE.md")),
    "@urql/core": ("6.0.3", ("dist/urql-core.mjs", "dist/urql-core-chunk.mjs", "LICENSE")),
    "graphql-ws": ("6.4.2", ("dist/client.js", "dist/common-CGW11Fyb.js", "LICENSE.md")),
}

# Bare specifiers the vendored modules import, and the vendored file each one means.
SPECIFIERS: dict[str, tuple[str, str]] = {
    "wonka": ("wonka", "dist/wonka.mjs"),
    "@0no-co/graphql.web": ("@0no-co/graphql.web", "dist/graphql.web.mjs"),
}

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DEST = ROOT / "web" / "vendor"
MANIFEST_NAME = "MANIFEST.json"
# A static import or re-export statement, one per line as in these builds (strings that merely
# mention `from 'ws'` inside a message are left alone).
_IMPORT = re.compile(
    r"""^((?:import|export)\b[^"'\n]*?\bfrom\s*|import\s*)(["'])([^"'./][^"']*)\2""",
    re.MULTILINE,
)
_SOURCE_MAP = re.compile(r"^//# sourceMappingURL=.*$\n?", re.MULTILINE)


def dir_name(package: str, version: str) -> str:
    """A package's folder, npm-pack style (@scope/name -> scope-name-version)."""
    return f"{package.lstrip('@').replace('/', '-')}-{version}"


def _target(package: str, rel: str) -> str:
    return posixpath.join(dir_name(package, PINS[package][0]), rel)


def browser_ready(package: str, rel: str, content: bytes) -> bytes:
    """The file as a browser loads it: relative imports, production mode, no source map."""
    if not rel.endswith((".js", ".mjs")):
        return content
    text = content.decode("utf-8")
    here = posixpath.dirname(_target(package, rel))

    def relative(match: re.Match[str]) -> str:
        keyword, quote, specifier = match.groups()
        if specifier not in SPECIFIERS:
            raise SystemExit(f"{package}/{rel}: unknown bare import {specifier!r}")
        other, file = SPECIFIERS[specifier]
        path = posixpath.relpath(_target(other, file), here)
        return f"{keyword}{quote}{path if path.startswith('.') else './' + path}{quote}"

    text = _IMPORT.sub(relative, text)
    text = text.replace("process.env.NODE_ENV", '"production"')
    text = _SOURCE_MAP.sub("", text)
    return text.encode("utf-8")


def build(extracted: list[Extracted]) -> tuple[dict[str, bytes], dict[str, Any]]:
    """Every file to write (path relative to the vendor folder) and the manifest."""
    files: dict[str, bytes] = {}
    manifest: dict[str, Any] = {"generated_by": "scripts/vendor_web.py", "packages": {}}
    for item in extracted:
        manifest["packages"][item.package] = {
            "version": item.version,
            "tarball": item.tarball,
            "integrity": item.integrity,
        }
        for rel, content in sorted(item.files.items()):
            files[_target(item.package, rel)] = browser_ready(item.package, rel, content)
    manifest["files"] = {
        path: hashlib.sha256(content).hexdigest() for path, content in sorted(files.items())
    }
    return files, manifest


def fetch_all(registry: str) -> list[Extracted]:
    """Download and verify every pinned package (nothing on disk changes)."""
    return [
        fetch_package(registry, package, version, wanted)
        for package, (version, wanted) in PINS.items()
    ]


def verify(dest: Path) -> list[str]:
    """What differs between the vendor folder and its manifest (empty when they agree)."""
    manifest = json.loads((dest / MANIFEST_NAME).read_text(encoding="utf-8"))
    problems = []
    expected: dict[str, str] = manifest["files"]
    for path, digest in expected.items():
        file = dest / path
        if not file.is_file():
            problems.append(f"missing {path}")
        elif hashlib.sha256(file.read_bytes()).hexdigest() != digest:
            problems.append(f"changed {path}")
    for file in dest.rglob("*"):
        rel = file.relative_to(dest).as_posix()
        if file.is_file() and rel != MANIFEST_NAME and rel not in expected:
            problems.append(f"not in the manifest: {rel}")
    pinned = {name: version for name, (version, _) in PINS.items()}
    recorded = {name: entry["version"] for name, entry in manifest["packages"].items()}
    if pinned != recorded:
        problems.append(f"manifest records {recorded}, the script pins {pinned}")
    return problems


def main(argv: list[str] | None = None) -> int:
    """Vendor (default), --check against the registry, or --verify offline."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST, help="folder to fill")
    parser.add_argument("--registry", default=DEFAULT_REGISTRY, help="npm registry base URL")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="rebuild in memory and compare")
    mode.add_argument("--verify", action="store_true", help="compare files with the manifest")
    args = parser.parse_args(argv)
    dest: Path = args.dest

    if args.verify:
        problems = verify(dest)
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1 if problems else 0

    files, manifest = build(fetch_all(args.registry.rstrip("/")))
    manifest_text = json.dumps(manifest, indent=2) + "\n"
    if args.check:
        problems = verify(dest)
        on_disk = json.loads((dest / MANIFEST_NAME).read_text(encoding="utf-8"))
        if on_disk != manifest:
            problems.append("MANIFEST.json differs from a fresh build")
        for path, content in files.items():
            file = dest / path
            if not file.is_file() or file.read_bytes() != content:
                problems.append(f"differs from a fresh build: {path}")
        for problem in problems:
            print(problem, file=sys.stderr)
        print("vendored files match the pinned npm releases" if not problems else "mismatch")
        return 1 if problems else 0

    # Everything was downloaded and verified above, so a failure leaves the old files intact.
    if dest.exists():
        shutil.rmtree(dest)
    for path, content in files.items():
        target = dest / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    (dest / MANIFEST_NAME).write_text(manifest_text, encoding="utf-8")
    total = sum(len(content) for content in files.values())
    for path, content in files.items():
        print(f"{len(content):>9}  {path}")
    print(f"{total:>9}  total in {len(files)} files -> {os.path.relpath(dest)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
