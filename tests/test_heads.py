"""Heads on hand-made encoder outputs: shapes, padding invariance, the scalar mix, layer selection."""

from __future__ import annotations

import pytest
import torch

from bertft.encoder import EncoderOutput
from bertft.heads import (
    CLSHead,
    ConcatCLSHead,
    Head,
    MaxHead,
    MeanHead,
    PoolerHead,
    TokenHead,
    WeightedLayersHead,
    layer_indices,
    masked_max,
    masked_mean,
)

B, T, H, L, N = 3, 5, 8, 4, 2


def fake_outputs(hidden_states: tuple[torch.Tensor, ...]) -> EncoderOutput:
    return EncoderOutput(
        last_hidden_state=hidden_states[-1],
        pooler_output=torch.tanh(hidden_states[-1][:, 0]),
        hidden_states=hidden_states,
    )


def random_batch(t: int = T) -> tuple[EncoderOutput, torch.Tensor]:
    hidden = tuple(torch.randn(B, t, H) for _ in range(L + 1))
    mask = torch.ones(B, t, dtype=torch.long)
    mask[1, 3:] = 0  # a shorter sequence
    return fake_outputs(hidden), mask


def pad(outputs: EncoderOutput, mask: torch.Tensor, extra: int) -> tuple[EncoderOutput, torch.Tensor]:
    """Appends ``extra`` padding positions filled with garbage."""
    grown = tuple(torch.cat([h, 100 * torch.randn(B, extra, H)], dim=1) for h in outputs.hidden_states)
    return fake_outputs(grown), torch.cat([mask, torch.zeros(B, extra, dtype=mask.dtype)], dim=1)


def built(head: Head) -> Head:
    head.build(hidden_size=H, num_layers=L, num_outputs=N)
    return head.eval()


SEQUENCE_HEADS = [PoolerHead, CLSHead, MeanHead, MaxHead, WeightedLayersHead, ConcatCLSHead]


@pytest.mark.parametrize("head_cls", SEQUENCE_HEADS)
def test_output_shape(head_cls: type[Head]) -> None:
    head = built(head_cls())
    outputs, mask = random_batch()
    assert head.pool(outputs, mask).shape == (B, head.output_dim)
    assert head(outputs, mask).shape == (B, N)


def test_token_heads_keep_the_sequence() -> None:
    outputs, mask = random_batch()
    assert built(TokenHead())(outputs, mask).shape == (B, T, N)
    assert built(WeightedLayersHead(reduce="none"))(outputs, mask).shape == (B, T, N)


@pytest.mark.parametrize("head_cls", [MeanHead, MaxHead, WeightedLayersHead])
def test_padding_does_not_change_the_pooled_vector(head_cls: type[Head]) -> None:
    head = built(head_cls())
    outputs, mask = random_batch()
    padded_outputs, padded_mask = pad(outputs, mask, extra=4)
    torch.testing.assert_close(head.pool(padded_outputs, padded_mask), head.pool(outputs, mask))


@pytest.mark.parametrize("reduce", [masked_mean, masked_max])
def test_all_padding_row_is_finite(reduce) -> None:
    hidden = torch.randn(2, 4, H)
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]])
    out = reduce(hidden, mask)
    assert torch.isfinite(out).all()
    assert torch.equal(out[1], torch.zeros(H))


def test_masked_reductions_by_hand() -> None:
    hidden = torch.tensor([[[1.0, -2.0], [3.0, 4.0], [99.0, 99.0]]])
    mask = torch.tensor([[1, 1, 0]])
    torch.testing.assert_close(masked_mean(hidden, mask), torch.tensor([[2.0, 1.0]]))
    torch.testing.assert_close(masked_max(hidden, mask), torch.tensor([[3.0, 4.0]]))


@pytest.mark.parametrize("reduce", [masked_mean, masked_max])
def test_reductions_are_float32_under_bf16(reduce) -> None:
    hidden = torch.randn(2, 6, H).to(torch.bfloat16)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1] * 6])
    out = reduce(hidden, mask)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, reduce(hidden.float(), mask))
    assert hidden.dtype == torch.bfloat16  # the input is not modified in place


def test_layer_indices_define_layers_once() -> None:
    # hidden_states[0] is the embedding output; layer k is hidden_states[k]; the last layer is num_layers.
    assert layer_indices(6) == [0, 1, 2, 3, 4, 5, 6]
    assert layer_indices(6, include_embeddings=False) == [1, 2, 3, 4, 5, 6]
    assert layer_indices(6, last_k=4, include_embeddings=False) == [3, 4, 5, 6]
    assert layer_indices(6, last_k=1, include_embeddings=False) == [6]
    with pytest.raises(ValueError, match="outside 1..6"):
        layer_indices(6, last_k=7, include_embeddings=False)
    with pytest.raises(ValueError, match="include_embeddings"):
        layer_indices(6, last_k=2, include_embeddings=True)


@pytest.mark.parametrize("layer", range(L + 1))
def test_weighted_head_with_one_hot_weights_equals_that_layer(layer: int) -> None:
    head = built(WeightedLayersHead())
    with torch.no_grad():
        head.mix.layer_logits.fill_(-1e4)
        head.mix.layer_logits[layer] = 0.0
    outputs, mask = random_batch()
    torch.testing.assert_close(head.pool(outputs, mask), masked_mean(outputs.hidden_states[layer], mask))


def test_weighted_head_last_k_selects_the_last_layers() -> None:
    head = built(WeightedLayersHead(last_k=2, include_embeddings=False, reduce="cls"))
    assert head.layers == [L - 1, L]
    outputs, mask = random_batch()
    expected = (outputs.hidden_states[L - 1][:, 0] + outputs.hidden_states[L][:, 0]) / 2  # uniform at start
    torch.testing.assert_close(head.pool(outputs, mask), expected)


def test_weighted_head_weights_sum_to_one_and_get_gradients() -> None:
    head = built(WeightedLayersHead())
    with torch.no_grad():
        head.mix.layer_logits.copy_(torch.randn(L + 1))
    assert len(head.layer_weights) == L + 1
    assert sum(head.layer_weights) == pytest.approx(1.0)
    outputs, mask = random_batch()
    head.train()
    head(outputs, mask).sum().backward()
    assert head.mix.layer_logits.grad is not None
    assert head.mix.layer_logits.grad.abs().sum() > 0
    assert head.mix.gamma.grad is not None


def test_concat_cls_head() -> None:
    head = built(ConcatCLSHead(last_k=2))
    outputs, mask = random_batch()
    expected = torch.cat([outputs.hidden_states[L - 1][:, 0], outputs.hidden_states[L][:, 0]], dim=-1)
    torch.testing.assert_close(head.pool(outputs, mask), expected)
    assert head.output_dim == 2 * H


def test_head_records_its_configuration() -> None:
    head = WeightedLayersHead(2, include_embeddings=False, dropout=0.2)
    assert head.config == {
        "class_path": "bertft.heads.builtin.WeightedLayersHead",
        "init_args": {"last_k": 2, "include_embeddings": False, "reduce": "mean", "dropout": 0.2, "hidden_dim": None},
    }


def test_head_that_does_not_fit_the_encoder_is_refused() -> None:
    with pytest.raises(ValueError, match="last_k=9"):
        ConcatCLSHead(last_k=9).build(hidden_size=H, num_layers=L, num_outputs=N)


def test_pool_must_be_implemented() -> None:
    class Incomplete(Head):
        pass

    with pytest.raises(TypeError, match="abstract"):
        Incomplete()


def test_classifier_hidden_layer() -> None:
    head = built(MeanHead(hidden_dim=16))
    assert [type(m).__name__ for m in head.classifier.net] == ["Dropout", "Linear", "Tanh", "Dropout", "Linear"]
