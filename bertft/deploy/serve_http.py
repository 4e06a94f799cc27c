"""The HTTP side of ``bertft serve`` around LitServe's routes: the gate and the Prometheus metrics.

The gate is what every request passes: drain, key, payload size, concurrency.

The gate is a plain ASGI middleware, so it answers before FastAPI reads or validates a body: a request that is too
large, unauthorised or over the concurrency limit costs no parsing, and a draining server refuses new work at once.
"""

from __future__ import annotations

import bisect
import hmac
import json
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from bertft.deploy.serve_schema import error_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Routes answered without the API key: orchestrators probe /health and must not hold the key.
OPEN_PATHS = frozenset({"/health"})
#: Routes counted in the metrics (anything else is counted as "other", so scanners cannot grow the label set).
ROUTES = frozenset({"/predict", "/health", "/info", "/metrics", "/docs", "/openapi.json"})


class Histogram:
    """A Prometheus histogram: cumulative bucket counts, sum and count.

    Args:
        buckets: Upper bounds, increasing (``+Inf`` is added).
    """

    def __init__(self, buckets: Sequence[float]) -> None:
        self.bounds = list(buckets)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        """Counts one value."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str) -> list[str]:
        """The histogram in Prometheus' text format."""
        out, total = [], 0
        for bound, count in zip([*map(str, self.bounds), "+Inf"], self.counts, strict=True):
            total += count
            out.append(f'{name}_bucket{{le="{bound}"}} {total}')
        return [*out, f"{name}_sum {self.sum}", f"{name}_count {self.count}"]


class Metrics:
    """What ``GET /metrics`` reports: requests by route and status, latency, queue time and batch sizes."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.latency = Histogram([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30])
        self.queue = Histogram([0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30])
        self.batch_items = Histogram([1, 2, 4, 8, 16, 32, 64, 128, 256, 512])
        self.request_items = Histogram([1, 2, 4, 8, 16, 32, 64, 128])

    def text(self, in_flight: int) -> str:
        """Everything, in Prometheus' text exposition format (version 0.0.4)."""
        lines = [
            "# HELP bertft_requests_total HTTP requests answered, by route and status.",
            "# TYPE bertft_requests_total counter",
            *(f'bertft_requests_total{{route="{r}",status="{s}"}} {n}' for (r, s), n in sorted(self.requests.items())),
            "# HELP bertft_in_flight_requests /predict requests being answered now.",
            "# TYPE bertft_in_flight_requests gauge",
            f"bertft_in_flight_requests {in_flight}",
        ]
        for name, help_, hist in (
            ("bertft_request_duration_seconds", "Time to answer /predict, from the request to the answer.",
             self.latency),
            ("bertft_queue_duration_seconds", "Time a /predict request waited in the queue for a batch.", self.queue),
            ("bertft_batch_items", "Items (texts) in the batch each /predict request was answered in.",
             self.batch_items),
            ("bertft_request_items", "Items (texts) per /predict request.", self.request_items),
        ):  # fmt: skip
            lines += [f"# HELP {name} {help_}", f"# TYPE {name} histogram", *hist.lines(name)]
        return "\n".join(lines) + "\n"


class Gate:
    """The ASGI middleware every request passes, in this order.

    1. Draining (SIGTERM or Ctrl-C received): 503, so a load balancer moves on; requests already in flight finish.
    2. API key: ``Authorization: Bearer <key>`` on every route but :data:`OPEN_PATHS`, else 401.
    3. ``/predict`` only: a body over ``payload_limit`` bytes 413 (read here, chunked or not); over
       ``max_concurrent`` requests in flight 429.

    Args:
        app: The FastAPI app.
        state: Shared between processes: ``draining`` and ``in_flight`` (``multiprocessing.Value``).
        metrics: Counts every answer.
        key: The API key; None leaves every route open.
        payload_limit: Bytes a ``/predict`` body may have.
        max_concurrent: ``/predict`` requests in flight at once.
    """

    def __init__(
        self, app: ASGIApp, state: Any, metrics: Metrics, key: str | None, payload_limit: int, max_concurrent: int
    ) -> None:
        self.app = app
        self.state = state
        self.metrics = metrics
        self.key = key.encode() if key else None
        self.payload_limit = payload_limit
        self.max_concurrent = max_concurrent

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answers the request, or refuses it with the JSON error body."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        route = path if path in ROUTES else "other"
        status = {"code": 500}

        async def send_counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        start = time.perf_counter()
        try:
            await self._gate(path, scope, receive, send_counted)
        finally:
            self.metrics.requests[(route, status["code"])] += 1
            if path == "/predict":
                self.metrics.latency.observe(time.perf_counter() - start)

    async def _gate(self, path: str, scope: Scope, receive: Receive, send: Send) -> None:
        if self.state.draining.value:
            # "Connection: close": a client on a keep-alive connection reconnects, to another replica or to a closed
            # port, instead of holding this server's shutdown open with requests it cannot serve.
            await respond(send, 503, "the server is shutting down", close=True)
            return
        if self.key is not None and path not in OPEN_PATHS and not self._authorized(scope):
            await respond(send, 401, "missing or wrong API key: send 'Authorization: Bearer <key>'")
            return
        if path != "/predict":
            await self.app(scope, receive, send)
            return
        body = await read_body(scope, receive, self.payload_limit)
        if body is None:
            await respond(send, 413, f"the body is over the limit of {self.payload_limit} bytes")
            return
        with self.state.in_flight.get_lock():
            admitted = self.state.in_flight.value < self.max_concurrent
            if admitted:
                self.state.in_flight.value += 1
        if not admitted:
            await respond(send, 429, f"{self.max_concurrent} requests are in flight; retry later")
            return
        try:
            await self.app(scope, replay(body, receive), send)
        finally:
            with self.state.in_flight.get_lock():
                self.state.in_flight.value -= 1

    def _authorized(self, scope: Scope) -> bool:
        assert self.key is not None
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key)
        return False


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None once it passes ``limit`` bytes (by its Content-Length or as it arrives)."""
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            return None
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the app a body already read, then waits on the connection (for its disconnect)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed


async def respond(send: Send, status: int, message: str, close: bool = False) -> None:
    """Sends ``{"error": ..., "error_type": ...}`` with ``status`` (and ``Connection: close`` if ``close``)."""
    body = json.dumps(error_body(status, message)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 429 or status == 503:
        headers.append((b"retry-after", b"1"))
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
