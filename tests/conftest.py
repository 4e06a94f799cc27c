"""Shared fixtures: tiny random encoders saved to disk, seeds and dtype, offline settings; the rest in helpers/."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
import yaml

# No test may reach a hub or a W&B server.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One token cache for the whole run (subprocesses inherit it), never the user's ~/.cache/bertft.
os.environ["BERTFT_CACHE"] = tempfile.mkdtemp(prefix="bertft-test-cache-")
# fp32 on every CPU, AMX ones too (an unset precision would pick bf16 there): the exact comparisons assume it.
os.environ["BERTFT_CPU_BF16"] = "0"

from .helpers import MINILM, sst2_rows, write_tsv  # noqa: E402

# transformers' own BertModelTester sizes, with MiniLM's vocabulary so the real tokenizer can drive it.
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 37}


def _save_tiny(path: Path, kind: str) -> Path:
    from transformers import AutoTokenizer, BertConfig, BertModel, DistilBertConfig, DistilBertModel

    torch.manual_seed(0)
    if kind == "bert":
        model = BertModel(BertConfig(vocab_size=30522, **TINY))
    else:
        model = DistilBertModel(DistilBertConfig(vocab_size=30522, dim=32, n_layers=2, n_heads=4, hidden_dim=37))
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(MINILM).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT (with pooler) saved with ``save_pretrained``: exercises the real loading path offline."""
    return _save_tiny(tmp_path_factory.mktemp("tiny_bert"), "bert")


@pytest.fixture(scope="session")
def tiny_distilbert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random DistilBERT: no pooler, no token_type_ids."""
    return _save_tiny(tmp_path_factory.mktemp("tiny_distilbert"), "distilbert")


@pytest.fixture(scope="session")
def tiny_bert_no_pooler_dir(tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path) -> Path:
    """A BERT checkpoint whose pooler weights are missing (they would be randomly initialised)."""
    from safetensors.torch import load_file, save_file

    path = tmp_path_factory.mktemp("tiny_bert_no_pooler")
    for f in tiny_bert_dir.iterdir():
        shutil.copy(f, path / f.name)
    weights = load_file(path / "model.safetensors")
    save_file({k: v for k, v in weights.items() if "pooler" not in k}, path / "model.safetensors", {"format": "pt"})
    return path


@pytest.fixture(autouse=True)
def _seed_and_dtype() -> None:
    torch.manual_seed(0)
    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)


@pytest.fixture
def cache_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The token cache in this test's own folder (``tmp_path / "cache"``), where the test can look at it."""
    monkeypatch.setenv("BERTFT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="session")
def family_dir(tmp_path_factory: pytest.TempPathFactory):
    """``family_dir(name)``: the folder of a tiny random encoder of that family with its trained tokenizer.

    Names are those of ``tests/families.py``; each is built once per test run, on first use.
    """
    from .families import BY_NAME, english_corpus, save_family

    built: dict[str, Path] = {}
    corpus: list[str] = []

    def get(name: str) -> Path:
        if name not in built:
            corpus[:] = corpus or english_corpus()
            built[name] = save_family(BY_NAME[name], tmp_path_factory.mktemp(f"family_{name}"), corpus)
        return built[name]

    return get


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL server for the run (started on first use, stopped and deleted at the end); see
    ``tests/helpers/postgres.py`` for what happens when PostgreSQL is not installed."""
    from .helpers.postgres import postgres_server

    with postgres_server() as server:
        yield server


@pytest.fixture
def postgres_url(postgres, request: pytest.FixtureRequest) -> str:
    """The ``postgresql+psycopg://`` URL of a new, empty database on :func:`postgres`, for this test alone."""
    _databases.append(request.node.name)
    return postgres.create_database(f"test{len(_databases)}")


_databases: list[str] = []


@pytest.fixture
def base_config(tmp_path: Path, tiny_bert_dir: Path) -> Path:
    """A fit config as users write one (CSV logger, checkpoints on) for 2 steps of the tiny BERT."""
    train = write_tsv(tmp_path / "train.tsv", sst2_rows("train", 16))
    dev = write_tsv(tmp_path / "dev.tsv", sst2_rows("dev", 16))
    config = {
        "model": {"encoder": str(tiny_bert_dir), "head": {"class_path": "bertft.heads.MeanHead"}, "lr": 1.0e-3},
        "data": {
            "train_file": str(train),
            "val_file": str(dev),
            "test_file": str(dev),
            "quoting": False,
            "batch_size": 8,
            "cache_dir": str(tmp_path / "cache"),
        },
        "trainer": {
            "max_steps": 2,
            "accelerator": "cpu",
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "logger": {"class_path": "bertft.training.loggers.CSVLogger", "init_args": {"name": "csv"}},
        },
    }
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path
