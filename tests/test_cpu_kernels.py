"""central.cpu_kernels: the random-bits dropout and attention stand-ins, and their swap into a model."""
import math

import pytest
import torch
import torch.nn.functional as F

from central.cpu_kernels import (BitsDropout, attention_with_bits_dropout, bits_dropout, keep_mask,
                                 use_cpu_kernels)
from pretraining.bert_config import BertConfig
from pretraining.modeling import BertForPreTraining, pretraining_loss

TINY = BertConfig(vocab_size=101, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=128, max_position_embeddings=64)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_mask_rate_scale_and_balanced_lanes(p):
    torch.manual_seed(0)
    mask = keep_mask(torch.Size([400, 1000]), p, torch.float32, torch.device("cpu"))
    kept = mask != 0
    keep = round((1 - p) * 65536)
    values = mask.unique()
    assert len(values) == 2 and values[0] == 0  # kept values carry 1 / keep probability
    assert values[1].item() == pytest.approx(65536 / keep, rel=1e-7)
    # 400k draws: the kept fraction lies within 5 standard deviations of 1 - p ...
    assert abs(kept.float().mean().item() - (1 - p)) < 5 * math.sqrt(p * (1 - p) / kept.numel())
    # ... in each of the 4 int16 lanes of a 64-bit word (a 63-bit generator would bias the top lane)
    for lane in range(4):
        rate = kept.flatten()[lane::4].float().mean().item()
        assert abs(rate - (1 - p)) < 5 * math.sqrt(p * (1 - p) / (kept.numel() / 4))
    assert abs(mask.mean().item() - 1.0) < 0.02  # the expectation is preserved


def test_keep_mask_edges():
    cpu = torch.device("cpu")
    assert torch.equal(keep_mask(torch.Size([7, 3]), 1.0, torch.float32, cpu), torch.zeros(7, 3))
    assert torch.equal(keep_mask(torch.Size([7, 3]), 0.0, torch.float32, cpu), torch.ones(7, 3))
    assert keep_mask(torch.Size([5]), 0.5, torch.bfloat16, cpu).dtype == torch.bfloat16  # odd count, other dtype


def test_bits_dropout_gradient_is_the_mask_and_eval_is_identity():
    x = torch.randn(6, 50, requires_grad=True)
    torch.manual_seed(3)
    out = bits_dropout(x, 0.3)
    torch.manual_seed(3)
    mask = keep_mask(x.shape, 0.3, x.dtype, x.device)  # the same draws
    torch.testing.assert_close(out, x.detach() * mask, rtol=0, atol=0)
    weights = torch.randn(6, 50)
    (out * weights).sum().backward()
    torch.testing.assert_close(x.grad, weights * mask, rtol=0, atol=0)
    assert bits_dropout(x, 0.3, training=False) is x
    module = BitsDropout(0.3).eval()
    assert module(x) is x and "p=0.3" in repr(module)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        BitsDropout(1.5)


@pytest.mark.parametrize("masked", [True, False])
def test_attention_matches_the_math_with_the_same_mask(masked):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 2, 9, 8, generator=gen) for _ in range(3))
    attn_mask = torch.ones(3, 1, 1, 9, dtype=torch.bool)
    attn_mask[1, ..., 6:] = False
    attn_mask = attn_mask if masked else None
    torch.manual_seed(5)
    got = attention_with_bits_dropout(q, k, v, attn_mask=attn_mask, dropout_p=0.2)
    torch.manual_seed(5)
    mask = keep_mask(torch.Size([6, 9, 9]), 0.2, q.dtype, q.device).view(3, 2, 9, 9)
    scores = q @ k.transpose(-2, -1) / math.sqrt(8)
    if masked:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    expected = (torch.softmax(scores, -1) * mask) @ v
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    if masked:  # padded keys get exactly no weight, whatever the dropout
        v_changed = v.clone()
        v_changed[1, :, 6:] = 1e4
        torch.manual_seed(5)
        torch.testing.assert_close(attention_with_bits_dropout(q, k, v_changed, attn_mask, 0.2)[1], got[1])
    # without dropout it is SDPA itself
    assert torch.equal(attention_with_bits_dropout(q, k, v, attn_mask, 0.0),
                       F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask))


def batch_for(config, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, config.vocab_size, (4, 16), generator=gen)
    mask = torch.ones_like(ids)
    mask[2, 11:] = 0
    positions = torch.tensor([[1, 3, 5], [2, 4, 0], [1, 9, 10], [7, 8, 12]])
    return ids, torch.zeros_like(ids), mask, positions


def test_swap_keeps_eval_outputs_and_trains_with_the_new_dropout():
    torch.manual_seed(0)
    model = BertForPreTraining(TINY)
    reference = BertForPreTraining(TINY)
    reference.load_state_dict(model.state_dict())
    # 2 layers x (attention output, FFN output) + embeddings = 5 dropouts, 2 attention modules, the MLM head
    assert use_cpu_kernels(model) == 8
    assert not any(type(m) is torch.nn.Dropout for m in model.modules())
    assert model.cls.predictions.logits_vocab_major and not reference.cls.predictions.logits_vocab_major
    assert use_cpu_kernels(model) == 0  # idempotent
    batch = batch_for(TINY)
    model.eval(), reference.eval()
    (mlm, nsp), (reference_mlm, reference_nsp) = model(*batch), reference(*batch)
    assert torch.equal(nsp, reference_nsp)  # no dropout: the same maths, bit for bit
    assert mlm.stride()[-1] == mlm.shape[0] * mlm.shape[1]  # the logits are stored vocab-major
    torch.testing.assert_close(mlm, reference_mlm, atol=1e-5, rtol=1e-5)  # the same values
    model.train()
    labels = torch.randint(1, TINY.vocab_size, (4, 3))
    nsp = torch.tensor([0, 1, 1, 0])

    def loss(seed):
        torch.manual_seed(seed)
        mlm_logits, nsp_logits = model(*batch)
        return pretraining_loss(mlm_logits, labels, batch[3], nsp_logits, nsp)[0]

    first, again, other = loss(1), loss(1), loss(2)
    assert torch.equal(first, again)  # the default generator drives the masks: seeded runs repeat
    assert not torch.equal(first, other)  # and dropout is on
    first.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
