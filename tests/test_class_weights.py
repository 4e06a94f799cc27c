"""``model.class_weights``: balanced (inverse frequency over the training split) or given; loss and checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bertft import tasks
from bertft.cli import main
from bertft.model import FineTuner

from .helpers import cli_args, sst2_rows, write_tsv


def test_balanced_weights_are_inverse_frequency() -> None:
    weights = tasks.balanced_weights("classification", [90, 10], 100, ["neg", "pos"])
    assert torch.allclose(weights, torch.tensor([100 / 180, 100 / 20]))
    pos_weight = tasks.balanced_weights("multilabel", [25, 5], 100, ["a", "b"])  # negatives / positives per label
    assert torch.allclose(pos_weight, torch.tensor([75 / 25, 95 / 5]))
    with pytest.raises(ValueError, match=r"\['pos'\] have none"):
        tasks.balanced_weights("classification", [10, 0], 10, ["neg", "pos"])


def test_weighted_losses_match_their_definitions() -> None:
    logits, labels = torch.randn(6, 3), torch.tensor([0, 1, 2, 2, 1, 0])
    weight = torch.tensor([1.0, 2.0, 0.5])
    per_example = F.cross_entropy(logits, labels, reduction="none") * weight[labels]
    assert torch.allclose(
        tasks.loss("classification", logits, labels, weight), per_example.sum() / weight[labels].sum()
    )
    hot = torch.randint(0, 2, (6, 3)).float()
    manual = -(weight * hot * F.logsigmoid(logits) + (1 - hot) * F.logsigmoid(-logits)).mean()
    assert torch.allclose(tasks.loss("multilabel", logits, hot, weight), manual, atol=1e-6)


def test_balanced_weights_come_from_the_training_split_and_travel_in_the_checkpoint(
    tmp_path: Path, tiny_bert_dir: Path
) -> None:
    # 40 real SST-2 rows relabelled so that 'pos' is 10% of them; 20% held out for validation, stratified.
    rows = [(s, "pos" if i % 10 == 0 else "neg") for i, (s, _) in enumerate(sst2_rows("train", 40))]
    train = write_tsv(tmp_path / "train.tsv", rows)
    data = dict(encoder=tiny_bert_dir, train=train, quoting=False, logger=False)
    cli = main(cli_args(tmp_path, "--data.val_fraction=0.2", "--model.class_weights=balanced", max_steps=2, **data))
    # Training split: 32 rows, of which 3 'pos' (4 overall, 1 held out) and 29 'neg'.
    expected = torch.tensor([32 / (2 * 29), 32 / (2 * 3)])
    assert torch.allclose(cli.model.class_weight, expected)
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    assert torch.allclose(torch.load(ckpt, weights_only=True)["state_dict"]["class_weight"], expected)
    assert torch.allclose(FineTuner.load_from_checkpoint(ckpt, weights_only=True).class_weight, expected)

    given = main(cli_args(tmp_path / "given", "--model.class_weights=[1.0, 4.0]", max_steps=1, **data))
    assert given.model.class_weight.tolist() == [1.0, 4.0]
