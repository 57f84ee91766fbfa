"""BERT pre-training model: shapes, tied + padded vocab, loss rules, and parity with transformers."""
import os

import pytest
import torch

from pretraining.bert_config import BertConfig
from pretraining.hf_conversion import to_hf_config, to_hf_state_dict
from pretraining.losses import (decoder_cross_entropy, mlm_accuracy, nsp_accuracy, pretraining_loss, tied_decoder_logits,
                                valid_mlm_slots)
from pretraining.modeling import BertForPreTraining, padded_vocab_size

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# vocab 101 pads to 104: three padding columns that must never show up.
TINY = BertConfig(vocab_size=101, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=128, max_position_embeddings=64)


def scramble(model: torch.nn.Module, seed: int = 0) -> None:
    """Replace BERT's near-uniform init (std 0.02) by larger random values so parity tests bite:
    attention that is not uniform, LayerNorm gains that are not 1, non-zero biases."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            centre = 1.0 if name.endswith("LayerNorm.weight") else 0.0
            param.copy_(centre + torch.randn(param.shape, generator=gen) * 0.3)


def make_batch(seed: int = 0, batch: int = 4, seq_len: int = 24, preds: int = 5, padded: bool = True):
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, TINY.vocab_size, (batch, seq_len), generator=gen)
    token_type_ids = torch.randint(0, 2, (batch, seq_len), generator=gen)
    attention_mask = torch.ones(batch, seq_len, dtype=torch.long)
    lengths = [seq_len, seq_len - 7, seq_len - 11, seq_len][:batch] if padded else [seq_len] * batch
    positions = torch.zeros(batch, preds, dtype=torch.long)
    for row, length in enumerate(lengths):
        attention_mask[row, length:] = 0
        input_ids[row, length:] = 0
        token_type_ids[row, length:] = 0
        count = preds - (row % 3)  # some rows use fewer slots: trailing positions are 0
        chosen = torch.randperm(length - 1, generator=gen)[:count] + 1  # never position 0 ([CLS])
        positions[row, :count] = chosen.sort().values
    masked_lm_ids = torch.randint(1, TINY.vocab_size, (batch, preds), generator=gen)
    next_sentence_labels = torch.randint(0, 2, (batch,), generator=gen)
    return input_ids, token_type_ids, attention_mask, positions, masked_lm_ids, next_sentence_labels


def hf_labels(positions, masked_lm_ids, seq_len):
    """[B, L] labels as the reference builds them: -100 everywhere, ids at the valid masked positions."""
    labels = torch.full((positions.shape[0], seq_len), -100, dtype=torch.long)
    valid = valid_mlm_slots(positions)
    for row in range(positions.shape[0]):
        labels[row, positions[row][valid[row]]] = masked_lm_ids[row][valid[row]]
    return labels


def hf_twin(model: BertForPreTraining, attn_implementation: str):
    transformers = pytest.importorskip("transformers")
    hf_config = to_hf_config(model.config)
    hf_config._attn_implementation = attn_implementation
    hf = transformers.BertForPreTraining(hf_config)
    assert hf.config._attn_implementation == attn_implementation
    hf.load_state_dict(to_hf_state_dict(model.state_dict(), model.config), strict=True)
    return hf


def test_shapes_padded_vocab_and_tied_decoder():
    model = BertForPreTraining(TINY)
    assert model.bert.embeddings.word_embeddings.weight.shape == (padded_vocab_size(101), 64) == (104, 64)
    assert model.cls.predictions.bias.shape == (104,)
    assert not any("decoder" in key for key in model.state_dict())  # tied structurally, stored once
    input_ids, token_type_ids, attention_mask, positions, _, _ = make_batch()
    mlm_logits, nsp_logits = model(input_ids, token_type_ids, attention_mask, positions)
    assert mlm_logits.shape == (4, 5, 101)
    assert nsp_logits.shape == (4, 2)
    # The decoder is the word-embedding matrix: its gradient receives the head's contribution.
    mlm_logits.sum().backward()
    grad = model.bert.embeddings.word_embeddings.weight.grad
    assert grad[100].abs().sum() > 0  # token 100 is never an input here, only a decoder row


@pytest.mark.parametrize("autocast", [False, True])
def test_tied_decoder_gradients_equal_those_of_the_sliced_table(autocast):
    """The decoder multiplies by the whole padded table with the padding columns masked: the real
    columns and every gradient equal those of the sliced table, the padding columns are -inf and their
    table rows and bias entries get exactly zero gradient (fp32, and bf16 autocast)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 32, generator=gen, requires_grad=True)
    table = torch.randn(104, 32, generator=gen, requires_grad=True)
    bias = torch.randn(104, generator=gen, requires_grad=True)
    upstream = torch.randn(3, 4, 101, generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        padded = tied_decoder_logits(x, table, bias, 101)
        sliced = torch.nn.functional.linear(x, table[:101], bias[:101])
    assert padded.shape == (3, 4, 104) and padded.dtype == sliced.dtype
    assert torch.isneginf(padded[..., 101:]).all()
    tolerance = dict(atol=2e-2, rtol=2e-2) if autocast else dict(atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(padded[..., :101], sliced, **tolerance)
    padded_grads = torch.autograd.grad(padded[..., :101], (x, table, bias), upstream.to(padded.dtype))
    sliced_grads = torch.autograd.grad(sliced, (x, table, bias), upstream.to(sliced.dtype))
    for got, expected in zip(padded_grads, sliced_grads):
        assert got.dtype == expected.dtype == torch.float32
        torch.testing.assert_close(got, expected, **tolerance)
    assert not padded_grads[1][101:].any() and not padded_grads[2][101:].any()


def test_decoder_matmul_runs_over_the_padded_vocab_and_its_loss_ignores_the_padding():
    """Issue 22 finding 8: the MLM decoder's matmul has V_padded = 104 output columns (aligned rows in
    bf16), never 101; the loss equals cross-entropy over the real vocab and gives the padding nothing."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class MatmulWidths(TorchDispatchMode):
        widths = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func.overloadpacket in (torch.ops.aten.addmm, torch.ops.aten.mm):
                self.widths.append(out.shape[-1])
            return out

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 32, generator=gen, requires_grad=True)
    table = torch.randn(104, 32, generator=gen, requires_grad=True)
    bias = torch.randn(104, generator=gen, requires_grad=True)
    labels = torch.tensor([3, 100, -100, 0, 57, -100])
    with MatmulWidths() as widths:
        loss = decoder_cross_entropy(x, table, bias, labels, 101)
    assert widths.widths == [104]
    expected = torch.nn.functional.cross_entropy(torch.nn.functional.linear(x, table[:101], bias[:101]), labels)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert not table.grad[101:].any() and not bias.grad[101:].any() and table.grad[:101].any()


@pytest.mark.parametrize("autocast", [False, True])
def test_forward_with_labels_returns_the_losses_of_pretraining_loss(autocast):
    """The training call (labels in, losses out) gives pretraining_loss's numbers and gradients (to
    rounding: the training call's softmax runs over the padded vocab, whose padding terms are exact 0s)."""
    torch.manual_seed(0)
    model = BertForPreTraining(TINY).eval()
    scramble(model, seed=4)
    twin = BertForPreTraining(TINY).eval()
    twin.load_state_dict(model.state_dict())
    batch = make_batch(seed=5)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        losses = model(*batch)
        mlm_logits, nsp_logits = twin(*batch[:4])
        expected = pretraining_loss(mlm_logits, batch[4], batch[3], nsp_logits, batch[5])
    for got, want in zip(losses, expected):
        assert got.dtype == want.dtype == torch.float32 and got.shape == ()
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    losses[0].backward()
    expected[0].backward()
    for (name, param), twin_param in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(param.grad, twin_param.grad, atol=1e-6, rtol=1e-5, msg=name)
    with pytest.raises(ValueError, match="both masked_lm_ids and next_sentence_labels"):
        model(*batch[:5])


def test_padding_columns_never_win():
    model = BertForPreTraining(TINY).eval()
    with torch.no_grad():
        model.cls.predictions.bias[101:] = 1e4  # would win every argmax if it were not sliced off
    batch = make_batch()
    mlm_logits, _ = model(*batch[:4])
    assert mlm_logits.shape[-1] == 101
    assert mlm_logits.argmax(-1).max() < 101
    assert mlm_logits.max() < 1e3


def test_init_like_bert():
    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig(vocab_size=1000, hidden_size=128, num_hidden_layers=2,
                                          num_attention_heads=2, intermediate_size=256))
    layer = model.bert.encoder.layer[0]
    assert abs(layer.intermediate.dense.weight.std().item() - 0.02) < 0.002
    assert abs(model.bert.embeddings.word_embeddings.weight.std().item() - 0.02) < 0.002
    assert torch.count_nonzero(layer.intermediate.dense.bias) == 0
    assert torch.count_nonzero(model.cls.predictions.bias) == 0
    assert torch.all(layer.output.LayerNorm.weight == 1) and torch.count_nonzero(layer.output.LayerNorm.bias) == 0


def test_dropout_from_config_and_eval():
    model = BertForPreTraining(BertConfig(**{**TINY.to_dict(), "hidden_dropout_prob": 0.5,
                                             "attention_probs_dropout_prob": 0.5}))
    batch = make_batch()[:4]
    first, second = model(*batch)[0], model(*batch)[0]
    assert not torch.allclose(first, second)
    model.eval()
    assert torch.equal(model(*batch)[0], model(*batch)[0])
    quiet = BertForPreTraining(BertConfig(**{**TINY.to_dict(), "hidden_dropout_prob": 0.0,
                                             "attention_probs_dropout_prob": 0.0}))
    assert torch.equal(quiet(*batch)[0], quiet(*batch)[0])  # train mode, dropout 0: deterministic


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("padded", [True, False])
def test_parity_with_transformers(attn_implementation, padded):
    torch.manual_seed(0)
    model = BertForPreTraining(TINY).eval()
    scramble(model)
    hf = hf_twin(model, attn_implementation).eval()
    input_ids, token_type_ids, attention_mask, positions, masked_lm_ids, nsp_labels = make_batch(padded=padded)

    mlm_logits, nsp_logits = model(input_ids, token_type_ids, attention_mask, positions)
    loss, mlm_loss, nsp_loss = model(input_ids, token_type_ids, attention_mask, positions, masked_lm_ids, nsp_labels)
    out = hf(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask,
             labels=hf_labels(positions, masked_lm_ids, input_ids.shape[1]), next_sentence_label=nsp_labels)
    hf_at_positions = torch.gather(out.prediction_logits, 1, positions[..., None].expand(-1, -1, 101))

    assert out.prediction_logits.shape[-1] == 101
    valid = valid_mlm_slots(positions)
    torch.testing.assert_close(mlm_logits[valid], hf_at_positions[valid], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(nsp_logits, out.seq_relationship_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(loss, out.loss, atol=1e-4, rtol=1e-4)
    assert loss.item() == pytest.approx(mlm_loss.item() + nsp_loss.item(), abs=1e-6)
    assert mlm_logits.std() > 1.0  # the scrambled weights make the comparison meaningful


def test_gradients_match_transformers():
    torch.manual_seed(0)
    model = BertForPreTraining(TINY).eval()
    scramble(model, seed=1)
    hf = hf_twin(model, "sdpa").eval()
    input_ids, token_type_ids, attention_mask, positions, masked_lm_ids, nsp_labels = make_batch(seed=3)
    mlm_logits, nsp_logits = model(input_ids, token_type_ids, attention_mask, positions)
    pretraining_loss(mlm_logits, masked_lm_ids, positions, nsp_logits, nsp_labels)[0].backward()
    hf(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask,
       labels=hf_labels(positions, masked_lm_ids, input_ids.shape[1]), next_sentence_label=nsp_labels).loss.backward()

    ours = dict(model.named_parameters())
    theirs = dict(hf.named_parameters())
    for name in ["bert.encoder.layer.0.attention.self.query.weight", "bert.encoder.layer.1.output.dense.weight",
                 "bert.embeddings.LayerNorm.weight", "cls.predictions.transform.dense.weight",
                 "bert.pooler.dense.weight"]:
        torch.testing.assert_close(ours[name].grad, theirs[name].grad, atol=1e-4, rtol=1e-3, msg=name)
    # Word embeddings: lookup gradient + tied-decoder gradient in both models.
    word = "bert.embeddings.word_embeddings.weight"
    torch.testing.assert_close(ours[word].grad[:101], theirs[word].grad, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(ours["cls.predictions.bias"].grad[:101], theirs["cls.predictions.bias"].grad,
                               atol=1e-5, rtol=1e-3)


def test_loss_uses_slots_before_first_zero_position():
    logits = torch.randn(2, 4, 101)
    nsp_logits = torch.randn(2, 2)
    ids = torch.randint(0, 101, (2, 4))
    positions = torch.tensor([[3, 5, 0, 7], [1, 2, 4, 6]])  # row 0: slot 3 comes after a 0, ignored
    loss, mlm_loss, nsp_loss = pretraining_loss(logits, ids, positions, nsp_logits, torch.tensor([1, 0]))
    picks = [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (1, 3)]
    expected = torch.stack([torch.nn.functional.cross_entropy(logits[r, s][None], ids[r, s][None]) for r, s in picks])
    assert mlm_loss.item() == pytest.approx(expected.mean().item(), rel=1e-6)
    expected_nsp = torch.nn.functional.cross_entropy(nsp_logits, torch.tensor([1, 0]))
    assert nsp_loss.item() == pytest.approx(expected_nsp.item(), rel=1e-6)
    assert loss.item() == pytest.approx(mlm_loss.item() + nsp_loss.item(), rel=1e-6)


def test_accuracy_helpers():
    logits = torch.full((1, 3, 10), -5.0)
    logits[0, 0, 4] = logits[0, 1, 2] = logits[0, 2, 9] = 5.0
    correct, total = mlm_accuracy(logits, torch.tensor([[4, 3, 9]]), torch.tensor([[5, 6, 0]]))
    assert (correct.item(), total.item()) == (1, 2)  # slot 2 is unused (position 0)
    correct, total = nsp_accuracy(torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]]), torch.tensor([0, 1, 1]))
    assert (correct.item(), total.item()) == (2, 3)


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="num_attention_heads"):
        BertForPreTraining(BertConfig(**{**TINY.to_dict(), "num_attention_heads": 3}))
    with pytest.raises(ValueError, match="hidden_act"):
        BertForPreTraining(BertConfig(**{**TINY.to_dict(), "hidden_act": "nonsense"}))
    too_long = torch.ones(1, TINY.max_position_embeddings + 1, dtype=torch.long)
    with pytest.raises(ValueError, match="sequence length 65 exceeds max_position_embeddings 64"):
        BertForPreTraining(TINY)(too_long, too_long * 0, too_long, torch.tensor([[1]]))


@pytest.mark.parametrize("ours", [True, False])
def test_flop_formula_of_the_benchmark_matches_executed_flops(ours):
    """benchmarks/pretraining_throughput.py reports MFU from this formula: check it against a counter."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks.pretraining_throughput import matmul_flops_per_sequence

    model = BertForPreTraining(TINY).eval() if ours else hf_twin(BertForPreTraining(TINY), "sdpa").eval()
    input_ids, token_type_ids, attention_mask, positions, _, _ = make_batch(padded=False)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        if ours:
            model(input_ids, token_type_ids, attention_mask, positions)
        else:
            model(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask)
    batch, seq_len = input_ids.shape
    expected = batch * matmul_flops_per_sequence(TINY, seq_len, positions.shape[1], ours=ours)
    assert counter.get_total_flops() == expected


def test_loss_and_its_gradient_equal_torch_cross_entropy():
    logits = (torch.randn(3, 4, 101, dtype=torch.float64) * 30).requires_grad_(True)  # large: max-shift matters
    reference = logits.detach().clone().requires_grad_(True)
    ids = torch.randint(0, 101, (3, 4))
    positions = torch.tensor([[3, 5, 0, 7], [1, 2, 4, 6], [0, 0, 0, 0]])
    nsp_logits, nsp_labels = torch.randn(3, 2, dtype=torch.float64), torch.tensor([1, 0, 1])
    mlm_loss = pretraining_loss(logits, ids, positions, nsp_logits, nsp_labels)[1]
    labels = torch.where(valid_mlm_slots(positions), ids, -100).reshape(-1)
    expected = torch.nn.functional.cross_entropy(reference.reshape(-1, 101), labels, ignore_index=-100)
    torch.testing.assert_close(mlm_loss, expected)
    (mlm_loss * 3).backward()
    (expected * 3).backward()
    torch.testing.assert_close(logits.grad, reference.grad)
    assert torch.count_nonzero(logits.grad[2]) == 0 and torch.count_nonzero(logits.grad[0, 2:]) == 0
    empty = pretraining_loss(logits, ids, torch.zeros(3, 4, dtype=torch.long), nsp_logits, nsp_labels)[1]
    assert empty.item() == 0.0  # no valid slot: 0, not NaN


def test_loss_backward_consumes_its_buffer_and_refuses_a_second_run():
    logits = torch.randn(2, 3, 11, requires_grad=True)
    positions, ids = torch.tensor([[1, 2, 0], [3, 0, 0]]), torch.randint(0, 11, (2, 3))
    loss = pretraining_loss(logits, ids, positions, torch.randn(2, 2), torch.tensor([0, 1]))[1]
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="only once"):
        loss.backward()


def test_padding_is_masked_and_mask_none_means_unpadded():
    model = BertForPreTraining(TINY).eval()
    scramble(model, seed=2)
    input_ids, token_type_ids, attention_mask, positions, _, _ = make_batch(padded=True)
    with torch.no_grad():
        reference = model(input_ids, token_type_ids, attention_mask, positions)
        noisy = input_ids.clone()
        noisy[attention_mask == 0] = 7  # what sits in padding slots must not matter
        changed = model(noisy, token_type_ids, attention_mask, positions)
        torch.testing.assert_close(changed[0], reference[0])
        torch.testing.assert_close(changed[1], reference[1])
        ones = torch.ones_like(attention_mask)
        torch.testing.assert_close(model(input_ids, token_type_ids, None, positions)[0],
                                   model(input_ids, token_type_ids, ones, positions)[0])
        assert not torch.allclose(model(input_ids, token_type_ids, ones, positions)[0], reference[0])


def test_benchmark_batch_search_and_report_lines(monkeypatch):
    """The CUDA presets' logic (largest batch both models fit, one line per comparison), run on CPU
    with a tiny shape; an out-of-memory error is simulated above batch 4."""
    pytest.importorskip("transformers")
    import benchmarks.pretraining_throughput as bench

    monkeypatch.setitem(bench.PRESETS, "test-tiny", TINY)
    monkeypatch.setitem(bench.PRESET_TABLE, "test-tiny", bench.Preset("test-tiny", "cpu", 16, 3, None, "fp32",
                                                                      steps=2, goal="none"))
    real_step_functions = bench.step_functions
    tried = []

    def limited(ours, hf, batch, *args):
        tried.append(batch["input_ids"].shape[0])
        if batch["input_ids"].shape[0] > 4:
            raise torch.OutOfMemoryError("simulated")
        return real_step_functions(ours, hf, batch, *args)

    monkeypatch.setattr(bench, "step_functions", limited)
    args = bench.build_parser().parse_args(["--preset", "test-tiny", "--max_batch", "8", "--warmup", "0",
                                        "--mfu", "--peak_tflops", "0.001", "--without", "mlm_loss,dropout"])
    lines = bench.run_preset("test-tiny", args)
    assert tried[:2] == [8, 4]
    assert len(lines) == 4 and "batch 4" in lines[0] and "ratio" in lines[0]
    assert lines[1].startswith("test-tiny: ours without mlm_loss,dropout ") and "share of our step" in lines[1]
    assert lines[2].startswith("test-tiny: ours MFU") and lines[3].startswith("test-tiny: transformers MFU")
    losses = [float(x) for x in lines[0].split("eval loss ours ")[1].split(" transformers ")]
    assert losses[0] == pytest.approx(losses[1], abs=1e-4)  # same weights, same batch, same loss
    assert bench.build_parser().parse_args(["--without", "all"]).without == bench.KERNEL_NAMES
    with pytest.raises(SystemExit) as exit_info:  # argparse: one line, status 2
        bench.build_parser().parse_args(["--without", "linear,embedding"])
    assert exit_info.value.code == 2
