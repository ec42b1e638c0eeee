"""The stack under test: a fresh database per run, and server processes started and stopped here.

Stacks: sqlite (a temp file, memory:// pub/sub), pg (a fresh `bench_<random>` database,
memory://), pg-redis (the same with redis:// pub/sub and, by default, two server processes).
Migrations are applied with `chat-backend migrate`; servers are `chat-backend serve` (through
bench/serve.py, which raises the open-files limit and runs it in-process, so the pid is the
server's). Servers of kind "relay" are bench/relay.py; kind "yoga" is the Node peer (bench/peer.py)
on a database of its own, on every stack (it needs PostgreSQL at --pg-url).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

from bench.loadgen import Endpoint
from bench.procs import split_cpus

ROOT = Path(__file__).resolve().parent.parent

STACKS = ("sqlite", "pg", "pg-redis")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _with_database(url: str, database: str) -> str:
    parts = urlparse(url)
    return urlunparse(parts._replace(path="/" + database))


@dataclass
class Server:
    kind: str  # "app", "relay" or "yoga"
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str] = field(repr=False, default_factory=dict)
    health_path: str = "/healthz"
    gc_path: Path | None = None  # app only: its GC pauses (bench/gcstats.py)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint("127.0.0.1", self.port)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def wait_ready(self, limit_s: float = 60.0) -> None:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.kind} server exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                request = f"GET {self.health_path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                writer.write(request.encode())
                await writer.drain()
                head = await asyncio.wait_for(reader.read(64), 5)
                writer.close()
                if head.startswith(b"HTTP/1.1 200"):
                    return
            except (OSError, TimeoutError):
                pass
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.kind} server not ready after {limit_s}s:\n{self.log_tail()}")

    async def stop(self, limit_s: float = 40.0) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.to_thread(self.process.wait), limit_s)
        except TimeoutError:
            self.process.kill()
            await asyncio.to_thread(self.process.wait)


def _spawn(
    argv: list[str], env: dict[str, str], cwd: str | None, log: Path, cpus: set[int] | None = None
) -> Any:
    """Start a server process (returns at once) with its output in a log file, on `cpus`
    when given (taskset sets them before the program starts, so all its threads inherit them;
    it execs the program, which keeps the pid)."""
    if cpus is not None:
        argv = ["taskset", "--cpu-list", ",".join(str(cpu) for cpu in sorted(cpus)), *argv]
    with open(log, "wb") as handle:
        return subprocess.Popen(argv, env=env, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT)


class Stack:
    """One run's database and broker; starts servers against them."""

    def __init__(
        self,
        name: str,
        *,
        pg_admin_url: str,
        redis_url: str,
        workdir: Path,
        keep_db: bool = False,
        nice: int = 0,
        pin: bool = False,
        shared_dir: Path | None = None,
        yoga_dir: Path | None = None,
    ) -> None:
        if name not in STACKS:
            raise ValueError(f"unknown stack {name!r}; one of {STACKS}")
        self.name = name
        self.pg_admin_url = pg_admin_url
        self.redis_url = redis_url
        self.workdir = workdir
        self.keep_db = keep_db
        self.nice = nice
        # --pin: (servers' cores, the rest's); the database's and broker's previous affinity.
        self.cpus = split_cpus() if pin else None
        self._pinned: dict[int, set[int]] = {}
        self.db_name = ""
        self.database_url = ""
        self.sqlite_path: Path | None = None
        self.secret = secrets.token_urlsafe(48)
        self.servers: list[Server] = []
        self.meters: list[Any] = []
        self._tmp: str | None = None
        # The yoga peer: located/installed at its first start; its own database.
        self.shared_dir = shared_dir
        self.yoga_dir = yoga_dir
        self.yoga: Any = None
        self.yoga_unavailable = ""
        self.yoga_db = ""

    @property
    def is_sqlite(self) -> bool:
        return self.name == "sqlite"

    @property
    def default_instances(self) -> int:
        return 2 if self.name == "pg-redis" else 1

    def broadcast_url(self, override: str | None = None) -> str:
        if override:
            return override
        return self.redis_url if self.name == "pg-redis" else "memory://"

    @property
    def infra_filter(self) -> dict[str, str]:
        """Only this run's PostgreSQL backends (others' tests may share the server)."""
        return {"postgres": f" {self.db_name} "} if self.db_name else {}

    @property
    def server_cpus(self) -> set[int] | None:
        return self.cpus[0] if self.cpus is not None else None

    def pin_others(self) -> None:
        """--pin: this process (the generator), PostgreSQL and Redis on the cores the servers do
        not use (PostgreSQL's backends inherit it from the postmaster), until unpin_others."""
        if self.cpus is None:
            return
        from bench.procs import pids_named, set_affinity

        rest = self.cpus[1]
        for pid in [os.getpid(), *pids_named("postgres", "redis-server")]:
            self._pinned.update(set_affinity(pid, rest))

    def unpin_others(self) -> None:
        from bench.procs import restore_affinity

        restore_affinity(self._pinned)
        self._pinned.clear()

    def renice_database(self, kind: str = "app") -> int:
        """Give this run's PostgreSQL backends the bench priority (those open now)."""
        narrow = self.database_filter(kind)
        if not self.nice or not narrow:
            return 0
        from bench.procs import pids_named

        count = 0
        for pid in pids_named("postgres", cmdline_contains=narrow):
            try:
                os.setpriority(os.PRIO_PROCESS, pid, self.nice)
                count += 1
            except OSError:
                pass
        return count

    def meter(self, servers: list[Server]) -> Any:
        """CPU of these servers and of what they use: their own database's backends (and
        redis-server on pg-redis); nothing for the relay."""
        from bench.procs import CpuMeter

        kind = servers[0].kind if servers else "app"
        if kind == "relay":
            meter = CpuMeter([s.pid for s in servers])
        elif kind == "yoga":
            names: tuple[str, ...] = ("postgres",)
            if self.name == "pg-redis":
                names += ("redis-server",)
            meter = CpuMeter([s.pid for s in servers], names, {"postgres": f" {self.yoga_db} "})
        else:
            meter = CpuMeter([s.pid for s in servers], self.infra_process_names, self.infra_filter)
        self.meters.append(meter)  # closed (its polling thread) by stop_all
        return meter

    @property
    def infra_process_names(self) -> tuple[str, ...]:
        if self.name == "sqlite":
            return ()
        if self.name == "pg":
            return ("postgres",)
        return ("postgres", "redis-server")

    def database_filter(self, kind: str) -> dict[str, str]:
        """Process-title filter of the PostgreSQL backends serving servers of this kind."""
        if kind == "yoga":
            return {"postgres": f" {self.yoga_db} "} if self.yoga_db else {}
        return self.infra_filter if kind == "app" else {}

    @property
    def yoga_dsn(self) -> str:
        return _with_database(self.pg_admin_url.replace("+asyncpg", ""), self.yoga_db)

    async def ensure_yoga(self) -> Any:
        """Locate (and on first use install) the peer, and create its database; raises
        PeerUnavailable with the reason when it cannot run here."""
        from bench.peer import PeerUnavailable, locate, shared_dir

        if self.yoga_unavailable:
            raise PeerUnavailable(self.yoga_unavailable)
        if self.yoga is None:
            try:
                self.yoga = await asyncio.to_thread(
                    locate, shared_dir(self.shared_dir), self.yoga_dir
                )
            except PeerUnavailable as error:
                self.yoga_unavailable = str(error)
                raise
        if not self.yoga_db:
            import asyncpg

            name = "bench_yoga_" + secrets.token_hex(4)
            admin = await asyncpg.connect(self.pg_admin_url.replace("+asyncpg", ""))
            try:
                await admin.execute(f'CREATE DATABASE "{name}"')
            finally:
                await admin.close()
            self.yoga_db = name
        return self.yoga

    def yoga_env(self, port: int) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if key in ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "USER")
        }
        env.update(
            {
                "HOST": "127.0.0.1",
                "PORT": str(port),
                "PBKDF2_ITERATIONS": "1000",
                "DATABASE_URL": self.yoga_dsn.replace("postgresql://", "postgres://", 1),
                "CONTRACT_PATH": str(self.yoga.contract),
                "JWT_SECRET": self.secret,
                "NODE_ENV": "production",
            }
        )
        if self.name == "pg-redis":
            env["REDIS_URL"] = self.redis_url
        return env

    async def setup(self) -> None:
        self._tmp = tempfile.mkdtemp(prefix="chat-bench-")
        if self.is_sqlite:
            self.sqlite_path = Path(self._tmp) / "chat.db"
            self.database_url = f"sqlite+aiosqlite:///{self.sqlite_path}"
        else:
            import asyncpg

            self.db_name = "bench_" + secrets.token_hex(4)
            admin = await asyncpg.connect(self.pg_admin_url.replace("+asyncpg", ""))
            try:
                await admin.execute(f'CREATE DATABASE "{self.db_name}"')
            finally:
                await admin.close()
            base = self.pg_admin_url
            if base.startswith("postgresql://"):
                base = "postgresql+asyncpg://" + base[len("postgresql://") :]
            self.database_url = _with_database(base, self.db_name)
        # This checkout's code (the console script may belong to another checkout's editable
        # install of the same venv).
        migrate = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.serve",
            "app",
            "--",
            "migrate",
            env={**self.env(), "PYTHONPATH": str(ROOT)},
            cwd=self._tmp,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await migrate.communicate()
        if migrate.returncode != 0:
            raise RuntimeError(f"chat-backend migrate failed:\n{output.decode(errors='replace')}")

    @property
    def asyncpg_dsn(self) -> str:
        return self.database_url.replace("postgresql+asyncpg://", "postgresql://")

    def env(
        self, broadcast: str | None = None, extra: dict[str, str] | None = None
    ) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            # Nothing of a developer's own configuration leaks into the bench server.
            if key in ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "USER")
        }
        env.update(
            {
                "ENVIRONMENT": "development",
                "DATA_DIR": str(Path(self._tmp or ".") / "data"),
                "DATABASE_URL": self.database_url,
                "BROADCAST_URL": self.broadcast_url(broadcast),
                "SECRET_KEY": self.secret,
                "PBKDF2_ITERATIONS": "1000",
                "RATE_LIMIT_MESSAGES": "0",
                "RATE_LIMIT_SIGN_IN": "0",
                "RATE_LIMIT_SIGN_IN_PER_ADDRESS": "0",
                "RATE_LIMIT_SIGN_UP_PER_ADDRESS": "0",
                "COOKIE_SECURE": "false",
                "GRAPHIQL": "false",
                "PYTHONUNBUFFERED": "1",
            }
        )
        # BENCH_SERVER_<NAME>=value sets <NAME> for the server: the one way in for a setting
        # under comparison (BENCH_SERVER_METRICS=false measures the metrics' cost).
        prefix = "BENCH_SERVER_"
        env.update(
            {
                key[len(prefix) :]: value
                for key, value in os.environ.items()
                if key.startswith(prefix)
            }
        )
        env.update(extra or {})
        return env

    async def start(
        self,
        count: int = 1,
        *,
        kind: str = "app",
        broadcast: str | None = None,
        extra_env: dict[str, str] | None = None,
        label: str = "",
    ) -> list[Server]:
        """Start `count` servers (app, relay or yoga) and wait until each answers its health
        check. yoga raises bench.peer.PeerUnavailable when the peer cannot run here."""
        if kind == "yoga":
            await self.ensure_yoga()
        started = []
        for index in range(count):
            port = free_port()
            log_path = Path(self._tmp or ".") / f"server-{label or kind}-{index}-{port}.log"
            gc_path = None
            if kind == "yoga":
                env = self.yoga_env(port)
                process = _spawn(
                    self.yoga.argv(), env, str(self.yoga.directory), log_path, self.server_cpus
                )
                if self.nice:
                    with contextlib.suppress(OSError):
                        os.setpriority(os.PRIO_PROCESS, process.pid, self.nice)
                server = Server(
                    kind=kind,
                    port=port,
                    process=process,
                    log_path=log_path,
                    env=env,
                    health_path="/health",
                )
                started.append(server)
                self.servers.append(server)
                continue
            if kind == "app":
                argv = [
                    sys.executable,
                    "-m",
                    "bench.serve",
                    "app",
                    "--",
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--log-level",
                    "warning",
                ]
            else:
                argv = [sys.executable, "-m", "bench.serve", "relay", "--port", str(port)]
            env = self.env(broadcast, extra_env)
            env["PYTHONPATH"] = str(ROOT)
            if self.nice:
                env["BENCH_NICE"] = str(self.nice)
            for name in (
                "BENCH_GC_LOG",
                "BENCH_GC_LOG_OBJECTS",
                "BENCH_GC_THRESHOLD",
                "BENCH_GC_FREEZE_EVERY",
            ):
                if os.environ.get(name):
                    env[name] = os.environ[name]
            if kind == "app":
                gc_path = log_path.with_suffix(".gc.json")
                env["BENCH_GC_PAUSES"] = str(gc_path)
            process = _spawn(argv, env, self._tmp, log_path, self.server_cpus)
            server = Server(
                kind=kind, port=port, process=process, log_path=log_path, env=env, gc_path=gc_path
            )
            started.append(server)
            self.servers.append(server)
        for server in started:
            await server.wait_ready()
        return started

    async def stop_all(self) -> None:
        await asyncio.gather(*(server.stop() for server in self.servers))
        for meter in self.meters:
            meter.close()
        self.meters.clear()
        # Logs and GC pause files are kept next to the JSON for a post-mortem.
        for server in self.servers:
            for path in (server.log_path, server.gc_path):
                if path is not None and path.parent != self.workdir:
                    with contextlib.suppress(OSError):
                        shutil.copyfile(path, self.workdir / path.name)
        self.servers.clear()

    async def teardown(self) -> None:
        await self.stop_all()
        databases = [name for name in (self.db_name, self.yoga_db) if name]
        if databases and not self.keep_db:
            import asyncpg

            for name in databases:
                with contextlib.suppress(Exception):
                    admin = await asyncpg.connect(self.pg_admin_url.replace("+asyncpg", ""))
                    try:
                        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                    finally:
                        await admin.close()
        if self._tmp and not self.keep_db:
            shutil.rmtree(self._tmp, ignore_errors=True)
