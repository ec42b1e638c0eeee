#!/usr/bin/env python3
"""Vendor pinned GraphiQL browser assets from npm into api/static/graphiql."""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import shutil
import sys
import tarfile
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Pinned releases: package -> (version, files to keep, relative to the package root).
# Same versions (and byte-identical files) as strawberry-graphql 0.341.2's CDN
# template, so the UI behaves exactly like upstream's. graphql-ws is not listed
# because graphiql.min.js already bundles its client and uses it for
# `subscriptionUrl`. LICENSE files ride along because MIT requires the notice.
PINS: dict[str, tuple[str, tuple[str, ...]]] = {
    "react": ("18.2.0", ("umd/react.production.min.js", "LICENSE")),
    "react-dom": ("18.2.0", ("umd/react-dom.production.min.js", "LICENSE")),
    "js-cookie": ("3.0.5", ("dist/js.cookie.min.js", "LICENSE")),
    "graphiql": ("3.8.3", ("graphiql.min.js", "graphiql.min.css", "LICENSE")),
    # The explorer ships no LICENSE file; it is MIT per its package.json.
    "@graphiql/plugin-explorer": ("1.0.2", ("dist/index.umd.js", "dist/style.css")),
}

DEFAULT_REGISTRY = "https://registry.npmjs.org"
DEFAULT_DEST = Path(__file__).resolve().parent.parent / "api" / "static" / "graphiql"
VENDOR_SUBDIR = "vendor"
MANIFEST_NAME = "MANIFEST.json"
TIMEOUT_SECONDS = 60


@dataclass(frozen=True)
class Extracted:
    """One verified package tarball's wanted files, held in memory."""

    package: str
    version: str
    tarball: str
    integrity: str
    files: dict[str, bytes]


def _get(url: str) -> bytes:
    """Fetch a URL's body."""
    request = urllib.request.Request(url, headers={"User-Agent": "vendor_graphiql.py"})
    with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
        body: bytes = response.read()
        return body


def _dir_name(package: str, version: str) -> str:
    """Return a package's folder name, npm-pack style (@scope/name -> scope-name)."""
    return f"{package.lstrip('@').replace('/', '-')}-{version}"


def _check_integrity(data: bytes, integrity: str, label: str) -> None:
    """Fail unless data matches a sha512 SRI hash the registry published."""
    expected = [h.removeprefix("sha512-") for h in integrity.split() if h.startswith("sha512-")]
    if not expected:
        # Very old packages only carry sha1 `shasum`; refuse rather than trust that.
        raise SystemExit(f"{label}: registry gives no sha512 integrity ({integrity!r})")
    actual = base64.b64encode(hashlib.sha512(data).digest()).decode("ascii")
    if actual not in expected:
        raise SystemExit(f"{label}: sha512 mismatch, got {actual}, registry says {expected}")


def fetch_package(registry: str, package: str, version: str, wanted: tuple[str, ...]) -> Extracted:
    """Download one pinned tarball, verify it, and pull the wanted files out of it."""
    label = f"{package}@{version}"
    # Scoped names must keep '@' but escape '/' in the metadata path.
    quoted = urllib.parse.quote(package, safe="@")
    meta: dict[str, Any] = json.loads(_get(f"{registry}/{quoted}/{version}"))
    dist: dict[str, Any] = meta["dist"]
    integrity: str = dist["integrity"]
    basename = package.rsplit("/", 1)[-1]
    tarball_url = f"{registry}/{package}/-/{basename}-{version}.tgz"
    if dist.get("tarball") not in (None, tarball_url):
        # Surface it rather than silently following a different artifact.
        print(f"note: {label}: registry tarball is {dist['tarball']}", file=sys.stderr)
        tarball_url = dist["tarball"]

    data = _get(tarball_url)
    _check_integrity(data, integrity, label)

    files: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            if not member.isfile():
                continue
            # npm tarballs nest everything under one top folder (usually "package/").
            _, _, rel = member.name.partition("/")
            if rel in wanted or rel == "package.json":
                handle = tar.extractfile(member)
                assert handle is not None
                files[rel] = handle.read()
    # Cross-check that the tarball is the pinned release, not just any blob
    # whose hash the registry vouches for.
    declared = json.loads(files.get("package.json", b"{}"))
    if "package.json" not in wanted:
        files.pop("package.json", None)
    if (declared.get("name"), declared.get("version")) != (package, version):
        found = f"{declared.get('name')}@{declared.get('version')}"
        raise SystemExit(f"{label}: tarball declares {found}")
    missing = sorted(set(wanted) - files.keys())
    if missing:
        raise SystemExit(f"{label}: not in tarball: {missing}")
    return Extracted(package, version, tarball_url, integrity, files)


def write_all(dest: Path, extracted: list[Extracted]) -> dict[str, Any]:
    """Replace dest/vendor with the extracted files and write MANIFEST.json."""
    vendor = dest / VENDOR_SUBDIR
    # Wipe first so files dropped from PINS do not linger; hand-written files
    # (index.html, init.js, ...) live outside vendor/ and are left alone.
    if vendor.exists():
        shutil.rmtree(vendor)
    manifest: dict[str, Any] = {
        "generated_by": "scripts/vendor_graphiql.py",
        "packages": {},
        "files": [],
    }
    for item in extracted:
        manifest["packages"][item.package] = {
            "version": item.version,
            "tarball": item.tarball,
            "integrity": item.integrity,
        }
        for rel, content in sorted(item.files.items()):
            target = vendor / _dir_name(item.package, item.version) / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
            manifest["files"].append(
                {
                    "package": item.package,
                    "version": item.version,
                    "file": target.relative_to(dest).as_posix(),
                    "sha256": hashlib.sha256(content).hexdigest(),
                    "bytes": len(content),
                }
            )
    (dest / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def main(argv: list[str] | None = None) -> int:
    """Vendor every pinned package, verifying each before anything on disk changes."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST, help="static folder to fill")
    parser.add_argument("--registry", default=DEFAULT_REGISTRY, help="npm registry base URL")
    args = parser.parse_args(argv)
    registry: str = args.registry.rstrip("/")
    dest: Path = args.dest

    # Download and verify everything first so a failure leaves the old files intact.
    extracted = [
        fetch_package(registry, package, version, wanted)
        for package, (version, wanted) in PINS.items()
    ]
    dest.mkdir(parents=True, exist_ok=True)
    manifest = write_all(dest, extracted)
    total = sum(entry["bytes"] for entry in manifest["files"])
    for entry in manifest["files"]:
        print(f"{entry['bytes']:>9}  {entry['file']}")
    print(f"{total:>9}  total in {len(manifest['files'])} files -> {dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
