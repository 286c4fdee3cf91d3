"""Incremental detokenization and stop-string matching for one request.

Text is emitted only once it is final: never a broken UTF-8 sequence (the tokenizer shows those
as U+FFFD until the rest of the bytes arrive), and never the start of what may become a stop
string. A matched stop string ends the request and is not part of the text.

Fast tokenizers decode through ``tokenizers``' own ``DecodeStream`` (one incremental step per token); others
decode the last few tokens twice per token (with and without the new one).
"""

from __future__ import annotations

from tokenizers.decoders import DecodeStream

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
        self._backend = getattr(tokenizer, "backend_tokenizer", None)
        # prompt tokens as context, as above; skip_special_tokens as in _decode (no clean-up either way)
        self._stream = DecodeStream(ids=list(self.ids), skip_special_tokens=True) if self._backend is not None else None

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def add(self, token_id: int) -> None:
        if self.matched_stop is not None:
            return
        if self._stream is not None:
            piece = self._stream.step(self._backend, token_id)  # None until the bytes form whole characters
            if piece:
                start = len(self.text)
                self.text += piece
                self._find_stop(start)
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
        held = 0
        for s in self.stop:
            # only where the stop's first character occurs can a prefix of it start (usually nowhere: one find)
            i = tail.find(s[0])
            while i != -1 and len(tail) - i > held:
                if s.startswith(tail[i:]):
                    held = len(tail) - i
                    break
                i = tail.find(s[0], i + 1)
        return held
