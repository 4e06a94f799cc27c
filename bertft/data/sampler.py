"""Batches of similar length, so dynamic padding wastes little compute, with each DDP rank taking its own share."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Sampler


def distributed_rank_and_size() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised process group, or ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def check_sharding(trainer: Any) -> None:
    """Raises when a multi-process Trainer would try to replace our rank-aware samplers with its own.

    Lightning injects a ``DistributedSampler`` into every loader when ``use_distributed_sampler`` is on (the default)
    and several processes run. That cannot work with :class:`LengthGroupedBatchSampler`, which shards itself.
    """
    connector = getattr(trainer, "_accelerator_connector", None)
    if trainer is not None and trainer.world_size > 1 and getattr(connector, "use_distributed_sampler", False):
        raise ValueError(
            "bertft's data module shards batches across processes itself: create the Trainer with "
            "`use_distributed_sampler=False` (in YAML: `trainer.use_distributed_sampler: false`)."
        )


#: The seed of the sample a limited evaluation draws: one constant, so every run, seed and sweep trial is scored on the
#: same examples (a paired comparison), whatever its training seed.
EVAL_SAMPLE_SEED = 0


def evaluated_examples(trainer: Any, split: str, batches: int, batch_size: int) -> int | None:
    """How many examples of this rank's ``batches`` Lightning evaluates under ``limit_{val,test}_batches``.

    ``None`` when the limit keeps every batch (no limit, ``1.0``, ``0`` or at least as many batches as there are), so
    the caller can leave the order alone. Mirrors Lightning's own rule: an int caps the batches, a float keeps
    ``int(batches * limit)``.
    """
    limit = getattr(trainer, f"limit_{split}_batches", None) if split in ("val", "test") else None
    if isinstance(limit, bool) or not isinstance(limit, int | float) or limit <= 0:
        return None
    kept = min(batches, limit) if isinstance(limit, int) else int(batches * limit)
    return kept * batch_size if 0 < kept < batches else None


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Yields lists of dataset indices whose examples have similar lengths.

    Training (``shuffle=True``): shuffle all indices with ``seed + epoch``, cut them into mega-chunks of
    ``mega_batches`` batches, sort each chunk by length (longest first), cut it into batches and shuffle the batch
    order. Batches are then near-uniform in length yet their order and contents change every epoch; the chunking
    keeps the randomness that a global sort would remove.

    Evaluation (``shuffle=False``): one global sort by length, longest first, the same every time. Order does not
    matter there because every batch carries each example's ``row``.

    Under DDP every rank builds the same list of *global* batches of ``batch_size * world_size`` examples (same seed
    and epoch) and takes its own contiguous part of each, ``batch_size`` examples. Step ``k`` therefore sees exactly
    the examples that a single process with ``batch_size * world_size`` would: DDP training matches single-process
    training. A last, incomplete global batch is split as evenly as possible (repeating examples only when it has
    fewer than one per rank), so every rank runs the same number of steps; ranks that do not deadlock.

    Args:
        lengths: Token count of each example.
        batch_size: Examples per batch.
        shuffle: Random, epoch-dependent order (training) or a fixed length-sorted order (evaluation).
        drop_last: Drop the incomplete batch, and the batches that do not divide evenly among ranks.
        seed: Base seed, combined with the epoch number.
        mega_batches: Batches per sorted chunk. Larger means more uniform lengths and less randomness.
        num_replicas: World size; default: from ``torch.distributed`` if initialised, else 1.
        rank: This process's rank; default: from ``torch.distributed`` if initialised, else 0.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        mega_batches: int = 50,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if mega_batches < 1:
            raise ValueError(f"mega_batches must be at least 1, got {mega_batches}")
        default_rank, default_size = distributed_rank_and_size()
        self.num_replicas = default_size if num_replicas is None else num_replicas
        self.rank = default_rank if rank is None else rank
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank {self.rank} is outside [0, {self.num_replicas})")
        self.lengths = torch.as_tensor(lengths, dtype=torch.long)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.mega_batches = mega_batches
        self.epoch = 0
        # Lightning calls `set_epoch` on `dataloader.sampler` and `dataloader.batch_sampler.sampler`, never on the
        # batch sampler itself: exposing ourselves as `.sampler` is what makes it reshuffle every epoch.
        self.sampler = self
        self.batches_done = 0  # batches yielded in the current pass over the epoch
        self._resume: tuple[int, int] | None = None  # (epoch, batches to skip) from load_state_dict

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch, so each epoch gets a new order."""
        self.epoch = epoch

    def state_dict(self) -> dict[str, Any]:
        """Where the current epoch stands: enough to yield exactly the remaining batches after a restart."""
        return {
            "epoch": self.epoch,
            "batches_done": self.batches_done,
            "seed": self.seed,
            "global_batch_size": self.batch_size * self.num_replicas,
            "num_examples": len(self.lengths),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Makes the next pass over ``state["epoch"]`` skip the batches already done (and only that epoch's).

        Raises:
            ValueError: The saved state is of a different training set or batch layout, whose batches cannot match.
        """
        ours = self.state_dict()
        for key in ("seed", "global_batch_size", "num_examples"):
            if key in state and state[key] != ours[key]:
                raise ValueError(
                    f"the checkpoint's training order has {key}={state[key]}, this run has {ours[key]}: its "
                    "mid-epoch position cannot be resumed. Resume with the same training file, data.seed, batch "
                    "size and number of devices, or start from an end-of-epoch checkpoint."
                )
        self.epoch = int(state["epoch"])
        self._resume = (self.epoch, int(state["batches_done"]))

    def _global_batches(self) -> list[list[int]]:
        n = len(self.lengths)
        size = self.batch_size * self.num_replicas
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=generator)
            chunk = size * self.mega_batches
            batches: list[list[int]] = []
            for start in range(0, n, chunk):
                part = order[start : start + chunk]
                # stable sort keeps the shuffled order among equal lengths
                part = part[torch.sort(self.lengths[part], descending=True, stable=True).indices]
                batches.extend(part[i : i + size].tolist() for i in range(0, len(part), size))
            batch_order = torch.randperm(len(batches), generator=generator).tolist()
            batches = [batches[i] for i in batch_order]
        else:
            order = torch.sort(self.lengths, descending=True, stable=True).indices
            batches = [order[i : i + size].tolist() for i in range(0, n, size)]
        if self.drop_last:
            batches = [b for b in batches if len(b) == size]
        return batches

    def _share(self, batch: list[int]) -> list[int]:
        """This rank's contiguous part of a global batch; parts differ in size by at most one."""
        if len(batch) < self.num_replicas:  # too few to give every rank one: repeat some
            batch = (batch * self.num_replicas)[: self.num_replicas]
        bounds = [len(batch) * r // self.num_replicas for r in range(self.num_replicas + 1)]
        return batch[bounds[self.rank] : bounds[self.rank + 1]]

    @property
    def pending_skip(self) -> int:
        """Batches the next pass will skip: those done before a restart, if the pass is over the same epoch."""
        if self._resume is None or self._resume[0] != self.epoch:
            return 0
        return self._resume[1]

    def __iter__(self) -> Iterator[list[int]]:
        skip = self.pending_skip
        self._resume = None  # once: the next epoch starts from its beginning
        self.batches_done = skip
        for batch in self._global_batches()[skip:]:
            self.batches_done += 1
            yield self._share(batch)

    def __len__(self) -> int:
        n, size = len(self.lengths), self.batch_size * self.num_replicas
        return n // size if self.drop_last else -(-n // size)


class LengthSortedSampler(Sampler[int]):
    """Evaluation order: indices sorted by length, longest first, the same every time; this rank's share only.

    Rank ``r`` of ``R`` takes sorted positions ``r, r + R, ...``, so every rank sees similar lengths. Nothing is
    repeated (``DistributedSampler`` pads with repeats, which would count some examples twice in the metrics): shares
    differ by at most one example, and ranks may run one batch more or less. That is safe because evaluation and
    prediction steps run no collective operation; metrics are gathered once, at the end of the epoch.

    With ``groups`` (the text each window of a long text comes from), whole groups are shared out instead: every
    window of a text lands on one rank, where the model merges them into the text's prediction.

    With ``sample`` (what ``limit_val_batches`` / ``limit_test_batches`` keep, see :func:`evaluated_examples`), a fixed
    random sample of that many examples over all ranks, drawn with :data:`EVAL_SAMPLE_SEED`, comes first (itself longest
    first) and the rest after it. Lightning evaluates the first batches only, so a limited evaluation is an unbiased
    estimate on the same rows every time, not the split's longest texts; the loader's length does not change, so
    Lightning's own count of the batches to keep is unchanged too.

    Args:
        lengths: Token count of each example.
        num_replicas: World size; default: from ``torch.distributed`` if initialised, else 1.
        rank: This process's rank; default: from ``torch.distributed`` if initialised, else 0.
        groups: Optional group of each example (its text's ``row``); a group's examples stay on one rank.
        sample: Examples, over all ranks, to draw at random and put first; ``None``: the length order only.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        num_replicas: int | None = None,
        rank: int | None = None,
        groups: Sequence[int] | None = None,
        sample: int | None = None,
    ) -> None:
        default_rank, default_size = distributed_rank_and_size()
        self.num_replicas = default_size if num_replicas is None else num_replicas
        self.rank = default_rank if rank is None else rank
        sizes = torch.as_tensor(lengths, dtype=torch.long)
        order = torch.sort(sizes, descending=True, stable=True).indices.tolist()
        members: dict[int, list[int]] = {}
        for i in order:  # groups in order of their longest example; members longest first
            members.setdefault(groups[i] if groups is not None else i, []).append(i)
        if 0 < len(members) < self.num_replicas:
            raise ValueError(
                f"{len(members)} examples cannot be shared among {self.num_replicas} processes: use fewer devices "
                "for this split or give it more examples."
            )
        self._groups = list(members.values())
        self._size_of = sizes.tolist()
        #: This rank's examples of the sample (0 without one).
        self.sampled = 0
        self.indices: list[int] = []
        self.put_first(sample)

    def put_first(self, sample: int | None) -> None:
        """Puts a fixed random sample of ``sample`` examples (over all ranks) first in this rank's share.

        ``None``: the length order only. The share itself, and so the loader's length, stays the same.
        """
        parts = [self._groups] if sample is None else _draw(self._groups, sample)
        shares = [[i for group in part[self.rank :: self.num_replicas] for i in group] for part in parts]
        self.sampled = len(shares[0]) if sample is not None else 0
        self.indices = [i for share in shares for i in sorted(share, key=lambda i: -self._size_of[i])]  # stable

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _draw(groups: list[list[int]], sample: int) -> list[list[list[int]]]:
    """``groups`` split into a seeded random sample of about ``sample`` examples (whole groups) and the rest.

    Both keep the groups' order (longest first), so sharing them out by rank still gives every rank similar lengths.
    """
    order = torch.randperm(len(groups), generator=torch.Generator().manual_seed(EVAL_SAMPLE_SEED)).tolist()
    drawn, taken = set(), 0
    for g in order:
        if taken >= sample:
            break
        drawn.add(g)
        taken += len(groups[g])
    inside = [group for g, group in enumerate(groups) if g in drawn]
    return [inside, [group for g, group in enumerate(groups) if g not in drawn]]


class ResumableDataLoader(DataLoader):
    """A training ``DataLoader`` over a :class:`LengthGroupedBatchSampler` that resumes in the middle of an epoch.

    Lightning stores ``state_dict()`` of every training loader in its checkpoints and calls ``load_state_dict`` before
    iterating again after a restart (for models that build the loader before the restore, e.g. to read
    ``estimated_stepping_batches``, :class:`~bertft.training.faults.ResumeCheckpoint` makes that call). The position
    saved is the number of batches handed to the training loop, not the number the sampler produced: worker processes
    fetch ahead. After a restart the loader yields exactly the batches an uninterrupted run would have yielded next,
    and no batch twice.
    """

    batch_sampler: LengthGroupedBatchSampler

    def __iter__(self) -> Iterator[Any]:
        # A generator: nothing runs before the first batch is asked for, which Lightning does after `set_epoch`.
        self._batches_done = self.batch_sampler.pending_skip
        for batch in super().__iter__():
            self._batches_done += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """The sampler's epoch and seed, with the number of batches the training loop has received this epoch."""
        return {**self.batch_sampler.state_dict(), "batches_done": getattr(self, "_batches_done", 0)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Makes the next pass over the saved epoch start after its last batch received."""
        self.batch_sampler.load_state_dict(state)
