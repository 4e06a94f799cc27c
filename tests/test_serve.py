"""``bertft serve``: the real server in a process of its own on a loopback port, driven over HTTP.

Most tests serve a tiny random BERT (fast); the load test serves the packaged MiniLM on real SST-2 rows. Every wait is
under a timeout, and every server is stopped (and its whole session killed) when its test ends.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch

from bertft import load

from .helpers import sst2_rows
from .helpers.serving import (
    cpu_seconds,
    export_untrained,
    hammer,
    port_is_free,
    serving,
    session_pids,
)

pytestmark = pytest.mark.slow  # every test here starts servers: multi-second, multi-process

LABELS = ["negative", "positive"]
# The small limits the main server runs with, so each refusal is cheap to provoke.
LIMITS = ["--max_client_batch_size", "4", "--max_length", "16", "--payload_limit", "4000", "--batch_timeout", "0.05"]


@pytest.fixture(scope="module")
def tiny_folder(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_untrained(tiny_bert_dir, tmp_path_factory.mktemp("serve") / "tiny", "classification", LABELS)


@pytest.fixture(scope="module")
def server(tiny_folder: Path):
    with serving(tiny_folder, *LIMITS) as running:
        yield running


def post(server, body, **kwargs) -> httpx.Response:
    return httpx.post(f"{server.url}/predict", json=body, timeout=30, **kwargs)


def test_predict_speaks_tei_shapes_and_matches_the_predictor(server, tiny_folder: Path) -> None:
    predictor = load(tiny_folder)
    logits = torch.cat([predictor.logits(["a fine film"]), predictor.logits([("a fine cast", "a dull plot")])])
    probs = torch.softmax(logits, dim=-1)

    single = post(server, {"inputs": "a fine film"})
    assert single.status_code == 200
    answer = single.json()
    assert [s["label"] for s in answer] == sorted(LABELS, key=lambda n: -probs[0][LABELS.index(n)])
    assert [s["score"] for s in answer] == pytest.approx(sorted(probs[0].tolist(), reverse=True), abs=1e-5)

    pair = post(server, {"inputs": ["a fine cast", "a dull plot"]}).json()
    assert {s["label"]: s["score"] for s in pair} == pytest.approx(
        dict(zip(LABELS, probs[1].tolist(), strict=True)), abs=1e-5
    )

    batch = post(server, {"inputs": [["a fine film"], ["a fine cast", "a dull plot"]]}).json()
    assert len(batch) == 2
    for got, alone in zip(batch, [answer, pair], strict=True):
        assert [s["label"] for s in got] == [s["label"] for s in alone]
        assert [s["score"] for s in got] == pytest.approx([s["score"] for s in alone], abs=1e-5)

    raw = post(server, {"inputs": "a fine film", "raw_scores": True}).json()
    raw_expected = dict(zip(LABELS, logits[0].tolist(), strict=True))
    assert {s["label"]: s["score"] for s in raw} == pytest.approx(raw_expected, abs=1e-5)


def test_other_routes(server) -> None:
    assert httpx.get(f"{server.url}/health", timeout=10).json() == {"status": "ok"}
    info = httpx.get(f"{server.url}/info", timeout=10).json()
    assert info["task"] == "classification"
    assert info["labels"] == LABELS
    assert info["max_length"] == 16
    assert info["backend"] == "torch"
    assert info["head"].endswith("MeanHead")
    assert "litserve" in info["versions"]
    assert httpx.get(f"{server.url}/docs", timeout=10).status_code == 200
    spec = httpx.get(f"{server.url}/openapi.json", timeout=10).json()
    documented = set(spec["paths"]["/predict"]["post"]["responses"])
    assert {"200", "400", "401", "413", "422", "429", "503", "504"} <= documented
    post(server, {"inputs": "counted"})
    metrics = httpx.get(f"{server.url}/metrics", timeout=10)
    assert metrics.headers["content-type"].startswith("text/plain")
    for name in ('bertft_requests_total{route="/predict",status="200"}', "bertft_request_duration_seconds_bucket",
                 "bertft_queue_duration_seconds_count", "bertft_batch_items_bucket"):  # fmt: skip
        assert name in metrics.text


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"inputs": ""}, 400),
        ({"inputs": []}, 400),
        ({"inputs": [["fine"], [" "]]}, 400),
        ({"inputs": 3}, 422),  # schema
        ({"text": "a"}, 422),
        ({"inputs": ["a", "b", "c"]}, 422),  # pair arity
        ({"inputs": [["a"]] * 5}, 422),  # over --max_client_batch_size
        ({"inputs": "word " * 40, "truncate": False}, 422),  # over --max_length
        ({"inputs": "x" * 5000}, 413),  # over --payload_limit
    ],
)
def test_bad_requests_get_json_errors(server, body: dict, status: int) -> None:
    response = post(server, body)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error", "error_type"}


def test_long_texts_are_truncated_by_default_and_garbage_is_422(server) -> None:
    assert post(server, {"inputs": "word " * 40}).status_code == 200
    garbage = httpx.post(f"{server.url}/predict", content=b"{not json", timeout=10,
                         headers={"Content-Type": "application/json"})  # fmt: skip
    assert garbage.status_code == 422
    assert garbage.json()["error_type"] == "Validation"
    missing = httpx.get(f"{server.url}/nowhere", timeout=10)
    assert missing.status_code == 404
    assert set(missing.json()) == {"error", "error_type"}


def test_a_bad_request_never_fails_the_good_ones_batched_with_it(server, tiny_folder: Path) -> None:
    texts = [text for text, _ in sst2_rows("test", 24)]
    predictor = load(tiny_folder)
    predictor.max_length = 16  # the server's --max_length: it truncates as this predictor does
    expected = [max(p["probs"], key=p["probs"].get) for p in predictor.predict(texts)]
    bad = [{"inputs": ""}, {"inputs": ["a", "b", "c"]}, {"inputs": "word " * 40, "truncate": False}, {"inputs": 1}]

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            bodies = [{"inputs": t} for t in texts] + bad * 3
            return await asyncio.gather(*(client.post(f"{server.url}/predict", json=b) for b in bodies))

    responses = asyncio.run(fire())
    good, rejected = responses[: len(texts)], responses[len(texts) :]
    assert [r.status_code for r in good] == [200] * len(texts)
    assert [r.json()[0]["label"] for r in good] == expected
    assert all(400 <= r.status_code < 500 for r in rejected)
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    singles = next(line for line in metrics.splitlines() if line.startswith('bertft_batch_items_bucket{le="1"}'))
    total = next(line for line in metrics.splitlines() if line.startswith("bertft_batch_items_count"))
    assert int(singles.split()[-1]) < int(total.split()[-1])  # some requests shared a batch


def test_schemathesis_finds_no_server_error_and_no_answer_off_the_schema(server, tmp_path: Path) -> None:
    if shutil.which("schemathesis") is None and not Path(sys.executable).with_name("schemathesis").exists():
        pytest.skip("schemathesis is not installed (pip install 'bertft[dev]')")
    cli = shutil.which("schemathesis") or str(Path(sys.executable).with_name("schemathesis"))
    checks = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
    run = subprocess.run(
        [cli, "run", f"{server.url}/openapi.json", "--checks", checks, "--max-examples", "25", "--seed", "0",
         "--phases", "examples,coverage,fuzzing", "--request-timeout", "20", "--workers", "2", "--no-color"],
        capture_output=True, text=True, timeout=240, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]


def test_the_key_closes_everything_but_health_and_is_never_shown(tiny_folder: Path) -> None:
    key = "s3cret-key-for-the-test"
    with serving(tiny_folder, "--max_concurrent_requests", "2", env={"BERTFT_API_KEY": key}) as server:
        assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
        assert post(server, {"inputs": "a"}).status_code == 401
        assert post(server, {"inputs": "a"}, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(f"{server.url}/info", timeout=10).status_code == 401
        auth = {"Authorization": f"Bearer {key}"}
        assert post(server, {"inputs": "a"}, headers=auth).status_code == 200

        async def crowd() -> list[int]:
            async with httpx.AsyncClient(timeout=30, headers=auth) as client:
                bodies = [{"inputs": [["word " * 10]] * 4}] * 24
                answers = await asyncio.gather(*(client.post(f"{server.url}/predict", json=b) for b in bodies))
                return [r.status_code for r in answers]

        statuses = asyncio.run(crowd())
        assert set(statuses) <= {200, 429}
        assert 429 in statuses
        assert 200 in statuses
    assert key not in server.output["log"]
    assert "$BERTFT_API_KEY" in server.output["log"]  # the curl line names the variable, never its value


def test_sigterm_under_load_drains_and_leaves_no_process_and_a_free_port(tiny_folder: Path) -> None:
    with serving(tiny_folder) as server:
        session = server.proc.pid
        pids = session_pids(session)
        assert len(pids) >= 4  # main, HTTP, inference worker, queue manager
        idle_before = cpu_seconds(pids)
        time.sleep(3)
        assert (cpu_seconds(pids) - idle_before) / 3 < 0.05  # idle: under 5% of a core, all processes together

        stop, statuses = threading.Event(), []
        body = {"inputs": [["a fine, gripping film"]] * 4}
        clients = [threading.Thread(target=hammer, args=(f"{server.url}/predict", body, stop, statuses))
                   for _ in range(4)]  # fmt: skip
        for client in clients:
            client.start()
        time.sleep(1.5)
        answered = len(statuses)
        assert server.stop(timeout=60) == 0
        stop.set()
        for client in clients:
            client.join(30)
    assert answered > 0
    assert 200 in statuses
    assert set(statuses) <= {200, 503, 0}  # served, refused while draining, or refused once the port closed
    deadline = time.monotonic() + 10
    while session_pids(session) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert session_pids(session) == []
    assert port_is_free(server.port)
