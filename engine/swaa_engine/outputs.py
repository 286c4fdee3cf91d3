"""What the engine hands back: stream chunks and whole completions."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from swaa_engine.sequence import FinishReason


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0


@dataclass(frozen=True)
class Timings:
    queue_s: float  # arrival -> first scheduled
    ttft_s: float | None  # arrival -> first generated token
    total_s: float  # arrival -> finish


@dataclass
class StreamChunk:
    """New tokens of one request; the last chunk has ``finished`` set and carries usage and timings."""

    request_id: str
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    logprobs: list[TokenLogprob] | None = None
    finished: bool = False
    finish_reason: FinishReason | None = None
    stop: str | None = None  # the stop string that matched
    stop_token_id: int | None = None  # the stop token id that matched
    usage: Usage | None = None
    timings: Timings | None = None
    index: int = 0  # the sample (0..n-1) of a request with n samples
    prompt_logprobs: list[TokenLogprob] | None = None  # the first chunk of a request that asked for them


def _prompt_logprobs(chunks) -> list[TokenLogprob] | None:
    return next((c.prompt_logprobs for c in chunks if c.prompt_logprobs is not None), None)


def merge_chunks(chunks: list[StreamChunk]) -> StreamChunk:
    """Consecutive chunks of one request's sample as one: tokens, text and logprobs in order, the end fields of the last."""
    if len(chunks) == 1:
        return chunks[0]
    last = chunks[-1]
    lps = [lp for c in chunks for lp in (c.logprobs or [])] if any(c.logprobs for c in chunks) else None
    return StreamChunk(last.request_id, [t for c in chunks for t in c.token_ids], "".join(c.text for c in chunks), lps,
                       last.finished, last.finish_reason, last.stop, last.stop_token_id, last.usage, last.timings, last.index,
                       _prompt_logprobs(chunks))


def take_ready(first, queue) -> tuple[object, object | None]:
    """``first`` merged with every StreamChunk already waiting in ``queue`` (an asyncio.Queue), without waiting.

    A consumer that lags (a slow client, a busy front end) then gets one message per wake-up instead of one per
    token, so per-message costs stop growing with the backlog; a consumer that keeps up sees no change. Only one
    sample's chunks merge (a request with n samples shares one queue). Returns (the merged chunk, the item that ended
    the run: an exception or another sample's chunk; or None)."""
    if not isinstance(first, StreamChunk) or first.finished:
        return first, None
    run = [first]
    while not queue.empty():
        item = queue.get_nowait()
        if not isinstance(item, StreamChunk) or item.index != first.index:
            return merge_chunks(run), item
        run.append(item)
        if item.finished:
            break
    return merge_chunks(run), None


@dataclass
class Completion:
    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: FinishReason
    stop: str | None
    stop_token_id: int | None
    logprobs: list[TokenLogprob] | None
    usage: Usage
    timings: Timings
    prompt_logprobs: list[TokenLogprob] | None = None  # entry i scores prompt token i + 1
    index: int = 0  # the sample (0..n-1) this completion is
    # ``LLM.generate``: each of the request's n samples, in index order (also when n = 1); the top-level fields are
    # sample 0's, except ``usage``, which counts the prompt once and every sample's completion tokens
    samples: list["Completion"] = field(default_factory=list)

    @classmethod
    def from_chunks(cls, prompt_ids: list[int], chunks: list[StreamChunk]) -> "Completion":
        """From the chunks of one sample."""
        last = chunks[-1]
        assert last.finished
        lps = [lp for c in chunks for lp in (c.logprobs or [])] if any(c.logprobs for c in chunks) else None
        return cls(
            index=last.index,
            request_id=last.request_id,
            prompt_token_ids=prompt_ids,
            token_ids=[t for c in chunks for t in c.token_ids],
            text="".join(c.text for c in chunks),
            finish_reason=last.finish_reason,
            stop=last.stop,
            stop_token_id=last.stop_token_id,
            logprobs=lps,
            usage=last.usage,
            timings=last.timings,
            prompt_logprobs=_prompt_logprobs(chunks),
        )

    @classmethod
    def of_samples(cls, samples: list["Completion"]) -> "Completion":
        """One request's answer from its samples (index order): sample 0's fields, usage over all of them."""
        first = samples[0]
        usage = Usage(first.usage.prompt_tokens, sum(s.usage.completion_tokens for s in samples),
                      cached_tokens=first.usage.cached_tokens)
        timings = replace(first.timings, total_s=max(s.timings.total_s for s in samples))
        return replace(first, usage=usage, timings=timings, samples=list(samples))
