"""CPU and memory of processes, read from /proc (Linux only)."""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds; 0.0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            raw = handle.read()
    except OSError:
        return 0.0
    # The command name may contain spaces and parentheses: split after the last ')'.
    fields = raw[raw.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (VmRSS), in bytes; 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as handle:
            for line in handle:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def pids_named(*names: str, cmdline_contains: dict[str, str] | None = None) -> list[int]:
    """Processes whose command name (comm) is one of names, e.g. postgres, redis-server.

    cmdline_contains narrows a name to processes whose command line has a word, e.g. the
    PostgreSQL backends of one database ("postgres: 15/main: postgres bench_1234 ...").
    """
    found = []
    wanted = set(names)
    narrow = cmdline_contains or {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as handle:
                comm = handle.read().strip()
            if comm not in wanted:
                continue
            if comm in narrow:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    if narrow[comm].encode() not in handle.read():
                        continue
            found.append(int(entry))
        except OSError:
            continue
    return found


def machine_busy() -> tuple[float, float, float]:
    """(busy, total, steal) seconds of all CPUs since boot, from /proc/stat. Steal is time the
    hypervisor gave to other guests: counted as busy, but not work done on this machine."""
    with open("/proc/stat") as handle:
        parts = [int(value) for value in handle.readline().split()[1:]]
    idle = parts[3] + parts[4]  # idle + iowait
    total = sum(parts[:8])
    steal = parts[7] if len(parts) > 7 else 0
    return (total - idle) / CLK_TCK, total / CLK_TCK, steal / CLK_TCK


@dataclass
class CpuSnapshot:
    at: float
    servers: dict[int, float]
    infra: dict[int, float]
    generator: float
    machine_busy: float
    machine_total: float
    machine_steal: float = 0.0


class CpuMeter:
    """Before/after CPU of the server processes, the database/broker and this generator."""

    def __init__(
        self,
        server_pids: list[int],
        infra_names: tuple[str, ...] = (),
        infra_filter: dict[str, str] | None = None,
    ) -> None:
        self.server_pids = list(server_pids)
        self.infra_names = infra_names
        self.infra_filter = infra_filter

    def snapshot(self) -> CpuSnapshot:
        pids = pids_named(*self.infra_names, cmdline_contains=self.infra_filter)
        infra = {pid: cpu_seconds(pid) for pid in pids} if self.infra_names else {}
        busy, total, steal = machine_busy()
        return CpuSnapshot(
            at=time.perf_counter(),
            servers={pid: cpu_seconds(pid) for pid in self.server_pids},
            infra=infra,
            generator=self_cpu_seconds(),
            machine_busy=busy,
            machine_total=total,
            machine_steal=steal,
        )

    @staticmethod
    def delta(before: CpuSnapshot, after: CpuSnapshot) -> dict[str, float]:
        wall = after.at - before.at
        server = sum(after.servers[pid] - before.servers.get(pid, 0.0) for pid in after.servers)
        # Only processes alive at both ends (a pooled backend lives through a phase).
        infra = sum(
            after.infra[pid] - before.infra[pid] for pid in after.infra if pid in before.infra
        )
        generator = after.generator - before.generator
        machine = after.machine_busy - before.machine_busy
        steal = after.machine_steal - before.machine_steal
        other = max(0.0, machine - steal - server - infra - generator)
        return {
            "wall_s": wall,
            "server_cpu_s": server,
            "server_cpu_pct": 100 * server / wall if wall else 0.0,
            "infra_cpu_s": infra,
            "infra_cpu_pct": 100 * infra / wall if wall else 0.0,
            "generator_cpu_s": generator,
            "generator_cpu_pct": 100 * generator / wall if wall else 0.0,
            "machine_cpu_pct": 100 * machine / wall if wall else 0.0,
            # Everything else on the machine: other people's tests, shared database processes.
            "other_cpu_pct": 100 * other / wall if wall else 0.0,
            # CPU the hypervisor gave to other guests (a busy host).
            "steal_cpu_pct": 100 * steal / wall if wall else 0.0,
        }
