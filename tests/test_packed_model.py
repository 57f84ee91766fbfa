"""Packed batches in the model (issue 20 items 2-3): every sample gets the computation it would get
unpacked. CPU, fp32, dropout off; the packs are built from unpacked samples by a small test helper."""
import dataclasses

import pytest
import torch

from packing_helpers import REFERENCE_VARLEN, make_samples, packed_batch, unpacked_batch
from pretraining.attention import AttentionDispatch, eager_attention
from pretraining.bert_config import BertConfig
from pretraining.cpu_kernels import use_cpu_kernels
from pretraining.losses import valid_mlm_slots
from pretraining.modeling import BertForPreTraining

CONFIG = BertConfig(vocab_size=101, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=128, max_position_embeddings=64, hidden_dropout_prob=0.0,
                    attention_probs_dropout_prob=0.0)
SEQ_LEN, PREDICTIONS, K = 32, 4, 3
PACK_SLOTS = 10  # masked-LM slots of a packed row (P + K in the real format)
LENGTHS = [10, 12, 9, 30, 16, 15]
MASKED = [4, 3, 2, 4, 1, 3]
GROUPS = [[0, 1, 2], [3], [4, 5]]  # rows of 3, 1 and 2 samples, each with some padding
UNPACKED_ARGS = ("input_ids", "token_type_ids", "attention_mask", "masked_lm_positions")
LABELS = ("masked_lm_ids", "next_sentence_labels")
PACKED_KEYWORDS = ("position_ids", "next_sentence_positions", "next_sentence_weights")


def scrambled_model(kernels: str = "sdpa") -> BertForPreTraining:
    """Weights far from BERT's near-uniform init (so attention is not uniform and the tests bite)."""
    torch.manual_seed(0)
    model = BertForPreTraining(CONFIG)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            centre = 1.0 if name.endswith("LayerNorm.weight") else 0.0
            param.copy_(centre + torch.randn(param.shape, generator=gen) * 0.3)
    if kernels == "eager":
        model.kernels = dataclasses.replace(model.kernels, attention=AttentionDispatch(masked=eager_attention))
    elif kernels == "varlen stand-in":
        model.kernels = dataclasses.replace(model.kernels, attention=AttentionDispatch(varlen=REFERENCE_VARLEN))
    elif kernels == "cpu kernels":
        use_cpu_kernels(model, linear=True)  # every kernel, oneDNN's linear too, on any CPU
    return model


def batches():
    samples = make_samples(LENGTHS, MASKED, CONFIG.vocab_size)
    return unpacked_batch(samples, SEQ_LEN, PREDICTIONS), packed_batch(samples, GROUPS, SEQ_LEN, PACK_SLOTS, K)


def run(model, batch, labels: bool):
    args = [batch[name] for name in UNPACKED_ARGS + (LABELS if labels else ())]
    keywords = {name: batch[name] for name in PACKED_KEYWORDS if name in batch}
    return model(*args, **keywords)


def per_sample(mlm_logits, nsp_logits, batch):
    """MLM logits of every valid masked slot and NSP logits of every real sample, in sample order."""
    mlm = mlm_logits[valid_mlm_slots(batch["masked_lm_positions"])]
    if "next_sentence_weights" in batch:
        nsp_logits = nsp_logits[batch["next_sentence_weights"] == 1]
    return mlm, nsp_logits


@pytest.mark.parametrize("kernels", ["sdpa", "eager", "varlen stand-in", "cpu kernels"])
def test_packed_batch_gives_every_sample_its_unpacked_logits_losses_and_gradients(kernels):
    unpacked, packed = batches()
    model, twin = scrambled_model(kernels), scrambled_model(kernels)
    calls = []
    if kernels == "varlen stand-in":  # count the kernel's calls: the packed forward must really use it
        varlen = dataclasses.replace(REFERENCE_VARLEN, run=lambda *a: calls.append(1) or REFERENCE_VARLEN.run(*a))
        model.kernels = dataclasses.replace(model.kernels, attention=AttentionDispatch(varlen=varlen))
    mlm, nsp = per_sample(*run(model, packed, labels=False), packed)
    expected_mlm, expected_nsp = per_sample(*run(twin, unpacked, labels=False), unpacked)
    assert mlm.shape == (sum(MASKED), CONFIG.vocab_size) and nsp.shape == (len(LENGTHS), 2)
    torch.testing.assert_close(mlm, expected_mlm, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(nsp, expected_nsp, atol=1e-5, rtol=1e-5)
    assert expected_mlm.std() > 1.0  # the scrambled weights make the comparison meaningful

    model.zero_grad(), twin.zero_grad()
    losses, expected = run(model, packed, labels=True), run(twin, unpacked, labels=True)
    for got, want in zip(losses, expected, strict=True):  # (loss, mlm_loss, nsp_loss)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    losses[0].backward()
    expected[0].backward()
    for (name, param), twin_param in zip(model.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(param.grad, twin_param.grad, atol=1e-5, rtol=1e-5, msg=name)
    if kernels == "varlen stand-in":  # every layer but the last (which attends from a few rows only)
        assert len(calls) == 2 * (CONFIG.num_hidden_layers - 1)


def sample_outputs(model, batch):
    """(MLM logits, NSP logits) of each sample of the packed batch, as a list in sample order."""
    with torch.no_grad():
        mlm_logits, nsp_logits = run(model, batch, labels=False)
    outputs = []
    for row, members in enumerate(GROUPS):
        slot = 0
        for number, index in enumerate(members):
            count = MASKED[index]
            outputs.append((mlm_logits[row, slot:slot + count], nsp_logits[row, number]))
            slot += count
    return outputs


@pytest.mark.parametrize("kernels", ["sdpa", "varlen stand-in"])
def test_a_sample_cannot_see_the_other_samples_of_its_row(kernels):
    """Changing a token of sample 2 (middle of row 0) leaves samples 1 and 3 of that row untouched, and
    changing what sits in the padding changes nothing at all; sample 2's own outputs do move."""
    model = scrambled_model(kernels).eval()
    _, packed = batches()
    before = sample_outputs(model, packed)
    changed = {**packed, "input_ids": packed["input_ids"].clone()}
    changed["input_ids"][0, LENGTHS[0] + 5] += 1  # a token of sample 2 (row 0 holds samples 1, 2, 3)
    after = sample_outputs(model, changed)
    for index in (0, 2):
        torch.testing.assert_close(after[index][0], before[index][0], atol=1e-6, rtol=0)
        torch.testing.assert_close(after[index][1], before[index][1], atol=1e-6, rtol=0)
    assert (after[1][0] - before[1][0]).abs().max() > 1e-2  # sample 2 itself did see the change
    padded = {**packed, "input_ids": packed["input_ids"].clone(), "token_type_ids": packed["token_type_ids"].clone()}
    padded["input_ids"][packed["attention_mask"] == 0] = 7
    padded["token_type_ids"][packed["attention_mask"] == 0] = 1
    for (mlm, nsp), (mlm_before, nsp_before) in zip(sample_outputs(model, padded), before, strict=True):
        torch.testing.assert_close(mlm, mlm_before, atol=1e-6, rtol=0)
        torch.testing.assert_close(nsp, nsp_before, atol=1e-6, rtol=0)


def test_positions_restart_for_every_sample():
    """With positions 0..L-1 along the row (not restarting), the first sample of a row is unchanged but
    the later ones no longer match: the model reads the positions it is given."""
    model = scrambled_model().eval()
    _, packed = batches()
    before = sample_outputs(model, packed)
    running = {**packed, "position_ids": torch.arange(SEQ_LEN).expand(len(GROUPS), -1)}
    after = sample_outputs(model, running)
    torch.testing.assert_close(after[0][0], before[0][0])  # sample 1 of row 0 starts at 0 either way
    assert (after[1][0] - before[1][0]).abs().max() > 1e-2
    assert (after[2][1] - before[2][1]).abs().max() > 1e-3


def test_packed_batch_needs_its_packed_inputs():
    model = scrambled_model()
    _, packed = batches()
    args = [packed[name] for name in UNPACKED_ARGS + LABELS]
    with pytest.raises(ValueError, match="needs attention_mask .sample numbers., position_ids"):
        model(*args, next_sentence_positions=packed["next_sentence_positions"],
              next_sentence_weights=packed["next_sentence_weights"])
    with pytest.raises(ValueError, match="next_sentence_weights"):
        model(*args, position_ids=packed["position_ids"], next_sentence_positions=packed["next_sentence_positions"])


@pytest.mark.parametrize("case", ["unpadded", "padded", "packed"])
def test_training_call_compiles_to_one_graph(case):
    """torch.compile (graph mode) traces the training call in one graph, no break, for each batch kind."""
    model = scrambled_model().train()
    unpacked, packed = batches()
    batch = packed if case == "packed" else dict(unpacked)
    if case == "unpadded":
        batch["attention_mask"] = None  # the loader's word for "no padding"
    args = [batch[name] for name in UNPACKED_ARGS + LABELS]
    keywords = {name: batch[name] for name in PACKED_KEYWORDS if name in batch}
    explanation = torch._dynamo.explain(model)(*args, **keywords)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


class HostReads:
    """Counts the ops that copy a tensor's value to the host (.item(), bool(), .tolist(), nonzero):
    each is a host sync on an accelerator."""

    SYNCING = ("_local_scalar_dense", "nonzero", "equal")

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        reads = self.reads = []

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                if func.overloadpacket.__name__ in HostReads.SYNCING:
                    reads.append(func.overloadpacket.__name__)
                return func(*args, **(kwargs or {}))

        self.mode = Mode()


@pytest.mark.parametrize("case", ["all-ones mask", "padded", "packed", "packed, dropout on"])
def test_the_training_step_never_reads_a_tensor_on_the_host(case):
    """No host sync in forward or backward (default kernels, the accelerators' path): the model never
    inspects the mask or the lengths; whether a batch is padded is the caller's word."""
    config = dataclasses.replace(CONFIG, attention_probs_dropout_prob=0.1, hidden_dropout_prob=0.1) \
        if case.endswith("dropout on") else CONFIG
    torch.manual_seed(0)
    model = BertForPreTraining(config).train()
    unpacked, packed = batches()
    batch = packed if case.startswith("packed") else dict(unpacked)
    if case == "all-ones mask":
        batch["attention_mask"] = torch.ones_like(batch["attention_mask"])
    args = [batch[name] for name in UNPACKED_ARGS + LABELS]
    keywords = {name: batch[name] for name in PACKED_KEYWORDS if name in batch}
    counter = HostReads()
    with counter.mode:
        model(*args, **keywords)[0].backward()
    assert counter.reads == []
    assert model.bert.embeddings.word_embeddings.weight.grad is not None


@pytest.mark.cuda
def test_cuda_varlen_kernel_gives_the_masked_paths_logits_and_gradients():
    """On a GPU, in bf16: the packed batch through the real varlen kernel (attention_for_device) against
    the same batch through masked SDPA, forward and backward (relative error of bf16 kernels)."""
    from pretraining.attention import attention_for_device

    dispatch, line = attention_for_device("cuda", "bf16", 0.0)
    if dispatch.varlen is None:
        pytest.skip(line)
    calls = []
    counted = dataclasses.replace(dispatch.varlen, run=lambda *a: calls.append(1) or dispatch.varlen.run(*a))
    _, packed = batches()
    packed = {name: value.cuda() for name, value in packed.items()}
    results = []
    for attention in (AttentionDispatch(varlen=counted), AttentionDispatch()):
        model = scrambled_model().cuda()
        model.kernels = dataclasses.replace(model.kernels, attention=attention)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            mlm, nsp = per_sample(*run(model, packed, labels=False), packed)
            loss = run(model, packed, labels=True)[0]
        loss.backward()
        results.append([mlm.float(), nsp.float(), loss] + [p.grad for p in model.parameters()])
    assert len(calls) == 2 * (CONFIG.num_hidden_layers - 1)
    for got, want in zip(*results, strict=True):
        assert ((got - want).norm() / want.norm().clamp(min=1e-6)).item() < 3e-2
