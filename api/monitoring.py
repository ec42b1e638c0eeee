"""/metrics for one running app: its plain counts sampled into api.core.metrics, the
endpoint on the main port, and the separate listener (METRICS_PORT)."""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
from collections import Counter
from collections.abc import Callable, Mapping

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from api.core.metrics import CONTENT_TYPE, SYNC_INTERVAL, Metrics, Sample, serve_port
from api.state import AppState

log = logging.getLogger(__name__)

# Set by `serve --workers N` when its supervising process serves METRICS_PORT itself (the
# workers would otherwise all try to bind it).
PORT_SERVED_ENV = "CHAT_BACKEND_METRICS_PORT_SERVED"


WEBSOCKET_PROTOCOLS = ("graphql-transport-ws", "graphql-ws", "none")


def websocket_protocol(subprotocols: list[str]) -> str:
    """The protocol a WebSocket asked for, as strawberry's view chooses it (a bounded label)."""
    for protocol in WEBSOCKET_PROTOCOLS[:2]:
        if protocol in subprotocols:
            return protocol
    return "none"


def sample(state: AppState, websockets: Mapping[str, int]) -> Sample:
    """Read the app's plain counts, all at once."""
    hub, db, pg = state.hub, state.db, state.db.pg
    checked_out = getattr(db.engine.pool, "checkedout", None)
    in_use = {"sqlalchemy": checked_out() if checked_out is not None else 0}
    # Every label that can occur is present from the start, at 0: a series that appears only
    # on its first event breaks rate() and hides the metric from a multiprocess scrape.
    errors: Counter[str] = Counter({"statement": 0, "connection": 0})
    errors.update(db.errors)
    if pg is not None:
        in_use["asyncpg"] = pg.in_use
        errors.update(pg.errors)
    limits, refused = state.limiter.limits, state.limiter.refused
    every = [limits.messages, limits.sign_in, limits.sign_in_per_address]
    every.append(limits.sign_up_per_address)
    return Sample(
        websockets={protocol: websockets.get(protocol, 0) for protocol in WEBSOCKET_PROTOCOLS},
        subscriptions=hub.subscription_counts(),
        deliveries=hub.deliveries,
        sockets_behind=hub.sockets_behind,
        sockets_closed_behind=hub.sockets_closed_behind,
        resync_refills=hub.resync_refills,
        db_in_use=in_use,
        db_waits=pg.waits if pg is not None else 0,
        db_errors=errors,
        broker_reconnects=state.pubsub.reconnects,
        publish_retries=state.pubsub.publish_retries,
        rate_limited={limit.name: refused[limit.name] for limit in every},
    )


class Monitoring:
    """The metrics of one app, from its lifespan's start to its end."""

    def __init__(self, state: AppState, websockets: Mapping[str, int]) -> None:
        self.state = state
        self.websockets = websockets
        self.metrics = Metrics()
        self._syncing = False
        self._stop_port: Callable[[], None] | None = None
        self.sync()  # every series exists from the start

    def sync(self) -> None:
        """Copy the plain counts into the metrics now."""
        self.metrics.sync(sample(self.state, self.websockets))

    async def run(self) -> None:
        """Observe and serve until cancelled (a task of the app's lifespan), then clean up."""
        self._start()
        try:
            if self._syncing:
                while True:
                    await asyncio.sleep(SYNC_INTERVAL)
                    try:
                        self.sync()
                    except Exception:  # a bug here must not stop the sampling for good
                        log.exception("metrics sync failed")
            else:
                await asyncio.Event().wait()
        finally:
            self._stop()

    def _start(self) -> None:
        metrics, settings = self.metrics, self.state.settings
        metrics.watch_gc()
        self.state.hub.observe_latency = metrics.delivery_latency.observe
        serve_here = bool(settings.metrics_port) and not os.environ.get(PORT_SERVED_ENV)
        if serve_here:
            self._stop_port = serve_port(settings.metrics_port, metrics.scrape_registry())
            log.info("metrics on port %d", settings.metrics_port)
        elif settings.is_production and not settings.metrics_token and not settings.metrics_port:
            log.warning("METRICS is on, but without METRICS_TOKEN or METRICS_PORT: no scrape")
        # Scrapes that do not come through this process's loop (another worker, the
        # listener's thread) read what was synced last.
        self._syncing = serve_here or metrics.multiprocess

    def _stop(self) -> None:
        if self._stop_port is not None:
            self._stop_port()
        self.state.hub.observe_latency = None
        self.metrics.close()


async def metrics_endpoint(request: Request) -> Response:
    """GET /metrics: Prometheus' text format (with METRICS_TOKEN set, only for its bearer)."""
    state: AppState = request.app.state.chat
    token = state.settings.metrics_token
    if token and not _bearer_matches(request.headers.get("authorization", ""), token):
        return PlainTextResponse(
            "/metrics needs Authorization: Bearer <METRICS_TOKEN>.",
            status_code=401,
            headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
        )
    monitoring: Monitoring | None = state.monitoring
    if monitoring is None:
        return PlainTextResponse("Metrics are off (METRICS=false).", status_code=404)
    monitoring.sync()
    return Response(monitoring.metrics.render(), media_type=CONTENT_TYPE)


def _bearer_matches(header: str, token: str) -> bool:
    scheme, _, value = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        value.strip().encode(), token.encode()
    )
