"""Run the benchmarks against servers this command starts itself; print a table, write JSON.

    .venv/bin/python -m bench.run --stack pg --scenario all
    .venv/bin/python -m bench.run --stack pg --scenario peer          # ours / yoga / relay
    .venv/bin/python -m bench.run --stack sqlite --scenario fanout,relay --quick

See bench/README.md for what each scenario does and how to read the results.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import secrets
import subprocess
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import compare, gcstats, signals
from bench.scenarios import SCENARIOS as BASE_SCENARIOS
from bench.scenarios import Config, Context, median
from bench.stack import ROOT, STACKS, Stack

SCENARIOS = {**BASE_SCENARIOS, **compare.SCENARIOS, **signals.SCENARIOS}
BASE = ["fanout", "relay", "large", "sending", "history", "idle", "twoinstances"]
PEER = compare.GROUPS["peer"]
ALL = [*BASE, *PEER, "mix10x10", "stalled", "signals"]
GROUPS = {"all": ALL, **compare.GROUPS}


def _labels(text: str) -> list[str]:
    labels = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [label for label in labels if label not in compare.STACK_LABELS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown stack(s) {unknown}; {compare.STACK_LABELS}")
    return labels


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--stack", choices=STACKS, default="sqlite")
    parser.add_argument(
        "--scenario",
        default="all",
        help=f"comma-separated scenarios ({','.join(ALL)}) or groups: all, "
        f"peer (= {','.join(PEER)})",
    )
    parser.add_argument(
        "--quick", action="store_true", help="short steps: a smoke run (peer: about 4 min)"
    )
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="an admin connection; the run creates and drops its own bench_<random> database",
    )
    parser.add_argument(
        "--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    parser.add_argument("--instances", type=int, help="server processes (pg-redis: 2)")
    parser.add_argument(
        "--out", type=Path, help="JSON path (default bench/results/<ts>-<stack>.json)"
    )
    parser.add_argument("--keep-db", action="store_true", help="keep the database and temp dir")
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="scheduling priority of servers, generator and this run's database "
        "backends (e.g. -10, as root) on a machine shared with other work",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="servers under test on the last core; the generator, PostgreSQL and Redis on the "
        "others (every stack alike; affinities restored at the end): the server's CPU per "
        "operation without the others' work on its core",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the servers during each sweep (pip install py-spy)",
    )
    peer = parser.add_argument_group("the yoga peer (peer10x10, peer1x500, sending1, stalled)")
    peer.add_argument(
        "--shared-dir",
        type=Path,
        help="the shared folder holding peers/yoga and design/ (default <repo>/../shared)",
    )
    peer.add_argument(
        "--yoga-dir",
        type=Path,
        help="an installed copy of the peer to use as is (default: copy + npm ci into "
        "bench/.cache once)",
    )
    peer.add_argument(
        "--peer-stacks",
        type=_labels,
        help="which of ours,yoga,relay the side-by-side scenarios run (default all three)",
    )
    group = parser.add_argument_group("sizes and durations (defaults: full run; --quick: small)")
    group.add_argument("--step-seconds", type=float, help="each sweep step's sending time")
    group.add_argument("--drain-seconds", type=float, help="max wait for a step's stragglers")
    group.add_argument("--message-bytes", type=int, help="size of each message's data")
    group.add_argument(
        "--inbox",
        action="store_true",
        help="sockets subscribe to `inbox` instead of `messageAdded(roomId)`",
    )
    group.add_argument(
        "--no-client-ids",
        action="store_true",
        help="send without clientMessageId (no idempotency lookup)",
    )
    group.add_argument("--fanout-rooms", type=int)
    group.add_argument("--fanout-devices", type=int, help="devices (sockets) per member")
    group.add_argument("--fanout-rates", type=_ints, help="deliveries/s per step, e.g. 1000,2000")
    group.add_argument("--relay-extra-rates", type=_ints, help="more relay steps (deliveries/s)")
    group.add_argument("--large-sockets", type=int)
    group.add_argument(
        "--large-rates",
        type=lambda t: [float(x) for x in t.split(",")],
        help="messages/s into the large room, per step (default 2,10)",
    )
    group.add_argument("--large-seconds", type=float)
    group.add_argument("--idle-sockets", type=int)
    group.add_argument("--idle-seconds", type=float)
    group.add_argument("--history-messages", type=int)
    group.add_argument("--history-requests", type=int, help="requests per depth")
    group.add_argument("--sending-rooms", type=int)
    group.add_argument("--sending-rates", type=_ints, help="messages/s per step")
    group.add_argument(
        "--peer-warm-seconds", type=float, help="unmeasured load before each stack's steps (3)"
    )
    group.add_argument("--peer-rate", type=float, help="peer10x10: msgs/s (default 200)")
    group.add_argument("--peer-seconds", type=float, help="peer10x10: the fixed step (15)")
    group.add_argument("--peer-sweep-rates", type=_ints, help="peer10x10 sweep: msgs/s per step")
    group.add_argument("--peer-sweep-seconds", type=float, help="peer10x10 sweep: step (8)")
    group.add_argument("--peer-large-sockets", type=int, help="peer1x500: sockets (500)")
    group.add_argument("--peer-large-rate", type=float, help="peer1x500: msgs/s (20)")
    group.add_argument("--peer-large-seconds", type=float, help="peer1x500: seconds (15)")
    group.add_argument("--sending1-rooms", type=int, help="sending1: rooms (100)")
    group.add_argument("--sending1-rates", type=_ints, help="sending1: msgs/s per step")
    group.add_argument("--sending1-seconds", type=float, help="sending1: step (8)")
    group.add_argument(
        "--sending1-stacks", type=_labels, help="sending1: stacks (ours,yoga,relay; quick: 2)"
    )
    group.add_argument("--stalled-messages", type=int, help="stalled: stored messages (20,000)")
    group.add_argument("--stalled-subscriptions", type=int, help="stalled: subscriptions (50)")
    group.add_argument("--stalled-rate", type=float, help="stalled: msgs/s while stalled (50)")
    group.add_argument("--stalled-seconds", type=float, help="stalled: seconds of sending (20)")
    group.add_argument(
        "--mix-edits", type=float, help="mix10x10: share of operations that edit (0.1)"
    )
    group.add_argument(
        "--mix-reactions", type=float, help="mix10x10: share of operations that react (0.1)"
    )
    group.add_argument(
        "--mix-rounds", type=int, help="mix10x10: plain/mix pairs on the same sockets (2; quick 1)"
    )
    group.add_argument("--signals-members", type=int, help="signals: room members = sockets (200)")
    group.add_argument(
        "--signals-rate", type=float, help="signals: setTyping calls/s over all members (20)"
    )
    group.add_argument("--signals-seconds", type=float, help="signals: each window (30; quick 10)")
    group.add_argument(
        "--signals-message-rate",
        type=float,
        help="signals: messageAdded msgs/s for comparison (default 2 x --signals-rate)",
    )
    return parser.parse_args(argv)


def build_config(args: argparse.Namespace) -> Config:
    config = Config.quick_config() if args.quick else Config()
    for name in (
        "step_seconds",
        "drain_seconds",
        "message_bytes",
        "fanout_rooms",
        "fanout_devices",
        "fanout_rates",
        "relay_extra_rates",
        "large_sockets",
        "large_rates",
        "large_seconds",
        "idle_sockets",
        "idle_seconds",
        "history_messages",
        "history_requests",
        "sending_rooms",
        "sending_rates",
        "instances",
        "peer_stacks",
        "peer_warm_seconds",
        "peer_rate",
        "peer_seconds",
        "peer_sweep_rates",
        "peer_sweep_seconds",
        "peer_large_sockets",
        "peer_large_rate",
        "peer_large_seconds",
        "sending1_rooms",
        "sending1_rates",
        "sending1_seconds",
        "sending1_stacks",
        "stalled_messages",
        "stalled_subscriptions",
        "stalled_rate",
        "stalled_seconds",
        "mix_edits",
        "mix_reactions",
        "mix_rounds",
        "signals_members",
        "signals_rate",
        "signals_seconds",
        "signals_message_rate",
    ):
        value = getattr(args, name)
        if value is not None:
            setattr(config, name, value)
    config.inbox = args.inbox
    config.client_ids = not args.no_client_ids
    config.profile = args.profile
    return config


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        return ""


def _dirty() -> list[str]:
    """Uncommitted changes to what the server runs (api/, schema/, migrations/)."""
    return _git("status", "--porcelain", "--", "api", "schema", "migrations").splitlines()


def _meta(args: argparse.Namespace, config: Config, stack: Stack) -> dict[str, Any]:
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "started": datetime.now(UTC).isoformat(),
        "stack": stack.name,
        "database": stack.name if stack.is_sqlite else f"postgresql ({stack.db_name})",
        "broadcast": stack.broadcast_url(),
        "instances": config.instances or stack.default_instances,
        "quick": config.quick,
        "config": {k: v for k, v in config.__dict__.items()},
        "git": {"commit": _git("rev-parse", "HEAD"), "dirty": _dirty()},
        "machine": {
            "cpus": os.cpu_count(),
            "cpu_model": cpu_model,
            "python": platform.python_version(),
        },
        "nofile_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "nice": args.nice,
        "pin": (
            {"servers": sorted(stack.cpus[0]), "others": sorted(stack.cpus[1])}
            if stack.cpus is not None
            else None
        ),
        "argv": sys.argv[1:],
        "node": _node_version(),
    }


def _node_version() -> str:
    try:
        return subprocess.run(
            ["node", "--version"], capture_output=True, text=True, check=False, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


# --------------------------------------------------------------------------------------------
# Targets and tables


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def relay_ratio(results: dict[str, Any], kind: str = "fanout") -> dict[str, Any] | None:
    """Our server CPU per delivery over the relay's, at the rates both ran."""
    app = results.get(kind) or {}
    relay = results.get("relay") or {}
    if kind == "large":
        relay = relay.get("large") or {}
    if not app.get("steps") or not relay.get("steps"):
        return None
    relay_by_rate = {s["offered_deliveries_per_s"]: s for s in relay["steps"]}
    per_rate = []
    for step in app["steps"]:
        other = relay_by_rate.get(step["offered_deliveries_per_s"])
        if other and step["server_cpu_us_per_delivery"] and other["server_cpu_us_per_delivery"]:
            per_rate.append(
                {
                    "deliveries_per_s": step["offered_deliveries_per_s"],
                    "app_us": step["server_cpu_us_per_delivery"],
                    "relay_us": other["server_cpu_us_per_delivery"],
                    "ratio": round(
                        step["server_cpu_us_per_delivery"] / other["server_cpu_us_per_delivery"], 2
                    ),
                    "app_passed": step["pass"],
                }
            )
    passed = [r for r in per_rate if r["app_passed"]]
    return {
        "per_rate": per_rate,
        "ratio_median": median([r["ratio"] for r in per_rate]),
        "ratio_at_best_app_rate": passed[-1]["ratio"] if passed else None,
    }


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def add(scenario: str, metric: str, measured: Any, target: str, met: bool | None) -> None:
        rows.append(
            {
                "scenario": scenario,
                "metric": metric,
                "measured": measured,
                "target": target,
                "met": met,
            }
        )

    fan = results.get("fanout")
    if fan and fan.get("steps"):
        best = fan.get("best") or {}
        add(
            "fanout",
            "highest rate with p99 <= 50 ms, nothing lost (deliveries/s)",
            best.get("deliveries_per_s"),
            ">= 5,000",
            (best.get("deliveries_per_s") or 0) >= 5000,
        )
        add(
            "fanout",
            "server CPU per delivery at that rate (us)",
            best.get("server_cpu_us_per_delivery"),
            "",
            None,
        )
    ratio = relay_ratio(results)
    if ratio:
        value = ratio["ratio_at_best_app_rate"] or ratio["ratio_median"]
        add(
            "relay",
            "fan-out: our CPU per delivery / bare relay's",
            value,
            "<= 2.0",
            value is not None and value <= 2.0,
        )
    ratio = relay_ratio(results, "large")
    if ratio:
        value = ratio["ratio_median"]
        add(
            "relay",
            "large room (delivery path): our CPU per delivery / relay's",
            value,
            "(<= 2.0)",
            value is not None and value <= 2.0,
        )
    large = results.get("large")
    if large and large.get("steps"):
        for step in large["steps"]:
            add(
                "large",
                f"{step['msgs_per_s']:g} msgs/s into {large['sockets']:,} sockets: "
                "p50 / p99 to the last recipient (ms)",
                f"{_fmt(step['last_recipient_ms']['p50'])} / "
                f"{_fmt(step['last_recipient_ms']['p99'])}"
                + (f" (lost {step['lost']:,})" if step["lost"] else ""),
                "p99 <= 100 at 10/s",
                step["pass"],
            )
    idle = results.get("idle")
    if idle and "rss_per_socket_kb" in idle:
        add(
            "idle",
            f"resident memory per socket ({idle['sockets']:,} sockets, KB)",
            idle["rss_per_socket_kb"],
            "",
            None,
        )
        add(
            "idle",
            f"server resident memory with {idle['sockets']:,} idle sockets (MB)",
            idle["rss_end_mb"],
            "<= 500 (10,000 sockets)",
            idle["rss_end_mb"] <= 500,
        )
        add(
            "idle",
            "server CPU while idle (% of one core)",
            round(idle["idle_cpu"]["server_cpu_pct"], 2),
            "< 5%",
            idle["idle_cpu"]["server_cpu_pct"] < 5,
        )
    history = results.get("history")
    if history and "newest" in history:
        depths = ("newest", "depth_50pct", "depth_99pct")
        worst = max(history[d]["latency_ms"]["p99"] for d in depths)
        add(
            "history",
            f"page p99 at {history['messages']:,} messages (ms, worst depth)",
            worst,
            "<= 5",
            worst <= 5,
        )
        add(
            "history",
            "99%-deep page p99 / newest page p99",
            history["deep_over_newest_p99"],
            "<= 1.2",
            history["deep_over_newest_p99"] is not None and history["deep_over_newest_p99"] <= 1.2,
        )
        used = all(v["index_used"] for v in history.get("sql", {}).values())
        add("history", "index (room_id, seq) used at every depth", used, "yes", used)
    sending = results.get("sending")
    if sending and sending.get("steps"):
        best = sending.get("best") or {}
        add(
            "sending",
            "highest sendMessage rate with p99 <= 20 ms (msgs/s)",
            best.get("msgs_per_s"),
            ">= 1,000/process",
            (best.get("msgs_per_s") or 0) >= 1000 * sending["servers"],
        )
        cpu = [
            s["server_cpu_us_per_message"]
            for s in sending["steps"]
            if s["server_cpu_us_per_message"]
        ]
        middle = median(cpu)
        if middle is not None:
            add(
                "sending",
                "server CPU per sendMessage, incl. its 2 deliveries (ms, median)",
                round(middle / 1000, 2),
                "(<= 1 ms for 1,000/s on a core)",
                None,
            )
    two = results.get("twoinstances")
    if two and "two_redis" in two:
        add(
            "twoinstances",
            "two instances / one (highest passing deliveries/s)",
            two["ratio_best_passing"],
            ">= 1.8",
            two["ratio_best_passing"] is not None and two["ratio_best_passing"] >= 1.8,
        )
        add(
            "twoinstances",
            "two instances / one (max delivered/s, any latency)",
            two["ratio_max_delivered"],
            "",
            None,
        )
    compare.targets(results, add)
    signals.targets(results, add)
    return rows


def _sweep_table(title: str, result: dict[str, Any], latency: str = "delivery_ms") -> list[str]:
    lines = [
        f"\n### {title}: {result['servers']} {result['server_kind']} process(es), "
        f"{result['rooms']} room(s), {result['sockets']:,} sockets ({result['sockets_per_room']} "
        "per room)\n",
        "| deliv/s offered | msgs/s | delivered | p50 ms | p99 ms | p99 last recip. | send p99 ms "
        "| lost | dup | ooo | errors | server CPU % | us/delivery | db+broker CPU % | gen CPU % "
        "| other CPU % | GC max ms / >20 ms | pass |",
        "|" + "---:|" * 17 + "---|",
    ]
    for s in result["steps"]:
        lines.append(
            f"| {_fmt(s['offered_deliveries_per_s'])} | {_fmt(s['msgs_per_s'], 0)} | "
            f"{_fmt(s['deliveries'])} | {_fmt(s[latency]['p50'])} | {_fmt(s[latency]['p99'])} | "
            f"{_fmt(s['last_recipient_ms']['p99'])} | {_fmt(s['response_ms']['p99'])} | "
            f"{s['lost']} | {s['duplicates']} | {s['out_of_order']} | "
            f"{s['errors'] + s['send_errors']} | {_fmt(s['cpu']['server_cpu_pct'], 0)} | "
            f"{_fmt(s['server_cpu_us_per_delivery'])} | {_fmt(s['cpu']['infra_cpu_pct'], 0)} | "
            f"{_fmt(s['cpu']['generator_cpu_pct'], 0)} | {_fmt(s['cpu']['other_cpu_pct'], 0)} | "
            f"{gcstats.describe(s.get('gc'))} | "
            f"{'yes' if s['pass'] else 'no: ' + s['fail_reason']} |"
        )
    return lines


def render(report: dict[str, Any]) -> str:
    meta = report["meta"]
    results = report["scenarios"]
    lines = [
        f"## chat-backend benchmark: stack {meta['stack']} "
        f"({meta['instances']} instance(s), {meta['broadcast']})"
        f"{' QUICK' if meta['quick'] else ''}",
        f"\n{meta['machine']['cpus']} CPUs ({meta['machine']['cpu_model']}), commit "
        f"{meta['git']['commit'][:10]}"
        f"{' (+ uncommitted changes in api/schema)' if meta['git']['dirty'] else ''}; "
        "generator, servers, database and broker share these cores.\n",
        "| scenario | metric | measured | target | met |",
        "|---|---|---:|---|---|",
    ]
    for row in report["targets"]:
        lines.append(
            f"| {row['scenario']} | {row['metric']} | {_fmt(row['measured'])} | "
            f"{row['target']} | {_fmt(row['met']) if row['met'] is not None else ''} |"
        )
    for name, result in results.items():
        if "error" in result:
            lines.append(f"\n### {name}: ERROR\n\n```\n{result['error']}\n```")
    lines += compare.render(results)
    lines += signals.render(results)
    for name in ("fanout", "relay", "sending"):
        if results.get(name, {}).get("steps"):
            lines += _sweep_table(name, results[name])
    if results.get("large", {}).get("steps"):
        lines += _sweep_table("large", results["large"], "delivery_ms")
    if results.get("relay", {}).get("large", {}).get("steps"):
        lines += _sweep_table("relay / large room", results["relay"]["large"])
    for kind in ("fanout", "large"):
        ratio = relay_ratio(results, kind)
        if ratio and ratio["per_rate"]:
            lines.append(f"\n### server CPU per delivery, {kind}: app / bare relay\n")
            lines.append("| deliv/s | app us | relay us | ratio |")
            lines.append("|---:|---:|---:|---:|")
            for r in ratio["per_rate"]:
                lines.append(
                    f"| {_fmt(r['deliveries_per_s'])} | {_fmt(r['app_us'])} | "
                    f"{_fmt(r['relay_us'])} | {_fmt(r['ratio'], 2)} |"
                )
    two = results.get("twoinstances", {})
    for label in ("one_memory", "one_redis", "two_redis"):
        if two.get(label, {}).get("steps"):
            lines += _sweep_table(f"twoinstances / {label}", two[label])
    idle = results.get("idle")
    if idle and "sockets" in idle:
        lines.append("\n### idle\n")
        lines.append(
            "| sockets | open at end | RSS baseline MB | RSS end MB | KB/socket | "
            "idle server CPU % | idle db/broker CPU % | connect sockets/s | "
            "server CPU ms/connect |"
        )
        lines.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        lines.append(
            f"| {_fmt(idle['sockets'])} | {_fmt(idle['open_sockets_at_end'])} | "
            f"{_fmt(idle['rss_baseline_mb'])} | {_fmt(idle['rss_end_mb'])} | "
            f"{_fmt(idle['rss_per_socket_kb'])} | {_fmt(idle['idle_cpu']['server_cpu_pct'], 2)} | "
            f"{_fmt(idle['idle_cpu']['infra_cpu_pct'], 2)} | "
            f"{_fmt(idle['connect']['sockets_per_s'])} | "
            f"{_fmt(idle['connect']['server_cpu_ms_per_socket'], 2)} |"
        )
    history = results.get("history")
    if history and "newest" in history:
        lines.append(f"\n### history ({history['messages']:,} messages, pages of 50)\n")
        lines.append(
            "| depth | first seq | HTTP p50 ms | HTTP p99 ms | server CPU ms/req | "
            "db CPU ms/req | SQL alone p50 ms | SQL alone p99 ms | index used |"
        )
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---|")
        for depth in ("newest", "depth_50pct", "depth_99pct"):
            h = history[depth]
            sql = history.get("sql", {}).get(depth, {})
            lines.append(
                f"| {depth} | {_fmt(h['first_seq'])} | {_fmt(h['latency_ms']['p50'], 2)} | "
                f"{_fmt(h['latency_ms']['p99'], 2)} | {_fmt(h['server_cpu_ms_per_request'], 2)} | "
                f"{_fmt(h['infra_cpu_ms_per_request'], 2)} | "
                f"{_fmt(sql.get('alone_ms', {}).get('p50'), 3)} | "
                f"{_fmt(sql.get('alone_ms', {}).get('p99'), 3)} | {_fmt(sql.get('index_used'))} |"
            )
        plan = history.get("sql", {}).get("depth_99pct", {}).get("plan")
        if plan:
            lines.append("\nPlan of the 99%-deep page:\n\n```\n" + "\n".join(plan) + "\n```")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    config = build_config(args)
    names: list[str] = []
    for part in (p.strip() for p in args.scenario.split(",") if p.strip()):
        for name in GROUPS.get(part, [part]):
            if name not in names:
                names.append(name)
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenario(s) {unknown}; choose from {ALL} or {list(GROUPS)}")
    if "all" in args.scenario.split(",") and args.stack != "pg-redis":
        names = [name for name in names if name != "twoinstances"]
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or ROOT / "bench" / "results" / f"{stamp}-{args.stack}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out_dir = out.with_suffix("")
    out_dir.mkdir(parents=True, exist_ok=True)
    stack = Stack(
        args.stack,
        pg_admin_url=args.pg_url,
        redis_url=args.redis_url,
        workdir=out_dir,
        keep_db=args.keep_db,
        nice=args.nice,
        pin=args.pin,
        shared_dir=args.shared_dir,
        yoga_dir=args.yoga_dir,
    )
    if args.nice:
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)
    print(f"setting up {args.stack} ...", flush=True)
    await stack.setup()
    stack.pin_others()
    ctx = Context(
        stack=stack,
        config=config,
        out_dir=out_dir,
        run_id=secrets.token_hex(4),
        log=lambda text: print(text, flush=True),
    )
    report: dict[str, Any] = {"meta": _meta(args, config, stack), "scenarios": {}, "targets": []}
    started = time.monotonic()
    try:
        for name in names:
            print(f"== {name} ({time.monotonic() - started:.0f}s elapsed)", flush=True)
            t0 = time.monotonic()
            # Servers start from the working tree: record what each scenario actually ran.
            code = {"commit": _git("rev-parse", "HEAD"), "dirty": _dirty()}
            try:
                result = await SCENARIOS[name](ctx)
            except Exception as error:  # report it, run the next scenario
                logs = "\n".join(f"--- {s.log_path.name}\n{s.log_tail(15)}" for s in stack.servers)
                result = {"error": f"{error!r}\n{traceback.format_exc()}\n{logs}"}
                print(f"  ERROR: {error!r}\n{logs}", flush=True)
            finally:
                await stack.stop_all()  # keeps their logs next to the JSON
            result["wall_s"] = round(time.monotonic() - t0, 1)
            result["code"] = code
            report["scenarios"][name] = result
            report["targets"] = targets(report["scenarios"])
            out.write_text(json.dumps(report, indent=1, default=str))
    finally:
        stack.unpin_others()
        await stack.teardown()
    report["meta"]["wall_s"] = round(time.monotonic() - started, 1)
    if stack.yoga is not None or stack.yoga_unavailable:
        report["meta"]["yoga"] = {
            "directory": str(stack.yoga.directory) if stack.yoga is not None else None,
            "database": stack.yoga_db,
            "unavailable": stack.yoga_unavailable,
        }
    report["targets"] = targets(report["scenarios"])
    out.write_text(json.dumps(report, indent=1, default=str))
    print()
    print(render(report))
    print(f"\nJSON: {out}")
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_nofile()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        asyncio.run(run(args))
    else:
        uvloop.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
