"""The graphql-yoga peer (Node): where it is, and installing a private copy to run.

The peer lives read-only in `<repo>/../shared/peers/yoga` (`--shared-dir` or BENCH_SHARED_DIR
say otherwise). It is copied, without node_modules, to `bench/.cache/yoga-<hash of its files>`
(BENCH_CACHE_DIR moves the cache) and `npm ci` runs there once; later runs reuse the copy while
the peer's files are unchanged. `--yoga-dir` uses an installed copy as it is.

bench/stack.py starts it with its own `start.sh` (which execs node, so the pid is node's) on a
free port, with `PBKDF2_ITERATIONS=1000`, the contract SDL from `shared/design`, and a database of
its own (`bench_yoga_<random>`, created at its first start, dropped at the end of the run).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("BENCH_CACHE_DIR") or ROOT / "bench" / ".cache")
PEER_FILES = ("package.json", "package-lock.json", "server.mjs", "start.sh")


class PeerUnavailable(RuntimeError):
    """The peer cannot run here (no node, no shared folder, npm ci failed): skip it."""


def shared_dir(override: str | os.PathLike[str] | None = None) -> Path:
    return Path(override or os.environ.get("BENCH_SHARED_DIR") or ROOT.parent / "shared")


@dataclass
class YogaPeer:
    directory: Path  # an installed copy: node_modules present
    contract: Path
    node: str
    psql: str | None

    def argv(self) -> list[str]:
        # start.sh checks the database with psql; without psql, node directly (same env).
        if self.psql:
            return [str(self.directory / "start.sh")]
        return [self.node, "server.mjs"]


def _fingerprint(source: Path) -> str:
    digest = hashlib.sha256()
    for name in PEER_FILES:
        digest.update(name.encode() + b"\0" + (source / name).read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def locate(shared: Path, installed: Path | None = None, log: Any = print) -> YogaPeer:
    """Find node and the peer, and install a private copy if there is none yet."""
    node = shutil.which("node")
    if node is None:
        raise PeerUnavailable("node is not on PATH")
    source = shared / "peers" / "yoga"
    contract = shared / "design" / "api-contract.graphql"
    if not contract.is_file():
        raise PeerUnavailable(f"no contract SDL at {contract}")
    psql = shutil.which("psql")
    if installed is not None:
        if not (installed / "node_modules").is_dir() or not (installed / "server.mjs").is_file():
            raise PeerUnavailable(f"{installed} has no server.mjs and node_modules")
        return YogaPeer(installed, contract, node, psql)
    missing = [name for name in PEER_FILES if not (source / name).is_file()]
    if missing:
        raise PeerUnavailable(f"{source} is missing {missing}")
    target = CACHE / f"yoga-{_fingerprint(source)}"
    if not (target / "node_modules").is_dir():
        npm = shutil.which("npm")
        if npm is None:
            raise PeerUnavailable("npm is not on PATH (needed once, for npm ci)")
        log(f"  installing the yoga peer into {target} (npm ci) ...")
        CACHE.mkdir(parents=True, exist_ok=True)
        staging = CACHE / f"{target.name}.tmp{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        for entry in source.iterdir():
            if entry.name != "node_modules" and entry.is_file():
                shutil.copy2(entry, staging / entry.name)
                os.chmod(staging / entry.name, (entry.stat().st_mode & 0o777) | 0o200)
        try:
            done = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--prefer-offline"],
                cwd=staging,
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            shutil.rmtree(staging, ignore_errors=True)
            raise PeerUnavailable(f"npm ci failed: {error!r}") from error
        if done.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            raise PeerUnavailable(f"npm ci failed ({done.returncode}): {done.stderr[-2000:]}")
        try:
            staging.rename(target)
        except OSError:  # another run installed it meanwhile
            shutil.rmtree(staging, ignore_errors=True)
    return YogaPeer(target, contract, node, psql)
