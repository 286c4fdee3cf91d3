"""Structured output's token masks (issue 21): the parallel fill into reused buffers gives exactly the masks of the
former path (a fresh bitmask, rows filled one by one), rows without a matcher untouched, across steps whose row
counts change; length-bounded strings rewritten so their masks are settled at compile time, with the same masks as
xgrammar's own form. A tiny raw vocabulary keeps it fast (the grammar states are the real ones of a JSON Schema)."""

from __future__ import annotations

import json
import random

import pytest
import torch

xgr = pytest.importorskip("xgrammar")

from swaa_engine.config import EngineConfig  # noqa: E402
from swaa_engine.errors import ConfigError  # noqa: E402
from swaa_engine.structured import (  # noqa: E402
    _JSON_STRING_CHAR, _LOOSE_STRING_CHAR, TokenMasker, default_fill_threads, json_schema_grammar, mask_logits)

SCHEMA = {"type": "array", "minItems": 2,
          "items": {"type": "object", "additionalProperties": False, "required": ["id", "name", "ok"],
                    "properties": {"id": {"type": "integer"}, "name": {"type": "string", "maxLength": 8},
                                   "ok": {"type": "boolean"}}}}
DOC = '[{"id": 12, "name": "ab cd", "ok": true}, {"id": 7, "name": "", "ok": false}]'
EOS = 0
# EOS, single characters, and a few longer pieces (tokens that span several grammar positions); a width that is not a
# multiple of 32 so the last bitmask word is partial
VOCAB = ["</s>"] + [chr(c) for c in range(32, 127)] + ['{"', '": ', ', "', "name", "true", "false", "ab", '"}',
                                                        "abcdefghij", " cd", "}, {", "12"]
VOCAB += [f"w{i}" for i in range(300 - len(VOCAB))]


@pytest.fixture(scope="module")
def grammar():
    info = xgr.TokenizerInfo(VOCAB, vocab_size=len(VOCAB), stop_token_ids=[EOS])
    return xgr.GrammarCompiler(info).compile_grammar(json_schema_grammar(json.dumps(SCHEMA)))


def matchers_at(grammar, prefixes: list[int]) -> list:
    """Matchers fed the first ``k`` characters of DOC (one token a character); -1: the whole of it (only EOS left)."""
    out = []
    for k in prefixes:
        m = xgr.GrammarMatcher(grammar)
        for ch in DOC if k < 0 else DOC[:k]:
            assert m.accept_token(VOCAB.index(ch)), (k, ch)
        out.append(m)
    return out


def serial(logits: torch.Tensor, rows: list[int], matchers: list) -> torch.Tensor:
    """The former path: a fresh bitmask, the rows filled one by one, applied with indices=rows."""
    out = logits.clone()
    bitmask = xgr.allocate_token_bitmask(*out.shape)
    for i, m in zip(rows, matchers):
        m.fill_next_token_bitmask(bitmask, i)
    xgr.apply_token_bitmask_inplace(out, bitmask, vocab_size=out.shape[1], indices=rows)
    return out


def test_parallel_fill_equals_the_serial_masks_bit_for_bit(grammar):
    # states: start, inside a key, inside a bounded string (empty, partial), a number, between records, complete
    prefixes = [0, 3, 23, 25, 8, 40, 62, -1, 1, 44]
    rows = [0, 2, 3, 5, 6, 7, 9, 10, 12, 13]  # rows 1, 4, 8, 11 and 14 have no matcher
    ms = matchers_at(grammar, prefixes)
    logits = torch.randn(15, len(VOCAB), generator=torch.Generator().manual_seed(0))
    want = serial(logits, rows, ms)
    masker = TokenMasker(threads=2)
    got = logits.clone()
    masker.apply(got, rows, ms)
    assert torch.equal(got, want)
    free = [i for i in range(15) if i not in rows]
    assert torch.equal(got[free], logits[free])  # untouched, not merely all-allowed
    # the bitmask words themselves, against each row filled alone into a fresh one
    host = masker.fill(rows, ms, 15, len(VOCAB), logits.device)
    for i, m in zip(rows, ms):
        fresh = xgr.allocate_token_bitmask(1, len(VOCAB))
        m.fill_next_token_bitmask(fresh, 0)
        assert torch.equal(host[i], fresh[0]), i
    # the complete matcher allows EOS alone; the others refuse it
    assert torch.isfinite(got[10]).nonzero().flatten().tolist() == [EOS]
    assert all(got[i, EOS] == float("-inf") for i in (0, 2, 3, 5, 6, 7, 9, 12, 13))


def test_buffer_reused_across_steps_with_changing_row_counts(grammar):
    rng = random.Random(1)
    masker = TokenMasker(threads=2)
    first, made = None, 0
    for n in (6, 11, 3, 11, 1, 16, 4):
        rows = sorted(rng.sample(range(n), rng.randint(1, n)))
        ms = matchers_at(grammar, [rng.choice([0, 3, 23, 25, 8, 40, 62, -1]) for _ in rows])
        logits = torch.randn(n, len(VOCAB), generator=torch.Generator().manual_seed(n))
        want = serial(logits, rows, ms)
        got = logits.clone()
        mask_logits(got, rows, ms, masker)
        assert torch.equal(got, want), (n, rows)
        buf = masker._host[0]
        assert buf.shape[0] >= n
        if first is not None and n <= first.shape[0]:
            assert buf is first  # reused, not reallocated
        elif buf is not first:
            first, made = buf, made + 1  # grown (at least doubled), then reused
    assert made == 3  # 6 rows, then 11 (-> 12), then 16 (-> 24)


def test_stale_buffer_contents_never_leak(grammar):
    """A row filled over another state's bits (here: everything refused) equals a fresh fill."""
    ms = matchers_at(grammar, [23, 0, -1])
    masker = TokenMasker(threads=2)
    host = masker.fill([0, 1, 2], ms, 3, len(VOCAB), torch.device("cpu"))
    host.zero_()
    logits = torch.zeros(3, len(VOCAB))
    masker.apply(logits, [0, 1, 2], ms)
    assert torch.equal(logits, serial(torch.zeros(3, len(VOCAB)), [0, 1, 2], ms))


def test_fill_threads_setting():
    assert 1 <= default_fill_threads() <= 8
    with pytest.raises(ConfigError, match="grammar_threads"):
        EngineConfig(grammar_threads=0)
    with pytest.raises(ValueError, match="threads"):
        TokenMasker(0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (pinned double buffers, asynchronous copy)")
def test_cuda_masks_equal_the_serial_ones_across_steps(grammar):
    rng = random.Random(2)
    masker = TokenMasker(threads=4)
    for step, n in enumerate((8, 8, 3, 20, 20, 5)):
        rows = sorted(rng.sample(range(n), rng.randint(1, n)))
        ms = matchers_at(grammar, [rng.choice([0, 3, 23, 25, 8, 40, 62, -1]) for _ in rows])
        logits = torch.randn(n, len(VOCAB), generator=torch.Generator().manual_seed(step))
        want = serial(logits, rows, ms)
        got = logits.cuda()
        masker.apply(got, rows, ms)
        assert torch.equal(got.cpu(), want), (step, n)


BOUNDED = [
    {"type": "object", "required": ["a", "b"], "additionalProperties": False,
     "properties": {"a": {"type": "string", "maxLength": 8}, "b": {"type": "string", "minLength": 2, "maxLength": 5}}},
    {"type": "array", "items": {"type": "string", "maxLength": 3}, "maxItems": 3},
    {"type": "object", "required": ["z"], "properties": {"z": {"type": "string", "minLength": 3, "maxLength": 3}}},
]


def test_bounded_strings_are_rewritten_with_their_closing_quote():
    """xgrammar's ``"\\"" C{0, 8} "\\""`` leaves the quote outside the repetition (masks checked token by token at
    run time, 4-27 ms a row near the bound at a 152k vocabulary); the tail rules hold it."""
    ebnf = json_schema_grammar(json.dumps(BOUNDED[0]))
    assert "{0, 8}" not in ebnf and "{2, 5}" not in ebnf
    assert '_tail_0 ::= (("\\""))' in ebnf
    long = dict(BOUNDED[0], properties={"a": {"type": "string", "maxLength": 100000}})
    assert "{0, 100000}" in json_schema_grammar(json.dumps(long))  # above the cap: as xgrammar wrote it


@pytest.mark.parametrize("schema", BOUNDED)
def test_rewritten_bounded_strings_give_xgrammars_masks(schema):
    info = xgr.TokenizerInfo(VOCAB, vocab_size=len(VOCAB), stop_token_ids=[EOS])
    compiler = xgr.GrammarCompiler(info, cache_enabled=False)
    theirs = str(xgr.Grammar.from_json_schema(json.dumps(schema), any_whitespace=False))
    theirs = theirs.replace(_LOOSE_STRING_CHAR, _JSON_STRING_CHAR)
    ours = json_schema_grammar(json.dumps(schema))
    assert ours != theirs
    a, b = (xgr.GrammarMatcher(compiler.compile_grammar(g)) for g in (theirs, ours))
    gen = torch.Generator().manual_seed(3)
    ma, mb = xgr.allocate_token_bitmask(1, len(VOCAB)), xgr.allocate_token_bitmask(1, len(VOCAB))
    for step in range(300):  # random walks through the strings, to their bounds, and past the ends (reset)
        a.fill_next_token_bitmask(ma)
        b.fill_next_token_bitmask(mb)
        logits, other = torch.zeros(1, len(VOCAB)), torch.zeros(1, len(VOCAB))
        xgr.apply_token_bitmask_inplace(logits, ma)
        xgr.apply_token_bitmask_inplace(other, mb)  # the vocabulary's bits (the padding past it may differ)
        assert torch.equal(logits, other), step
        t = int(torch.multinomial(torch.isfinite(logits).float(), 1, generator=gen))
        assert a.accept_token(t) and b.accept_token(t)
        if a.is_terminated():
            assert b.is_terminated()
            a.reset(), b.reset()
    # the bounds themselves: 8 characters fit "a", 9 do not; "b" needs 2 to 5
    for text, ok in (('{"a": "abcdefgh", "b": "ab"}', True), ('{"a": "abcdefghi", "b": "ab"}', False),
                     ('{"a": "", "b": "a"}', False), ('{"a": "", "b": "abcde"}', True),
                     ('{"a": "", "b": "abcdef"}', False)):
        if schema is BOUNDED[0]:
            m = xgr.GrammarMatcher(compiler.compile_grammar(ours))
            fits = all(m.accept_token(VOCAB.index(ch)) for ch in text) and m.accept_token(EOS)
            assert fits == ok, text
