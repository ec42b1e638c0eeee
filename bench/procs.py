"""CPU and memory of processes, read from /proc (Linux only)."""

from __future__ import annotations

import os
import resource
import threading
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


def cpu_and_start(pid: int) -> tuple[float, int] | None:
    """(utime + stime in seconds, start time in clock ticks since boot), or None when gone.
    The start time tells a process from a later one that reuses its pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            raw = handle.read()
    except OSError:
        return None
    fields = raw[raw.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK, int(fields[19])


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


class ProcessFinder:
    """pids_named for repeated polling: a pid whose command name is not wanted is remembered
    (backends are forked, so a postgres backend is named postgres from its first instant; its
    title, which names the database, is read again until it matches)."""

    def __init__(self, names: tuple[str, ...], narrow: dict[str, str] | None = None) -> None:
        self.wanted = set(names)
        self.narrow = {name: word.encode() for name, word in (narrow or {}).items()}
        self.ignored: set[int] = set()

    def find(self) -> list[int]:
        found = []
        alive = set()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            alive.add(pid)
            if pid in self.ignored:
                continue
            try:
                with open(f"/proc/{entry}/comm") as handle:
                    comm = handle.read().strip()
                if comm not in self.wanted:
                    self.ignored.add(pid)
                    continue
                if comm in self.narrow:
                    with open(f"/proc/{entry}/cmdline", "rb") as handle:
                        if self.narrow[comm] not in handle.read():
                            continue
                found.append(pid)
            except OSError:
                continue
        self.ignored &= alive
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
    infra: dict[tuple[int, int], float]  # (pid, start time) -> CPU seconds last seen
    generator: float
    machine_busy: float
    machine_total: float
    machine_steal: float = 0.0


class CpuMeter:
    """Before/after CPU of the server processes, the database/broker and this generator.

    Database backends come and go (a pool's overflow connections live for a few transactions):
    a thread looks for them every `poll_s` and remembers each one's last CPU reading, so one
    that started after the `before` snapshot counts in full and one that ended before `after`
    counts up to its last reading. Only backends that live less than `poll_s` are missed.
    """

    def __init__(
        self,
        server_pids: list[int],
        infra_names: tuple[str, ...] = (),
        infra_filter: dict[str, str] | None = None,
        poll_s: float = 0.1,
    ) -> None:
        self.server_pids = list(server_pids)
        self.infra_names = infra_names
        self.infra_filter = infra_filter
        self.poll_s = poll_s
        self._seen: dict[tuple[int, int], float] = {}
        self._finder = ProcessFinder(infra_names, infra_filter)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _poll(self) -> None:
        pids = self._finder.find()
        readings = [(pid, cpu_and_start(pid)) for pid in pids]
        with self._lock:
            for pid, reading in readings:
                if reading is not None:
                    self._seen[(pid, reading[1])] = reading[0]

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            self._poll()

    def close(self) -> None:
        self._stop.set()

    def snapshot(self) -> CpuSnapshot:
        infra: dict[tuple[int, int], float] = {}
        if self.infra_names:
            self._poll()
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._loop, name="cpu-meter", daemon=True)
                self._thread.start()
            with self._lock:
                infra = dict(self._seen)
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
        # Backends first seen after `before` started after it: all their CPU is in the window.
        infra = sum(cpu - before.infra.get(key, 0.0) for key, cpu in after.infra.items())
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


def set_affinity(pid: int, cpus: set[int]) -> dict[int, set[int]]:
    """Pin every thread of a process to `cpus`; returns each thread's previous set (to
    restore). Threads it starts later inherit the set of the thread that starts them."""
    previous: dict[int, set[int]] = {}
    try:
        tasks = [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return previous
    for tid in tasks:
        try:
            previous[tid] = os.sched_getaffinity(tid)
            os.sched_setaffinity(tid, cpus)
        except OSError:
            continue
    return previous


def restore_affinity(previous: dict[int, set[int]]) -> None:
    for tid, cpus in previous.items():
        try:
            os.sched_setaffinity(tid, cpus)
        except OSError:
            continue


def split_cpus() -> tuple[set[int], set[int]] | None:
    """(the servers' cores, everything else's) for --pin: the last core for the servers under
    test, the others for the generator, PostgreSQL and Redis; None with a single core."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    return {cpus[-1]}, set(cpus[:-1])
