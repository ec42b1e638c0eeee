"""Side by side: our server, the graphql-yoga peer (Node) and the bare relay, under one load.

Each stack gets a fresh server process (one), the same topology built by the same generator,
the same open-loop schedule and the same step length, one after the other:

* peer10x10: 10 direct rooms x 10 sockets (2 members x 5 devices), 200 msgs/s (2,000
  deliveries/s) for 15 s on ours / yoga / relay; then, on the same sockets, a sweep of rising
  rates (8 s steps) on ours and yoga: the highest rate with p99 <= 50 ms and nothing lost.
* peer1x500: 1 room x 500 sockets (2 members x 250 devices), 20 msgs/s (10,000 deliveries/s).
* sending1: 100 direct rooms, one subscribed socket each (only one member has a device, the
  other sends); a sendMessage sweep: CPU per send, response p99, delivery p99.
* stalled: one socket with 50 `messageAdded(after: <cursor of message 1>)` subscriptions on a
  room of 20,000 stored messages stops reading while 50 msgs/s go on; server RSS growth.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from bench import gcstats, seed
from bench.loadgen import MESSAGE_FIELDS, LoadGen, Mix, SetupError, Tracker, WSConn
from bench.peer import PeerUnavailable
from bench.procs import cpu_seconds, rss_bytes
from bench.profile import Profiler, format_summary
from bench.scenarios import (
    Context,
    Criteria,
    _rss,
    _step,
    _step_line,
    _topology,
    best_step,
    delivery_criteria,
    hopeless,
    sending_criteria,
)

perf = time.perf_counter

STACK_LABELS = ("ours", "yoga", "relay")
KIND = {"ours": "app", "yoga": "yoga", "relay": "relay"}


@dataclass
class Phase:
    name: str  # "fixed" or "sweep"
    rates: list[float]  # msgs/s, one step each
    seconds: float
    criteria: Criteria
    stop_on_fail: bool = True
    mix: Mix | None = None  # the activity mix instead of plain sends


def _labels(ctx: Context, wanted: tuple[str, ...] | list[str]) -> list[str]:
    return [label for label in wanted if label in ctx.config.peer_stacks]


async def _start(ctx: Context, label: str, tag: str) -> list[Any] | str:
    """One server of this stack, or why it cannot run here."""
    try:
        return await ctx.stack.start(1, kind=KIND[label], label=f"{tag}-{label}")
    except PeerUnavailable as error:
        ctx.log(f"  {label}: SKIPPED: {error}")
        return str(error)


async def on_stack(
    ctx: Context,
    label: str,
    *,
    tag: str,
    rooms: int,
    devices: int,
    phases: list[Phase],
    member_devices: list[int] | None = None,
    sender: int | None = None,
    warm_seconds: float = 0.0,
) -> dict[str, Any]:
    """Build the topology on a fresh server of this stack and run the phases on it, after
    `warm_seconds` of unmeasured load at the first phase's first rate."""
    ctx.log(f"  {label}:")
    servers = await _start(ctx, label, tag)
    if isinstance(servers, str):
        return {"skipped": servers}
    kind = KIND[label]
    lg = LoadGen([server.endpoint for server in servers])
    lg.message_bytes = ctx.config.message_bytes
    lg.client_ids = ctx.config.client_ids
    lg.sender = sender
    per_room = sum(member_devices) if member_devices is not None else 2 * devices
    result: dict[str, Any] = {
        "kind": kind,
        "servers": len(servers),
        "pid": servers[0].pid,
        "rooms": rooms,
        "sockets": rooms * per_room,
        "sockets_per_room": per_room,
        "phases": {},
    }
    profiler = None
    try:
        result["rss_before_sockets_mb"] = round(_rss(servers) / 2**20, 1)
        made, timings = await _topology(
            ctx, lg, rooms, devices, f"{tag}{label[0]}", member_devices=member_devices
        )
        result["setup"] = timings
        result["rss_after_connect_mb"] = round(_rss(servers) / 2**20, 1)
        for pool in lg.pools:
            await pool.warm(16)
        ctx.stack.renice_database(kind)
        await asyncio.sleep(1.0)
        meter = ctx.stack.meter(servers)
        if warm_seconds and phases and phases[0].rates:
            # Unmeasured: the same load for a few seconds (JIT, caches, pools), then drained.
            warm = await _step(ctx, lg, meter, made, phases[0].rates[0], warm_seconds, servers)
            result["warm_up_load"] = {
                "msgs_per_s": warm["msgs_per_s"],
                "seconds": warm_seconds,
                "delivery_p99_ms": warm["delivery_ms"]["p99"],
                "lost": warm["lost"],
                "drained": warm["drained"],
                "settled_s": await settle(servers),
            }
        if ctx.config.profile and kind == "app":
            profiler = Profiler([s.pid for s in servers], ctx.out_dir / f"profile-{tag}-{label}")
            if not profiler.start():
                profiler = None
        for phase in phases:
            steps: list[dict[str, Any]] = []
            for rate in phase.rates:
                if steps and not steps[-1]["drained"]:
                    # A backlog left by the last step would be billed to this one.
                    steps[-1]["settled_s"] = await settle(servers)
                step = await _step(
                    ctx, lg, meter, made, rate, phase.seconds, servers, mix=phase.mix
                )
                ok, reason = phase.criteria(step)
                step["pass"] = ok
                step["fail_reason"] = reason
                steps.append(step)
                ctx.log(f"    {label:<5} {phase.name:<5}" + _step_line(step)[3:])
                if phase.mix is not None:
                    ops = step["operations"]
                    ctx.log(
                        f"            operations: {ops['send']} sends, {ops['edit']} edits, "
                        f"{ops['reaction']} reactions; server "
                        f"{step['server_cpu_us_per_operation']} us/operation"
                    )
                if not ok and phase.stop_on_fail and hopeless(step, len(servers)):
                    break
                await asyncio.sleep(1.0)
            result["phases"][phase.name] = {
                "seconds": phase.seconds,
                "steps": steps,
                "best": best_step(steps),
            }
            result["phases"][phase.name]["settled_after_s"] = await settle(servers)
        result["rss_end_mb"] = round(_rss(servers) / 2**20, 1)
    except (SetupError, OSError, RuntimeError, TimeoutError) as error:
        # One stack failing (e.g. the peer refusing something) must not lose the others.
        result["error"] = f"{error!r}\n{servers[0].log_tail(15)}"
        ctx.log(f"    {label}: ERROR {error!r}")
    finally:
        if profiler is not None:
            result["profile"] = profiler.stop()
            for pid, summary in result["profile"].items():
                ctx.log(f"  profile of server {pid} ({summary.get('file')}):")
                ctx.log(format_summary(summary))
        lg.close()
        result["error_samples"] = lg.tracker.error_samples[:10]
        await ctx.stack.stop_all()
    return result


async def settle(servers: list[Any], limit_s: float = 30.0, quiet_pct: float = 15.0) -> float:
    """Wait until the servers are quiet (under quiet_pct of a core over 0.5 s), e.g. after a
    step that left a backlog, so the next step does not pay for it; returns the seconds waited."""
    started = perf()
    while perf() - started < limit_s:
        before = sum(cpu_seconds(server.pid) for server in servers)
        await asyncio.sleep(0.5)
        used = sum(cpu_seconds(server.pid) for server in servers) - before
        if 100 * used / 0.5 < quiet_pct:
            break
    return round(perf() - started, 1)


def _fixed(
    rate: float, seconds: float, p99_ms: float, *, name: str = "fixed", mix: Mix | None = None
) -> Phase:
    return Phase(name, [rate], seconds, delivery_criteria(p99_ms), stop_on_fail=False, mix=mix)


# --------------------------------------------------------------------------------------------
# Scenarios


async def peer10x10(ctx: Context) -> dict[str, Any]:
    """10 rooms x 10 sockets at 200 msgs/s on ours / yoga / relay; then a sweep, ours and yoga."""
    c = ctx.config
    per_room = 2 * c.peer_devices
    result: dict[str, Any] = {
        "compare": "fixed+sweep",
        "rooms": c.peer_rooms,
        "sockets": c.peer_rooms * per_room,
        "sockets_per_room": per_room,
        "msgs_per_s": c.peer_rate,
        "deliveries_per_s": round(c.peer_rate * per_room),
        "seconds": c.peer_seconds,
        "target_p99_ms": 20,
        "sweep_rates": list(c.peer_sweep_rates),
        "sweep_seconds": c.peer_sweep_seconds,
        "sweep_target_p99_ms": 50,
        "stacks": {},
    }
    for label in _labels(ctx, STACK_LABELS):
        phases = [_fixed(c.peer_rate, c.peer_seconds, 20)]
        if label != "relay" and c.peer_sweep_rates:
            phases.append(
                Phase(
                    "sweep",
                    [float(r) for r in c.peer_sweep_rates],
                    c.peer_sweep_seconds,
                    delivery_criteria(50),
                )
            )
        result["stacks"][label] = await on_stack(
            ctx,
            label,
            tag="pf",
            rooms=c.peer_rooms,
            devices=c.peer_devices,
            phases=phases,
            warm_seconds=c.peer_warm_seconds,
        )
    return result


async def peer1x500(ctx: Context) -> dict[str, Any]:
    """One room, 500 sockets, 20 msgs/s on ours / yoga / relay."""
    c = ctx.config
    devices = max(1, c.peer_large_sockets // 2)
    result: dict[str, Any] = {
        "compare": "fixed",
        "rooms": 1,
        "sockets": 2 * devices,
        "sockets_per_room": 2 * devices,
        "msgs_per_s": c.peer_large_rate,
        "deliveries_per_s": round(c.peer_large_rate * 2 * devices),
        "seconds": c.peer_large_seconds,
        "target_p99_ms": 50,
        "stacks": {},
    }
    for label in _labels(ctx, STACK_LABELS):
        result["stacks"][label] = await on_stack(
            ctx,
            label,
            tag="pl",
            rooms=1,
            devices=devices,
            phases=[_fixed(c.peer_large_rate, c.peer_large_seconds, 50)],
            warm_seconds=c.peer_warm_seconds,
        )
    return result


async def sending1(ctx: Context) -> dict[str, Any]:
    """100 rooms, one subscribed socket each, the other member sends: a sendMessage sweep."""
    c = ctx.config
    result: dict[str, Any] = {
        "compare": "sending",
        "rooms": c.sending1_rooms,
        "sockets": c.sending1_rooms,
        "sockets_per_room": 1,
        "rates": list(c.sending1_rates),
        "seconds": c.sending1_seconds,
        "target_response_p99_ms": 20,
        "stacks": {},
    }
    wanted = [label for label in STACK_LABELS if label in c.sending1_stacks]
    for label in _labels(ctx, wanted):
        result["stacks"][label] = await on_stack(
            ctx,
            label,
            tag="s1",
            rooms=c.sending1_rooms,
            devices=1,
            member_devices=[0, 1],
            sender=0,
            warm_seconds=c.peer_warm_seconds,
            phases=[
                Phase(
                    "sweep",
                    [float(r) for r in c.sending1_rates],
                    c.sending1_seconds,
                    sending_criteria(20),
                )
            ],
        )
    return result


async def mix10x10(ctx: Context) -> dict[str, Any]:
    """peer10x10's topology and rate on ours only: plain sends, then the activity mix (a share
    of the operations edit or react to a recent message), alternating on the same sockets."""
    c = ctx.config
    per_room = 2 * c.peer_devices
    mix = Mix(edits=c.mix_edits, reactions=c.mix_reactions)
    result: dict[str, Any] = {
        "compare": "mix",
        "rooms": c.peer_rooms,
        "sockets": c.peer_rooms * per_room,
        "sockets_per_room": per_room,
        "ops_per_s": c.peer_rate,
        "seconds": c.peer_seconds,
        "mix": {"edits": mix.edits, "reactions": mix.reactions, "sends": round(mix.sends, 3)},
        "rounds": c.mix_rounds,
        "target_p99_ms": 20,
        "stacks": {},
    }
    phases: list[Phase] = []
    for round_ in range(1, c.mix_rounds + 1):
        phases.append(_fixed(c.peer_rate, c.peer_seconds, 20, name=f"plain#{round_}"))
        phases.append(_fixed(c.peer_rate, c.peer_seconds, 20, name=f"mix#{round_}", mix=mix))
    # The yoga peer has no edits or reactions, and the relay no database: ours only.
    for label in _labels(ctx, ("ours",)):
        result["stacks"][label] = await on_stack(
            ctx,
            label,
            tag="mx",
            rooms=c.peer_rooms,
            devices=c.peer_devices,
            phases=phases,
            warm_seconds=c.peer_warm_seconds,
        )
    return result


# -- stalled subscriber

SEND_FIRST = 'mutation($r: ID!) { sendMessage(roomId: $r, data: "stalled 1") { id seq cursor } }'
MESSAGE_ADDED_AFTER = (
    "subscription Follow($roomId: ID!, $after: String) "
    "{ messageAdded(roomId: $roomId, after: $after) { " + MESSAGE_FIELDS + " } }"
)
TCP_STATES = {
    "01": "ESTABLISHED",
    "02": "SYN_SENT",
    "03": "SYN_RECV",
    "04": "FIN_WAIT1",
    "05": "FIN_WAIT2",
    "06": "TIME_WAIT",
    "07": "CLOSE",
    "08": "CLOSE_WAIT",
    "09": "LAST_ACK",
    "0A": "LISTEN",
    "0B": "CLOSING",
}


class ReplayProbe(Tracker):
    """The frames of one socket that resumes after message 1 of the stalled room: every stored
    message must come back first, gap-free and in order, with the data the bulk load wrote."""

    def __init__(self, expected: int) -> None:
        super().__init__()
        self.wanted = expected
        self.seqs: list[int] = []
        self.wrong_data = 0
        self.complete: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_message(self, conn: WSConn, payload: bytes, now: float) -> None:
        message = orjson.loads(payload)
        if message.get("type") != "next":
            super().on_message(conn, payload, now)
            return
        for node in (message["payload"].get("data") or {}).values():
            seq = node["seq"]
            self.seqs.append(seq)
            if not node["data"].startswith(f"history message {seq} "):
                self.wrong_data += 1
        if len(self.seqs) >= self.wanted and not self.complete.done():
            self.complete.set_result(None)


async def replay_probe(
    lg: LoadGen, endpoint: Any, cookie: str, room_id: str, cursor: str, stored: list[int]
) -> dict[str, Any]:
    """Subscribe with `after` = cursor on a socket of its own and read the replay of the
    stored seqs (what the stalled socket is sent but never reads)."""
    probe = ReplayProbe(len(stored))
    conn = await lg.open_socket(endpoint, cookie, -1, None, tracker=probe)
    started = perf()
    try:
        conn.start_subscription(
            {"query": MESSAGE_ADDED_AFTER, "variables": {"roomId": room_id, "after": cursor}}
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(probe.complete), 60)
        seconds = perf() - started
    finally:
        conn.close()
    replayed = probe.seqs[: len(stored)]
    return {
        "expected": len(stored),
        "received": len(replayed),
        "seconds": round(seconds, 2),
        "rows_per_s": round(len(replayed) / max(seconds, 1e-9)),
        "all_in_order": replayed == stored,
        "wrong_data": probe.wrong_data,
        "errors": probe.errors,
        "error_samples": probe.error_samples[:3],
    }


def tcp_socket(local_port: int, remote_port: int) -> dict[str, Any] | None:
    """State and kernel queues (bytes) of the IPv4 socket local_port -> remote_port."""
    want_local = f":{local_port:04X}"
    want_remote = f":{remote_port:04X}"
    try:
        with open("/proc/net/tcp") as handle:
            next(handle)
            for line in handle:
                fields = line.split()
                if fields[1].endswith(want_local) and fields[2].endswith(want_remote):
                    tx, rx = fields[4].split(":")
                    return {
                        "state": TCP_STATES.get(fields[3], fields[3]),
                        "tx_queue": int(tx, 16),
                        "rx_queue": int(rx, 16),
                    }
    except OSError:
        return None
    return None


async def _stalled_on(ctx: Context, label: str) -> dict[str, Any]:
    c = ctx.config
    ctx.log(f"  {label}:")
    servers = await _start(ctx, label, "st")
    if isinstance(servers, str):
        return {"skipped": servers}
    server = servers[0]
    lg = LoadGen([server.endpoint])
    lg.message_bytes = c.message_bytes
    lg.client_ids = c.client_ids
    pool = lg.pools[0]
    result: dict[str, Any] = {"kind": server.kind, "pid": server.pid}
    stalled = None
    try:
        prefix = ctx.prefix("st")
        a, b = f"{prefix}a", f"{prefix}b"
        cookies = await lg.sign_up([a, b])
        (room,) = await lg.make_direct_rooms([(a, b)], cookies)
        first = (await pool.data(SEND_FIRST, {"r": room.id}, cookies[a]))["sendMessage"]
        if first["seq"] != 1:
            raise SetupError(f"first message has seq {first['seq']}")
        cursor = first["cursor"]  # the server's own cursor format, never computed here
        ids = [(await pool.data("{ me { id } }", {}, cookies[name]))["me"]["id"] for name in (a, b)]
        started = perf()
        if server.kind == "yoga":
            await seed.bulk_load_yoga_messages(
                ctx.stack.yoga_dsn,
                room_id=room.id,
                sender_ids=ids,
                first_seq=2,
                count=c.stalled_messages - 1,
                message_bytes=c.message_bytes,
            )
        else:
            await seed.seed_messages(
                ctx.stack,
                room_id=room.id,
                sender_ids=ids,
                first_seq=2,
                count=c.stalled_messages - 1,
                message_bytes=c.message_bytes,
            )
        result["seed_s"] = round(perf() - started, 1)
        # What the stalled socket's subscriptions are sent (and never read): the stored rows.
        result["replay"] = await replay_probe(
            lg, server.endpoint, cookies[a], room.id, cursor, list(range(2, c.stalled_messages + 1))
        )
        replay = result["replay"]
        ctx.log(
            f"    {label}: replay after message 1: {replay['received']:,}/{replay['expected']:,} "
            f"stored messages in {replay['seconds']} s, in order: {replay['all_in_order']}, "
            f"wrong data: {replay['wrong_data']}, errors: {replay['errors']}"
        )
        # A witness: member b on one device, live only, measured like any other step.
        await lg.connect_and_warm([room], 1, member_devices=[0, 1])
        lg.sender = 0
        for pool_ in lg.pools:
            await pool_.warm(4)
        meter = ctx.stack.meter(servers)
        samples: list[tuple[float, int, dict[str, Any] | None]] = []
        stalled_port = 0

        async def sample(stop: asyncio.Event) -> None:
            t0 = perf()
            while not stop.is_set():
                state = tcp_socket(server.port, stalled_port) if stalled_port else None
                samples.append((round(perf() - t0, 2), rss_bytes(server.pid), state))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.25)

        # Warm phase: the same sending with the witness only, so the allocator has settled.
        stop = asyncio.Event()
        sampler = asyncio.create_task(sample(stop))
        warm = await _step(ctx, lg, meter, [room], c.stalled_rate, c.stalled_warm_seconds, servers)
        await asyncio.sleep(1.0)
        stop.set()
        await sampler
        warm_rss = [rss for _, rss, _ in samples]
        baseline = int(statistics.median(warm_rss[-6:]))
        noise = max(warm_rss[len(warm_rss) // 2 :]) - min(warm_rss[len(warm_rss) // 2 :])
        result["warm"] = {
            "delivery_ms": warm["delivery_ms"],
            "lost": warm["lost"],
            "server_cpu_pct": round(warm["cpu"]["server_cpu_pct"], 1),
        }
        # The stalled socket: a small receive buffer, 50 subscriptions, then no more reads.
        stalled = await lg.open_socket(
            server.endpoint, cookies[a], -1, None, rcvbuf=c.stalled_rcvbuf or None
        )
        for index in range(c.stalled_subscriptions):
            stalled.send_json(
                {
                    "id": f"s{index + 1}",
                    "type": "subscribe",
                    "payload": {
                        "query": MESSAGE_ADDED_AFTER,
                        "variables": {"roomId": room.id, "after": cursor},
                    },
                }
            )
        assert stalled.transport is not None
        stalled.transport.pause_reading()
        stalled_port = stalled.transport.get_extra_info("sockname")[1]
        samples.clear()
        stop = asyncio.Event()
        sampler = asyncio.create_task(sample(stop))
        step = await _step(ctx, lg, meter, [room], c.stalled_rate, c.stalled_seconds, servers)
        rss_held = rss_bytes(server.pid)
        at_end = tcp_socket(server.port, stalled_port)
        client_end = tcp_socket(stalled_port, server.port)
        await asyncio.sleep(3.0)
        rss_settled = rss_bytes(server.pid)
        stop.set()
        await sampler
        closed_at = next(
            (t for t, _, state in samples if state is None or state["state"] != "ESTABLISHED"),
            None,
        )
        peak = max([rss for _, rss, _ in samples] + [rss_held, rss_settled])
        stalled.transport.abort()
        stalled = None
        await asyncio.sleep(3.0)
        rss_released = rss_bytes(server.pid)
        mb = 2**20
        result.update(
            {
                "messages": c.stalled_messages,
                "subscriptions": c.stalled_subscriptions,
                "msgs_per_s": c.stalled_rate,
                "seconds": c.stalled_seconds,
                "client_rcvbuf": c.stalled_rcvbuf,
                "rss_baseline_mb": round(baseline / mb, 1),
                "rss_noise_mb": round(noise / mb, 2),
                "rss_held_mb": round((rss_held - baseline) / mb, 2),
                "rss_peak_mb": round((peak - baseline) / mb, 2),
                "rss_settled_mb": round((rss_settled - baseline) / mb, 2),
                "rss_after_close_mb": round((rss_released - baseline) / mb, 2),
                "server_socket_at_end": at_end,
                "client_socket_at_end": client_end,
                "server_closed_stalled_after_s": closed_at,
                "witness": {
                    "delivery_ms": step["delivery_ms"],
                    "lost": step["lost"],
                    "duplicates": step["duplicates"],
                    "out_of_order": step["out_of_order"],
                    "errors": step["errors"] + step["send_errors"],
                    "response_ms": step["response_ms"],
                },
                "cpu": step["cpu"],
                "gc": step["gc"],
                "rss_timeline": [
                    {
                        "s": t,
                        "rss_mb": round((rss - baseline) / mb, 2),
                        "server_tx_queue": state and state["tx_queue"],
                        "state": state and state["state"],
                    }
                    for t, rss, state in samples
                ],
            }
        )
        ctx.log(
            f"    {label}: RSS baseline {result['rss_baseline_mb']} MB (noise "
            f"{result['rss_noise_mb']}), held +{result['rss_held_mb']} MB at the end of sending, "
            f"peak +{result['rss_peak_mb']}, +{result['rss_settled_mb']} 3 s later, "
            f"+{result['rss_after_close_mb']} after closing; server closed the stalled socket: "
            f"{'after ' + str(closed_at) + ' s' if closed_at is not None else 'no'}; server "
            f"send queue {at_end and at_end['tx_queue']} B; witness p99 "
            f"{step['delivery_ms']['p99']} ms, lost {step['lost']}; server CPU "
            f"{step['cpu']['server_cpu_pct']:.0f}%"
        )
    except (SetupError, OSError, RuntimeError, TimeoutError) as error:
        result["error"] = f"{error!r}\n{server.log_tail(15)}"
        ctx.log(f"    {label}: ERROR {error!r}")
    finally:
        if stalled is not None and stalled.transport is not None:
            stalled.transport.abort()
        lg.close()
        result["error_samples"] = lg.tracker.error_samples[:10]
        await ctx.stack.stop_all()
    return result


async def stalled(ctx: Context) -> dict[str, Any]:
    """A subscriber that stops reading: how much the server holds for it."""
    result: dict[str, Any] = {"compare": "stalled", "stacks": {}}
    for label in _labels(ctx, ("ours", "yoga")):
        result["stacks"][label] = await _stalled_on(ctx, label)
    return result


SCENARIOS: dict[str, Callable[[Context], Awaitable[dict[str, Any]]]] = {
    "peer10x10": peer10x10,
    "peer1x500": peer1x500,
    "sending1": sending1,
    "stalled": stalled,
    "mix10x10": mix10x10,
}
GROUPS = {"peer": ["peer10x10", "peer1x500", "sending1"]}


# --------------------------------------------------------------------------------------------
# Summaries, targets and tables


def _ratio(a: float | None, b: float | None, digits: int = 2) -> float | None:
    if a is None or b is None or not b:
        return None
    return round(a / b, digits)


def _phase(result: dict[str, Any], label: str, phase: str) -> list[dict[str, Any]]:
    stack = (result.get("stacks") or {}).get(label) or {}
    return (((stack.get("phases") or {}).get(phase)) or {}).get("steps") or []


def fixed_step(result: dict[str, Any], label: str) -> dict[str, Any] | None:
    steps = _phase(result, label, "fixed")
    return steps[0] if steps else None


def gc_of(steps: list[dict[str, Any]]) -> dict[str, Any] | None:
    return gcstats.combine([step.get("gc") for step in steps])


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


def _short(step: dict[str, Any]) -> str:
    if step["pass"]:
        return "yes"
    names = {"not drained": "undrained", "generator behind schedule": "generator behind"}
    reasons = []
    for part in step["fail_reason"].split("; "):
        if part.startswith("p99"):
            reasons.append("p99")
        elif part.startswith("response p99"):
            reasons.append("response p99")
        elif part:
            reasons.append(names.get(part, part))
    return "no: " + ", ".join(reasons)


def sweep_best(result: dict[str, Any], label: str, phase: str = "sweep") -> dict[str, Any] | None:
    stack = (result.get("stacks") or {}).get(label) or {}
    best: dict[str, Any] | None = ((stack.get("phases") or {}).get(phase) or {}).get("best")
    return best


def _skipped(result: dict[str, Any], labels: list[str]) -> list[str]:
    lines = []
    for label in labels:
        stack = result["stacks"].get(label) or {}
        if stack.get("skipped"):
            lines.append(f"\n{label}: skipped: {stack['skipped']}")
        elif stack.get("error"):
            lines.append(f"\n{label}: ERROR: {stack['error'].splitlines()[0]}")
    return lines


def _sum(step: dict[str, Any], suffix: str) -> float | None:
    server, infra = step["server" + suffix], step["infra" + suffix]
    return None if server is None or infra is None else round(server + infra, 1)


FIXED_ROWS: list[tuple[str, Callable[[dict[str, Any]], Any], bool]] = [
    # (label, value from a step, ratio column?)
    ("server CPU µs / delivery", lambda s: s["server_cpu_us_per_delivery"], True),
    ("db CPU µs / delivery", lambda s: s["infra_cpu_us_per_delivery"], True),
    ("server + db CPU µs / delivery", lambda s: _sum(s, "_cpu_us_per_delivery"), True),
    ("server CPU % of a core", lambda s: round(s["cpu"]["server_cpu_pct"], 1), True),
    ("db CPU %", lambda s: round(s["cpu"]["infra_cpu_pct"], 1), False),
    ("delivery p50 ms", lambda s: s["delivery_ms"]["p50"], True),
    ("delivery p99 ms", lambda s: s["delivery_ms"]["p99"], True),
    ("delivery max ms", lambda s: s["delivery_ms"]["max"], True),
    ("p99 to the last recipient ms", lambda s: s["last_recipient_ms"]["p99"], True),
    ("sendMessage response p99 ms", lambda s: s["response_ms"]["p99"], True),
    ("deliveries received", lambda s: s["deliveries"], False),
    (
        "lost / dup / ooo / errors",
        lambda s: (
            f"{s['lost']} / {s['duplicates']} / {s['out_of_order']} / "
            f"{s['errors'] + s['send_errors']}"
        ),
        False,
    ),
    ("send rate achieved msgs/s", lambda s: s["achieved_send_rate"], False),
    ("generator CPU %", lambda s: round(s["cpu"]["generator_cpu_pct"], 1), False),
    ("rest of the machine CPU %", lambda s: round(s["cpu"]["other_cpu_pct"], 1), False),
    ("hypervisor steal CPU %", lambda s: round(s["cpu"].get("steal_cpu_pct", 0.0), 1), False),
    ("GC longest pause ms / pauses > 20 ms", lambda s: gcstats.describe(s.get("gc")), False),
]


def _get(get: Callable[[dict[str, Any]], Any], step: dict[str, Any] | None) -> Any:
    return None if step is None else get(step)


def _us(step: dict[str, Any] | None, key: str) -> float | None:
    return None if step is None else step[key]


def render_fixed(name: str, result: dict[str, Any]) -> list[str]:
    labels = [label for label in STACK_LABELS if label in result["stacks"]]
    steps = {label: fixed_step(result, label) for label in labels}
    ratios = [other for other in ("yoga", "relay") if "ours" in labels and other in labels]
    lines = [
        f"\n### {name}: {result['rooms']} room(s) x {result['sockets_per_room']} sockets, "
        f"{result['msgs_per_s']:g} msgs/s = {result['deliveries_per_s']:,} deliveries/s, "
        f"{result['seconds']:g} s; one process per stack\n",
        "| metric | " + " | ".join(labels) + "".join(f" | ours/{o}" for o in ratios) + " |",
        "|---|" + "---:|" * (len(labels) + len(ratios)),
    ]
    for title, get, with_ratio in FIXED_ROWS:
        values = {label: _get(get, steps[label]) for label in labels}
        cells = [_fmt(values[label]) for label in labels]
        for other in ratios:
            number = isinstance(values["ours"], int | float) and with_ratio
            cells.append(_fmt(_ratio(values["ours"], values[other]), 2) if number else "")
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    passes = [_get(_short, steps[label]) or "-" for label in labels]
    lines.append(
        f"| pass (p99 <= {result['target_p99_ms']} ms, nothing lost) | "
        + " | ".join(passes)
        + " |" * (len(ratios) + 1)
    )
    return lines + _skipped(result, labels)


def render_sweep(name: str, result: dict[str, Any]) -> list[str]:
    labels = [label for label in ("ours", "yoga") if _phase(result, label, "sweep")]
    if not labels:
        return []
    by_rate: dict[float, dict[str, dict[str, Any]]] = {}
    for label in labels:
        for step in _phase(result, label, "sweep"):
            by_rate.setdefault(step["msgs_per_s"], {})[label] = step
    best = {label: sweep_best(result, label) for label in labels}
    head = ", ".join(
        f"{label} {_fmt((best[label] or {}).get('msgs_per_s'), 0)} msgs/s"
        if best[label]
        else f"{label} none"
        for label in labels
    )
    ratio = None
    if len(labels) == 2:
        ratio = _ratio(
            (best["ours"] or {}).get("msgs_per_s"), (best["yoga"] or {}).get("msgs_per_s")
        )
    lines = [
        f"\n### {name} sweep: {result['sweep_seconds']:g} s steps; highest rate with p99 <= "
        f"{result['sweep_target_p99_ms']} ms and nothing lost: {head}"
        + (f" (ours/yoga {_fmt(ratio, 2)})" if ratio is not None else "")
        + "\n",
    ]
    cols = ["msgs/s", "deliv/s"]
    for metric in ("p99 ms", "µs/deliv", "CPU %", "db CPU %", "gen CPU %"):
        cols += [f"{label} {metric}" for label in labels]
    if len(labels) == 2:
        cols.append("ours/yoga µs")
    cols += ["ours GC max/>20ms"] if "ours" in labels else []
    cols += [f"{label} pass" for label in labels]
    lines.append("| " + " | ".join(cols) + " |")
    lines.append("|" + "---:|" * (len(cols) - len(labels)) + "---|" * len(labels))
    for rate in sorted(by_rate):
        row = by_rate[rate]
        any_step = next(iter(row.values()))
        cells = [_fmt(rate, 0), _fmt(any_step["offered_deliveries_per_s"])]
        getters: list[Callable[[dict[str, Any]], Any]] = [
            lambda s: s["delivery_ms"]["p99"],
            lambda s: s["server_cpu_us_per_delivery"],
            lambda s: round(s["cpu"]["server_cpu_pct"]),
            lambda s: round(s["cpu"]["infra_cpu_pct"]),
            lambda s: round(s["cpu"]["generator_cpu_pct"]),
        ]
        for get in getters:
            cells += [_fmt(get(row[label])) if label in row else "" for label in labels]
        if len(labels) == 2:
            ours, yoga = row.get("ours"), row.get("yoga")
            cells.append(
                _fmt(
                    _ratio(
                        _us(ours, "server_cpu_us_per_delivery"),
                        _us(yoga, "server_cpu_us_per_delivery"),
                    ),
                    2,
                )
            )
        if "ours" in labels:
            cells.append(gcstats.describe(row["ours"].get("gc")) if "ours" in row else "")
        cells += [_short(row[label]) if label in row else "(stopped)" for label in labels]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render_sending(name: str, result: dict[str, Any]) -> list[str]:
    labels = [label for label in STACK_LABELS if _phase(result, label, "sweep")]
    if not labels:
        return _skipped(result, list(result["stacks"]))
    by_rate: dict[float, dict[str, dict[str, Any]]] = {}
    for label in labels:
        for step in _phase(result, label, "sweep"):
            by_rate.setdefault(step["msgs_per_s"], {})[label] = step
    best = {label: sweep_best(result, label) for label in labels}
    head = ", ".join(
        f"{label} {_fmt((best[label] or {}).get('msgs_per_s'), 0)}/s"
        if best[label]
        else f"{label} none"
        for label in labels
    )
    ratios = [other for other in ("yoga", "relay") if "ours" in labels and other in labels]
    lines = [
        f"\n### {name}: {result['rooms']} rooms x 1 subscribed socket, the other member sends; "
        f"{result['seconds']:g} s steps; highest rate with response p99 <= "
        f"{result['target_response_p99_ms']} ms and nothing lost: {head}\n"
    ]
    cols = ["msgs/s"]
    cols += [f"{label} CPU ms/send" for label in labels]
    cols += [f"ours/{other}" for other in ratios]
    cols += [f"{label} resp p99 ms" for label in labels]
    cols += [f"{label} deliv p99 ms" for label in labels]
    cols += [f"{label} db ms/send" for label in labels if label != "relay"]
    cols += [f"{label} gen CPU %" for label in labels]
    cols += ["ours GC max/>20ms"] if "ours" in labels else []
    cols += [f"{label} pass" for label in labels]
    lines.append("| " + " | ".join(cols) + " |")
    lines.append("|" + "---:|" * (len(cols) - len(labels)) + "---|" * len(labels))

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value / 1000, 3)

    for rate in sorted(by_rate):
        row = by_rate[rate]
        cells = [_fmt(rate, 0)]
        cells += [
            _fmt(ms(row[label]["server_cpu_us_per_message"]), 3) if label in row else ""
            for label in labels
        ]
        for other in ratios:
            ours, them = row.get("ours"), row.get(other)
            cells.append(
                _fmt(
                    _ratio(
                        _us(ours, "server_cpu_us_per_message"),
                        _us(them, "server_cpu_us_per_message"),
                    ),
                    2,
                )
            )
        cells += [
            _fmt(row[label]["response_ms"]["p99"]) if label in row else "" for label in labels
        ]
        cells += [
            _fmt(row[label]["delivery_ms"]["p99"]) if label in row else "" for label in labels
        ]
        cells += [
            _fmt(ms(row[label]["infra_cpu_us_per_message"]), 3) if label in row else ""
            for label in labels
            if label != "relay"
        ]
        cells += [
            _fmt(round(row[label]["cpu"]["generator_cpu_pct"])) if label in row else ""
            for label in labels
        ]
        if "ours" in labels:
            cells.append(gcstats.describe(row["ours"].get("gc")) if "ours" in row else "")
        cells += [_short(row[label]) if label in row else "(stopped)" for label in labels]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + _skipped(result, list(result["stacks"]))


STALLED_ROWS: list[tuple[str, Callable[[dict[str, Any]], Any]]] = [
    (
        "replayed to a probe (after message 1): stored messages / expected",
        lambda r: (
            f"{r['replay']['received']:,} / {r['replay']['expected']:,}"
            + ("" if r["replay"]["all_in_order"] else " NOT in order")
        ),
    ),
    ("RSS baseline MB", lambda r: r["rss_baseline_mb"]),
    ("RSS noise before the stall MB (max-min)", lambda r: r["rss_noise_mb"]),
    ("RSS held at the end of sending MB (over baseline)", lambda r: r["rss_held_mb"]),
    ("RSS peak MB (over baseline)", lambda r: r["rss_peak_mb"]),
    ("RSS 3 s later MB", lambda r: r["rss_settled_mb"]),
    ("RSS after closing the socket MB", lambda r: r["rss_after_close_mb"]),
    ("server kernel send queue at the end (KB)", lambda r: _kb(r["server_socket_at_end"])),
    ("server closed the stalled socket (after s)", lambda r: r["server_closed_stalled_after_s"]),
    ("witness p99 ms", lambda r: r["witness"]["delivery_ms"]["p99"]),
    ("witness lost / errors", lambda r: f"{r['witness']['lost']} / {r['witness']['errors']}"),
    ("server CPU % during the stall", lambda r: round(r["cpu"]["server_cpu_pct"], 1)),
    ("db CPU % during the stall", lambda r: round(r["cpu"]["infra_cpu_pct"], 1)),
    ("GC longest pause ms / pauses > 20 ms", lambda r: gcstats.describe(r.get("gc"))),
]


def _kb(state: dict[str, Any] | None) -> float | None:
    return round(state["tx_queue"] / 1024, 1) if state else None


def render_stalled(name: str, result: dict[str, Any]) -> list[str]:
    labels = [label for label, r in result["stacks"].items() if "rss_held_mb" in r]
    if not labels:
        return _skipped(result, list(result["stacks"]))
    first = result["stacks"][labels[0]]
    lines = [
        f"\n### {name}: {first['subscriptions']} messageAdded(after: message 1) on one socket "
        f"that stops reading (client receive buffer {first['client_rcvbuf']:,} B), room of "
        f"{first['messages']:,} messages, {first['msgs_per_s']:g} msgs/s for "
        f"{first['seconds']:g} s\n",
        "| metric | " + " | ".join(labels) + " |",
        "|---|" + "---:|" * len(labels),
    ]
    for title, get in STALLED_ROWS:
        lines.append(
            f"| {title} | " + " | ".join(_fmt(get(result["stacks"][x])) for x in labels) + " |"
        )
    return lines + _skipped(result, list(result["stacks"]))


def _by_kind(step: dict[str, Any], kind: str) -> Any:
    return ((step.get("response_ms_by_kind") or {}).get(kind) or {}).get("p99")


MIX_ROWS: list[tuple[str, Callable[[dict[str, Any]], Any]]] = [
    (
        "operations: sends / edits / reactions",
        lambda s: (
            " / ".join(
                str(s["operations"][k]) for k in ("send", "edit", "reaction") if "operations" in s
            )
            or f"{s['sent']} / 0 / 0"
        ),
    ),
    ("operations/s achieved", lambda s: s["achieved_send_rate"]),
    ("deliveries received (messageAdded)", lambda s: s["deliveries"]),
    ("server CPU µs / delivery", lambda s: s["server_cpu_us_per_delivery"]),
    ("server CPU µs / operation", lambda s: s["server_cpu_us_per_message"]),
    ("db CPU µs / operation", lambda s: s["infra_cpu_us_per_message"]),
    ("server CPU % of a core", lambda s: round(s["cpu"]["server_cpu_pct"], 1)),
    ("db CPU %", lambda s: round(s["cpu"]["infra_cpu_pct"], 1)),
    ("delivery p50 ms", lambda s: s["delivery_ms"]["p50"]),
    ("delivery p99 ms", lambda s: s["delivery_ms"]["p99"]),
    ("response p99 ms, all operations", lambda s: s["response_ms"]["p99"]),
    (
        "response p99 ms: send / edit / reaction",
        lambda s: (
            " / ".join(_fmt(_by_kind(s, k)) for k in ("send", "edit", "reaction"))
            if "response_ms_by_kind" in s
            else "-"
        ),
    ),
    (
        "lost / dup / ooo / errors",
        lambda s: (
            f"{s['lost']} / {s['duplicates']} / {s['out_of_order']} / "
            f"{s['errors'] + s['send_errors']}"
        ),
    ),
    ("generator CPU %", lambda s: round(s["cpu"]["generator_cpu_pct"], 1)),
    ("rest of the machine CPU %", lambda s: round(s["cpu"]["other_cpu_pct"], 1)),
    ("hypervisor steal CPU %", lambda s: round(s["cpu"].get("steal_cpu_pct", 0.0), 1)),
    ("GC longest pause ms / pauses > 20 ms", lambda s: gcstats.describe(s.get("gc"))),
    ("pass (p99 <= 20 ms, nothing lost)", _short),
]


def mix_steps(result: dict[str, Any], label: str = "ours") -> dict[str, list[dict[str, Any]]]:
    """The steps of each kind of phase ("plain", "mix"), in the order they ran."""
    phases = ((result.get("stacks") or {}).get(label) or {}).get("phases") or {}
    out: dict[str, list[dict[str, Any]]] = {"plain": [], "mix": []}
    for name, phase in phases.items():
        out.setdefault(name.split("#")[0], []).extend(phase["steps"])
    return out


def mix_summary(result: dict[str, Any]) -> dict[str, Any]:
    """Medians over the rounds: CPU per delivery and per operation, plain against mix."""
    steps = mix_steps(result)

    def med(kind: str, key: str) -> float | None:
        values = [s[key] for s in steps[kind] if s.get(key) is not None]
        return round(statistics.median(values), 1) if values else None

    out: dict[str, Any] = {}
    for key, short in (
        ("server_cpu_us_per_delivery", "us_per_delivery"),
        ("server_cpu_us_per_message", "us_per_operation"),
    ):
        plain, mixed = med("plain", key), med("mix", key)
        out[short] = {"plain": plain, "mix": mixed, "mix/plain": _ratio(plain and mixed, plain)}
    out["p99_ms"] = {
        kind: max((s["delivery_ms"]["p99"] or 0 for s in steps[kind]), default=None)
        for kind in ("plain", "mix")
    }
    return out


def render_mix(name: str, result: dict[str, Any]) -> list[str]:
    ours = (result.get("stacks") or {}).get("ours") or {}
    phases = ours.get("phases") or {}
    if not phases:
        return _skipped(result, list(result["stacks"]))
    names = list(phases)
    steps = {n: phases[n]["steps"][0] for n in names if phases[n]["steps"]}
    mix = result["mix"]
    summary = mix_summary(result)
    lines = [
        f"\n### {name}: ours, {result['rooms']} rooms x {result['sockets_per_room']} sockets "
        f"(messageAdded), {result['ops_per_s']:g} operations/s for {result['seconds']:g} s; "
        f"plain = every operation a send, mix = {mix['sends']:.0%} sends, {mix['edits']:.0%} "
        f"edits, {mix['reactions']:.0%} addReaction (of the room's newest message); "
        f"{result['rounds']} round(s), alternating on the same sockets\n",
        "Medians over the rounds: server CPU µs / delivery plain "
        f"{_fmt(summary['us_per_delivery']['plain'])}, mix "
        f"{_fmt(summary['us_per_delivery']['mix'])} (mix/plain "
        f"{_fmt(summary['us_per_delivery']['mix/plain'], 2)}); µs / operation plain "
        f"{_fmt(summary['us_per_operation']['plain'])}, mix "
        f"{_fmt(summary['us_per_operation']['mix'])} (mix/plain "
        f"{_fmt(summary['us_per_operation']['mix/plain'], 2)}).\n",
        "| metric | " + " | ".join(steps) + " |",
        "|---|" + "---:|" * len(steps),
    ]
    for title, get in MIX_ROWS:
        lines.append(f"| {title} | " + " | ".join(_fmt(get(s)) for s in steps.values()) + " |")
    return lines + _skipped(result, list(result["stacks"]))


def render(results: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for name in ("peer10x10", "mix10x10", "peer1x500", "sending1", "stalled"):
        result = results.get(name)
        if not result or "stacks" not in result:
            continue
        if result["compare"] == "fixed+sweep":
            lines += render_fixed(name, result) + render_sweep(name, result)
        elif result["compare"] == "fixed":
            lines += render_fixed(name, result)
        elif result["compare"] == "sending":
            lines += render_sending(name, result)
        elif result["compare"] == "stalled":
            lines += render_stalled(name, result)
        elif result["compare"] == "mix":
            lines += render_mix(name, result)
    return lines


def targets(
    results: dict[str, Any], add: Callable[[str, str, Any, str, bool | None], None]
) -> None:
    """The issues' targets, as rows of the first table."""
    for name, p99_target in (("peer10x10", 20), ("peer1x500", 50)):
        result = results.get(name)
        if not result or "stacks" not in result:
            continue
        ours = fixed_step(result, "ours")
        yoga = fixed_step(result, "yoga")
        relay = fixed_step(result, "relay")
        if ours:
            p99 = ours["delivery_ms"]["p99"]
            add(
                name,
                f"ours delivery p99 at {result['msgs_per_s']:g} msgs/s (ms; lost {ours['lost']})",
                p99,
                f"<= {p99_target}",
                p99 is not None and p99 <= p99_target and not ours["lost"],
            )
        us = (ours or {}).get("server_cpu_us_per_delivery")
        if name == "peer10x10" and ours and yoga:
            value = _ratio(us, yoga["server_cpu_us_per_delivery"])
            add(name, "ours / yoga server CPU per delivery", value, "<= 0.5", _le(value, 0.5))
        if ours and relay:
            value = _ratio(us, relay["server_cpu_us_per_delivery"])
            limit = 2.0 if name == "peer1x500" else None
            add(
                name,
                "ours / relay server CPU per delivery",
                value,
                f"<= {limit}" if limit else "",
                _le(value, limit) if limit else None,
            )
        steps = _phase(result, "ours", "fixed") + _phase(result, "ours", "sweep")
        gc = gc_of(steps)
        if gc:
            add(
                name,
                "ours GC pauses > 20 ms, all steps (longest ms)",
                f"{gc['over_20ms']} ({gcstats.describe(gc).split(' / ')[0]})",
                "0",
                gc["over_20ms"] == 0,
            )
        if name == "peer10x10" and (
            _phase(result, "ours", "sweep") or _phase(result, "yoga", "sweep")
        ):
            best_ours = (sweep_best(result, "ours") or {}).get("msgs_per_s")
            best_yoga = (sweep_best(result, "yoga") or {}).get("msgs_per_s")
            value = _ratio(best_ours, best_yoga)
            add(
                name,
                f"sweep: highest rate p99 <= 50 ms, nothing lost: ours {_fmt(best_ours, 0)} / "
                f"yoga {_fmt(best_yoga, 0)} msgs/s",
                value if best_yoga or not best_ours else "yoga passed none",
                ">= 2.0",
                (value is not None and value >= 2.0) or bool(best_ours and not best_yoga),
            )
    result = results.get("sending1")
    if result and "stacks" in result:
        ours_steps = _phase(result, "ours", "sweep")
        yoga_steps = {s["msgs_per_s"]: s for s in _phase(result, "yoga", "sweep")}
        cpu = [s["server_cpu_us_per_message"] for s in ours_steps if s["server_cpu_us_per_message"]]
        if cpu:
            worst = round(max(cpu) / 1000, 3)
            add(
                "sending1",
                "ours server CPU per send, worst step (ms)",
                worst,
                "<= 0.5",
                worst <= 0.5,
            )
        per_rate = [
            r
            for s in ours_steps
            if s["msgs_per_s"] in yoga_steps
            and (
                r := _ratio(
                    s["server_cpu_us_per_message"],
                    yoga_steps[s["msgs_per_s"]]["server_cpu_us_per_message"],
                )
            )
            is not None
        ]
        if per_rate:
            add(
                "sending1",
                "ours / yoga CPU per send, worst common rate",
                max(per_rate),
                "<= 0.5",
                max(per_rate) <= 0.5,
            )
        if ours_steps:
            best = (sweep_best(result, "ours") or {}).get("msgs_per_s")
            add(
                "sending1",
                "ours highest rate with response p99 <= 20 ms, nothing lost (sends/s)",
                best,
                ">= 1,000",
                (best or 0) >= 1000,
            )
    result = results.get("mix10x10")
    if result and "stacks" in result and mix_steps(result)["mix"]:
        mixed = mix_steps(result)["mix"]
        worst = max(mixed, key=lambda s: s["delivery_ms"]["p99"] or 1e9)
        lost = sum(s["lost"] for s in mixed)
        p99 = worst["delivery_ms"]["p99"]
        add(
            "mix10x10",
            f"ours delivery p99 with the activity mix, worst round (ms; lost {lost})",
            p99,
            "<= 20",
            p99 is not None and p99 <= 20 and not lost,
        )
        summary = mix_summary(result)
        for key, what in (("us_per_delivery", "delivery"), ("us_per_operation", "operation")):
            row = summary[key]
            add(
                "mix10x10",
                f"ours server CPU µs per {what}: mix {_fmt(row['mix'])} / plain "
                f"{_fmt(row['plain'])} (medians)",
                row["mix/plain"],
                "",
                None,
            )
    result = results.get("stalled")
    if result and "stacks" in result:
        ours = result["stacks"].get("ours") or {}
        if "rss_held_mb" in ours:
            add(
                "stalled",
                f"ours RSS held for the stalled subscriber (MB; noise {ours['rss_noise_mb']})",
                ours["rss_held_mb"],
                "<= 1",
                ours["rss_held_mb"] <= 1,
            )


def _le(value: float | None, limit: float | None) -> bool:
    return value is not None and limit is not None and value <= limit
