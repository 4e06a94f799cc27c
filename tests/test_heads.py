"""Heads on hand-made encoder outputs: shapes, padding invariance, the scalar mix, layer selection."""

from __future__ import annotations

import pytest
import torch

from bertft.encoder import EncoderOutput
from bertft.heads import (
    AttentionMapHead,
    AttentionPoolingHead,
    CLSHead,
    ConcatCLSHead,
    FirstLastMeanHead,
    Head,
    MaxHead,
    MeanHead,
    MeanMaxHead,
    PoolerHead,
    TokenHead,
    WeightedLayersHead,
    hidden_state_index,
    layer_indices,
    masked_max,
    masked_mean,
    masked_softmax,
)

B, T, H, L, N, NH = 3, 5, 8, 4, 2, 2  # batch, tokens, hidden, layers, outputs, attention heads


def fake_outputs(hidden_states: tuple[torch.Tensor, ...], attentions: tuple[torch.Tensor, ...]) -> EncoderOutput:
    return EncoderOutput(
        last_hidden_state=hidden_states[-1],
        pooler_output=torch.tanh(hidden_states[-1][:, 0]),
        hidden_states=hidden_states,
        attentions=attentions,
    )


def random_maps(mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """One ``(B, NH, T, T)`` map per layer: each query's softmax over the real keys, as eager attention gives."""
    t = mask.shape[1]
    scores = 3 * torch.randn(L, B, NH, t, t)
    scores = scores.masked_fill(~mask.bool()[None, :, None, None, :], torch.finfo(torch.float32).min)
    return tuple(torch.softmax(scores, dim=-1).unbind(0))


def random_batch(t: int = T) -> tuple[EncoderOutput, torch.Tensor]:
    hidden = tuple(torch.randn(B, t, H) for _ in range(L + 1))
    mask = torch.ones(B, t, dtype=torch.long)
    mask[1, 3:] = 0  # a shorter sequence
    return fake_outputs(hidden, random_maps(mask)), mask


def pad(outputs: EncoderOutput, mask: torch.Tensor, extra: int) -> tuple[EncoderOutput, torch.Tensor]:
    """Appends ``extra`` padding positions filled with garbage (hidden states, and attention on padded keys)."""
    grown = tuple(torch.cat([h, 100 * torch.randn(B, extra, H)], dim=1) for h in outputs.hidden_states)
    maps = []
    for a in outputs.attentions:
        a = torch.cat([a, torch.rand(B, NH, T, extra)], dim=-1)  # garbage weight on the new (padded) keys
        maps.append(torch.cat([a, torch.rand(B, NH, extra, T + extra)], dim=-2))  # and rows for the padded queries
    return fake_outputs(grown, tuple(maps)), torch.cat([mask, torch.zeros(B, extra, dtype=mask.dtype)], dim=1)


def built(head: Head) -> Head:
    head.build(hidden_size=H, num_layers=L, num_outputs=N, num_attention_heads=NH)
    return head.eval()


def randomised(head: Head) -> Head:
    """The head with every parameter random, so that a learned weighting is not still its even start."""
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(torch.randn_like(p))
    return head


NEW_HEADS = [
    MeanMaxHead,
    FirstLastMeanHead,
    AttentionPoolingHead,
    lambda: AttentionPoolingHead(scorer_dim=4),
    AttentionMapHead,
    lambda: AttentionMapHead(layers=[1, -1], mix="learned"),
]
SEQUENCE_HEADS = [PoolerHead, CLSHead, MeanHead, MaxHead, WeightedLayersHead, ConcatCLSHead, *NEW_HEADS]


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


@pytest.mark.parametrize("head_cls", [MeanHead, MaxHead, WeightedLayersHead, *NEW_HEADS])
def test_padding_does_not_change_the_pooled_vector(head_cls: type[Head]) -> None:
    head = randomised(built(head_cls()))
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


# ----- the heads for every output: mean + max, first-last, learned attention pooling, attention maps ---------------


def test_mean_max_head_is_mean_then_max() -> None:
    head = built(MeanMaxHead())
    outputs, mask = random_batch()
    hidden = outputs.last_hidden_state
    torch.testing.assert_close(
        head.pool(outputs, mask), torch.cat([masked_mean(hidden, mask), masked_max(hidden, mask)], -1)
    )
    assert head.output_dim == 2 * H


@pytest.mark.parametrize(("first", "last", "pair"), [(1, -1, (1, L)), (0, -1, (0, L)), (2, 3, (2, 3))])
def test_first_last_mean_head_averages_the_pair(first: int, last: int, pair: tuple[int, int]) -> None:
    head = built(FirstLastMeanHead(first=first, last=last))
    outputs, mask = random_batch()
    a, b = (outputs.hidden_states[i] for i in pair)
    torch.testing.assert_close(head.pool(outputs, mask), masked_mean((a + b) / 2, mask))


def test_layer_positions_outside_the_encoder_are_refused() -> None:
    assert hidden_state_index(L, -1) == L
    assert hidden_state_index(L, 0) == 0
    with pytest.raises(ValueError, match=r"last=5 is not a layer of this encoder: hidden_states has 5 entries"):
        built(FirstLastMeanHead(last=L + 1))
    with pytest.raises(ValueError, match=r"layers: 0 is not a transformer layer"):
        built(AttentionMapHead(layers=[0]))
    with pytest.raises(ValueError, match="choose 'mean' or 'learned'"):
        AttentionMapHead(mix="max")
    with pytest.raises(ValueError, match="scorer_dim=0"):
        AttentionPoolingHead(scorer_dim=0)


@pytest.mark.parametrize("head", [lambda: randomised(built(AttentionPoolingHead(scorer_dim=4))),
                                  lambda: randomised(built(AttentionMapHead(mix="learned")))])  # fmt: skip
def test_masked_positions_get_zero_weight(head) -> None:
    head = head()
    outputs, mask = random_batch()
    weights = head.token_weights(outputs, mask)
    assert weights.shape == (B, T)
    assert torch.all(weights[mask == 0] == 0)
    assert torch.all(weights[mask == 1] > 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(B))


def test_masked_softmax_of_an_all_padding_row_is_zero() -> None:
    weights = masked_softmax(torch.randn(2, 3), torch.tensor([[1, 1, 0], [0, 0, 0]]))
    assert torch.all(weights[1] == 0)
    assert torch.all(torch.isfinite(weights))
    torch.testing.assert_close(weights[0].sum(), torch.tensor(1.0))


@pytest.mark.parametrize("scorer_dim", [None, 4])
def test_attention_pooling_starts_as_the_mean(scorer_dim: int | None) -> None:
    head = built(AttentionPoolingHead(scorer_dim=scorer_dim))
    outputs, mask = random_batch()
    torch.testing.assert_close(head.pool(outputs, mask), masked_mean(outputs.last_hidden_state, mask))


def test_attention_map_head_weighs_tokens_by_the_cls_row() -> None:
    """A map whose [CLS] row puts everything on token 2 pools token 2; the mean over heads and layers otherwise."""
    outputs, mask = random_batch()
    one_hot = torch.zeros(B, NH, T, T)
    one_hot[:, :, 0, 2] = 1.0
    outputs.attentions = (*outputs.attentions[:-1], one_hot)
    head = built(AttentionMapHead())  # the last layer
    torch.testing.assert_close(head.pool(outputs, mask), outputs.last_hidden_state[:, 2])

    both = built(AttentionMapHead(layers=[-2, L]))  # the last two layers, by either count
    assert both.map_layers == [L - 2, L - 1]
    rows = torch.stack([outputs.attentions[L - 2][:, :, 0], outputs.attentions[L - 1][:, :, 0]], 1).mean((1, 2))
    rows = rows * mask
    expected = torch.einsum("bt,bth->bh", rows / rows.sum(-1, keepdim=True), outputs.last_hidden_state)
    torch.testing.assert_close(both.pool(outputs, mask), expected)


def test_attention_map_head_learns_one_weight_per_layer_and_head() -> None:
    head = built(AttentionMapHead(layers=[1, 2], mix="learned"))
    assert head.mix is not None
    assert head.mix.layer_logits.numel() == 2 * NH
    outputs, mask = random_batch()
    torch.testing.assert_close(head.pool(outputs, mask), built(AttentionMapHead(layers=[1, 2])).pool(outputs, mask))
    with torch.no_grad():  # all weight on layer 2's second head
        head.mix.layer_logits.fill_(-1e4)
        head.mix.layer_logits[2 * NH - 1] = 0.0
    row = outputs.attentions[1][:, NH - 1, 0] * mask
    expected = torch.einsum("bt,bth->bh", row / row.sum(-1, keepdim=True), outputs.last_hidden_state)
    torch.testing.assert_close(head.pool(outputs, mask), expected)
    head.train()
    with torch.no_grad():
        head.mix.layer_logits.normal_()
    head(outputs, mask).sum().backward()
    assert head.mix.layer_logits.grad is not None
    assert head.mix.layer_logits.grad.abs().sum() > 0


def test_learned_attention_map_mix_needs_the_number_of_attention_heads() -> None:
    with pytest.raises(ValueError, match="num_attention_heads"):
        AttentionMapHead(mix="learned").build(hidden_size=H, num_layers=L, num_outputs=N)
