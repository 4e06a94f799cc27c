"""``bertft serve FOLDER``: an exported model behind HTTP, on LitServe, speaking text-embeddings-inference's shapes.

Processes: this one (LitServe's main: it binds the port, starts the others and stops them), one HTTP process
(uvicorn, forked: it checks and tokenizes each request, :mod:`~bertft.deploy.serve_schema`, and holds the metrics),
the inference workers (:mod:`~bertft.deploy.serve_worker`, ``--workers`` per device) and LitServe's queue manager.
Routes: ``POST /predict``, ``GET /health``, ``/info``, ``/metrics``, ``/docs``, ``/openapi.json``
(docs/guides/serving.md).

SIGTERM or Ctrl-C drains: new requests get 503 at once, those in flight finish (up to ``--drain_timeout``), then
every child is stopped and joined, and the port is free when this process exits. A second signal stops at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import pickle
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import litserve as ls
import uvicorn.server
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from litserve.utils import LitAPIStatus, ResponseBufferItem, WorkerSetupStatus
from starlette.exceptions import HTTPException as StarletteHTTPException
from transformers import AutoTokenizer

from bertft.deploy.inference import read_manifest
from bertft.deploy.onnx_backend import BACKENDS
from bertft.deploy.serve_http import Gate, Metrics
from bertft.deploy.serve_schema import (
    ClientError,
    ErrorResponse,
    InfoResponse,
    Limits,
    PredictRequest,
    PredictResponse,
    error_body,
    parse_items,
    tokenize,
)
from bertft.deploy.serve_worker import BertftAPI

#: The environment variable holding the API key (TEI's clients send it as ``Authorization: Bearer <key>``).
KEY_ENV = "BERTFT_API_KEY"


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorResponse, "description": error_body(code, "")["error_type"]} for code in codes}


@dataclass
class Settings:
    """The options of ``bertft serve`` (see :func:`build_parser` for each)."""

    folder: str
    host: str = "127.0.0.1"
    port: int = 8000
    backend: str = "torch"
    accelerator: str = "auto"
    devices: str = "auto"
    workers: int = 1
    threads: int = 0
    max_batch_size: int = 32
    batch_timeout: float = 0.0
    max_batch_tokens: int = 16384
    max_client_batch_size: int = 32
    max_concurrent_requests: int = 512
    payload_limit: int = 2_000_000
    truncate: bool = True
    max_length: int | None = None
    timeout: float = 30.0
    drain_timeout: float = 30.0
    log_level: str = "warning"


class BertftServer(ls.LitServer):
    """LitServe's server with bertft's routes, gate and shutdown.

    LitServe is kept for what it does well (worker processes per device, the request queue and response routing,
    uvicorn), and extended where it cannot do what this server needs: ``/predict`` checks each request before it is
    queued (LitServe would fail a whole batch for one bad item), ``/health`` says ready only after warm-up and while
    not draining, and a signal drains before stopping (LitServe's main process killed by SIGTERM leaves its workers
    running).
    """

    def __init__(self, settings: Settings, manifest: dict[str, Any], key: str | None) -> None:
        self.settings = settings
        self.manifest = manifest
        folder = settings.folder
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
        positions = config.get("max_position_embeddings", 512)
        model_max = manifest.get("max_length") or min(self.tokenizer.model_max_length, positions)
        max_length = settings.max_length or model_max
        if max_length > positions:
            raise ValueError(f"--max_length {max_length} is over the encoder's {positions} positions")
        self.limits = Limits(settings.max_client_batch_size, max_length, settings.truncate, manifest["task"] != "token")
        self.metrics = Metrics()
        ctx = mp.get_context("fork")  # inherited by the forked HTTP process; read by the main one to drain
        self.state = argparse.Namespace(draining=ctx.Value("b", 0), in_flight=ctx.Value("i", 0))
        self._stopping = threading.Event()
        api = BertftAPI(folder, settings.backend, settings.threads, max_length, settings.max_batch_size,
                        settings.batch_timeout, settings.max_batch_tokens)  # fmt: skip
        gate = {"state": self.state, "metrics": self.metrics, "key": key, "payload_limit": settings.payload_limit,
                "max_concurrent": settings.max_concurrent_requests}  # fmt: skip
        super().__init__(
            api,
            accelerator="cpu" if settings.backend != "torch" else settings.accelerator,  # type: ignore[arg-type]
            devices=settings.devices if settings.devices == "auto" else int(settings.devices),
            workers_per_device=settings.workers,
            timeout=settings.timeout,
            middlewares=[(Gate, gate)],
        )
        self.app.add_exception_handler(ClientError, _client_error)  # type: ignore[arg-type]
        self.app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
        self.app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]

    # Routes -------------------------------------------------------------------------------------------------------

    def _register_internal_endpoints(self) -> None:
        app = self.app

        @app.get("/health", responses=_errors(503), summary="200 once the model is loaded and warmed up")
        async def health() -> dict[str, str]:
            if not self.ready():
                raise ClientError(503, "the model is not ready" if not self.state.draining.value else "draining")
            return {"status": "ok"}

        @app.get("/info", response_model=InfoResponse, responses=_errors(401, 503), summary="The model and limits")
        async def info() -> dict[str, Any]:
            return self.info()

        @app.get("/metrics", response_class=PlainTextResponse, responses=_errors(401, 503), summary="Prometheus")
        async def metrics() -> PlainTextResponse:
            text = self.metrics.text(self.state.in_flight.value)
            return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    def _register_api_endpoints(self, lit_api: ls.LitAPI, request_type: Any, response_type: Any) -> None:
        @self.app.post(
            "/predict",
            response_model=PredictResponse,
            responses=_errors(400, 401, 413, 422, 429, 503, 504),
            summary="Classify, score or tag texts (text-embeddings-inference's /predict shapes)",
        )
        async def predict(body: PredictRequest) -> JSONResponse:
            return JSONResponse(await self.predict(body))

    # Serving ------------------------------------------------------------------------------------------------------

    def ready(self) -> bool:
        """Every worker loaded the model and ran its warm-up, and the server is not draining."""
        status = self.workers_setup_status
        return not self.state.draining.value and bool(status) and all(
            v == WorkerSetupStatus.READY for v in status.values()
        )  # fmt: skip

    async def predict(self, body: PredictRequest) -> Any:
        """Checks and tokenizes the request, queues it for a batch, and shapes the answer."""
        items, batched = parse_items(body, self.limits)
        truncate = self.limits.truncate if body.truncate is None else body.truncate
        if self.manifest["task"] == "token":
            payload: dict[str, Any] = {"texts": items, "raw": body.raw_scores}
        else:
            ids, types = tokenize(items, self.tokenizer, self.limits, truncate)
            payload = {"ids": ids, "types": types, "raw": body.raw_scores}
        queue = self._get_request_queue("/predict")
        uid = os.urandom(16).hex()
        event = asyncio.Event()
        # Registered before anything awaits, so the answer cannot arrive before its slot.
        self.response_buffer[uid] = ResponseBufferItem(event)
        queue.put((self.app.response_queue_id, uid, time.monotonic(), payload))
        try:
            await asyncio.wait_for(event.wait(), timeout=self.settings.timeout)
        except asyncio.TimeoutError:
            self.response_buffer.pop(uid, None)
            raise ClientError(504, f"no answer within {self.settings.timeout:g} s") from None
        response, status = self.response_buffer.pop(uid).response
        if status == LitAPIStatus.ERROR:
            if isinstance(response, bytes):
                try:
                    response = pickle.loads(response)
                except Exception:  # noqa: BLE001 - an unreadable error is still the server's
                    response = None
            code = getattr(response, "status_code", 500)
            raise ClientError(504 if code == 504 else 500, "timed out in the queue" if code == 504 else "model error")
        self.metrics.queue.observe(response["queue_s"])
        self.metrics.batch_items.observe(response["batch_items"])
        self.metrics.request_items.observe(len(items))
        return response["items"] if batched else response["items"][0]

    def info(self) -> dict[str, Any]:
        """What ``GET /info`` answers."""
        m, s = self.manifest, self.settings
        packages = ["bertft", "torch", "transformers", "litserve"] + (["onnxruntime"] if s.backend != "torch" else [])
        versions = {}
        for name in packages:
            try:
                versions[name] = version(name)
            except PackageNotFoundError:
                versions[name] = "unknown"
        return {
            "task": m["task"],
            "labels": m["label_names"],
            "head": m["head"].get("class_path", "") if isinstance(m["head"], dict) else str(m["head"]),
            "encoder": str(m.get("encoder", "")),
            "max_length": self.limits.max_length,
            "backend": s.backend,
            "threshold": m.get("threshold") if m["task"] == "multilabel" else None,
            "versions": versions,
            "limits": {
                "max_client_batch_size": s.max_client_batch_size,
                "max_batch_size": s.max_batch_size,
                "max_batch_tokens": s.max_batch_tokens,
                "max_concurrent_requests": s.max_concurrent_requests,
                "payload_limit": s.payload_limit,
                "truncate": s.truncate,
                "timeout": s.timeout,
            },
        }

    # Lifecycle ----------------------------------------------------------------------------------------------------

    def verify_worker_status(self) -> None:
        """Waits until every worker is ready (LitServe waits for one), then prints how to call the server."""
        while not all(v == WorkerSetupStatus.READY for v in self.workers_setup_status.values()):
            if any(v == WorkerSetupStatus.ERROR for v in self.workers_setup_status.values()):
                raise RuntimeError("a worker failed to load the model (its error is printed above)")
            time.sleep(0.05)
        print(banner(self.settings, self.manifest, self.limits.max_length), flush=True)

    def _start_server(self, port: Any, num_uvicorn_servers: Any, log_level: Any, sockets: Any, *args: Any,
                      **kwargs: Any) -> Any:  # fmt: skip
        workers = super()._start_server(port, num_uvicorn_servers, log_level, sockets, *args, **kwargs)
        # The HTTP process holds the listening socket now. Closed here, so that once it stops listening the port is
        # closed and new connections are refused at once, rather than left waiting in the backlog of a socket this
        # process would keep open until it exits.
        for sock in sockets:
            sock.close()
        return workers

    def _start_worker_monitoring(self, manager: Any, uvicorn_workers: Any) -> None:
        # LitServe's monitor stops the server from its own thread when a worker dies, which races with a drain that
        # stops the workers on purpose. This one only asks the main thread to stop.
        def monitor() -> None:
            while not self._stopping.wait(2.0):
                if any(not p.is_alive() for p in self.inference_workers):
                    sys.stderr.write("bertft serve: an inference worker died; stopping\n")
                    self.stop(drain=False)
                    return

        threading.Thread(target=monitor, daemon=True, name="bertft-monitor").start()

    def stop(self, drain: bool = True) -> None:
        """Refuses new requests, waits for those in flight (``drain``), then lets ``run`` stop every process."""
        self.state.draining.value = 1
        if drain:
            deadline = time.monotonic() + self.settings.drain_timeout
            while self.state.in_flight.value > 0 and time.monotonic() < deadline:
                time.sleep(0.05)
        if not self._stopping.is_set():
            self._stopping.set()
            self._shutdown_event.set()  # LitServe's run() wakes and stops the HTTP process, workers and manager

    def serve(self) -> None:
        """Runs until SIGTERM or Ctrl-C, then drains and stops (see the module docstring)."""
        main_pid = os.getpid()
        signals = {"count": 0}

        def on_signal(signum: int, frame: Any) -> None:
            if os.getpid() != main_pid:  # the forked HTTP process inherits this handler: the main process decides
                return
            signals["count"] += 1
            # A thread, not the handler: the handler interrupts run() inside a call on the manager's connection,
            # which the handler must not use for a second call.
            threading.Thread(target=self.stop, args=(signals["count"] == 1,), daemon=True).start()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        # uvicorn, in the forked HTTP process, stops on SIGTERM (LitServe's way of stopping it, after the drain) but
        # leaves SIGINT to the handler above: Ctrl-C reaches the whole process group, and must drain, not cut.
        uvicorn.server.HANDLED_SIGNALS = (signal.SIGTERM,)  # type: ignore[attr-defined]
        self.run(host=self.settings.host, port=self.settings.port, log_level=self.settings.log_level,
                 generate_client_file=False, num_api_servers=1)  # fmt: skip


async def _client_error(request: Request, exc: ClientError) -> JSONResponse:
    headers = {"Retry-After": "1"} if exc.status in (429, 503) else None
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg', '')}" for e in exc.errors()[:5])
    return JSONResponse(error_body(422, problems or "invalid request"), status_code=422)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return JSONResponse(error_body(exc.status_code, str(exc.detail)), status_code=exc.status_code)


def banner(settings: Settings, manifest: dict[str, Any], max_length: int) -> str:
    """What the server prints once ready: where it listens, what it serves, and a curl line that works."""
    url = f"http://{settings.host if settings.host != '0.0.0.0' else '127.0.0.1'}:{settings.port}"
    labels = ", ".join(manifest["label_names"]) or "(regression: one value)"
    key = f' -H "Authorization: Bearer ${KEY_ENV}"' if os.environ.get(KEY_ENV) else ""
    example = '{"inputs": "a gripping, beautifully acted film"}'
    return (
        f"bertft serve: {url} ({settings.backend}, {settings.workers} worker(s) per device)\n"
        f"  task: {manifest['task']}  labels: {labels}  max_length: {max_length}\n"
        f"  docs: {url}/docs  health: {url}/health  metrics: {url}/metrics\n"
        f"  try:  curl -s {url}/predict -H 'Content-Type: application/json'{key} -d '{example}'"
    )


def build_parser() -> argparse.ArgumentParser:
    """The options of ``python -m bertft serve``."""
    d = Settings(folder="")
    p = argparse.ArgumentParser(prog="bertft serve", description="Serve an exported model over HTTP (LitServe).")
    p.add_argument("folder", help="An exported folder (bertft export), or a .ckpt (exported to a temporary folder).")
    p.add_argument("--host", default=d.host, help="Interface to listen on (0.0.0.0: every one).")
    p.add_argument("--port", type=int, default=d.port, help="Port (1024-65535).")
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default=d.backend,
        help="torch, or ONNX Runtime on the CPU: onnx (export --onnx), onnx-int8 (export --quantize int8).",
    )
    p.add_argument("--accelerator", default=d.accelerator, help="auto, cpu or cuda (torch backend).")
    p.add_argument("--devices", default=d.devices, help="Devices to use: auto, or how many.")
    p.add_argument("--workers", type=int, default=d.workers, help="Inference worker processes per device.")
    p.add_argument("--threads", type=int, default=d.threads, help="Intra-op threads per worker (0: one per core).")
    p.add_argument("--max_batch_size", type=int, default=d.max_batch_size, help="Requests per collected batch.")
    p.add_argument(
        "--batch_timeout",
        type=float,
        default=d.batch_timeout,
        help="Seconds a batch waits for more requests once one arrived (0: take what is queued).",
    )
    p.add_argument(
        "--max_batch_tokens",
        type=int,
        default=d.max_batch_tokens,
        help="Padded tokens per forward pass: a collected batch is sorted by length and split.",
    )
    p.add_argument(
        "--max_client_batch_size",
        type=int,
        default=d.max_client_batch_size,
        help="Inputs one request may hold (more: 422).",
    )
    p.add_argument(
        "--max_concurrent_requests",
        type=int,
        default=d.max_concurrent_requests,
        help="Requests in flight at once (more: 429).",
    )
    p.add_argument("--payload_limit", type=int, default=d.payload_limit, help="Bytes a request body may have (413).")
    p.add_argument(
        "--truncate",
        action=argparse.BooleanOptionalAction,
        default=d.truncate,
        help="Cut texts over max_length tokens when a request does not say (--no-truncate: 422).",
    )
    p.add_argument("--max_length", type=int, default=None, help="Token limit (default: the export's).")
    p.add_argument("--timeout", type=float, default=d.timeout, help="Seconds a request may wait for its answer (504).")
    p.add_argument(
        "--drain_timeout",
        type=float,
        default=d.drain_timeout,
        help="Seconds SIGTERM / Ctrl-C waits for the requests in flight.",
    )
    p.add_argument(
        "--api_key_file",
        default=None,
        help=f"File holding the API key (else ${KEY_ENV}; neither: no key). Never printed or logged.",
    )
    p.add_argument("--log_level", default=d.log_level, help="uvicorn's and LitServe's log level.")
    return p  # fmt: skip


def read_key(path: str | None) -> str | None:
    """The API key: from ``path``, else from ``$BERTFT_API_KEY``; None when neither is set."""
    if path:
        key = Path(path).read_text(encoding="utf-8").strip()
        if not key:
            raise ValueError(f"--api_key_file {path} is empty")
        return key
    return os.environ.get(KEY_ENV) or None


def main(argv: list[str] | None = None) -> None:
    """``python -m bertft serve FOLDER``: serves until SIGTERM or Ctrl-C; exits with status 2 on a user error."""
    args = vars(build_parser().parse_args(argv))
    key_file = args.pop("api_key_file")
    settings = Settings(**args)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the HTTP process is forked after tokenizing
    with tempfile.TemporaryDirectory(prefix="bertft-serve-") as tmp:
        try:
            key = read_key(key_file)
            if Path(settings.folder).is_file():  # a checkpoint: exported first, with the graph its backend needs
                from bertft.deploy.export import export

                settings.folder = str(export(settings.folder, Path(tmp) / "model", onnx=settings.backend != "torch",
                                             quantize="int8" if settings.backend == "onnx-int8" else None))  # fmt: skip
            manifest = read_manifest(settings.folder)
            wanted = {"onnx": "onnx", "onnx-int8": "onnx_int8"}.get(settings.backend)
            if wanted and not manifest.get(wanted):
                option = "--onnx" if wanted == "onnx" else "--onnx --quantize int8"
                raise FileNotFoundError(f"{settings.folder} has no {settings.backend} graph: bertft export {option}")
            server = BertftServer(settings, manifest, key)
        except (FileNotFoundError, FileExistsError, ValueError, ImportError) as err:
            if os.environ.get("BERTFT_DEBUG"):
                raise
            sys.stderr.write(f"bertft serve: error: {err}\n")
            sys.exit(2)
        server.serve()


if __name__ == "__main__":
    main()
