"""Incremental detokenization and stop-string matching for one request.

Text is emitted only once it is final: never a broken UTF-8 sequence (the tokenizer shows those
as U+FFFD until the rest of the bytes arrive), and never the start of what may become a stop
string. A matched stop string ends the request and is not part of the text.
"""

from __future__ import annotations

REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    # Decoding a few tokens of context before the new ones keeps word-initial spaces right.
    CONTEXT = 5

    def __init__(self, tokenizer, prompt_ids: list[int], stop: tuple[str, ...] = ()):
        self.tokenizer = tokenizer
        self.ids = list(prompt_ids[-self.CONTEXT :])
        self.prefix_offset = 0
        self.read_offset = len(self.ids)
        self.text = ""  # all final text so far
        self.emitted = 0  # characters of self.text already handed out
        self.stop = stop
        self.max_stop = max((len(s) for s in stop), default=0)
        self.matched_stop: str | None = None

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def add(self, token_id: int) -> None:
        if self.matched_stop is not None:
            return
        self.ids.append(token_id)
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        full = self._decode(self.ids[self.prefix_offset :])
        if len(full) > len(prefix) and not full.endswith(REPLACEMENT):
            start = len(self.text)
            self.text += full[len(prefix) :]
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            self._find_stop(start)

    def _find_stop(self, new_from: int) -> None:
        if not self.stop:
            return
        lo = max(0, new_from - self.max_stop + 1)
        best = None
        for s in self.stop:
            i = self.text.find(s, lo)
            if i != -1 and (best is None or i < best[0]):
                best = (i, s)
        if best is not None:
            self.text = self.text[: best[0]]
            self.matched_stop = best[1]

    def flush(self) -> str:
        """New text that is safe to hand out now."""
        end = len(self.text)
        if self.matched_stop is None and self.max_stop:
            end -= self._held_back()
        end = max(end, self.emitted)
        delta = self.text[self.emitted : end]
        self.emitted = end
        return delta

    def finish(self) -> str:
        """The request ended: everything left is final."""
        delta = self.text[self.emitted :]
        self.emitted = len(self.text)
        return delta

    def _held_back(self) -> int:
        """Length of the longest tail of the text that a stop string could still start with."""
        tail = self.text[-(self.max_stop - 1) :] if self.max_stop > 1 else ""
        for n in range(len(tail), 0, -1):
            piece = tail[-n:]
            if any(s.startswith(piece) for s in self.stop):
                return n
        return 0
