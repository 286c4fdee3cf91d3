"""The split-KV decode kernel and the fused sink merge against float64, and the torch versions the
backends use on CPU. On CUDA the kernels compile; without it they run under Triton's interpreter
(float32 dots there, since its numpy has no bfloat16), which is how CI checks them."""

import os

import pytest
import torch

from swaa_engine.attention import ops

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # read when triton_ops' kernels are defined
triton_ops = pytest.importorskip("swaa_engine.attention.triton_ops")
pytestmark = pytest.mark.triton

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def rel(out, ref):
    return ((out.double() - ref).norm() / ref.norm()).item()


def decode_reference(q, kflat, vflat, table, lens, page):
    """float64: each row's query against keys 0..len-1 found through its page table."""
    B, H, D = q.shape
    G = H // kflat.shape[1]
    out = torch.zeros(B, H, D, dtype=torch.float64)
    for b in range(B):
        n = int(lens[b])
        if n == 0:
            continue
        pos = torch.arange(n)
        slots = table[b].long().cpu()[pos // page] * page + pos % page
        k = kflat.cpu()[slots].double().repeat_interleave(G, 1)
        v = vflat.cpu()[slots].double().repeat_interleave(G, 1)
        s = torch.einsum("hd,khd->hk", q[b].cpu().double(), k) * D**-0.5
        out[b] = torch.einsum("hk,khd->hd", s.softmax(-1), v)
    return out


CASES = [  # (heads, kv heads, head dim, page size, pages per sequence, lengths)
    (8, 2, 32, 4, 12, (37, 1, 0, 48)),  # small pages spanning many key blocks; an empty (padded) row
    (4, 4, 16, 16, 5, (80, 79, 3)),  # no GQA
    (16, 2, 64, 21, 1, (21, 5)),  # a ring: one page of sinks + window slots, odd size
]


@pytest.mark.parametrize("h,hk,d,page,per_seq,lens", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_matches_float64(h, hk, d, page, per_seq, lens, dtype):
    torch.manual_seed(0)
    B = len(lens)
    units = B * per_seq + 3
    kflat = torch.randn(units * page, hk, d).to(dtype).to(DEV)
    vflat = torch.randn(units * page, hk, d).to(dtype).to(DEV)
    table = torch.randperm(units)[: B * per_seq].view(B, per_seq).int().to(DEV)
    lens_t = torch.tensor(lens, dtype=torch.int32, device=DEV)
    q = torch.randn(B, h, d).to(dtype).to(DEV)
    ref = decode_reference(q, kflat, vflat, table, lens_t, page)
    tol = 1e-5 if dtype is torch.float32 else 1e-2
    ws = triton_ops.DecodeWorkspace(B, h, d, 8, DEV)
    # splits past the keys of a short row are empty and must weigh nothing; a key tile longer than every row
    for splits, block_n in ((1, 16), (3, 16), (8, 16), (2, 128)):
        out = torch.full((B, h, d), float("nan"), dtype=dtype, device=DEV)
        triton_ops.decode_attention(q, kflat, vflat, table, lens_t, page, d**-0.5, splits, out, ws, block_n=block_n)
        assert rel(out.cpu(), ref) <= tol, (splits, block_n)
        assert torch.all(out[torch.tensor(lens) == 0] == 0)
    t = ops.DecodeTables(table, lens_t, page, max(lens), 1)
    assert rel(ops.decode_attention_torch(q, kflat, vflat, t, d**-0.5).cpu(), ref) <= tol


def test_decode_writes_rows_of_a_strided_output():
    """The backends hand the kernel the first rows of a step's [T, H, D] output."""
    torch.manual_seed(1)
    kflat, vflat = torch.randn(64, 2, 16, device=DEV), torch.randn(64, 2, 16, device=DEV)
    table = torch.arange(16, dtype=torch.int32, device=DEV).view(2, 8)
    lens = torch.tensor([30, 9], dtype=torch.int32, device=DEV)
    q = torch.randn(5, 4, 16, device=DEV)
    out = torch.zeros(5, 4, 16, device=DEV)
    ws = triton_ops.DecodeWorkspace(2, 4, 16, 2, DEV)
    triton_ops.decode_attention(q[:2], kflat, vflat, table, lens, 4, 0.25, 2, out[:2], ws, block_n=16)
    assert rel(out[:2].cpu(), decode_reference(q[:2], kflat, vflat, table, lens, 4)) <= 1e-5
    assert torch.all(out[2:] == 0)


def sink_reference(q, lse_w, o_w, kflat, vflat, slots, pos, window):
    """float64: softmax over (window keys, summarised by their LSE and output) ∪ sinks j <= pos - W."""
    n, H, D = q.shape
    G = H // kflat.shape[1]
    ks = kflat.cpu()[slots.cpu()].double().repeat_interleave(G, 1)
    vs = vflat.cpu()[slots.cpu()].double().repeat_interleave(G, 1)
    s = torch.einsum("nhd,khd->nhk", q.cpu().double(), ks) * D**-0.5
    visible = (torch.arange(len(slots))[None, :] <= (pos.cpu().long()[:, None] - window))[:, None, :]
    s = s.masked_fill(~visible, float("-inf"))
    lse_s = torch.logsumexp(s, -1)
    lse_w, o_w = lse_w.cpu().double(), o_w.cpu().double()
    total = torch.logaddexp(lse_w, lse_s)
    o_s = torch.einsum("nhk,khd->nhd", torch.exp(s - lse_s.nan_to_num(neginf=0)[..., None]).nan_to_num(), vs)
    return o_w * torch.exp(lse_w - total)[..., None] + o_s * torch.exp(lse_s - total)[..., None]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_sink_merge_matches_float64(dtype, impl):
    torch.manual_seed(2)
    n, H, Hk, D, W = 70, 8, 2, 32, 20
    kflat, vflat = torch.randn(50, Hk, D).to(dtype).to(DEV), torch.randn(50, Hk, D).to(dtype).to(DEV)
    slots = torch.tensor([7, 3, 9, 11, 0], device=DEV)
    pos = torch.arange(15, 15 + n, dtype=torch.int32, device=DEV)  # the first rows see only some sinks, or none
    q = torch.randn(n, H, D).to(dtype).to(DEV)
    lse_w = torch.randn(n, H, device=DEV) * 2 + 3
    o_w = torch.randn(n, H, D).to(dtype).to(DEV)
    ref = sink_reference(q, lse_w, o_w, kflat, vflat, slots, pos, W)
    out = o_w.clone()
    if impl == "triton":
        triton_ops.merge_sinks(q, out, lse_w, kflat, vflat, slots, pos, W, D**-0.5, block_m=16)
    else:
        ops.merge_sinks_torch(q, out, lse_w, kflat, vflat, slots, pos, W, D**-0.5)
    assert rel(out.cpu(), ref) <= (1e-5 if dtype is torch.float32 else 1e-2)
    unchanged = pos < W  # no sink lies outside the window yet
    assert torch.equal(out[unchanged.to(out.device)], o_w[unchanged.to(o_w.device)])


def test_split_count():
    assert triton_ops.num_splits_for(1, 8, 131072, 132) == 32  # one sequence: spread over the SMs
    assert triton_ops.num_splits_for(256, 8, 131072, 132) == 1  # the batch fills the card
    assert triton_ops.num_splits_for(1, 8, 100, 132) == 2  # never a split shorter than one key block
    assert triton_ops.block_n_for(131072, 6) == 128 and triton_ops.block_n_for(4096, 1) == 64
