"""What a request may cost before it is refused: request-id rules, cheap prompt bounds, bounded token counting.

A prompt over the context limit must be refused for about what it costs to receive it, not after tokenizing
megabytes of it. ``PromptBounds`` refuses in O(1) (characters, messages, token ids) whatever cannot fit:
no token stands for more than ``max_chars_per_token`` characters, so a text of more than that many characters
per allowed token cannot fit. What passes is counted chunk by chunk (``count_tokens_upto``), stopping as soon
as the count is clearly over, so tokenization time and memory stay proportional to the context limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from swaa_engine.sampling_params import InvalidRequestError

MAX_REQUEST_ID_LEN = 256
# Room in a serialized request for everything but the prompt: sampling (16 stop strings of 256 characters,
# 64 stop token ids), the request id, field tags. Well under this in any valid request.
REQUEST_OVERHEAD_BYTES = 64 << 10


def request_id_problem(request_id: str) -> str | None:
    """Why ``request_id`` is not acceptable (it goes into logs and metrics labels), or None."""
    if not isinstance(request_id, str) or not request_id:
        return "must be a non-empty string"
    if len(request_id) > MAX_REQUEST_ID_LEN:
        return f"must have at most {MAX_REQUEST_ID_LEN} characters, got {len(request_id)}"
    if not request_id.isprintable():
        return "must contain printable characters only (no control characters or line breaks)"
    return None


def check_request_id(request_id: str | None) -> None:
    """None (the server generates one) or 1..256 printable characters; the error never echoes the id."""
    if request_id is None:
        return
    problem = request_id_problem(request_id)
    if problem:
        raise InvalidRequestError("request_id", problem)


@dataclass(frozen=True)
class PromptBounds:
    """Upper bounds a prompt must meet before it is tokenized, for one model and context limit."""

    max_prompt_tokens: int  # max_model_len - 1: at least one token must be generated
    max_chars_per_token: int  # the most characters any single token stands for (vocabulary and added tokens)

    def __post_init__(self):
        if self.max_prompt_tokens < 1:
            raise ValueError(f"max_prompt_tokens: must be >= 1, got {self.max_prompt_tokens}")
        if self.max_chars_per_token < 1:
            raise ValueError(f"max_chars_per_token: must be >= 1, got {self.max_chars_per_token}")

    @classmethod
    def for_tokenizer(cls, tokenizer, max_model_len: int) -> "PromptBounds":
        """The longest vocabulary string bounds what one token covers: byte-level entries hold one character
        per byte (so at least as many as the text characters they encode), SentencePiece entries spell their
        text (with "▁" for the space), byte-fallback entries like "<0xE2>" are longer than the byte."""
        longest = 1
        if tokenizer is not None:
            longest = max([longest, *map(len, tokenizer.get_vocab()),
                           *(len(t.content) for t in getattr(tokenizer, "added_tokens_decoder", {}).values())])
        return cls(max(1, max_model_len - 1), longest)

    @property
    def max_chars(self) -> int:
        return self.max_chars_per_token * self.max_prompt_tokens

    @property
    def max_request_bytes(self) -> int:
        """The largest serialized request that can carry a prompt within these bounds: max_chars characters of
        UTF-8 (<= 4 bytes each), up to 24 bytes of framing per message or token id, and the other fields. A larger
        request is refused before it is parsed."""
        return 4 * self.max_chars + 24 * self.max_prompt_tokens + REQUEST_OVERHEAD_BYTES

    def check_request_bytes(self, size: int) -> None:
        """Names the whole "request": which field made it this large is not known before parsing it."""
        if size > self.max_request_bytes:
            raise InvalidRequestError("request", f"{size} bytes; no valid request for this model needs more than "
                                                 f"{self.max_request_bytes} (a prompt of at most {self.max_prompt_tokens} tokens, "
                                                 f"a request_id of at most {MAX_REQUEST_ID_LEN} characters)")

    @property
    def count_cutoff(self) -> int:
        """``count_tokens_upto`` stops past this: far enough over the limit that chunk boundaries (a few tokens
        each) cannot account for it, so the exact count is never needed to refuse."""
        return self.max_prompt_tokens + self.max_prompt_tokens // 4 + 64

    @property
    def chunk_chars(self) -> int:
        """Characters tokenized per step while counting: enough to amortize the call, small enough that one
        step's memory (at worst ~4 tokens per character) stays modest."""
        return min(max(self.max_prompt_tokens, 4096), 32768)

    def _over(self, what: str) -> InvalidRequestError:
        # "prompt", as for a prompt found too long after tokenizing: one field for "over the context limit"
        return InvalidRequestError("prompt", f"{what} cannot fit the limit of {self.max_prompt_tokens} prompt tokens")

    def check_token_ids(self, count: int) -> None:
        if count > self.max_prompt_tokens:
            raise self._over(f"{count} tokens")

    def check_text(self, chars: int) -> None:
        if chars > self.max_chars:
            raise self._over(f"{chars} characters (a token covers at most {self.max_chars_per_token})")

    def check_message_count(self, count: int) -> None:
        if count > self.max_prompt_tokens:  # every message renders to at least one token
            raise self._over(f"{count} messages")

    def check_content_chars(self, chars: int) -> None:
        """``chars``: of every message's role and content (templates write the role out too)."""
        if chars > self.max_chars:
            raise self._over(f"{chars} characters of messages (a token covers at most {self.max_chars_per_token})")

    def check(self, prompt) -> None:
        """The cheap checks on an engine prompt (text, token ids or chat messages), before any tokenization."""
        if isinstance(prompt, str):
            self.check_text(len(prompt))
        elif isinstance(prompt, (list, tuple)) and prompt and isinstance(prompt[0], dict):
            self.check_message_count(len(prompt))  # first: summing a million contents is itself the cost
            self.check_content_chars(sum(len(v) for m in prompt if isinstance(m, dict)
                                         for v in (m.get("role"), m.get("content")) if isinstance(v, str)))
        elif isinstance(prompt, (list, tuple)):
            self.check_token_ids(len(prompt))

    def count(self, encode: Callable[[str], Sequence[int]], text: str) -> None:
        """Refuse ``text`` if it clearly holds more tokens than the limit, having tokenized no more than the
        limit's worth of it (plus one chunk). Texts of one chunk are left to the exact count that follows."""
        if len(text) <= self.chunk_chars:
            return
        n = count_tokens_upto(encode, text, self.count_cutoff, self.chunk_chars)
        if n > self.count_cutoff:
            raise self._over(f"more than {self.count_cutoff} tokens")


def count_tokens_upto(encode: Callable[[str], Sequence[int]], text: str, cutoff: int, chunk_chars: int) -> int:
    """Tokens in ``text``, counted ``chunk_chars`` characters at a time (cut at whitespace where there is some
    near the end of a chunk, so few words are split), stopping as soon as the count exceeds ``cutoff``. The sum
    differs from the count of the whole text by at most a few tokens per cut."""
    n, start, end = 0, 0, len(text)
    while start < end and n <= cutoff:
        stop = min(start + chunk_chars, end)
        if stop < end:
            cut = max(text.rfind(" ", stop - 256, stop), text.rfind("\n", stop - 256, stop))
            if cut > start:
                stop = cut
        n += len(encode(text[start:stop]))
        start = stop
    return n
