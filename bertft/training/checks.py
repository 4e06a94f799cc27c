"""Checks that run before a command reads a checkpoint or writes anything.

* :func:`read_checkpoint_safely`: a checkpoint is loaded with ``weights_only=True``, so a crafted pickle cannot run
  code; a refusal, a truncated file or a file that is no checkpoint become one clear :class:`ValueError`.
* :func:`checkpoint_mismatches`: the encoder, head, task and labels a checkpoint was trained with against the
  config's, so ``test`` / ``predict`` / resuming never load weights into a model they do not fit.
* :func:`check_output_folder`: before ``fit`` trains, the output folder can be created and written, and its disk has
  room for the checkpoints the run keeps.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from bertft.encoder import resolve_encoder
from bertft.io import size_text

#: ``ckpt_path`` values that Lightning (or bertft) resolves to a file later: nothing to read yet.
SPECIAL_CKPT_PATHS = ("last", "best", "hpc", "registry")
#: What a checkpoint and a config must agree on; other hyperparameters (lr, dropout, ...) may differ.
MATCHED_KEYS = ("encoder", "head", "task", "num_labels", "label_names")
#: Head settings that change no weight: a config may differ from the checkpoint in these.
_FREE_HEAD_ARGS = {"dropout"}


class UnsafeCheckpointError(ValueError):
    """A checkpoint holds pickled objects that would run code when loaded; it was not loaded."""


class CheckpointMismatchError(ValueError):
    """A checkpoint was trained with another encoder, head, task or label set than the config describes."""


class OutputFolderError(ValueError):
    """The output folder cannot be written, or its disk has no room for the run's checkpoints."""


def is_checkpoint_file(ckpt_path: str | Path | None) -> bool:
    """Whether ``ckpt_path`` names a local file to check now (not ``None``, ``"last"``, ``"best"`` or a URL)."""
    if not ckpt_path:
        return False
    text = str(ckpt_path)
    return text.split(":")[0] not in SPECIAL_CKPT_PATHS and "://" not in text


def read_checkpoint_safely(path: str | Path) -> dict[str, Any]:
    """Loads a checkpoint file with ``weights_only=True`` on the CPU, memory-mapped when the format allows.

    Raises:
        FileNotFoundError: No file at ``path``.
        UnsafeCheckpointError: The file holds objects whose unpickling would run code (e.g. a crafted ``__reduce__``).
        ValueError: The file is truncated, or not a PyTorch checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found (check --ckpt_path)")
    try:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap can only be used" not in str(err):
                raise
            # Files saved in the legacy (non-zip) format cannot be memory-mapped.
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL (\S+)", str(err))
        what = f" (it asks for {found.group(1)})" if found else ""
        raise UnsafeCheckpointError(
            f"refused to unpickle checkpoint {path}: it holds Python objects that would run code when loaded{what}. "
            "bertft loads checkpoints with weights_only=True, and its own checkpoints hold only tensors and plain "
            "values, so this file was not written by bertft or was altered. Only load checkpoints you trust."
        ) from err
    except (RuntimeError, EOFError, IndexError, OSError) as err:
        raise ValueError(
            f"checkpoint {path} cannot be read ({str(err).splitlines()[0][:200]}): it is truncated (an interrupted "
            "copy or a full disk) or not a PyTorch checkpoint. Use another checkpoint of the run, e.g. last.ckpt."
        ) from err
    if not isinstance(checkpoint, dict):
        raise ValueError(f"checkpoint {path} holds a {type(checkpoint).__name__}, not a Lightning checkpoint")
    return checkpoint


# ----- checkpoint against config -----------------------------------------------------------------------------------


def _encoder_identity(name: Any) -> str:
    # "minilm" and the packaged folder it resolves to are one encoder; so are two spellings of one local folder.
    resolved = resolve_encoder(str(name))
    return str(Path(resolved).resolve()) if Path(resolved).exists() else resolved


def _head_class(class_path: str) -> Any:
    # jsonargparse writes `bertft.heads.MeanHead`, checkpoints `bertft.heads.builtin.MeanHead`: compare the classes.
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return class_path


def _plain(value: Any) -> Any:
    """Namespaces to dicts and tuples to lists, so a parsed config compares equal to a checkpoint's values."""
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _labels(hparams: Mapping[str, Any]) -> list[str] | None:
    if hparams.get("task") == "regression":
        return None
    names = hparams.get("label_names")
    if names:
        return [str(n) for n in names]
    count = hparams.get("num_labels")
    return [str(i) for i in range(count)] if count is not None else None


def checkpoint_mismatches(
    saved: Mapping[str, Any], config: Mapping[str, Any], keys: Iterable[str] = MATCHED_KEYS
) -> list[tuple[str, Any, Any]]:
    """What a checkpoint's hyperparameters and a model config disagree on, among ``keys``.

    Args:
        saved: The checkpoint's ``hyper_parameters``.
        config: The model's hyperparameters (or its parsed config section). Keys missing or ``None`` in either are
            not compared.
        keys: Which of :data:`MATCHED_KEYS` to compare.

    Returns:
        ``(key, checkpoint value, config value)`` per difference, in ``keys`` order.
    """
    differences = []
    for key in keys:
        ours, theirs = _plain(config.get(key)), _plain(saved.get(key))
        if ours is None or theirs is None:
            continue
        if key == "encoder":
            same = _encoder_identity(ours) == _encoder_identity(theirs)
        elif key == "head":
            same = _head_class(ours.get("class_path", "")) == _head_class(theirs.get("class_path", ""))
            shared = (set(ours.get("init_args") or {}) & set(theirs.get("init_args") or {})) - _FREE_HEAD_ARGS
            same = same and all(ours["init_args"][k] == theirs["init_args"][k] for k in shared)
            ours, theirs = _describe_head(ours), _describe_head(theirs)
        elif key in ("num_labels", "label_names"):
            if saved.get("task") == "regression" or config.get("task") == "regression":
                continue
            if key == "label_names":
                ours, theirs = _labels(config), _labels(saved)
            same = ours == theirs
        else:
            same = ours == theirs
        if not same:
            differences.append((key, theirs, ours))
    return differences


def _describe_head(head: Mapping[str, Any]) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in (head.get("init_args") or {}).items())
    return f"{head.get('class_path')}({args})"


def check_checkpoint_matches(
    ckpt_path: str | Path,
    saved: Mapping[str, Any],
    config: Mapping[str, Any],
    subcommand: str,
    keys: Iterable[str] = MATCHED_KEYS,
) -> None:
    """Refuses a checkpoint whose encoder, head, task or labels differ from the config's.

    Args:
        ckpt_path: The checkpoint, for the message.
        saved: Its ``hyper_parameters``.
        config: The model's hyperparameters, or the parsed ``model`` section of the config.
        subcommand: ``fit`` (resuming), ``validate``, ``test`` or ``predict``: the advice differs.
        keys: Which of :data:`MATCHED_KEYS` to compare.

    Raises:
        CheckpointMismatchError: Naming every differing key with the checkpoint's and the config's value.
    """
    differences = checkpoint_mismatches(saved, config, keys)
    if not differences:
        return
    listed = "; ".join(f"{key}: checkpoint {theirs!r}, config {ours!r}" for key, theirs, ours in differences)
    path = Path(ckpt_path)
    own = next((p for p in (path.parent / "config.yaml", path.parent.parent / "config.yaml") if p.is_file()), None)
    own_config = f"--config {own}" if own else "the config.yaml saved beside the checkpoint's run"
    if subcommand == "fit":
        fix = f"To resume, use the config the checkpoint was trained with ({own_config}); to start a new run, leave out"
        fix += " --ckpt_path."
    else:
        fix = (
            f"Run `bertft {subcommand}` with the checkpoint's own config ({own_config}), or predict from Python with "
            f"`bertft.load({str(path)!r})`, which needs no config."
        )
    raise CheckpointMismatchError(
        f"checkpoint {path} does not match the config, so its weights would not fit (or would mean other labels): "
        f"{listed}. {fix}"
    )


# ----- output folder -----------------------------------------------------------------------------------------------


def checkpoint_bytes(model: torch.nn.Module) -> int:
    """About the size of one full checkpoint: every weight and buffer, plus AdamW's two moments per trained weight.

    What the model's ``checkpoint_left_out()`` names (the frozen encoder of a LoRA or linear-probing run, see
    :meth:`bertft.model.FineTuner.checkpoint_left_out`) is not counted: checkpoints leave it out.
    """
    left_out_keys = getattr(model, "checkpoint_left_out", None)
    left_out = left_out_keys() if callable(left_out_keys) else set()
    # The state_dict, as saved: it has no non-persistent buffers, and tied weights are written once.
    kept = {t.data_ptr(): t for name, t in model.state_dict().items() if name not in left_out}
    weights = sum(t.numel() * t.element_size() for t in kept.values())
    moments = 2 * sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return weights + moments


def kept_checkpoints(callbacks: Iterable[Any]) -> int:
    """How many checkpoint files the run keeps at once: each callback's ``save_top_k`` and ``last.ckpt``."""
    kept = 0
    for callback in callbacks:
        if isinstance(callback, ModelCheckpoint):
            # save_top_k=-1 keeps them all, a number unknown in advance: count at least one.
            top_k = 1 if callback.save_top_k < 0 else callback.save_top_k
            kept += top_k + bool(callback.save_last)
    return kept


def _free_bytes(folder: Path) -> int:
    """Creates ``folder`` if needed, writes and removes a probe file, and returns the free bytes on its disk.

    Folders it had to create are removed again, so a run that then fails on bad input leaves nothing behind.
    """
    folder = folder.absolute()
    created: list[Path] = []
    try:
        for part in [*reversed(folder.parents), folder]:
            if part.exists() and not part.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, "a file, not a folder, is in the way", str(part))
            if not part.is_dir():
                part.mkdir()
                created.append(part)
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".bertft-write-probe-")
        try:
            os.write(handle, b"bertft")
        finally:
            os.close(handle)
            os.remove(probe)
        return shutil.disk_usage(folder).free
    finally:
        for part in reversed(created):
            with contextlib.suppress(OSError):  # another process wrote there meanwhile: keep it
                part.rmdir()


def check_output_folder(trainer: L.Trainer, model: torch.nn.Module) -> None:
    """Refuses to start training when the output folder cannot be written or its disk is too full for checkpoints.

    Checks ``trainer.default_root_dir`` and every checkpoint callback's ``dirpath``. Checkpoints need, per file kept,
    the weights and AdamW's two moments; one more file than is kept, since a new checkpoint is written before the one
    it replaces is removed.

    Raises:
        OutputFolderError: Naming the folder, what is needed and what is free, and what to change.
    """
    callbacks = [c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)]
    kept = kept_checkpoints(callbacks)
    need = checkpoint_bytes(model) * (kept + 1) if kept else 0
    checkpoint_dirs = {str(c.dirpath) for c in callbacks if c.dirpath}
    # Checkpoints land in their dirpath when one is set, else under default_root_dir (the loggers' folder).
    folders = {str(trainer.default_root_dir): 0 if checkpoint_dirs else need}
    folders.update(dict.fromkeys(checkpoint_dirs, need))
    where = "--trainer.default_root_dir (and --checkpoint.dirpath, if you set it)"
    for folder, needed in folders.items():
        if "://" in folder:
            continue  # remote storage (s3://, ...): nothing local to probe
        try:
            free = _free_bytes(Path(folder))
        except OSError as err:
            reason = (err.strerror or str(err)) + (f" ({err.filename})" if err.filename else "")
            raise OutputFolderError(
                f"cannot write to the output folder {folder}: {reason}. Nothing was trained. Point "
                f"{where} at a folder you can write, or fix its permissions."
            ) from err
        if needed and free < needed:
            raise OutputFolderError(
                f"not enough free disk space in the output folder {folder}: the run's checkpoints need about "
                f"{size_text(needed)} ({kept + 1} files of {size_text(checkpoint_bytes(model))}: weights and AdamW's "
                f"two moments; {kept} kept plus one being written), and {size_text(free)} are free. Nothing was "
                f"trained. Free some space, keep fewer checkpoints (--checkpoint.save_top_k), or point {where} at a "
                "disk with room."
            )
