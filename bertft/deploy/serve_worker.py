"""The inference worker of ``bertft serve``: a LitServe ``LitAPI`` and the loop that collects its batches.

The API runs collected batches through a :class:`~bertft.deploy.inference.Predictor`; the loop collects them without
polling.

Requests arrive already checked and tokenized by the HTTP process (:mod:`~bertft.deploy.serve_schema`), so nothing a
client sends can make a batch fail here.
"""

from __future__ import annotations

import re
import signal
import time
from queue import Empty
from typing import Any

import litserve as ls
import torch
from litserve.loops.base import _SENTINEL_VALUE, _StopLoopError
from litserve.loops.simple_loops import BatchedLoop

from bertft.deploy.inference import Predictor, load

#: How long an idle worker blocks on the queue before it looks again (it wakes at once when a request comes).
IDLE_WAIT_S = 1.0


class BlockingBatchedLoop(BatchedLoop):
    """LitServe's batched loop, collecting a batch without busy polling.

    LitServe's ``collate_requests`` asks the request queue for work every millisecond, idle or not, and each ask is a
    round trip to the queue's manager process: an idle server then keeps two processes busy. This loop blocks for
    the first request, then takes what else is queued (waiting up to ``batch_timeout`` for more), so an idle server
    sleeps and a busy one forms batches from what piled up during the previous forward pass.
    """

    def get_batch_requests(self, lit_api: ls.LitAPI, request_queue: Any, transport: Any) -> tuple[list, list]:
        """The requests of the next batch and those that waited past the timeout (answered 504 by the loop)."""
        try:
            first = request_queue.get(timeout=IDLE_WAIT_S)
        except Empty:
            return [], []
        collected = [first]
        deadline = time.monotonic() + lit_api.batch_timeout
        while len(collected) < lit_api.max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                collected.append(request_queue.get(timeout=remaining) if remaining > 0 else request_queue.get_nowait())
            except Empty:
                break
        batch, timed_out = [], []
        timeout = lit_api.request_timeout
        for request in collected:
            if request == _SENTINEL_VALUE:
                raise _StopLoopError()
            response_queue_id, uid, timestamp, payload = request
            waited = time.monotonic() - timestamp  # CLOCK_MONOTONIC: one clock for every process on the machine
            if timeout not in (-1, False, None) and waited > timeout:
                timed_out.append((response_queue_id, uid))
            else:
                payload["queue_s"] = waited
                batch.append((response_queue_id, uid, payload))
        return batch, timed_out


class BertftAPI(ls.LitAPI):
    """Loads an exported folder in each worker and answers batches of tokenized requests.

    Args:
        folder: The exported folder.
        backend: ``torch``, ``onnx`` or ``onnx-int8``.
        threads: Intra-op threads per worker (0: the library's default).
        max_length: Token limit (token classification cuts longer texts into windows).
        max_batch_size: Requests per collected batch.
        batch_timeout: Seconds to wait for more requests once one arrived (0: take what is queued).
        max_batch_tokens: Padded tokens per forward pass: a collected batch is sorted by length and split.
    """

    def __init__(
        self,
        folder: str,
        backend: str,
        threads: int,
        max_length: int,
        max_batch_size: int,
        batch_timeout: float,
        max_batch_tokens: int,
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, loop=BlockingBatchedLoop())
        self.folder = folder
        self.backend = backend
        self.threads = threads
        self.max_length = max_length
        self.max_batch_tokens = max_batch_tokens
        self.predictor: Predictor | None = None

    def setup(self, device: str) -> None:
        """Loads the model and answers one request, so that ``/health`` says ready only once a forward pass ran."""
        # Ctrl-C in a terminal signals the whole process group; the main process drains the server and then stops
        # this worker, which must not die mid-batch first.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if self.threads > 0:
            torch.set_num_threads(self.threads)
        predictor = load(self.folder, device="cpu" if self.backend != "torch" else device, backend=self.backend,
                         threads=self.threads)  # fmt: skip
        predictor.max_length = self.max_length
        self.predictor = predictor
        ids = predictor.tokenizer("warm up")["input_ids"]
        sample = {"texts": ["warm up"]} if predictor.task == "token" else {"ids": [ids], "types": None}
        self.predict([{**sample, "raw": False}])

    def decode_request(self, request: dict[str, Any]) -> dict[str, Any]:
        """The payload the HTTP process queued, as is."""
        return request

    def batch(self, inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The requests of a batch, as a list (they are flattened and split by length in :meth:`predict`)."""
        return inputs

    def unbatch(self, output: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One answer per request."""
        return output

    def encode_response(self, output: dict[str, Any]) -> dict[str, Any]:
        """The answer, as is (the HTTP process shapes it)."""
        return output

    def predict(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Answers every item of every request in the batch; returns per request its items' answers and timings."""
        predictor = self.predictor
        assert predictor is not None, "setup() loads the model"
        items = sum(len(r.get("ids") or r.get("texts")) for r in requests)
        if predictor.task == "token":
            answers = self._entities([text for r in requests for text in r["texts"]])
        else:
            logits = self._logits([ids for r in requests for ids in r["ids"]],
                                  [t for r in requests for t in (r["types"] or [None] * len(r["ids"]))])  # fmt: skip
            raw = [r["raw"] for r in requests for _ in r["ids"]]
            answers = [self._scores(row, is_raw) for row, is_raw in zip(logits, raw, strict=True)]
        out, start = [], 0
        for r in requests:
            n = len(r.get("ids") or r.get("texts"))
            out.append({"items": answers[start : start + n], "queue_s": r.get("queue_s", 0.0), "batch_items": items})
            start += n
        return out

    def _logits(self, ids: list[list[int]], types: list[list[int] | None]) -> torch.Tensor:
        predictor = self.predictor
        assert predictor is not None
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))  # longest first, as Predictor.logits
        chunks: list[list[int]] = []
        for i in order:  # each chunk's padded size, rows x its longest row, stays within max_batch_tokens
            if chunks and (len(chunks[-1]) + 1) * len(ids[chunks[-1][0]]) <= self.max_batch_tokens:
                chunks[-1].append(i)
            else:
                chunks.append([i])
        pad_id = predictor.tokenizer.pad_token_id or 0
        with_types = any(t for t in types)
        result = torch.empty(0)
        with torch.inference_mode():
            for rows in chunks:
                width = len(ids[rows[0]])
                batch = {
                    "input_ids": [ids[i] + [pad_id] * (width - len(ids[i])) for i in rows],
                    "attention_mask": [[1] * len(ids[i]) + [0] * (width - len(ids[i])) for i in rows],
                }
                if with_types:
                    batch["token_type_ids"] = [(types[i] or [0] * len(ids[i])) + [0] * (width - len(ids[i]))
                                               for i in rows]  # fmt: skip
                tensors = {k: torch.tensor(v, dtype=torch.long, device=predictor.device) for k, v in batch.items()}
                logits = predictor.model(**tensors).float().cpu()  # (B, num_outputs)
                if result.numel() == 0:
                    result = torch.empty(len(ids), logits.shape[-1])
                result[torch.tensor(rows)] = logits
        return result

    def _scores(self, logits: torch.Tensor, raw: bool) -> list[dict[str, Any]]:
        predictor = self.predictor
        assert predictor is not None
        if predictor.task == "regression":
            return [{"label": "value", "score": float(logits[0])}]
        names = predictor.label_names
        if predictor.task == "multilabel":
            probs = torch.sigmoid(logits)
            scores = logits if raw else probs
            # ">" as Predictor.predict and torchmetrics' multilabel metrics.
            rows = [
                {"label": n, "score": float(s), "predicted": bool(p > predictor.threshold)}
                for n, s, p in zip(names, scores, probs, strict=True)
            ]
        else:
            scores = logits if raw else torch.softmax(logits, dim=-1)
            rows = [{"label": n, "score": float(s)} for n, s in zip(names, scores, strict=True)]
        return sorted(rows, key=lambda r: -r["score"])

    def _entities(self, texts: list[str]) -> list[list[dict[str, Any]]]:
        predictor = self.predictor
        assert predictor is not None
        spans = [[(m.start(), m.end()) for m in re.finditer(r"\S+", text)] for text in texts]  # words, as split
        words = [[text[a:b] for a, b in s] for text, s in zip(texts, spans, strict=True)]
        tagged = predictor.predict_tokens(words)
        answers = []
        for text, s, sentence in zip(texts, spans, tagged, strict=True):
            answers.append([
                {"label": e["type"], "text": text[s[e["start"]][0] : s[e["end"] - 1][1]], "start": s[e["start"]][0],
                 "end": s[e["end"] - 1][1]}
                for e in sentence["entities"]
            ])  # fmt: skip
        return answers
