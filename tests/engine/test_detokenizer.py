import pytest

from swaa_engine.detokenizer import IncrementalDetokenizer


@pytest.fixture(scope="module")
def tok(smollm2):
    return smollm2[1]


def stream(tok, ids, stop=()):
    d = IncrementalDetokenizer(tok, [], stop)
    pieces = []
    for t in ids:
        d.add(t)
        pieces.append(d.flush())
        if d.matched_stop:
            break
    pieces.append(d.finish())
    return pieces, d


def test_never_emits_broken_utf8(tok):
    text = "Paris — café, naïve 東京 🎉🚀 done"
    ids = tok.encode(text)
    assert any("\ufffd" in tok.decode([t]) for t in ids)  # some tokens are partial characters
    pieces, _ = stream(tok, ids)
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == tok.decode(ids)


def test_stop_string_across_token_boundaries(tok):
    text = "The answer is forty-two. END OF STORY and more text"
    ids = tok.encode(text)
    pieces, d = stream(tok, ids, stop=("OF STO",))
    assert d.matched_stop == "OF STO"
    assert "".join(pieces) == "The answer is forty-two. END "
    # nothing that could start a stop string was emitted before the match decided it
    assert all("OF" not in p for p in pieces)


def test_earliest_stop_wins(tok):
    ids = tok.encode("alpha beta gamma delta")
    pieces, d = stream(tok, ids, stop=("delta", "beta"))
    assert d.matched_stop == "beta" and "".join(pieces) == "alpha "
