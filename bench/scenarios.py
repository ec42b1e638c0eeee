"""The scenarios: fan-out, large audience, idle, history, sending, two instances, bare relay."""

from __future__ import annotations

import asyncio
import base64
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import gcstats, seed
from bench.loadgen import LoadGen, Mix, Room, StepStats, summarize_ms
from bench.procs import CpuMeter, rss_bytes
from bench.profile import Profiler, format_summary
from bench.stack import Server, Stack

perf = time.perf_counter


@dataclass
class Config:
    quick: bool = False
    step_seconds: float = 10.0
    drain_seconds: float = 10.0
    message_bytes: int = 100
    inbox: bool = False
    client_ids: bool = True
    instances: int | None = None
    # fan-out
    fanout_rooms: int = 100
    fanout_devices: int = 5
    fanout_rates: list[int] = field(
        default_factory=lambda: [
            100,
            250,
            500,
            1000,
            1500,
            2000,
            3000,
            4000,
            5000,
            6000,
            8000,
            10000,
        ]
    )
    relay_extra_rates: list[int] = field(default_factory=lambda: [12000, 15000])
    # large audience
    large_sockets: int = 1000
    large_rates: list[float] = field(default_factory=lambda: [2.0, 10.0])
    large_seconds: float = 20.0
    # idle
    idle_sockets: int = 10000
    idle_devices: int = 5
    idle_seconds: float = 60.0
    # history
    history_messages: int = 1_000_000
    history_requests: int = 300
    # sending
    sending_rooms: int = 100
    sending_rates: list[int] = field(
        default_factory=lambda: [25, 50, 100, 150, 200, 300, 500, 750, 1000, 1250, 1500]
    )
    # side by side with the yoga peer and the relay (bench/compare.py)
    peer_stacks: list[str] = field(default_factory=lambda: ["ours", "yoga", "relay"])
    peer_warm_seconds: float = 3.0  # unmeasured load before a stack's first measured step
    peer_rooms: int = 10
    peer_devices: int = 5
    peer_rate: float = 200.0  # msgs/s (x 10 sockets per room = deliveries/s)
    peer_seconds: float = 15.0
    peer_sweep_rates: list[int] = field(
        default_factory=lambda: [100, 200, 300, 400, 600, 800, 1000]
    )
    peer_sweep_seconds: float = 8.0
    peer_large_sockets: int = 500
    peer_large_rate: float = 20.0
    peer_large_seconds: float = 15.0
    sending1_rooms: int = 100
    sending1_rates: list[int] = field(default_factory=lambda: [250, 500, 750, 1000, 1250, 1500])
    sending1_seconds: float = 8.0
    sending1_stacks: list[str] = field(default_factory=lambda: ["ours", "yoga", "relay"])
    stalled_messages: int = 20_000
    stalled_subscriptions: int = 50
    stalled_rate: float = 50.0
    stalled_seconds: float = 20.0
    stalled_warm_seconds: float = 5.0
    stalled_rcvbuf: int = 65536
    # mix10x10: the peer10x10 topology and rate, plain sends against the activity mix
    mix_edits: float = 0.1
    mix_reactions: float = 0.1
    mix_rounds: int = 2  # plain, mix, plain, mix, ... on the same sockets
    # signals (bench/signals.py): one group room, typing on roomSignals
    signals_members: int = 200
    signals_rate: float = 20.0  # setTyping calls/s over all members
    signals_seconds: float = 30.0
    signals_warm_seconds: float = 3.0
    signals_message_rate: float | None = None  # messageAdded msgs/s; default 2 x signals_rate
    profile: bool = False

    @classmethod
    def quick_config(cls) -> Config:
        return cls(
            quick=True,
            step_seconds=3.0,
            drain_seconds=5.0,
            fanout_rooms=20,
            fanout_rates=[200, 400],
            relay_extra_rates=[],
            large_sockets=200,
            large_rates=[10.0],
            large_seconds=5.0,
            idle_sockets=1000,
            idle_seconds=5.0,
            history_messages=20_000,
            history_requests=30,
            sending_rooms=20,
            sending_rates=[20, 50],
            peer_warm_seconds=2.0,
            peer_seconds=5.0,
            peer_sweep_rates=[200, 400, 800],
            peer_sweep_seconds=4.0,
            peer_large_seconds=5.0,
            sending1_rates=[250, 500, 1000],
            sending1_seconds=4.0,
            sending1_stacks=["ours", "yoga"],
            stalled_seconds=8.0,
            stalled_warm_seconds=3.0,
            mix_rounds=1,
            signals_seconds=10.0,
            signals_warm_seconds=2.0,
        )


@dataclass
class Context:
    stack: Stack
    config: Config
    out_dir: Path
    run_id: str
    log: Callable[[str], None] = print
    _names: int = 0

    def prefix(self, tag: str) -> str:
        """A short unique name prefix (names are 3-32 characters)."""
        self._names += 1
        return f"{tag}{self.run_id[:6]}{self._names}_"

    def instances(self) -> int:
        return self.config.instances or self.stack.default_instances


# --------------------------------------------------------------------------------------------
# Sweeps


def _rss(servers: list[Server]) -> int:
    return sum(rss_bytes(server.pid) for server in servers)


async def _topology(
    ctx: Context,
    lg: LoadGen,
    rooms: int,
    devices: int,
    tag: str,
    member_devices: list[int] | None = None,
) -> tuple[list[Room], dict[str, float]]:
    """Sign up 2 users per room, open their direct rooms, connect and warm up every socket
    (`devices` per member, or member_devices[i] for member i)."""
    timings: dict[str, float] = {}
    prefix = ctx.prefix(tag)
    pairs = [(f"{prefix}a{i}", f"{prefix}b{i}") for i in range(rooms)]
    started = perf()
    cookies = await lg.sign_up([name for pair in pairs for name in pair])
    timings["sign_up_s"] = round(perf() - started, 2)
    started = perf()
    made = await lg.make_direct_rooms(pairs, cookies)
    timings["rooms_s"] = round(perf() - started, 2)
    sockets = rooms * (sum(member_devices) if member_devices is not None else 2 * devices)
    connect_s, warm_s, warm_messages = await lg.connect_and_warm(
        made,
        devices,
        inbox=ctx.config.inbox,
        progress=lambda n: ctx.log(f"    {n}/{sockets} sockets") if n % 1000 < 250 else None,
        member_devices=member_devices,
    )
    timings["connect_s"] = round(connect_s, 2)
    timings["warm_up_s"] = round(warm_s, 2)
    timings["warm_up_messages"] = warm_messages
    timings["resubscribed_after_server_error"] = lg.resubscribed
    return made, timings


Criteria = Callable[[dict[str, Any]], tuple[bool, str]]


def delivery_criteria(p99_ms: float, field_name: str = "delivery_ms") -> Criteria:
    def check(step: dict[str, Any]) -> tuple[bool, str]:
        reasons = []
        p99 = step[field_name]["p99"]
        if p99 is None or p99 > p99_ms:
            reasons.append(f"p99 {p99} ms > {p99_ms}")
        for key in ("lost", "duplicates", "out_of_order", "send_errors", "errors"):
            if step[key]:
                reasons.append(f"{key}={step[key]}")
        if not step["drained"]:
            reasons.append("not drained")
        if step["achieved_send_rate"] < 0.95 * step["msgs_per_s"]:
            reasons.append("generator behind schedule")
        return (not reasons, "; ".join(reasons))

    return check


def sending_criteria(p99_ms: float) -> Criteria:
    base = delivery_criteria(1e9)

    def check(step: dict[str, Any]) -> tuple[bool, str]:
        _ok, reason = base(step)
        reasons = [reason] if reason else []
        p99 = step["response_ms"]["p99"]
        if p99 is None or p99 > p99_ms:
            reasons.append(f"response p99 {p99} ms > {p99_ms}")
        return (not reasons, "; ".join(reasons))

    return check


async def gc_snapshots(servers: list[Server]) -> list[dict[str, Any] | None]:
    """Each app server's GC pause file, written now or later (bench/gcstats.py)."""
    now = time.time()
    return [
        await gcstats.snapshot(server.gc_path, now) if server.gc_path else None
        for server in servers
    ]


def gc_window(
    servers: list[Server], before: list[dict[str, Any] | None], after: list[dict[str, Any] | None]
) -> dict[str, Any] | None:
    if not any(server.gc_path for server in servers):
        return None
    return gcstats.combine([gcstats.window(b, a) for b, a in zip(before, after, strict=True)])


async def _step(
    ctx: Context,
    lg: LoadGen,
    meter: CpuMeter,
    rooms: list[Room],
    msgs_per_s: float,
    seconds: float,
    servers: list[Server] | None = None,
    mix: Mix | None = None,
) -> dict[str, Any]:
    """One open-loop step (with `mix`, msgs_per_s counts every operation) and its drain."""
    tracker = lg.tracker
    gc_before = await gc_snapshots(servers or [])
    tracker.begin_step()
    before = meter.snapshot()
    started = perf()
    achieved = await lg.open_loop(
        rooms, msgs_per_s, seconds, lambda room: len(room.sockets), mix=mix
    )
    send_done = perf()
    drained = await lg.drain(ctx.config.drain_seconds)
    after = meter.snapshot()
    stats: StepStats = tracker.end_step()
    cpu = CpuMeter.delta(before, after)
    gc_after = await gc_snapshots(servers or [])
    last_delivery = max(
        (tracker.last_at[k] for k in range(tracker.k_floor, len(tracker.sent_at))), default=0.0
    )
    busy_span = max(1e-9, (last_delivery or send_done) - started)
    timeline = _timeline(tracker, started)
    step: dict[str, Any] = {
        "msgs_per_s": msgs_per_s,
        "offered_deliveries_per_s": round(msgs_per_s * len(rooms[0].sockets)),
        "seconds": seconds,
        "achieved_send_rate": round(achieved, 1),
        "drained": drained,
        **{k: v for k, v in asdict(stats).items()},
        "delivered_per_s": round(stats.deliveries / busy_span, 1),
        "cpu": {k: round(v, 3) for k, v in cpu.items()},
        "server_cpu_us_per_delivery": (
            round(1e6 * cpu["server_cpu_s"] / stats.deliveries, 1) if stats.deliveries else None
        ),
        "infra_cpu_us_per_delivery": (
            round(1e6 * cpu["infra_cpu_s"] / stats.deliveries, 1) if stats.deliveries else None
        ),
        "server_cpu_us_per_message": (
            round(1e6 * cpu["server_cpu_s"] / stats.sent, 1) if stats.sent else None
        ),
        "infra_cpu_us_per_message": (
            round(1e6 * cpu["infra_cpu_s"] / stats.sent, 1) if stats.sent else None
        ),
        "gc": gc_window(servers or [], gc_before, gc_after),
        "http_connections": sum(pool.peak_open for pool in lg.pools),
        "http_retries": sum(pool.retries for pool in lg.pools),
        "timeline": timeline,
    }
    if mix is not None:
        # Edits and reactions deliver nothing on messageAdded: deliveries come from sends only,
        # and the CPU is also reported per operation of any kind.
        sends = lg.ops["send"]
        step["mix"] = asdict(mix)
        step["operations"] = dict(lg.ops)
        step["offered_deliveries_per_s"] = round(sends / seconds * len(rooms[0].sockets))
        step["server_cpu_us_per_operation"] = step["server_cpu_us_per_message"]
        step["infra_cpu_us_per_operation"] = step["infra_cpu_us_per_message"]
        step["response_ms_by_kind"] = {
            kind: summarize_ms(latencies) for kind, latencies in lg.op_latencies.items()
        }
    return step


def _timeline(tracker: Any, started: float) -> list[dict[str, Any]]:
    """Per second of the schedule: messages, and the worst delivery/response latency (ms)."""
    buckets: dict[int, dict[str, Any]] = {}
    for k in range(tracker.k_floor, len(tracker.sent_at)):
        second = int(tracker.sent_at[k] - started)
        bucket = buckets.setdefault(
            second, {"s": second, "msgs": 0, "worst_last_ms": 0.0, "incomplete": 0}
        )
        bucket["msgs"] += 1
        if tracker.got[k] < tracker.expected[k]:
            bucket["incomplete"] += 1
        elif tracker.expected[k]:
            worst = 1000 * (tracker.last_at[k] - tracker.sent_at[k])
            bucket["worst_last_ms"] = round(max(bucket["worst_last_ms"], worst), 1)
    return [buckets[key] for key in sorted(buckets)]


def _step_line(step: dict[str, Any]) -> str:
    d = step["delivery_ms"]
    r = step["response_ms"]
    return (
        f"    {step['msgs_per_s']:>7.0f} msg/s {step['offered_deliveries_per_s']:>6} deliv/s: "
        f"p50 {d['p50']} p99 {d['p99']} ms (last recipient p99 {step['last_recipient_ms']['p99']}),"
        f" send p99 {r['p99']} ms, lost {step['lost']} dup {step['duplicates']} "
        f"ooo {step['out_of_order']} err {step['send_errors'] + step['errors']}, server "
        f"{step['cpu']['server_cpu_pct']:.0f}% = {step['server_cpu_us_per_delivery']} us/deliv, "
        f"db/broker {step['cpu']['infra_cpu_pct']:.0f}%, "
        f"gen {step['cpu']['generator_cpu_pct']:.0f}%, other {step['cpu']['other_cpu_pct']:.0f}%"
        + (f", GC max/>20ms {gcstats.describe(step['gc'])}" if step.get("gc") else "")
        + f" -> {'PASS' if step['pass'] else 'fail: ' + step['fail_reason']}"
    )


def hopeless(step: dict[str, Any], servers: int) -> bool:
    """More load cannot pass: things were lost or left undrained, the server is saturated or
    fell behind. (A step that failed on latency alone, e.g. a GC pause on an idle server, is not
    hopeless: the CPU cost curve goes on to saturation.)"""
    saturated = step["cpu"]["server_cpu_pct"] >= 85 * servers
    behind = step["delivered_per_s"] < 0.9 * step["offered_deliveries_per_s"]
    return bool(not step["drained"] or step["lost"] or saturated or behind)


def best_step(steps: list[dict[str, Any]]) -> dict[str, Any] | None:
    passing = [step for step in steps if step["pass"]]
    best = max(passing, key=lambda s: s["offered_deliveries_per_s"]) if passing else None
    return best and {
        "msgs_per_s": best["msgs_per_s"],
        "deliveries_per_s": best["offered_deliveries_per_s"],
        "p50_ms": best["delivery_ms"]["p50"],
        "p99_ms": best["delivery_ms"]["p99"],
        "server_cpu_us_per_delivery": best["server_cpu_us_per_delivery"],
        "server_cpu_us_per_message": best["server_cpu_us_per_message"],
        "response_p99_ms": best["response_ms"]["p99"],
    }


async def sweep(
    ctx: Context,
    servers: list[Server],
    *,
    rooms: int,
    devices: int,
    msg_rates: list[float],
    seconds: float,
    criteria: Criteria,
    tag: str,
    target_p99_ms: float,
    stop_on_fail: bool = True,
    profile_label: str | None = None,
) -> dict[str, Any]:
    """Open-loop steps of rising rates over one topology; the highest passing step wins."""
    lg = LoadGen([server.endpoint for server in servers])
    lg.message_bytes = ctx.config.message_bytes
    lg.client_ids = ctx.config.client_ids
    result: dict[str, Any] = {
        "servers": len(servers),
        "server_kind": servers[0].kind,
        "rooms": rooms,
        "sockets": rooms * 2 * devices,
        "sockets_per_room": 2 * devices,
        "target_p99_ms": target_p99_ms,
        "steps": [],
    }
    meter = ctx.stack.meter(servers)
    profiler = None
    try:
        rss_before = _rss(servers)
        made, timings = await _topology(ctx, lg, rooms, devices, tag)
        result["setup"] = timings
        result["rss_before_sockets_mb"] = round(rss_before / 2**20, 1)
        result["rss_after_connect_mb"] = round(_rss(servers) / 2**20, 1)
        for pool in lg.pools:
            await pool.warm(16)
        ctx.stack.renice_database()
        await asyncio.sleep(1.0)
        if ctx.config.profile and profile_label:
            profiler = Profiler(
                [server.pid for server in servers], ctx.out_dir / f"profile-{profile_label}"
            )
            if not profiler.start():
                profiler = None
        for rate in msg_rates:
            step = await _step(ctx, lg, meter, made, rate, seconds, servers)
            ok, reason = criteria(step)
            step["pass"] = ok
            step["fail_reason"] = reason
            result["steps"].append(step)
            ctx.log(_step_line(step))
            if not ok and stop_on_fail and hopeless(step, len(servers)):
                break
            await asyncio.sleep(1.0)
        result["rss_end_mb"] = round(_rss(servers) / 2**20, 1)
    finally:
        if profiler is not None:
            profiles = profiler.stop()
            result["profile"] = profiles
            for pid, summary in profiles.items():
                ctx.log(f"  profile of server {pid} ({summary.get('file')}):")
                ctx.log(format_summary(summary))
        lg.close()
        result["error_samples"] = lg.tracker.error_samples[:10]
    result["best"] = best_step(result["steps"])
    result["max_delivered_per_s"] = max(
        (step["delivered_per_s"] for step in result["steps"]), default=0
    )
    return result


# --------------------------------------------------------------------------------------------
# Scenarios


async def _servers(ctx: Context, count: int | None = None, **kwargs: Any) -> list[Server]:
    return await ctx.stack.start(count or ctx.instances(), **kwargs)


async def fanout(ctx: Context) -> dict[str, Any]:
    """100 direct rooms, 5 devices per member (1,000 sockets), rising rates."""
    c = ctx.config
    servers = await _servers(ctx)
    per_room = 2 * c.fanout_devices
    result = await sweep(
        ctx,
        servers,
        rooms=c.fanout_rooms,
        devices=c.fanout_devices,
        msg_rates=[rate / per_room for rate in c.fanout_rates],
        seconds=c.step_seconds,
        criteria=delivery_criteria(50),
        tag="f",
        target_p99_ms=50,
        profile_label="fanout",
    )
    return result


async def relay(ctx: Context) -> dict[str, Any]:
    """The fan-out and the large room against the bare WebSocket relay (bench/relay.py)."""
    c = ctx.config
    per_room = 2 * c.fanout_devices
    servers = await _servers(ctx, 1, kind="relay")
    result = await sweep(
        ctx,
        servers,
        rooms=c.fanout_rooms,
        devices=c.fanout_devices,
        msg_rates=[rate / per_room for rate in c.fanout_rates + c.relay_extra_rates],
        seconds=c.step_seconds,
        criteria=delivery_criteria(50),
        tag="r",
        target_p99_ms=50,
        profile_label="relay",
    )
    await ctx.stack.stop_all()
    ctx.log("  relay, large room:")
    servers = await _servers(ctx, 1, kind="relay")
    result["large"] = await sweep(
        ctx,
        servers,
        rooms=1,
        devices=c.large_sockets // 2,
        msg_rates=list(c.large_rates),
        seconds=c.large_seconds,
        criteria=delivery_criteria(100, "last_recipient_ms"),
        tag="rl",
        target_p99_ms=100,
        stop_on_fail=False,
    )
    return result


async def large(ctx: Context) -> dict[str, Any]:
    """One room, two members, 1,000 sockets; 10 messages/s; latency to the last recipient."""
    c = ctx.config
    servers = await _servers(ctx)
    devices = c.large_sockets // 2
    result = await sweep(
        ctx,
        servers,
        rooms=1,
        devices=devices,
        msg_rates=list(c.large_rates),
        seconds=c.large_seconds,
        criteria=delivery_criteria(100, "last_recipient_ms"),
        tag="l",
        target_p99_ms=100,
        stop_on_fail=False,
        profile_label="large",
    )
    return result


async def sending(ctx: Context) -> dict[str, Any]:
    """sendMessage throughput and latency with each room's two members subscribed."""
    c = ctx.config
    servers = await _servers(ctx)
    return await sweep(
        ctx,
        servers,
        rooms=c.sending_rooms,
        devices=1,
        msg_rates=[float(rate) for rate in c.sending_rates],
        seconds=c.step_seconds,
        criteria=sending_criteria(20),
        tag="s",
        target_p99_ms=20,
        profile_label="sending",
    )


async def twoinstances(ctx: Context) -> dict[str, Any]:
    """The fan-out sweep on one instance and on two, both through Redis (and one on memory://)."""
    if ctx.stack.name != "pg-redis":
        return {"skipped": "needs --stack pg-redis"}
    c = ctx.config
    per_room = 2 * c.fanout_devices
    configurations = [
        ("one_memory", 1, "memory://"),
        ("one_redis", 1, None),
        ("two_redis", 2, None),
    ]
    result: dict[str, Any] = {}
    for label, count, broadcast in configurations:
        ctx.log(f"  {label}: {count} instance(s), {broadcast or ctx.stack.redis_url}")
        servers = await ctx.stack.start(count, broadcast=broadcast, label=label)
        try:
            result[label] = await sweep(
                ctx,
                servers,
                rooms=c.fanout_rooms,
                devices=c.fanout_devices,
                msg_rates=[rate / per_room for rate in c.fanout_rates],
                seconds=c.step_seconds,
                criteria=delivery_criteria(50),
                tag="t",
                target_p99_ms=50,
                profile_label=f"two-{label}",
            )
        finally:
            await ctx.stack.stop_all()
    one = result["one_redis"]
    two = result["two_redis"]
    one_best = (one.get("best") or {}).get("deliveries_per_s") or 0
    two_best = (two.get("best") or {}).get("deliveries_per_s") or 0
    result["ratio_best_passing"] = round(two_best / one_best, 2) if one_best else None
    result["ratio_max_delivered"] = (
        round(two["max_delivered_per_s"] / one["max_delivered_per_s"], 2)
        if one["max_delivered_per_s"]
        else None
    )
    # Latency that Redis adds: the same rate on one instance through memory:// and Redis.
    added = []
    memory_steps = {s["offered_deliveries_per_s"]: s for s in result["one_memory"]["steps"]}
    for step in one["steps"]:
        base = memory_steps.get(step["offered_deliveries_per_s"])
        if base and base["pass"] and step["delivery_ms"]["p50"] is not None:
            added.append(
                {
                    "deliveries_per_s": step["offered_deliveries_per_s"],
                    "memory_p50_ms": base["delivery_ms"]["p50"],
                    "redis_p50_ms": step["delivery_ms"]["p50"],
                    "memory_p99_ms": base["delivery_ms"]["p99"],
                    "redis_p99_ms": step["delivery_ms"]["p99"],
                }
            )
    result["redis_added_latency"] = added
    return result


async def idle(ctx: Context) -> dict[str, Any]:
    """10,000 subscribed sockets held idle: resident memory per socket, CPU while idle."""
    c = ctx.config
    servers = await _servers(ctx)
    lg = LoadGen([server.endpoint for server in servers])
    lg.message_bytes = c.message_bytes
    devices = c.idle_devices
    rooms = max(1, c.idle_sockets // (2 * devices))
    meter = ctx.stack.meter(servers)
    result: dict[str, Any] = {"servers": len(servers), "target_sockets": rooms * 2 * devices}
    try:
        result["rss_start_mb"] = round(_rss(servers) / 2**20, 1)
        prefix = ctx.prefix("i")
        pairs = [(f"{prefix}a{i}", f"{prefix}b{i}") for i in range(rooms)]
        started = perf()
        cookies = await lg.sign_up([name for pair in pairs for name in pair])
        made = await lg.make_direct_rooms(pairs, cookies)
        result["sign_up_and_rooms_s"] = round(perf() - started, 1)
        lg.close()  # the setup's HTTP connections are not part of what we measure
        await asyncio.sleep(2.0)
        baseline = _rss(servers)
        result["rss_baseline_mb"] = round(baseline / 2**20, 1)
        before = meter.snapshot()
        connect_s, warm_s, warm_messages = await lg.connect_and_warm(
            made,
            devices,
            inbox=c.inbox,
            progress=lambda n: (
                ctx.log(f"    {n}/{rooms * 2 * devices} sockets") if n % 1000 < 250 else None
            ),
        )
        after = meter.snapshot()
        connect_cpu = CpuMeter.delta(before, after)
        sockets = len(lg.sockets)
        result["sockets"] = sockets
        # Set-up includes one warm-up message per room (sent and delivered to its sockets).
        result["connect"] = {
            "seconds": round(connect_s + warm_s, 1),
            "sockets_per_s": round(sockets / (connect_s + warm_s), 1),
            "server_cpu_ms_per_socket": round(1000 * connect_cpu["server_cpu_s"] / sockets, 2),
            "infra_cpu_ms_per_socket": round(1000 * connect_cpu["infra_cpu_s"] / sockets, 2),
            "warm_up_messages": warm_messages,
            "resubscribed_after_server_error": lg.resubscribed,
        }
        for pool in lg.pools:
            pool.close()
        await asyncio.sleep(5.0)
        rss_connected = _rss(servers)
        before = meter.snapshot()
        await asyncio.sleep(c.idle_seconds)
        after = meter.snapshot()
        rss_end = _rss(servers)
        cpu = CpuMeter.delta(before, after)
        open_sockets = sum(1 for conn in lg.sockets if not conn.closed)
        result.update(
            {
                "open_sockets_at_end": open_sockets,
                "closed_by_server": lg.tracker.closed_by_server,
                "rss_connected_mb": round(rss_connected / 2**20, 1),
                "rss_end_mb": round(rss_end / 2**20, 1),
                "rss_per_socket_kb": round((rss_end - baseline) / sockets / 1024, 1),
                "idle_seconds": c.idle_seconds,
                "idle_cpu": {k: round(v, 3) for k, v in cpu.items()},
                "generator_rss_mb": round(rss_bytes(os.getpid()) / 2**20, 1),
                "errors": lg.tracker.error_samples[:5],
            }
        )
        ctx.log(
            f"    {sockets} sockets: RSS {result['rss_baseline_mb']} -> {result['rss_end_mb']} MB "
            f"({result['rss_per_socket_kb']} KB/socket), idle server CPU "
            f"{cpu['server_cpu_pct']:.2f}%, connect {result['connect']}"
        )
    finally:
        lg.close()
    return result


def message_cursor(room_id: str, seq: int) -> str:
    """The server's cursor format (see api/chat/views.py); checked against a real one below."""
    return base64.urlsafe_b64encode(f"m:{room_id}:{seq}".encode()).decode().rstrip("=")


HISTORY = (
    "query History($roomId: ID!, $before: String) { messages(roomId: $roomId, last: 50, "
    "before: $before) { edges { cursor node { id seq type data createdAt clientMessageId "
    "sender { id name } } } pageInfo { hasNextPage hasPreviousPage startCursor endCursor } } }"
)


async def history(ctx: Context) -> dict[str, Any]:
    """A room with 1,000,000 messages: newest page, 50% and 99% deep; HTTP and SQL alone."""
    c = ctx.config
    servers = await _servers(ctx, 1)
    lg = LoadGen([servers[0].endpoint])
    pool = lg.pools[0]
    meter = ctx.stack.meter(servers)
    result: dict[str, Any] = {"messages": c.history_messages}
    try:
        prefix = ctx.prefix("h")
        a, b = f"{prefix}a", f"{prefix}b"
        cookies = await lg.sign_up([a, b])
        (room,) = await lg.make_direct_rooms([(a, b)], cookies)
        first = await pool.data(
            'mutation($r: ID!) { sendMessage(roomId: $r, data: "history 1") { seq } }',
            {"r": room.id},
            cookies[a],
        )
        assert first["sendMessage"]["seq"] == 1
        me_a = await pool.data("{ me { id } }", {}, cookies[a])
        me_b = await pool.data("{ me { id } }", {}, cookies[b])
        started = perf()
        await seed.seed_messages(
            ctx.stack,
            room_id=room.id,
            sender_ids=[me_a["me"]["id"], me_b["me"]["id"]],
            first_seq=2,
            count=c.history_messages - 1,
            message_bytes=c.message_bytes,
            log=ctx.log,
        )
        result["seed_s"] = round(perf() - started, 1)
        ctx.log(f"    seeded {c.history_messages} messages in {result['seed_s']} s")
        n = c.history_messages
        depths = {
            "newest": None,
            "depth_50pct": message_cursor(room.id, n // 2),
            "depth_99pct": message_cursor(room.id, max(51, n // 100)),
        }
        # The newest page must say where it starts in the same format we compute cursors in.
        page = await pool.data(HISTORY, {"roomId": room.id, "before": None}, cookies[a])
        edges = page["messages"]["edges"]
        newest = [edge["node"]["seq"] for edge in edges]
        if newest != list(range(n - 49, n + 1)):
            raise RuntimeError(f"newest page has unexpected seqs: {newest[:5]}")
        if edges[0]["cursor"] != message_cursor(room.id, n - 49):
            raise RuntimeError("the server's cursor format changed; update bench.message_cursor")
        await pool.warm(1)
        profiler = None
        if c.profile:
            profiler = Profiler([servers[0].pid], ctx.out_dir / "profile-history")
            if not profiler.start():
                profiler = None
        for name, cursor in depths.items():
            variables = {"roomId": room.id, "before": cursor}
            check = await pool.data(HISTORY, variables, cookies[a])
            seqs = [e["node"]["seq"] for e in check["messages"]["edges"]]
            if len(seqs) != 50 or seqs != sorted(seqs):
                raise RuntimeError(f"{name}: bad page {seqs[:3]}...")
            for _ in range(max(5, c.history_requests // 10)):  # warm caches
                await pool.post(HISTORY, variables, cookies[a])
            latencies = []
            before = meter.snapshot()
            for _ in range(c.history_requests):
                t0 = perf()
                body, _ = await pool.post(HISTORY, variables, cookies[a])
                latencies.append(perf() - t0)
                if body.get("errors"):
                    raise RuntimeError(f"history errors: {body['errors']}")
            after = meter.snapshot()
            cpu = CpuMeter.delta(before, after)
            result[name] = {
                "first_seq": seqs[0],
                "latency_ms": summarize_ms(latencies),
                "requests_per_s": round(len(latencies) / cpu["wall_s"], 1),
                "server_cpu_ms_per_request": round(1000 * cpu["server_cpu_s"] / len(latencies), 3),
                "infra_cpu_ms_per_request": round(1000 * cpu["infra_cpu_s"] / len(latencies), 3),
            }
            ctx.log(
                f"    {name:>12} (first seq {seqs[0]}): p50 {result[name]['latency_ms']['p50']} "
                f"p99 {result[name]['latency_ms']['p99']} ms, server "
                f"{result[name]['server_cpu_ms_per_request']} ms CPU/request"
            )
        if profiler is not None:
            result["profile"] = profiler.stop()
            for pid, summary in result["profile"].items():
                ctx.log(f"  profile of server {pid} ({summary.get('file')}):")
                ctx.log(format_summary(summary))
        result["sql"] = await seed.explain_history(
            ctx.stack,
            room_id=room.id,
            before_seqs={"newest": None, "depth_50pct": n // 2, "depth_99pct": max(51, n // 100)},
        )
        for name, info in result["sql"].items():
            ctx.log(
                f"    SQL {name:>12}: index used: {info['index_used']}, alone p50 "
                f"{info['alone_ms']['p50']} p99 {info['alone_ms']['p99']} ms"
            )
        newest = result["newest"]["latency_ms"]
        deep = result["depth_99pct"]["latency_ms"]
        result["deep_over_newest_p99"] = (
            round(deep["p99"] / newest["p99"], 2) if newest["p99"] else None
        )
        result["deep_over_newest_p50"] = (
            round(deep["p50"] / newest["p50"], 2) if newest["p50"] else None
        )
    finally:
        lg.close()
    return result


SCENARIOS: dict[str, Callable[[Context], Awaitable[dict[str, Any]]]] = {
    "fanout": fanout,
    "relay": relay,
    "large": large,
    "sending": sending,
    "history": history,
    "idle": idle,
    "twoinstances": twoinstances,
}


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None
