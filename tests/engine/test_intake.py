"""Request intake bounds (torch-free): request ids, cheap prompt bounds, chunked token counting."""

import pytest

from swaa_engine.intake import PromptBounds, check_request_id, count_tokens_upto
from swaa_engine.sampling_params import InvalidRequestError


def words(text: str) -> list[str]:  # a stand-in tokenizer: one token per whitespace-separated word
    return text.split()


def test_request_ids():
    check_request_id(None)
    check_request_id("a" * 256)
    check_request_id("réq-1 ✓")
    for bad in ("", "a" * 257, "a\nb", "a\x00", "\t"):
        with pytest.raises(InvalidRequestError) as e:
            check_request_id(bad)
        assert e.value.field == "request_id" and (not bad or bad not in e.value.description)  # never echoed


def test_cheap_bounds_refuse_without_looking_at_content():
    b = PromptBounds(max_prompt_tokens=100, max_chars_per_token=10)
    assert b.max_chars == 1000 and b.max_request_bytes == 4 * 1000 + 24 * 100 + (64 << 10)
    b.check("x" * 1000)
    b.check([1] * 100)
    b.check([{"role": "user", "content": "x" * 990}])
    for prompt in ("x" * 1001, [1] * 101, [{"role": "user", "content": ""}] * 101,
                   [{"role": "u" * 500, "content": "x" * 501}]):  # roles count: templates write them out
        with pytest.raises(InvalidRequestError) as e:
            b.check(prompt)
        assert e.value.field == "prompt"
    with pytest.raises(InvalidRequestError) as e:
        b.check_request_bytes(b.max_request_bytes + 1)
    assert e.value.field == "request"


def test_counting_stops_early_and_matches_the_whole_text():
    text = " ".join(f"w{i}" for i in range(50_000))
    calls = []

    def encode(s):
        calls.append(len(s))
        return words(s)

    assert count_tokens_upto(words, text, cutoff=10**9, chunk_chars=4096) == 50_000  # cuts fall between words
    n = count_tokens_upto(encode, text, cutoff=1000, chunk_chars=4096)
    assert 1000 < n < 1000 + 4096 and sum(calls) < 3 * 4096  # stopped after the cutoff, far short of the text
    b = PromptBounds(max_prompt_tokens=1000, max_chars_per_token=100)
    with pytest.raises(InvalidRequestError, match="more than"):
        b.count(words, text)
    b.count(words, " ".join(["w"] * 1100))  # over the limit but not clearly: left to the exact count
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        PromptBounds(0, 1)
