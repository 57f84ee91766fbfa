"""pretraining.attention: the dispatch's layouts, its backends against the eager oracle, the varlen
offsets, and which path each device, precision and dropout gets."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F

import pretraining.attention as attention
from packing_helpers import REFERENCE_VARLEN
from pretraining.attention import AttentionDispatch, eager_attention, packed_cu_seqlens, same_sample

# Two packed rows of length 8: samples of 3, 4 (+1 padding) and 8 (one sample fills the row).
SAMPLE_IDS = torch.tensor([[1, 1, 1, 2, 2, 2, 2, 0],
                           [1, 1, 1, 1, 1, 1, 1, 1]])


def qkv(queries: int = 8, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 2, queries, 4, generator=gen)
    k, v = torch.randn(2, 2, 8, 4, generator=gen), torch.randn(2, 2, 8, 4, generator=gen)
    return q, k, v


def test_varlen_offsets_cover_every_token_with_fixed_shape():
    cu = packed_cu_seqlens(SAMPLE_IDS, samples_per_row=3)
    assert cu.dtype == torch.int32 and cu.shape == (2 * (3 + 1) + 1,)
    # row 0: samples 3, 4, an empty slot, 1 padding; row 1: 8, two empty slots, no padding
    assert cu.tolist() == [0, 3, 7, 7, 8, 16, 16, 16, 16]


def test_block_mask_confines_each_sample_and_padding_sees_only_padding():
    mask = same_sample(SAMPLE_IDS, SAMPLE_IDS)
    assert mask.shape == (2, 1, 8, 8)
    assert mask[0, 0, 2].tolist() == [True] * 3 + [False] * 5
    assert mask[0, 0, 3].tolist() == [False] * 3 + [True] * 4 + [False]
    assert mask[0, 0, 7].tolist() == [False] * 7 + [True]  # no fully masked row, so no NaN
    assert mask[1].all()


@pytest.mark.parametrize("kind", ["unpadded", "padded", "packed"])
def test_sdpa_dispatch_equals_the_eager_oracle(kind):
    q, k, v = qkv()
    mask = {"unpadded": None, "padded": torch.tensor([[1] * 5 + [0] * 3, [1] * 8]), "packed": SAMPLE_IDS}[kind]
    samples = 3 if kind == "packed" else None
    results = []
    for dispatch in (AttentionDispatch(), AttentionDispatch(masked=eager_attention)):
        results.append(dispatch(q, k, v, dispatch.layout(mask, samples), 0.0))
    torch.testing.assert_close(results[0], results[1], atol=1e-6, rtol=1e-5)
    assert torch.isfinite(results[0]).all()


def test_varlen_path_equals_the_masked_path_and_the_last_layer_rows_use_the_mask():
    q, k, v = qkv()
    varlen = AttentionDispatch(varlen=REFERENCE_VARLEN)
    layout = varlen.layout(SAMPLE_IDS, samples_per_row=3)
    assert layout.mask is None and layout.cu_seqlens is not None and layout.max_seqlen == 8
    masked = AttentionDispatch()
    expected = masked(q, k, v, masked.layout(SAMPLE_IDS, 3), 0.0)
    torch.testing.assert_close(varlen(q, k, v, layout, 0.0), expected, atol=1e-6, rtol=1e-5)
    query_index = torch.tensor([[0, 3, 5], [0, 2, 7]])  # [CLS] rows and two masked positions per row
    rows = varlen.for_queries(layout, query_index)
    assert rows.cu_seqlens is None and rows.mask.shape == (2, 1, 3, 8)
    rows_q = torch.gather(q, 2, query_index[:, None, :, None].expand(-1, 2, -1, 4))
    torch.testing.assert_close(varlen(rows_q, k, v, rows, 0.0),
                               torch.gather(expected, 2, query_index[:, None, :, None].expand(-1, 2, -1, 4)),
                               atol=1e-6, rtol=1e-5)


def test_varlen_is_skipped_for_dropout_it_cannot_do_and_dtypes_it_cannot_run():
    dispatch = AttentionDispatch(varlen=REFERENCE_VARLEN)  # no dropout, like torch's varlen_attn
    with_dropout = dispatch.layout(SAMPLE_IDS, 3, dropout_p=0.1)
    assert with_dropout.cu_seqlens is None and with_dropout.mask.shape == (2, 1, 8, 8)
    dropping = dataclasses.replace(REFERENCE_VARLEN, has_dropout=True)
    assert AttentionDispatch(varlen=dropping).layout(SAMPLE_IDS, 3, dropout_p=0.1).cu_seqlens is not None
    half_only = AttentionDispatch(varlen=dataclasses.replace(REFERENCE_VARLEN, dtypes=(torch.bfloat16,),
                                                             run=lambda *args: pytest.fail("varlen ran in fp32")))
    q, k, v = qkv()
    torch.testing.assert_close(half_only(q, k, v, half_only.layout(SAMPLE_IDS, 3), 0.0),
                               AttentionDispatch()(q, k, v, AttentionDispatch().layout(SAMPLE_IDS, 3), 0.0))


def test_each_device_gets_its_path_and_one_line_that_says_so(monkeypatch):
    cpu, line = attention.attention_for_device("cpu", "fp32", 0.1)
    assert cpu == AttentionDispatch() and "masked SDPA" in line
    assert attention.attention_for_device("hpu", "bf16", 0.1)[0].varlen is None
    assert "need bf16" in attention.attention_for_device("cuda", "fp32", 0.1)[1]
    monkeypatch.setattr(attention, "available_varlen_kernel", lambda: None)
    assert attention.attention_for_device("cuda", "bf16", 0.1)[0].varlen is None
    monkeypatch.setattr(attention, "available_varlen_kernel", lambda: REFERENCE_VARLEN)
    dispatch, line = attention.attention_for_device("cuda", "bf16", 0.1)
    assert dispatch.varlen is REFERENCE_VARLEN and dispatch.masked is F.scaled_dot_product_attention
    assert "no dropout" in line and "flash-attn" in line
    assert "no dropout" not in attention.attention_for_device("cuda", "bf16", 0.0)[1]


def test_the_installed_torch_offers_a_varlen_kernel_where_it_has_one():
    kernel = attention.available_varlen_kernel()
    try:
        import torch.nn.attention.varlen  # noqa: F401
    except ImportError:
        return
    assert kernel is not None and kernel.name.endswith("varlen_attn_func" if kernel.has_dropout else "varlen_attn")
