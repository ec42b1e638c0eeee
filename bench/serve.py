"""Start a server process with a raised open-files limit, keeping the pid (os.execv).

    python -m bench.serve app   -- chat-backend serve --port 8000 ...
    python -m bench.serve relay --port 8001

`app` runs the real `chat-backend serve` (api.cli.main, what the console script calls) in this
process, so /proc readings of this pid are the server's; `relay` runs the bare WebSocket relay
(bench/relay.py) under the same uvicorn options.

Measured in the server process (app only):
  BENCH_GC_PAUSES=<path>       every garbage collection's pause, in a histogram per generation,
                               written to <path> as JSON every 0.5 s and at exit (bench/gcstats.py)

Bench-only experiments on the server process (production code is untouched; they show what a
proposed change would buy):
  BENCH_GC_LOG=<ms>            log each garbage collection that takes longer than <ms> (stderr)
  BENCH_GC_THRESHOLD=a,b,c     gc.set_threshold(a, b, c)
  BENCH_GC_FREEZE_EVERY=<s>    gc.freeze() every <s> seconds: long-lived objects (sockets,
                               subscriptions) leave the generations a full collection scans
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
from pathlib import Path


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def install_gc_log(threshold_ms: float) -> None:
    import gc
    import time

    started: dict[str, float] = {}
    count_objects = os.environ.pop("BENCH_GC_LOG_OBJECTS", "") == "1"

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started["t"] = time.perf_counter()
            return
        took = 1000 * (time.perf_counter() - started.get("t", time.perf_counter()))
        if took >= threshold_ms:
            # Counting objects costs a pause of its own: only with BENCH_GC_LOG_OBJECTS=1.
            objects = f", objects {len(gc.get_objects())}" if count_objects else ""
            print(
                f"bench-gc: {time.strftime('%H:%M:%S')} generation {info['generation']} took "
                f"{took:.1f} ms, collected {info['collected']}{objects}",
                file=sys.stderr,
                flush=True,
            )

    gc.callbacks.append(callback)


def start_gc_freezer(every: float) -> None:
    import gc
    import threading
    import time

    def loop() -> None:
        while True:
            time.sleep(every)
            gc.freeze()

    threading.Thread(target=loop, name="bench-gc-freeze", daemon=True).start()


def main() -> None:
    raise_nofile()
    nice = int(os.environ.pop("BENCH_NICE", "0") or 0)
    if nice:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    mode = sys.argv[1]
    from bench.gcstats import install_from_env

    install_from_env()
    gc_log = float(os.environ.pop("BENCH_GC_LOG", "0") or 0)
    if gc_log:
        install_gc_log(gc_log)
    threshold = os.environ.pop("BENCH_GC_THRESHOLD", "")
    if threshold:
        import gc

        gc.set_threshold(*(int(part) for part in threshold.split(",")))
    freeze_every = float(os.environ.pop("BENCH_GC_FREEZE_EVERY", "0") or 0)
    if freeze_every:
        start_gc_freezer(freeze_every)
    if mode == "app":
        argv = sys.argv[2:]
        if argv and argv[0] == "--":
            argv = argv[1:]
        from api.cli import main as chat_backend

        sys.argv = [str(Path(sys.executable).parent / "chat-backend"), *argv]
        sys.exit(chat_backend(argv))
    parser = argparse.ArgumentParser()
    parser.add_argument("mode")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args()
    import uvicorn

    from api.cli import uvicorn_options
    from api.core.settings import Settings

    options = uvicorn_options(Settings())
    options["lifespan"] = "on"
    uvicorn.run(
        "bench.relay:app", host=args.host, port=args.port, log_level=args.log_level, **options
    )


if __name__ == "__main__":
    main()
