"""Task samples, built deterministically from (seed, length, index) in token space.

- passkey: a 5-digit number stated once at some depth of a long excerpt, asked for at the end;
- multikey: six "code for X is N" facts scattered through the excerpt, one asked for;
- lm: the last LM_TOKENS tokens of an excerpt scored given everything before them.
Scoring is by rule: the first integer of the answer must equal the number; loss is mean NLL.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

LM_TOKENS = 128
ANSWER_TOKENS = 10
DEPTHS = (0.1, 0.3, 0.5, 0.7, 0.9)
NAMES = ("the red gate", "the old mill", "the north tower", "the silver chest", "the chapel door", "the east bridge",
         "the kitchen safe", "the iron cage", "the garden shed", "the wine cellar")


@dataclass(frozen=True)
class Sample:
    task: str
    length: int
    index: int
    prompt_ids: tuple[int, ...]
    answer: str  # expected number (retrieval) or "" (lm)
    num_prompt: int  # lm: tokens before the scored ones
    depth: float | None = None


class Haystack:
    """Token ids of the eval plays, concatenated; excerpts are cut from random offsets.

    ``start``: what the tokenizer puts before any text (``<bos>`` for Gemma, nothing for SmolLM2); every
    prompt begins with it, as a prompt the tokenizer encodes would (Gemma without its BOS is garbage)."""

    def __init__(self, tokenizer, texts: list[tuple[str, str]]):
        self.tok = tokenizer
        self.start: list[int] = list(tokenizer.encode("", add_special_tokens=True))
        self.ids: list[int] = []
        for _, text in texts:
            self.ids += tokenizer.encode(text, add_special_tokens=False)

    def excerpt(self, rng: random.Random, n: int) -> list[int]:
        if n > len(self.ids):
            raise ValueError(f"need {n} tokens of text, have {len(self.ids)}")
        start = rng.randrange(0, len(self.ids) - n)
        return self.ids[start : start + n]

    def enc(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False)


def _rng(seed: int, task: str, length: int, index: int) -> random.Random:
    return random.Random(f"{seed}/{task}/{length}/{index}")


def passkey(h: Haystack, seed: int, length: int, index: int) -> Sample:
    rng = _rng(seed, "passkey", length, index)
    key = str(rng.randrange(10_000, 100_000))
    depth = DEPTHS[index % len(DEPTHS)]
    head = h.start + h.enc("There is a secret passkey hidden inside the following text. Find it and remember it.\n\n")
    needle = h.enc(f"\nThe secret passkey is {key}. Remember it: {key} is the passkey.\n")
    tail = h.enc("\n\nWhat is the secret passkey? Answer: The secret passkey is")
    body = h.excerpt(rng, length - len(head) - len(needle) - len(tail))
    at = int(depth * len(body))
    ids = head + body[:at] + needle + body[at:] + tail
    return Sample("passkey", length, index, tuple(ids), key, len(ids), depth)


def multikey(h: Haystack, seed: int, length: int, index: int, n_facts: int = 6) -> Sample:
    rng = _rng(seed, "multikey", length, index)
    names = rng.sample(NAMES, n_facts)
    codes = [str(rng.randrange(1000, 10_000)) for _ in names]
    asked = index % n_facts
    head = h.start + h.enc("The following text hides several codes. Remember every one of them.\n\n")
    facts = [h.enc(f"\nThe code for {n} is {c}.\n") for n, c in zip(names, codes)]
    tail = h.enc(f"\n\nWhat is the code for {names[asked]}? Answer: The code for {names[asked]} is")
    body = h.excerpt(rng, length - len(head) - sum(map(len, facts)) - len(tail))
    cuts = sorted(rng.sample(range(len(body)), n_facts))
    ids, prev = list(head), 0
    for cut, fact in zip(cuts, facts):
        ids += body[prev:cut] + fact
        prev = cut
    ids += body[prev:] + tail
    return Sample("multikey", length, index, tuple(ids), codes[asked], len(ids), cuts[asked] / len(body))


def lm(h: Haystack, seed: int, length: int, index: int) -> Sample:
    rng = _rng(seed, "lm", length, index)
    ids = h.start + h.excerpt(rng, length - len(h.start))
    return Sample("lm", length, index, tuple(ids), "", length - LM_TOKENS)


TASKS = {"passkey": passkey, "multikey": multikey, "lm": lm}


def first_number(text: str) -> str | None:
    m = re.search(r"\d+", text)
    return m.group(0) if m else None


def save_samples(path: str, samples: list[Sample], meta: dict) -> None:
    """Samples as gzipped JSON lines (a ``meta`` line first): a GPU host without the texts or a tokenizer
    library runs exactly these prompts (``EvalConfig.prompts``)."""
    import gzip
    import json
    from dataclasses import asdict

    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(json.dumps({"meta": meta}) + "\n")
        for s in samples:
            f.write(json.dumps(asdict(s)) + "\n")


def load_samples(path: str) -> tuple[dict, dict[tuple[str, int, int], Sample]]:
    """(meta, {(task, length, index): sample}) from :func:`save_samples`' file."""
    import gzip
    import json

    meta, out = {}, {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            if "meta" in d:
                meta = d["meta"]
                continue
            s = Sample(**{**d, "prompt_ids": tuple(d["prompt_ids"])})
            out[(s.task, s.length, s.index)] = s
    return meta, out
