"""``bertft serve`` under load, against the server people write by hand and against the offline ``Predictor``.

Starts ``bertft serve`` on a loopback port for each backend and drives it with a bounded asyncio + httpx client on
SST-2 test sentences and ~180-token texts (several sentences joined):

- latency: one client, p50 and p99, short and long texts;
- throughput: closed loops of 16 and 64 clients;
- an open loop (Poisson arrivals) at half the measured capacity, and one at twice it (the server runs with
  ``--max_concurrent_requests``; the answers must be 200 or 429 only: no 5xx, no timeouts);
- 5% malformed requests mixed into a 16-client loop (every good request must still answer 200).

In the same run, for ratios: the hand-written baseline (a FastAPI route around ``transformers.pipeline`` on the same
exported folder, one request per forward pass, served by uvicorn) and the offline ``Predictor`` throughput (the
ceiling: no HTTP, batches of 32). Writes ``<out>.json``, ``<out>.csv`` and ``<out>.png`` (latency against throughput).

    python benchmarks/serve_load.py                       # full run: about 15 minutes on 2 CPU cores
    python benchmarks/serve_load.py --quick               # a short bounded check that everything runs
    python benchmarks/serve_load.py --folder my-model --backends torch,onnx,onnx-int8

Without ``--folder`` it exports the packaged MiniLM with a PoolerHead (as initialised: speed does not depend on the
head's weights), with both ONNX graphs, so the baseline's ``pipeline`` can load the same folder.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")

import httpx  # noqa: E402
from pydantic import BaseModel  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SST2_TEST = ROOT / "bertft" / "bundled" / "sst2" / "test.tsv"
MALFORMED = [{"inputs": ""}, {"inputs": ["a", "b", "c"]}, {"text": "no inputs"}, {"inputs": 42}]


def sentences() -> list[str]:
    lines = SST2_TEST.read_text(encoding="utf-8").splitlines()[1:]
    return [line.split("\t")[0] for line in lines if line.strip()]


def long_texts(short: list[str], tokenizer: Any, tokens: int = 180, n: int = 200) -> list[str]:
    """Texts of about ``tokens`` tokens: consecutive SST-2 sentences joined."""
    out, i = [], 0
    while len(out) < n:
        text = ""
        while len(tokenizer(text)["input_ids"]) < tokens:
            text = f"{text} {short[i % len(short)]}".strip()
            i += 1
        out.append(text)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def process(argv: list[str], url: str, startup: float = 300) -> Any:
    """Runs a server until the block ends (SIGTERM, then SIGKILL to its session); yields once /health is 200."""
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + startup
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{' '.join(argv[:5])} did not start (exit code {proc.poll()})")
            time.sleep(0.5)
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(60)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


def summarize(latencies: list[float], statuses: Counter, seconds: float) -> dict[str, Any]:
    ok = sorted(latencies)
    q = (lambda p: ok[min(len(ok) - 1, int(p * len(ok)))] * 1000) if ok else (lambda p: float("nan"))  # noqa: E731
    return {"requests": sum(statuses.values()), "ok": len(ok), "seconds": round(seconds, 2),
            "throughput": round(len(ok) / seconds, 2), "p50_ms": round(q(0.5), 2), "p99_ms": round(q(0.99), 2),
            "statuses": dict(sorted((str(k), v) for k, v in statuses.items()))}  # fmt: skip


async def closed_loop(url: str, bodies: list[dict], clients: int, seconds: float, requests: int | None = None,
                      malformed: float = 0.0) -> dict[str, Any]:  # fmt: skip
    """``clients`` clients each sending its next request when the last one is answered, for ``seconds``."""
    latencies: list[float] = []
    statuses: Counter = Counter()
    errors: Counter = Counter()  # what a status 0 was: the client's exception
    bad_ok = Counter()
    rng = random.Random(0)
    deadline = time.monotonic() + seconds
    sent = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def worker(k: int) -> None:
            nonlocal sent
            while time.monotonic() < deadline and (requests is None or sent < requests):
                sent += 1
                bad = rng.random() < malformed
                body = rng.choice(MALFORMED) if bad else bodies[(sent * 7 + k) % len(bodies)]
                start = time.perf_counter()
                try:
                    status = (await client.post(f"{url}/predict", json=body)).status_code
                except httpx.HTTPError as err:
                    status = 0
                    errors[type(err).__name__] += 1
                if bad:
                    bad_ok[status] += 1
                    continue
                statuses[status] += 1
                if status == 200:
                    latencies.append(time.perf_counter() - start)

        started = time.monotonic()
        await asyncio.gather(*(worker(k) for k in range(clients)))
    result = summarize(latencies, statuses, time.monotonic() - started)
    if errors:
        result["client_errors"] = dict(errors)
    if malformed:
        result["malformed_statuses"] = dict(sorted((str(k), v) for k, v in bad_ok.items()))
    return result


async def open_loop(url: str, bodies: list[dict], rate: float, seconds: float) -> dict[str, Any]:
    """Poisson arrivals at ``rate`` requests per second for ``seconds``, whatever the answers' pace."""
    latencies: list[float] = []
    statuses: Counter = Counter()
    errors: Counter = Counter()
    rng = random.Random(1)
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=2000)) as client:

        async def one(body: dict) -> None:
            start = time.perf_counter()
            try:
                status = (await client.post(f"{url}/predict", json=body)).status_code
            except httpx.TimeoutException:
                status = -1  # timed out: must never happen to an admitted request
            except httpx.HTTPError as err:
                status = 0
                errors[type(err).__name__] += 1
            statuses[status] += 1
            if status == 200:
                latencies.append(time.perf_counter() - start)

        tasks, started, i = [], time.monotonic(), 0
        while time.monotonic() - started < seconds:
            tasks.append(asyncio.create_task(one(bodies[i % len(bodies)])))
            i += 1
            await asyncio.sleep(rng.expovariate(rate))
        await asyncio.gather(*tasks)
    result = summarize(latencies, statuses, time.monotonic() - started)
    if errors:
        result["client_errors"] = dict(errors)
    result["offered_rate"] = round(rate, 2)
    return result


def offline(folder: str, backend: str, texts: list[str], seconds: float) -> dict[str, Any]:
    """The ``Predictor``'s own throughput on the texts, batches of 32: the ceiling for a server."""
    from bertft import load

    predictor = load(folder, backend=backend)
    predictor.predict(texts[:32])  # warm-up
    done, started = 0, time.monotonic()
    while time.monotonic() - started < seconds:
        predictor.predict(texts, batch_size=32)
        done += len(texts)
    return {"throughput": round(done / (time.monotonic() - started), 2)}


class BaselineBody(BaseModel):
    """The baseline's request: one text (module level, so FastAPI resolves the annotation)."""

    inputs: str


def baseline_app(folder: str) -> Any:
    """What people write by hand: a FastAPI route around ``transformers.pipeline``, one request per forward pass."""
    from fastapi import FastAPI
    from transformers import pipeline

    classify = pipeline("text-classification", model=folder, device="cpu", top_k=None, truncation=True)
    app = FastAPI()

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/predict")
    def predict(body: BaselineBody) -> Any:  # a sync route: FastAPI runs it in its thread pool, one pipeline call each
        return classify(body.inputs)

    return app


def session_processes(sid: int) -> dict[int, tuple[float, int]]:
    """``{pid: (CPU seconds so far, resident bytes)}`` of each process in session ``sid`` (a server, its children)."""
    tick, page = os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE")
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[3]) == sid:  # fields from the state on: ppid, pgrp, session, ..., utime 11, stime 12, rss 21
            found[int(entry.name)] = ((int(fields[11]) + int(fields[12])) / tick, int(fields[21]) * page)
    return found


def cpu_profile(sid: int, before: dict[int, tuple[float, int]], client_s: float, result: dict) -> dict[str, Any]:
    """Where a phase's CPU went: the load generator (this process), the server's main process, the process holding
    the model (the largest resident one besides the main) and the server's other processes (HTTP, queue)."""
    after = session_processes(sid)
    spent = {pid: cpu - before.get(pid, (0.0, 0))[0] for pid, (cpu, _) in after.items()}
    others = [pid for pid in after if pid != sid]
    model = max(others, key=lambda pid: after[pid][1], default=None)
    cpu = {
        "client": client_s,
        "server_main": spent.get(sid, 0.0),
        "model_worker": spent.get(model, 0.0) if model is not None else 0.0,
        "server_other": sum(spent[pid] for pid in others if pid != model),
    }
    return {
        "cpu_s": {k: round(v, 2) for k, v in cpu.items()},
        "cores_busy": round(sum(cpu.values()) / result["seconds"], 2),
        "cpu_ms_per_ok_request": {k: round(1000 * v / max(result["ok"], 1), 2) for k, v in cpu.items()},
    }


def run_phases(
    url: str, sid: int, short: list[dict], long: list[dict], args: argparse.Namespace, full: bool
) -> dict[str, Any]:
    """Every load phase against one running server; each phase also says where its CPU went."""
    phases: dict[str, Any] = {}

    def run(name: str, phase: Any) -> dict[str, Any]:
        before, client = session_processes(sid), time.process_time()
        result = asyncio.run(phase)
        result.update(cpu_profile(sid, before, time.process_time() - client, result))
        phases[name] = result
        return result

    n_lat = 30 if args.quick else 300
    run("latency_short", closed_loop(url, short, 1, 600, requests=n_lat))
    run("latency_long", closed_loop(url, long, 1, 600, requests=n_lat // 3))
    run("closed_16", closed_loop(url, short, 16, args.seconds))
    if not full:
        return phases
    run("closed_64", closed_loop(url, short, 64, args.seconds))
    run("closed_16_long", closed_loop(url, long, 16, args.seconds))
    capacity = max(phases["closed_16"]["throughput"], phases["closed_64"]["throughput"])
    run("open_half_capacity", open_loop(url, short, capacity / 2, args.seconds))
    run("open_twice_capacity", open_loop(url, short, capacity * 2, args.seconds))
    run("malformed_5pct", closed_loop(url, short, 16, args.seconds, malformed=0.05))
    return phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", help="An exported folder (a PoolerHead on BERT for the baseline's pipeline).")
    parser.add_argument("--backends", default="torch,onnx-int8", help="Backends to serve, comma-separated.")
    parser.add_argument("--seconds", type=float, default=20, help="Length of each throughput phase.")
    parser.add_argument("--max_concurrent_requests", type=int, default=128, help="The server's 429 limit.")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "serve_load"), help="Output path, no suffix.")
    parser.add_argument("--quick", action="store_true", help="Short phases, torch only: checks that it all runs.")
    parser.add_argument("--serve_args", default="", help="More bertft serve options, e.g. '--workers 2 --threads 1'.")
    parser.add_argument("--baseline_server", nargs=2, metavar=("FOLDER", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_server:  # the baseline, in a process of its own
        import uvicorn

        folder, port = args.baseline_server
        uvicorn.run(baseline_app(folder), host="127.0.0.1", port=int(port), log_level="warning")
        return
    if args.quick:
        args.seconds, args.backends = min(args.seconds, 3), "torch"

    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        folder = args.folder or export_minilm(Path(tmp))
        tokenizer = AutoTokenizer.from_pretrained(folder)
        short_texts = sentences()
        long_list = long_texts(short_texts, tokenizer, n=20 if args.quick else 200)
        short, long = [{"inputs": t} for t in short_texts], [{"inputs": t} for t in long_list]
        results: dict[str, Any] = {"folder": args.folder or "packaged MiniLM + PoolerHead", "cpus": os.cpu_count(),
                                   "seconds_per_phase": args.seconds, "serve_args": args.serve_args,
                                   "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "serve": {}}  # fmt: skip
        for backend in args.backends.split(","):
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            argv = [sys.executable, "-m", "bertft", "serve", folder, "--port", str(port), "--backend", backend,
                    "--max_concurrent_requests", str(args.max_concurrent_requests),
                    *args.serve_args.split()]  # fmt: skip
            with process(argv, url) as server:
                results["serve"][backend] = run_phases(url, server.pid, short, long, args, full=not args.quick)
            n = 128 if args.quick else 872
            results["serve"][backend]["offline_predictor"] = offline(folder, backend, short_texts[:n], args.seconds)
            print(json.dumps({backend: results["serve"][backend]}, indent=1), flush=True)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with process([sys.executable, __file__, "--baseline_server", folder, str(port)], url) as server:
            results["baseline"] = run_phases(url, server.pid, short, long, args, full=False)
        print(json.dumps({"baseline": results["baseline"]}, indent=1), flush=True)
    results["ratios"] = ratios(results)
    write(results, Path(args.out))
    print(json.dumps(results["ratios"], indent=1))


def export_minilm(tmp: Path) -> str:
    from lightning import Trainer

    from bertft import FineTuner, PoolerHead
    from bertft.deploy.export import export

    model = FineTuner("minilm", head=PoolerHead(), label_names=["negative", "positive"])
    trainer = Trainer(accelerator="cpu", logger=False, max_steps=0, enable_progress_bar=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp / "minilm.ckpt")
    return str(export(tmp / "minilm.ckpt", tmp / "minilm", onnx=True, quantize="int8"))


def ratios(results: dict[str, Any]) -> dict[str, Any]:
    base = results["baseline"]["closed_16"]["throughput"]
    out = {}
    for backend, r in results["serve"].items():
        out[backend] = {
            "closed_16_vs_baseline": round(r["closed_16"]["throughput"] / base, 2) if base else None,
            "closed_16_vs_offline_predictor": round(r["closed_16"]["throughput"] / r["offline_predictor"]["throughput"],
                                                    2),
        }  # fmt: skip
    if "torch" in results["serve"] and "onnx-int8" in results["serve"]:
        t, q = results["serve"]["torch"]["closed_16"]["throughput"], results["serve"]["onnx-int8"]["closed_16"]
        out["onnx_int8_vs_torch_closed_16"] = round(q["throughput"] / t, 2) if t else None
    return out


def write(results: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    rows = [("baseline", phase, r) for phase, r in results["baseline"].items()]
    rows += [(b, phase, r) for b, phases in results["serve"].items() for phase, r in phases.items()]
    with open(out.with_suffix(".csv"), "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["server", "phase", "throughput", "p50_ms", "p99_ms", "requests", "statuses"])
        for server, phase, r in rows:
            w.writerow([server, phase, r.get("throughput"), r.get("p50_ms"), r.get("p99_ms"), r.get("requests"),
                        json.dumps(r.get("statuses", {}))])  # fmt: skip
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    # One line per server through its load levels, lightest first (throughput need not rise with load: past capacity
    # more clients only queue), each point named by its load.
    loads = {"latency_short": "1 client", "open_half_capacity": "open, half", "closed_16": "16", "closed_64": "64"}
    for server, phases in [("baseline (FastAPI + pipeline)", results["baseline"]), *results["serve"].items()]:
        points = [
            (phases[name]["throughput"], phases[name]["p50_ms"], tag) for name, tag in loads.items() if name in phases
        ]
        (line,) = ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=f"bertft serve {server}"
                          if server in results["serve"] else server)  # fmt: skip
        for x, y, tag in points:
            ax.annotate(tag, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color=line.get_color())
    for backend, phases in results["serve"].items():
        ax.axvline(phases["offline_predictor"]["throughput"], linestyle=":", color="grey")
        ax.text(phases["offline_predictor"]["throughput"], ax.get_ylim()[1] * 0.9, f" offline {backend}",
                fontsize=8, color="grey")  # fmt: skip
    ax.set_xlabel("throughput (requests/s, SST-2 sentences); points: clients, or an open loop at half capacity")
    ax.set_ylabel("p50 latency (ms)")
    ax.set_yscale("log")
    ax.set_title(f"bertft serve, packaged MiniLM, {results['cpus']} CPU cores (load generator on the same cores)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)


if __name__ == "__main__":
    main()
