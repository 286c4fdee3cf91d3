"""Shared-prefix (cascade) decode on the torch path: the same attention as each row reading all its keys."""

import random

import pytest
import torch

from swaa_engine.attention import ops

PAGE = 4


def _tables(rng, specs, num_blocks):
    """``specs``: (shared prefix id or None, prefix pages, length) per row; rows of one prefix id share its pages."""
    free = list(range(1, num_blocks))
    rng.shuffle(free)
    prefixes, tables = {}, []
    for pid, pages, n in specs:
        t = []
        if pid is not None:
            t = list(prefixes.setdefault(pid, [free.pop() for _ in range(pages)]))[:pages]
        while len(t) * PAGE < n:
            t.append(free.pop())
        tables.append(t)
    return tables


def _case(specs, H=8, Hk=2, D=16, seed=0):
    rng = random.Random(seed)
    torch.manual_seed(seed)
    tables = _tables(rng, specs, 200)
    lens = [n for _, _, n in specs]
    kflat = torch.randn(200 * PAGE, Hk, D)
    vflat = torch.randn(200 * PAGE, Hk, D)
    q = torch.randn(len(specs), H, D)
    plain = ops.DecodeTables(ops.block_tables(tables), torch.tensor(lens, dtype=torch.int32), PAGE, max(lens))
    cascade = ops.plan_cascade(tables, lens, PAGE)
    return q, kflat, vflat, plain, cascade, tables, lens


def _reference(q, kflat, vflat, tables, lens, scale):
    """float64, row by row, every key of the row."""
    out = []
    for i, (t, n) in enumerate(zip(tables, lens)):
        slots = torch.tensor([t[p // PAGE] * PAGE + p % PAGE for p in range(n)])
        k, v = kflat[slots].double(), vflat[slots].double()  # [n, Hk, D]
        G = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(G, dim=1), v.repeat_interleave(G, dim=1)
        s = torch.einsum("hd,nhd->hn", q[i].double(), k) * scale
        out.append(torch.einsum("hn,nhd->hd", s.softmax(-1), v))
    return torch.stack(out)


CASES = {
    # n samples: 8 rows, 5 shared pages, each row its own last pages, lengths differ
    "samples": [("a", 5, 22 + i) for i in range(8)],
    # two groups of different prefix lengths, one row sharing nothing, one row alone behind its prefix
    "mixed": [("a", 6, 30), ("a", 6, 25), ("a", 6, 24), ("b", 3, 13), ("b", 3, 40), (None, 0, 17), ("c", 4, 19)],
    # a shared prefix that ends exactly where a row's keys end (empty suffix)
    "empty_suffix": [("a", 4, 16), ("a", 4, 21), ("a", 4, 16)],
    # a group whose rows share only part of a bucket's pages: common prefix capped at the shortest row's full pages
    "short_row": [("a", 6, 9), ("a", 6, 30), ("a", 6, 26)],
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("heads", [(8, 2), (4, 4)])
def test_cascade_matches_plain_decode(name, heads):
    H, Hk = heads
    q, kflat, vflat, plain, cascade, tables, lens = _case(CASES[name], H=H, Hk=Hk)
    assert cascade is not None
    scale = 0.25
    with_cascade = ops.DecodeTables(plain.table, plain.lens, PAGE, plain.max_len, cascade=cascade)
    a = ops.decode_attention_torch(q, kflat, vflat, plain, scale)
    b = ops.decode_attention_torch(q, kflat, vflat, with_cascade, scale)
    torch.testing.assert_close(b, a, rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(b.double(), _reference(q, kflat, vflat, tables, lens, scale), rtol=1e-5, atol=1e-5)


def test_plan_groups_rows_by_shared_pages():
    _, _, _, _, c, tables, lens = _case(CASES["mixed"])
    by_rows = {tuple(g.rows.tolist()): g.blocks.tolist() for g in c.groups}
    assert by_rows == {(0, 1, 2): tables[0][:6], (3, 4): tables[3][:3]}
    assert c.grouped.tolist() == [0, 1, 2, 3, 4]
    assert c.rest.tolist() == [5, 6]  # no prefix; a prefix of its own (a group of one)
    assert c.suffix.lens.tolist() == [30 - 24, 25 - 24, 0, 13 - 12, 40 - 12]
    _, _, _, _, c, tables, _ = _case(CASES["short_row"])
    assert [g.blocks.tolist() for g in c.groups] == [tables[0][:2]]  # row 0 has 2 full pages (9 keys, page 4)


def test_plan_none_without_shared_prefix():
    _, _, _, _, c, _, _ = _case([(None, 0, 30), (None, 0, 12), ("a", 4, 20)])
    assert c is None
    # one shared page is below CASCADE_MIN_BLOCKS
    _, _, _, _, c, _, _ = _case([("a", 1, 30), ("a", 1, 20)])
    assert c is None
