"""Optional sampling profiles of the server (py-spy, installed separately: `pip install py-spy`).

`--profile` records each server process during a scenario's measured phase (py-spy record
--gil, raw collapsed stacks), and summarises the stacks into
CPU shares by package and the top functions by self and inclusive time.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]+)(?::(?P<line>\d+))?\)$")


def py_spy() -> str | None:
    candidate = Path(sys.executable).parent / "py-spy"
    if candidate.exists():
        return str(candidate)
    return shutil.which("py-spy")


class Profiler:
    """py-spy record on some pids until stop()."""

    def __init__(self, pids: list[int], out_prefix: Path, rate: int = 100) -> None:
        self.pids = pids
        self.out_prefix = out_prefix
        self.rate = rate
        self.processes: list[tuple[int, subprocess.Popen[bytes], Path]] = []

    def start(self) -> bool:
        exe = py_spy()
        if exe is None:
            print("  (py-spy not found: pip install py-spy into the venv to profile)")
            return False
        self.out_prefix.parent.mkdir(parents=True, exist_ok=True)
        for pid in self.pids:
            out = Path(f"{self.out_prefix}-{pid}.txt")
            process = subprocess.Popen(
                [
                    exe,
                    "record",
                    # Only the thread holding the GIL: CPU spent in Python (and C called from it),
                    # not threads idling in a queue (py-spy's idle detection misses those here).
                    "--gil",
                    "--pid",
                    str(pid),
                    "--rate",
                    str(self.rate),
                    "--format",
                    "raw",
                    "--output",
                    str(out),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            self.processes.append((pid, process, out))
        time.sleep(0.5)
        return True

    def stop(self) -> dict[str, Any]:
        results: dict[str, Any] = {}
        for _pid, process, _out in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        for pid, process, out in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
            if out.exists():
                results[str(pid)] = {"file": str(out), **summarize(out)}
        self.processes.clear()
        return results


def _bucket(path: str) -> str:
    """The package a frame's file belongs to (py-spy prints paths relative to sys.path)."""
    path = path.split("site-packages/", 1)[-1]
    if "/lib/python3" in path:
        path = path.split("/lib/python3", 1)[1].split("/", 1)[-1]
    for mine in ("api/", "schema/", "bench/"):
        if path.startswith(mine) or f"/{mine}" in path:
            rest = path.split(mine, 1)[1]
            return mine + rest.split("/", 1)[0].removesuffix(".py")
    head = path.lstrip("/").split("/", 1)[0]
    return head.removesuffix(".py")


def _frame_key(frame: str) -> tuple[str, str]:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame, frame
    path = match.group("file")
    short = path.split("site-packages/", 1)[-1]
    for mine in ("/api/", "/schema/", "/bench/"):
        if mine in short:
            short = mine.strip("/") + "/" + short.split(mine, 1)[1]
    return f"{match.group('func')} ({short})", _bucket(path)


def summarize(path: Path, top: int = 25) -> dict[str, Any]:
    """CPU shares from py-spy's raw collapsed stacks: by package (leaf), self and inclusive."""
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_key(f) for f in stack.split(";") if f]
        # The first frame is the thread's name ("process 123:..." or "thread ..."): skip non-frames.
        frames = [f for f in frames if "(" in f[0]]
        if not frames:
            continue
        total += count
        leaf_name, leaf_bucket = frames[-1]
        self_time[leaf_name] += count
        packages[leaf_bucket] += count
        for name in {name for name, _ in frames}:
            inclusive[name] += count
    if not total:
        return {"samples": 0}

    def share(counter: Counter[str], n: int) -> list[tuple[str, float]]:
        return [(name, round(100 * value / total, 1)) for name, value in counter.most_common(n)]

    return {
        "samples": total,
        "by_package_pct": share(packages, 20),
        "self_pct": share(self_time, top),
        "inclusive_pct": share(inclusive, top * 2),
    }


def format_summary(summary: dict[str, Any], top: int = 15) -> str:
    if not summary.get("samples"):
        return "  (no samples)"
    lines = [f"  samples: {summary['samples']}", "  by package (self time):"]
    lines += [f"    {pct:5.1f}%  {name}" for name, pct in summary["by_package_pct"][:top]]
    lines.append("  top functions (self):")
    lines += [f"    {pct:5.1f}%  {name}" for name, pct in summary["self_pct"][:top]]
    lines.append("  top functions (inclusive):")
    lines += [f"    {pct:5.1f}%  {name}" for name, pct in summary["inclusive_pct"][: top * 2]]
    return "\n".join(lines)


if __name__ == "__main__":
    for argument in sys.argv[1:]:
        print(argument)
        print(format_summary(summarize(Path(argument)), top=30))
