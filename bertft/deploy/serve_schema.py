"""What ``bertft serve`` speaks: TEI's ``/predict`` shapes, the error body, and the checks of each request.

The checks turn a request into items before anything is queued.

Every check that can fail for one request runs here, in the HTTP process, before the request joins a batch: a bad
request is answered on its own and never reaches the inference worker, so it cannot fail the requests it would have
been batched with (LitServe fails a whole batch when one item raises).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field
from transformers import PreTrainedTokenizerBase

#: One text, or a (text, text_pair) pair.
Item = str | tuple[str, str]

#: TEI's error types, by HTTP status.
ERROR_TYPES = {
    400: "Empty",
    401: "Unauthorized",
    404: "NotFound",
    405: "MethodNotAllowed",
    413: "PayloadTooLarge",
    422: "Validation",
    429: "Overloaded",
    500: "Backend",
    503: "Unhealthy",
    504: "Timeout",
}


class ClientError(Exception):
    """A request answered with a 4xx/5xx status and the JSON error body, never a traceback.

    Args:
        status: The HTTP status.
        message: What was wrong, for the client.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def body(self) -> dict[str, str]:
        """The JSON body: ``{"error": ..., "error_type": ...}``."""
        return error_body(self.status, self.message)


def error_body(status: int, message: str) -> dict[str, str]:
    """``{"error": message, "error_type": TEI's name for the status}``."""
    return {"error": message, "error_type": ERROR_TYPES.get(status, "Backend" if status >= 500 else "Validation")}


class PredictRequest(BaseModel):
    """The body of ``POST /predict``, as text-embeddings-inference's."""

    inputs: str | list[str] | list[list[str]] = Field(
        description='One text ("text"), one pair (["text", "text_pair"]), or a batch of texts and pairs '
        '([["text"], ["text", "text_pair"], ...]).',
        examples=["a gripping, beautifully acted film", [["a gripping film"], ["a dull plot", "a dull cast"]]],
    )
    truncate: bool | None = Field(
        default=None,
        description="Cut texts longer than the model's max length (the server's --truncate setting when null); "
        "false answers 422 for a text that is too long.",
    )
    raw_scores: bool = Field(default=False, description="Return logits instead of probabilities.")


class Score(BaseModel):
    """One label and its score.

    The score is a probability (softmax, or sigmoid for multi-label), the logit with raw_scores, or the value of a
    regression model (label ``"value"``).
    """

    label: str
    score: float
    predicted: bool | None = Field(
        default=None, description="Multi-label models only: whether the label's probability passes the threshold."
    )


class Entity(BaseModel):
    """A named entity of a token-classification model, with character offsets into the text (``end`` exclusive)."""

    label: str
    text: str
    start: int
    end: int


#: An answer: one list per input (single input), or a list of them (batch). Classification, multi-label and
#: regression answer Score lists; token classification answers Entity lists.
PredictResponse = list[Score] | list[list[Score]] | list[Entity] | list[list[Entity]]


class ErrorResponse(BaseModel):
    """Every error: TEI's body."""

    error: str
    error_type: str


class InfoResponse(BaseModel):
    """``GET /info``: the model and how it is served."""

    task: str
    labels: list[str]
    head: str
    encoder: str
    max_length: int
    backend: str
    threshold: float | None
    versions: dict[str, str]
    limits: dict[str, Any]


@dataclass(frozen=True)
class Limits:
    """What one request may hold (the server's options)."""

    max_client_batch_size: int
    max_length: int
    truncate: bool
    pairs: bool  # False for token classification: it tags one text


def parse_items(request: PredictRequest, limits: Limits) -> tuple[list[Item], bool]:
    """The request's items and whether it was a batch.

    Raises:
        ClientError: 400 for an empty input or text; 422 for a list of the wrong length, a batch over the limit, or a
            pair sent to a model that takes one text.
    """
    inputs = request.inputs
    batched = False
    if isinstance(inputs, str):
        raw: list[list[str]] = [[inputs]]
    elif not inputs:
        raise ClientError(400, "inputs is empty")
    elif all(isinstance(x, str) for x in inputs):
        raw = [inputs]  # type: ignore[list-item]
    else:
        raw, batched = inputs, True  # type: ignore[assignment]
    if len(raw) > limits.max_client_batch_size:
        raise ClientError(422, f"batch of {len(raw)} inputs is over the limit of {limits.max_client_batch_size}")
    items: list[Item] = []
    for i, texts in enumerate(raw):
        where = f"inputs[{i}]" if batched else "inputs"
        if not texts:
            raise ClientError(400, f"{where} is empty")
        if len(texts) > 2:
            raise ClientError(422, f"{where} has {len(texts)} texts: give one text or a pair of two")
        if any(not t.strip() for t in texts):
            raise ClientError(400, f"{where} holds an empty text")
        if len(texts) == 2 and not limits.pairs:
            raise ClientError(422, f"{where} is a pair; this model tags one text at a time")
        items.append(texts[0] if len(texts) == 1 else (texts[0], texts[1]))
    return items, batched


def tokenize(
    items: list[Item], tokenizer: PreTrainedTokenizerBase, limits: Limits, truncate: bool
) -> tuple[list[list[int]], list[list[int]] | None]:
    """Token ids (and token type ids where the tokenizer makes them) of each item, as training encoded them.

    Raises:
        ClientError: 422 for an item longer than ``max_length`` tokens when ``truncate`` is false.
    """
    ids: list[list[int]] = [[] for _ in items]
    types: list[list[int]] = [[] for _ in items]
    has_types = False
    # Tokenized one token past the limit: an item that reaches it is too long (and is cut again, to the limit).
    probe = limits.max_length + 1
    for is_pair in (False, True):
        rows = [i for i, item in enumerate(items) if isinstance(item, tuple) is is_pair]
        if not rows:
            continue
        first = [items[i][0] if is_pair else items[i] for i in rows]
        second = [items[i][1] for i in rows] if is_pair else None
        # Pairs carry token_type_ids as in training (bertft.data.encode), whatever the tokenizer's default.
        kind = True if is_pair else None
        enc = tokenizer(first, second, truncation=True, max_length=probe, return_token_type_ids=kind)  # type: ignore[arg-type]
        long = [j for j, row in enumerate(enc["input_ids"]) if len(row) > limits.max_length]
        if long and not truncate:
            where = ", ".join(f"inputs[{rows[j]}]" for j in long)
            raise ClientError(422, f"{where} is longer than {limits.max_length} tokens and truncate is false")
        if long:
            cut = tokenizer(
                [first[j] for j in long],
                [second[j] for j in long] if second is not None else None,  # type: ignore[arg-type]
                truncation=True,
                max_length=limits.max_length,
                return_token_type_ids=kind,
            )
            for k, j in enumerate(long):
                for key in cut:
                    enc[key][j] = cut[key][k]
        for j, i in enumerate(rows):
            ids[i] = enc["input_ids"][j]
            if "token_type_ids" in enc:
                types[i] = enc["token_type_ids"][j]
                has_types = True
    return ids, (types if has_types else None)
