"""pretraining.cpu_kernels: the random-bits dropout and attention, the fused MLM loss, and their swap into a model."""
import math

import pytest
import torch
import torch.nn.functional as F

from pretraining.bert_config import BertConfig
from pretraining.cpu_kernels import (KERNEL_NAMES, BitsDropout, FusedDecoderCrossEntropy, attention_with_bits_dropout,
                                     bits_dropout, keep_mask, use_cpu_kernels)
from pretraining.losses import decoder_cross_entropy
from pretraining.modeling import BertForPreTraining
from pretraining.onednn_linear import OneDnnLinear, onednn_available, onednn_linear

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
    parameters, keys = list(model.parameters()), list(model.state_dict())
    # 2 layers x (attention output, FFN output) + embeddings = 5 dropouts, 2 x 6 encoder linears + pooler,
    # MLM transform and NSP linears, and the model's three kernel entries (attention, linear, mlm_loss)
    linears = 15 if onednn_available() else 0
    assert use_cpu_kernels(model, linear=True) == 5 + linears + 2 + (1 if linears else 0)
    assert not any(type(m) is torch.nn.Dropout for m in model.modules())
    assert not linears or not any(type(m) is torch.nn.Linear for m in model.modules())
    assert all(a is b for a, b in zip(model.parameters(), parameters, strict=True))  # the same Parameters
    assert list(model.state_dict()) == keys
    assert isinstance(model.kernels.mlm_loss, FusedDecoderCrossEntropy)
    assert model.kernels.attention.masked is attention_with_bits_dropout
    assert reference.kernels.mlm_loss is decoder_cross_entropy  # the default kernels are plain torch
    assert reference.kernels.attention.masked is F.scaled_dot_product_attention
    assert reference.kernels.linear is F.linear
    assert use_cpu_kernels(model, linear=True) == 0  # idempotent
    batch = batch_for(TINY)
    model.eval(), reference.eval()
    (mlm, nsp), (reference_mlm, reference_nsp) = model(*batch), reference(*batch)
    # no dropout: the same values up to summation order (oneDNN's matmul, not MKL's)
    torch.testing.assert_close(nsp, reference_nsp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mlm, reference_mlm, atol=1e-5, rtol=1e-5)
    labels = torch.randint(1, TINY.vocab_size, (4, 3))
    nsp = torch.tensor([0, 1, 1, 0])
    with torch.no_grad():  # the fused MLM loss: the same values
        torch.testing.assert_close(model(*batch, labels, nsp), reference(*batch, labels, nsp), atol=1e-5, rtol=1e-5)
    model.train()

    def loss(seed):
        torch.manual_seed(seed)
        return model(*batch, labels, nsp)[0]  # as training calls it: through the fused MLM loss

    first, again, other = loss(1), loss(1), loss(2)
    assert torch.equal(first, again)  # the default generator drives the masks: seeded runs repeat
    assert not torch.equal(first, other)  # and dropout is on
    first.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def decoder_inputs(rows: int, ignored: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 32, generator=gen)
    table = torch.randn(104, 32, generator=gen)  # vocab 101 padded to 104
    bias = torch.randn(104, generator=gen)
    labels = torch.randint(0, 101, (rows,), generator=gen)
    labels[torch.randperm(rows, generator=gen)[:ignored]] = -100
    return x, table, bias, labels


@pytest.mark.parametrize("rows, ignored", [(24, 0), (24, 3), (13, 5), (6, 6)])
def test_fused_decoder_cross_entropy_equals_the_default(rows, ignored):
    """Same loss and gradients as decoder_cross_entropy, with unused rows dropped (and padded back to
    a multiple of 8 with ignored ones), gradients for every input, zero on the padding rows."""
    x, table, bias, labels = decoder_inputs(rows, ignored)
    fused = FusedDecoderCrossEntropy()
    results = []
    for loss_fn in (fused, decoder_cross_entropy):
        leaves = [t.clone().requires_grad_() for t in (x, table, bias)]
        loss = loss_fn(*leaves, labels, 101)
        loss.backward(torch.tensor(2.0))
        results.append((loss, [leaf.grad for leaf in leaves]))
    (fused_loss, fused_grads), (loss, grads) = results
    assert fused_loss.dtype == torch.float32 and fused_loss.shape == ()
    torch.testing.assert_close(fused_loss, loss, atol=1e-5, rtol=1e-5)
    for got, expected in zip(fused_grads, grads):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert not fused_grads[1][101:].any() and not fused_grads[2][101:].any()
    assert not fused_grads[0][labels < 0].any()  # unused rows get no gradient
    if ignored == rows:
        assert fused_loss.item() == 0.0 and not fused_grads[1].any()  # no labelled row: 0, not NaN
    labelled_rounded_up = (rows - ignored + 7) // 8 * 8  # the rows that went through the decoder
    assert fused.buffer.numel() == 101 * min(labelled_rounded_up, rows)


def test_fused_decoder_cross_entropy_reuses_its_buffer_unless_a_backward_still_needs_it():
    fused = FusedDecoderCrossEntropy()
    x, table, bias, labels = decoder_inputs(16, 0)
    table.requires_grad_()
    fused(x, table, bias, labels, 101).backward()
    buffer = fused.buffer
    expected = torch.autograd.grad(decoder_cross_entropy(x, table, bias, labels, 101), table)[0]
    first = fused(x, table, bias, labels, 101)  # the reused buffer (its last user is done)
    assert fused.buffer is buffer and fused.user() is not None
    second = fused(x[:8], table, bias, labels[:8], 101)  # first's backward is pending: a fresh buffer
    (first_grad,) = torch.autograd.grad(first, table)
    torch.testing.assert_close(first_grad, expected, atol=1e-5, rtol=1e-5)
    second.backward()
    with torch.no_grad():
        fused(x, table, bias, labels, 101)  # no graph, nothing pending afterwards
    assert fused.buffer is buffer and fused.user() is None
    # Should the bookkeeping ever fail, autograd's version check refuses the stale buffer.
    third = fused(x, table, bias, labels, 101)
    fused.user = lambda: None
    fused(x, table, bias, labels, 101)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        third.backward()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 matmuls: the default path, no buffer use
        torch.testing.assert_close(fused(x, table, bias, labels, 101), decoder_cross_entropy(x, table, bias, labels, 101))


@pytest.mark.parametrize("left_out", KERNEL_NAMES)
def test_each_kernel_can_be_left_out(left_out):
    """``without`` leaves exactly that kernel's modules or entry as they were (the benchmark's A/B)."""
    model = BertForPreTraining(TINY)
    use_cpu_kernels(model, without=[left_out], linear=True)
    kernels = model.kernels
    has_dropout = any(type(m) is torch.nn.Dropout for m in model.modules())
    assert has_dropout == (left_out == "dropout")
    assert (kernels.attention.masked is F.scaled_dot_product_attention) == (left_out == "attention")
    assert isinstance(kernels.mlm_loss, FusedDecoderCrossEntropy) == (left_out != "mlm_loss")
    if onednn_available():
        assert (kernels.linear is onednn_linear) == (left_out != "linear")
        assert any(type(m) is OneDnnLinear for m in model.modules()) == (left_out != "linear")
    plain = BertForPreTraining(TINY)
    assert use_cpu_kernels(plain, without=KERNEL_NAMES) == 0
    with pytest.raises(ValueError, match="unknown CPU kernel"):
        use_cpu_kernels(plain, without=["embedding"])


@pytest.mark.parametrize("case", ["pretraining loss", "nsp loss alone", "two micro-batches", "logits"])
def test_cpu_kernels_give_the_gradients_of_the_plain_model(case):
    """With dropout off, every parameter's gradient equals the plain model's (to summation order),
    whichever parts of the graph the backward covers."""
    config = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    model, reference = BertForPreTraining(config), BertForPreTraining(config)
    reference.load_state_dict(model.state_dict())
    use_cpu_kernels(model)
    batch = batch_for(config)
    labels = torch.randint(1, config.vocab_size, (4, 3))
    nsp = torch.tensor([0, 1, 1, 0])
    for net in (model, reference):
        if case == "pretraining loss":
            net(*batch, labels, nsp)[0].backward()
        elif case == "nsp loss alone":  # no decoder in the graph
            net(*batch, labels, nsp)[2].backward()
        elif case == "two micro-batches":
            net(*batch, labels, nsp)[0].backward()
            net(*batch_for(config, seed=1), labels, nsp)[0].backward()
        else:
            mlm, nsp_logits = net(*batch)
            (mlm.square().mean() + nsp_logits.square().mean()).backward()
    table = model.bert.embeddings.word_embeddings.weight
    assert not table.grad.is_sparse and table.grad.shape == table.shape
    for (name, ours), theirs in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(ours.grad, theirs.grad, atol=1e-6, rtol=1e-5, msg=name)
    if case == "nsp loss alone":
        assert table.grad[batch[0].unique()].abs().sum() > 0
