"""The signal path: typing in one group room, every member online and following roomSignals.

One group room of `--signals-members` (200) members: createRoom with the first 99 others, then
addMembers for the rest (createRoom takes 1 to 99 names). Each member has one WebSocket
subscribed to `roomSignals(roomId)` on that room, so each is online (presence). Each member
calls `setTyping(roomId)` once every members / rate seconds (200 / 20 = 10 s), open loop and
spread evenly; each call starts a typing state (the last one lapsed 4 s ago), so the server sends
one Typing(true) to every subscriber, and 6 s later one Typing(false).

Then, on the same server and in the same room, the plain fan-out for comparison: one socket per
member subscribed to `messageAdded(roomId)` and sendMessage at the same deliveries/s (2 x the
setTyping rate, each message to every member).
"""

from __future__ import annotations

import asyncio
from array import array
from dataclasses import asdict
from typing import Any

import orjson

from bench import gcstats
from bench.compare import settle
from bench.loadgen import (
    LoadGen,
    Room,
    SetupError,
    StepStats,
    Tracker,
    WSConn,
    perf,
    summarize_ms,
)
from bench.profile import Profiler, format_summary
from bench.scenarios import Context, _rss, _servers, _step, gc_snapshots, gc_window

# api/chat/signals.py: a typing state lapses this long after the last setTyping(true).
TYPING_TTL = 6.0
CREATE_MEMBERS = 99  # createRoom names 1 to 99 others

CREATE_ROOM = (
    "mutation Create($name: String!, $members: [String!]!) "
    "{ createRoom(name: $name, members: $members) { id } }"
)
ADD_MEMBERS = (
    "mutation Add($roomId: ID!, $names: [String!]!) "
    "{ addMembers(roomId: $roomId, names: $names) { id } }"
)
SET_TYPING = "mutation Typing($roomId: ID!) { setTyping(roomId: $roomId) }"
# What a chat client shows for each kind of signal.
ROOM_SIGNALS = (
    "subscription Signals($roomId: ID!) { roomSignals(roomId: $roomId) { __typename "
    "... on Typing { roomId user { id name } typing } "
    "... on Presence { roomId user { id name } online } "
    "... on ReadPosition { roomId user { id name } seq cursor } } }"
)


class SignalTracker(Tracker):
    """Typing signals per setTyping call k: Typing(true) and Typing(false) on every socket.

    A signal names its user, not the call, so signals are matched in order: the n-th
    Typing(true) about member m on a socket belongs to m's n-th call (failed calls skipped),
    and likewise for Typing(false). The server sends each socket its signals in order, so this
    is exact unless it dropped some (they count as lost; the latency of later ones about that
    member on that socket is then taken from an earlier call). Sockets are numbered by their
    `group` (the member index).
    """

    def __init__(self, names: list[str]) -> None:
        super().__init__()
        self.index = {name: i for i, name in enumerate(names)}
        self.calls_of: list[list[int]] = [[] for _ in names]  # member -> its calls k
        self.got_false = array("i")
        # socket -> member -> how far into calls_of[member] its signals have come
        self.pos_true = [array("i", [0] * len(names)) for _ in names]
        self.pos_false = [array("i", [0] * len(names)) for _ in names]
        self.false_lateness = array("d")
        self.presence = 0
        self.other_signals = 0

    def begin_step(self) -> None:
        super().begin_step()
        self.false_lateness = array("d")
        self.presence = self.other_signals = 0
        # Whatever earlier calls still owe is not this step's (the bench settles in between).
        for positions in (*self.pos_true, *self.pos_false):
            for member, calls in enumerate(self.calls_of):
                positions[member] = len(calls)

    def new_call(self, member: int, sent_at: float, expected: int) -> int:
        k = self.new_message(sent_at, expected)
        self.pending += expected  # and as many Typing(false)
        self.got_false.append(0)
        self.calls_of[member].append(k)
        return k

    def on_response(
        self, k: int, status: int, body: bytes, error: BaseException | None, now: float
    ) -> None:
        if k < self.k_floor:
            return
        failed = error is not None or status != 200 or b'"errors"' in body
        if failed and not self.failed[k]:
            self.pending -= self.expected[k] - self.got_false[k]
        super().on_response(k, status, body, error, now)

    def _call(self, positions: array[int], member: int) -> int:
        """The call the next signal of this kind about `member` belongs to, or -1."""
        calls = self.calls_of[member]
        p = positions[member]
        while p < len(calls) and self.failed[calls[p]]:
            p += 1
        if p >= len(calls):
            positions[member] = p
            return -1
        positions[member] = p + 1
        return calls[p]

    def on_message(self, conn: WSConn, payload: bytes, now: float) -> None:
        message = orjson.loads(payload)
        if message.get("type") != "next":
            super().on_message(conn, payload, now)
            return
        body = message["payload"]
        data = body.get("data")
        if not data or body.get("errors"):
            self.errors += 1
            if len(self.error_samples) < 20:
                self.error_samples.append(f"next {payload[:300]!r}")
            return
        conn.warm = True  # the subscription is live: its first signal is the room's state
        node = data["roomSignals"]
        kind = node["__typename"]
        if kind != "Typing":
            if kind == "Presence":
                self.presence += 1
            else:
                self.other_signals += 1
            return
        member = self.index.get(node["user"]["name"], -1)
        if member < 0:
            self.unexpected += 1  # someone not in the bench
            return
        socket = conn.group
        if node["typing"]:
            k = self._call(self.pos_true[socket], member)
            if k < self.k_floor:
                self.duplicates += 1  # more starts about this member than it made calls
                return
            self.got[k] += 1
            self.pending -= 1
            self.last_at[k] = now
            self.latencies.append(now - self.sent_at[k])
            return
        k = self._call(self.pos_false[socket], member)
        if k < self.k_floor:
            self.duplicates += 1
            return
        if self.pos_false[socket][member] > self.pos_true[socket][member]:
            self.out_of_order += 1  # a stop before its start
        self.got_false[k] += 1
        self.pending -= 1
        self.false_lateness.append(now - self.sent_at[k] - TYPING_TTL)

    def end_typing_step(self) -> dict[str, Any]:
        stats: StepStats = self.end_step()  # Typing(true): lost, latency, last recipient
        lost_false = 0
        silent = partial = 0  # calls nobody heard of at all; calls some sockets missed
        for k in range(self.k_floor, len(self.sent_at)):
            if not self.failed[k]:
                lost_false += max(0, self.expected[k] - self.got_false[k])
                if self.got[k] == 0 and self.got_false[k] == 0:
                    silent += 1
                elif self.got[k] < self.expected[k] or self.got_false[k] < self.expected[k]:
                    partial += 1
        out = asdict(stats)
        true_delivered = stats.deliveries
        false_delivered = len(self.false_lateness)
        out.update(
            {
                "calls": stats.sent,
                "typing_true_delivered": true_delivered,
                "typing_false_delivered": false_delivered,
                "deliveries": true_delivered + false_delivered,
                "lost_true": stats.lost,
                "lost_false": lost_false,
                "lost": stats.lost + lost_false,
                "calls_without_any_signal": silent,
                "calls_partly_delivered": partial,
                "false_lateness_ms": summarize_ms(self.false_lateness),
                "presence_signals": self.presence,
                "other_signals": self.other_signals,
            }
        )
        return out


async def _group_room(
    lg: LoadGen, names: list[str], cookies: dict[str, str], room_name: str
) -> Room:
    """createRoom with the first 99 others, then addMembers in chunks for the rest."""
    pool = lg.pools[0]
    owner = names[0]
    data = await pool.data(
        CREATE_ROOM,
        {"name": room_name, "members": names[1 : 1 + CREATE_MEMBERS]},
        cookies[owner],
    )
    room_id = data["createRoom"]["id"]
    rest = names[1 + CREATE_MEMBERS :]
    for start in range(0, len(rest), CREATE_MEMBERS):
        await pool.data(
            ADD_MEMBERS,
            {"roomId": room_id, "names": rest[start : start + CREATE_MEMBERS]},
            cookies[owner],
        )
    room = Room(id=room_id, members=[(name, cookies[name]) for name in names])
    return room


async def _connect_signal_sockets(lg: LoadGen, room: Room, limit_s: float = 60.0) -> float:
    """One socket per member following roomSignals; live once its first signal (the room's
    current state, at least its own presence) has come. Returns the seconds it took."""
    started = perf()
    semaphore = asyncio.Semaphore(50)
    subscribe = {"query": ROOM_SIGNALS, "variables": {"roomId": room.id}}

    async def one(member: int, cookie: str) -> WSConn:
        endpoint = lg.endpoints[member % len(lg.endpoints)]
        async with semaphore:
            return await lg.open_socket(endpoint, cookie, member, subscribe)

    conns = await asyncio.gather(*(one(i, c) for i, (_n, c) in enumerate(room.members)))
    room.sockets = list(conns)
    lg.sockets.extend(conns)
    deadline = perf() + limit_s
    while not all(conn.warm for conn in conns):
        if perf() > deadline:
            cold = sum(1 for conn in conns if not conn.warm)
            raise SetupError(
                f"{cold} roomSignals subscriptions never received a signal; "
                f"errors: {lg.tracker.error_samples[:3]}"
            )
        await asyncio.sleep(0.1)
        for conn in conns:
            if conn.sub_dead and not conn.closed and not conn.warm:
                lg.resubscribed += 1
                conn.start_subscription()
    return perf() - started


async def _typing_loop(
    lg: LoadGen,
    tracker: SignalTracker,
    room: Room,
    rate: float,
    duration: float,
    first_call: int,
) -> float:
    """setTyping at `rate` calls/s for `duration` s, member after member, on schedule (open
    loop: each call's clock starts at its scheduled instant). Returns the achieved rate."""
    total = int(rate * duration)
    interval = 1.0 / rate
    members = len(room.members)
    expected = len(room.sockets)
    body = orjson.dumps({"query": SET_TYPING, "variables": {"roomId": room.id}})
    start = perf() + 0.02
    i = 0
    while i < total:
        now = perf()
        due = start + i * interval
        if due > now:
            await asyncio.sleep(due - now)
            continue
        while i < total:
            due = start + i * interval
            if due > now:
                break
            member = (first_call + i) % members
            k = tracker.new_call(member, due, expected)
            tracker.lags.append(perf() - due)

            def done(status: int, payload: bytes, _c: Any, error: Any, k: int = k) -> None:
                tracker.on_response(k, status, payload, error, perf())

            lg.pool().request(body, room.members[member][1], done)
            i += 1
    return total / max(1e-9, perf() - start)


async def _typing_step(
    ctx: Context,
    lg: LoadGen,
    tracker: SignalTracker,
    meter: Any,
    room: Room,
    servers: list[Any],
    *,
    rate: float,
    seconds: float,
    first_call: int,
) -> dict[str, Any]:
    """One measured window: the calls, then until the last Typing(false) has come (or the
    drain limit after the last lapse); CPU over all of it."""
    gc_before = await gc_snapshots(servers)
    tracker.begin_step()
    before = meter.snapshot()
    started = perf()
    achieved = await _typing_loop(lg, tracker, room, rate, seconds, first_call)
    drained = await lg.drain(TYPING_TTL + ctx.config.drain_seconds)
    after = meter.snapshot()
    wall = perf() - started
    cpu = meter.delta(before, after)
    gc_after = await gc_snapshots(servers)
    step = tracker.end_typing_step()
    deliveries = step["deliveries"]
    step.update(
        {
            "set_typing_per_s": rate,
            "seconds": seconds,
            "achieved_send_rate": round(achieved, 1),
            "offered_deliveries_per_s": round(2 * rate * len(room.sockets)),
            "drained": drained,
            "window_s": round(wall, 2),
            "cpu": {key: round(value, 3) for key, value in cpu.items()},
            "server_cpu_us_per_delivery": (
                round(1e6 * cpu["server_cpu_s"] / deliveries, 2) if deliveries else None
            ),
            "infra_cpu_us_per_delivery": (
                round(1e6 * cpu["infra_cpu_s"] / deliveries, 2) if deliveries else None
            ),
            "server_cpu_us_per_call": (
                round(1e6 * cpu["server_cpu_s"] / step["calls"], 1) if step["calls"] else None
            ),
            "gc": gc_window(servers, gc_before, gc_after),
            "http_connections": sum(pool.peak_open for pool in lg.pools),
        }
    )
    return step


def _typing_line(step: dict[str, Any]) -> str:
    d = step["delivery_ms"]
    return (
        f"    typing {step['set_typing_per_s']:g}/s x {step['seconds']:g} s: "
        f"{step['typing_true_delivered']} true + {step['typing_false_delivered']} false "
        f"delivered (lost {step['lost_true']} + {step['lost_false']}, dup {step['duplicates']}, "
        f"ooo {step['out_of_order']}, err {step['errors'] + step['send_errors']}; calls "
        f"unheard {step['calls_without_any_signal']}, partly heard "
        f"{step['calls_partly_delivered']}, drained {step['drained']}); "
        f"true p50 {d['p50']} p99 {d['p99']} ms, setTyping p99 {step['response_ms']['p99']} ms; "
        f"server {step['cpu']['server_cpu_pct']:.0f}% = {step['server_cpu_us_per_delivery']} "
        f"us/signal, db/broker {step['cpu']['infra_cpu_pct']:.0f}%, "
        f"gen {step['cpu']['generator_cpu_pct']:.0f}%, other {step['cpu']['other_cpu_pct']:.0f}%"
    )


def _message_line(step: dict[str, Any]) -> str:
    d = step["delivery_ms"]
    return (
        f"    messageAdded {step['msgs_per_s']:g} msgs/s x {step['seconds']:g} s: "
        f"{step['deliveries']} delivered (lost {step['lost']}, dup {step['duplicates']}, "
        f"ooo {step['out_of_order']}, err {step['errors'] + step['send_errors']}); "
        f"p50 {d['p50']} p99 {d['p99']} ms, send p99 {step['response_ms']['p99']} ms; "
        f"server {step['cpu']['server_cpu_pct']:.0f}% = {step['server_cpu_us_per_delivery']} "
        f"us/delivery, db/broker {step['cpu']['infra_cpu_pct']:.0f}%, "
        f"gen {step['cpu']['generator_cpu_pct']:.0f}%, other {step['cpu']['other_cpu_pct']:.0f}%"
    )


def _start_profile(ctx: Context, servers: list[Any], label: str) -> Profiler | None:
    if not ctx.config.profile:
        return None
    profiler = Profiler([s.pid for s in servers], ctx.out_dir / f"profile-{label}")
    return profiler if profiler.start() else None


def _stop_profile(ctx: Context, profiler: Profiler | None) -> dict[str, Any] | None:
    if profiler is None:
        return None
    profiles = profiler.stop()
    for pid, summary in profiles.items():
        ctx.log(f"  profile of server {pid} ({summary.get('file')}):")
        ctx.log(format_summary(summary))
    return profiles


async def signals(ctx: Context) -> dict[str, Any]:
    """Typing in a 200-member room (roomSignals on every member's socket), then messageAdded
    fan-out in the same room at the same deliveries/s: server CPU per delivery of each."""
    c = ctx.config
    members = c.signals_members
    rate = c.signals_rate
    message_rate = c.signals_message_rate or 2 * rate
    servers = await _servers(ctx)
    endpoints = [server.endpoint for server in servers]
    prefix = ctx.prefix("g")
    names = [f"{prefix}{i}" for i in range(members)]
    lg = LoadGen(endpoints)
    tracker = SignalTracker(names)
    lg.tracker = tracker
    messages = LoadGen(endpoints)
    messages.message_bytes = c.message_bytes
    messages.client_ids = c.client_ids
    result: dict[str, Any] = {
        "servers": len(servers),
        "members": members,
        "sockets": members,
        "set_typing_per_s": rate,
        "seconds": c.signals_seconds,
        "message_rate": message_rate,
    }
    meter = ctx.stack.meter(servers)
    profiler = None
    try:
        result["rss_before_sockets_mb"] = round(_rss(servers) / 2**20, 1)
        started = perf()
        cookies = await lg.sign_up(names)
        result["sign_up_s"] = round(perf() - started, 2)
        started = perf()
        room = await _group_room(lg, names, cookies, f"signals {prefix}")
        result["room_s"] = round(perf() - started, 2)
        result["connect_s"] = round(await _connect_signal_sockets(lg, room), 2)
        result["rss_after_connect_mb"] = round(_rss(servers) / 2**20, 1)
        for pool in lg.pools:
            await pool.warm(8)
        ctx.stack.renice_database()
        result["settled_after_connect_s"] = await settle(servers)
        call = 0
        if c.signals_warm_seconds:
            # Unmeasured: the same load for a few seconds, until its states have lapsed.
            warm = await _typing_step(
                ctx,
                lg,
                tracker,
                meter,
                room,
                servers,
                rate=rate,
                seconds=c.signals_warm_seconds,
                first_call=call,
            )
            call += warm["calls"]
            result["warm_up_load"] = {
                "seconds": c.signals_warm_seconds,
                "true_p99_ms": warm["delivery_ms"]["p99"],
                "lost": warm["lost"],
                "drained": warm["drained"],
                "settled_s": await settle(servers),
            }
        profiler = _start_profile(ctx, servers, "signals-typing")
        step = await _typing_step(
            ctx,
            lg,
            tracker,
            meter,
            room,
            servers,
            rate=rate,
            seconds=c.signals_seconds,
            first_call=call,
        )
        result["profile_typing"] = _stop_profile(ctx, profiler)
        profiler = None
        result["typing"] = step
        ctx.log(_typing_line(step))
        result["signal_error_samples"] = tracker.error_samples[:10]

        # The same room's messageAdded fan-out: one more socket per member (still online, so
        # nothing changes in presence), then the roomSignals sockets close.
        messages.rooms = [Room(id=room.id, members=room.members)]
        msg_room = messages.rooms[0]
        connect_s, warm_s, _ = await messages.connect_and_warm([msg_room], 1)
        result["message_connect_s"] = round(connect_s + warm_s, 2)
        lg.close()
        await asyncio.sleep(TYPING_TTL / 2)
        result["settled_before_messages_s"] = await settle(servers)
        if c.signals_warm_seconds:
            warm_msg = await _step(
                ctx, messages, meter, [msg_room], message_rate, c.signals_warm_seconds, servers
            )
            result["message_warm_up_load"] = {
                "p99_ms": warm_msg["delivery_ms"]["p99"],
                "lost": warm_msg["lost"],
                "settled_s": await settle(servers),
            }
        profiler = _start_profile(ctx, servers, "signals-messages")
        msg_step = await _step(
            ctx, messages, meter, [msg_room], message_rate, c.signals_seconds, servers
        )
        result["profile_messages"] = _stop_profile(ctx, profiler)
        profiler = None
        msg_step.pop("timeline", None)
        result["messages"] = msg_step
        ctx.log(_message_line(msg_step))
        result["message_error_samples"] = messages.tracker.error_samples[:10]
        signal_us = step["server_cpu_us_per_delivery"]
        message_us = msg_step["server_cpu_us_per_delivery"]
        result["signal_over_message_cpu"] = (
            round(signal_us / message_us, 2) if signal_us and message_us else None
        )
        result["rss_end_mb"] = round(_rss(servers) / 2**20, 1)
        ctx.log(
            f"    server CPU per delivery: signal {signal_us} us, message {message_us} us "
            f"(x{result['signal_over_message_cpu']})"
        )
    finally:
        if profiler is not None:
            _stop_profile(ctx, profiler)
        lg.close()
        messages.close()
    return result


SCENARIOS = {"signals": signals}


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def render(results: dict[str, Any]) -> list[str]:
    """The signals table: the typing window and the messageAdded window side by side."""
    result = results.get("signals")
    if not result or "typing" not in result:
        return []
    t = result["typing"]
    m = result.get("messages")
    lines = [
        f"\n### signals: {result['servers']} process(es), 1 group room, {result['members']} "
        f"members, one roomSignals socket each; setTyping {result['set_typing_per_s']:g}/s "
        f"for {result['seconds']:g} s; messageAdded in the same room at "
        f"{result['message_rate']:g} msgs/s\n",
        "| path | deliveries offered/s | delivered | lost | dup | ooo | errors | p50 ms "
        "| p99 ms | p99.9 ms | request p99 ms | server CPU % | us/delivery | db+broker CPU % "
        "| gen CPU % | other CPU % | GC max ms / >20 ms |",
        "|---|" + "---:|" * 16,
    ]

    def row(label: str, s: dict[str, Any], lost: str) -> str:
        d = s["delivery_ms"]
        return (
            f"| {label} | {_fmt(s['offered_deliveries_per_s'])} | {_fmt(s['deliveries'])} | "
            f"{lost} | {s['duplicates']} | {s['out_of_order']} | "
            f"{s['errors'] + s['send_errors']} | {_fmt(d['p50'])} | {_fmt(d['p99'])} | "
            f"{_fmt(d['p999'])} | {_fmt(s['response_ms']['p99'])} | "
            f"{_fmt(s['cpu']['server_cpu_pct'], 0)} | {_fmt(s['server_cpu_us_per_delivery'])} | "
            f"{_fmt(s['cpu']['infra_cpu_pct'], 0)} | {_fmt(s['cpu']['generator_cpu_pct'], 0)} | "
            f"{_fmt(s['cpu']['other_cpu_pct'], 0)} | {gcstats.describe(s.get('gc'))} |"
        )

    lines.append(
        row(
            "roomSignals (Typing true+false; latency: setTyping -> Typing(true))",
            t,
            f"{t['lost_true']} + {t['lost_false']}",
        )
    )
    if m:
        lines.append(row("messageAdded (sendMessage -> delivery)", m, str(m["lost"])))
    lines.append(
        f"\nTyping(false) after the 6 s lapse: p50 {_fmt(t['false_lateness_ms']['p50'])} / "
        f"p99 {_fmt(t['false_lateness_ms']['p99'])} ms late (from setTyping's schedule + 6 s); "
        f"server CPU per setTyping call, its 400 signals included: "
        f"{_fmt(t['server_cpu_us_per_call'], 0)} us; signal / message CPU per delivery: "
        f"{_fmt(result.get('signal_over_message_cpu'), 2)}. Calls of which no socket got "
        f"anything: {t['calls_without_any_signal']}, that some sockets missed: "
        f"{t['calls_partly_delivered']} (of {t['calls']}); drained within the limit: "
        f"{'yes' if t['drained'] else 'no'}."
    )
    return lines


def targets(results: dict[str, Any], add: Any) -> None:
    result = results.get("signals")
    if not result or "typing" not in result:
        return
    t = result["typing"]
    add(
        "signals",
        "server CPU per signal delivered (us; Typing true+false, 200 sockets)",
        t["server_cpu_us_per_delivery"],
        "",
        None,
    )
    m = result.get("messages")
    if m:
        add(
            "signals",
            "server CPU per messageAdded delivery, same room and rate (us)",
            m["server_cpu_us_per_delivery"],
            "",
            None,
        )
        add(
            "signals",
            "signal / message CPU per delivery",
            result["signal_over_message_cpu"],
            "",
            None,
        )
    add(
        "signals",
        "Typing(true) p50 / p99 from setTyping (ms); lost",
        f"{_fmt(t['delivery_ms']['p50'])} / {_fmt(t['delivery_ms']['p99'])}; "
        f"{t['lost_true']} + {t['lost_false']}",
        "",
        None,
    )
