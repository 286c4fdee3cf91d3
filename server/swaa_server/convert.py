"""Translation between swaa.v1 messages and engine objects (no I/O, no engine calls)."""

from __future__ import annotations

from swaa_client._pb.swaa.v1 import generation_pb2 as pb
from swaa_engine.intake import PromptBounds, check_request_id
from swaa_engine.outputs import Completion, StreamChunk
from swaa_engine.sampling_params import InvalidRequestError, SamplingParams, StructuredOutput
from swaa_engine.sequence import FinishReason
from swaa_engine.swaa import AttentionKind, CacheKind

FINISH = {
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    FinishReason.STOP: pb.FINISH_REASON_STOP,
    FinishReason.EOS: pb.FINISH_REASON_EOS,
    FinishReason.ABORT: pb.FINISH_REASON_ABORT,
}
ATTENTION = {
    AttentionKind.FULL: pb.ATTENTION_KIND_FULL,
    AttentionKind.SLIDING_FA_DECODE: pb.ATTENTION_KIND_SLIDING_FA_DECODE,
    AttentionKind.SLIDING_RING: pb.ATTENTION_KIND_SLIDING_RING,
}
CACHE = {CacheKind.PAGED: pb.CACHE_KIND_PAGED, CacheKind.RING: pb.CACHE_KIND_RING}


_SAMPLING = {f.name for f in pb.SamplingParameters.DESCRIPTOR.fields}


def proto_field(engine_field: str) -> str:
    """The request field path (as in the .proto) for an engine-side field name, for BadRequest details."""
    head = engine_field.split("[")[0].split(".")[0]
    if head in _SAMPLING:
        return f"sampling.{engine_field}"
    if head == "prompt_token_ids":
        return "token_ids.ids"
    if head == "messages":
        return f"chat.{engine_field}"
    return engine_field


def request_id_of(req) -> str | None:
    """The caller's request id (None: the server makes one); refused before it reaches any log."""
    rid = req.request_id or None
    check_request_id(rid)
    return rid


def prompt_of(req, bounds: PromptBounds | None = None) -> str | list[int] | list[dict]:
    """The prompt of a GenerateRequest or CountTokensRequest. With ``bounds``, what cannot fit the context is
    refused before it is copied into Python objects (a million chat messages cost seconds to convert)."""
    which = req.WhichOneof("prompt")
    if which == "text":
        if bounds is not None:
            bounds.check_text(len(req.text))
        return req.text
    if which == "token_ids":
        if bounds is not None:
            bounds.check_token_ids(len(req.token_ids.ids))
        return list(req.token_ids.ids)
    if which == "chat":
        messages = req.chat.messages
        if not messages:
            raise InvalidRequestError("chat.messages", "is empty")
        if bounds is not None:
            bounds.check_message_count(len(messages))
            bounds.check_content_chars(sum(len(m.role) + len(m.content) for m in messages))
        return [{"role": m.role, "content": m.content} for m in messages]
    raise InvalidRequestError("prompt", "one of text, token_ids or chat is required")


def sampling_of(s: pb.SamplingParameters, n: int = 1, priority: int = 0, timeout: float | None = None) -> SamplingParams:
    """``n``: GenerateRequest.n (0, unset, is 1); ``priority``: the GenerateRequest's; ``timeout``: seconds left of the
    call's gRPC deadline (None: none)."""
    return SamplingParams(
        n=n or 1,
        temperature=s.temperature,
        top_k=s.top_k,
        top_p=s.top_p if s.HasField("top_p") else 1.0,
        min_p=s.min_p,
        repetition_penalty=s.repetition_penalty if s.HasField("repetition_penalty") else 1.0,
        seed=s.seed if s.HasField("seed") else None,
        max_tokens=s.max_tokens if s.HasField("max_tokens") else 256,
        stop=tuple(s.stop),
        stop_token_ids=tuple(s.stop_token_ids),
        ignore_eos=s.ignore_eos,
        logprobs=s.logprobs if s.return_logprobs else None,
        structured_output=structured_of(s),
        presence_penalty=s.presence_penalty,
        frequency_penalty=s.frequency_penalty,
        logit_bias=dict(s.logit_bias),
        min_tokens=s.min_tokens,
        bad_words=tuple(s.bad_words),
        banned_token_ids=tuple(s.banned_token_ids),
        prompt_logprobs=s.prompt_logprobs if s.HasField("prompt_logprobs") else None,
        priority=priority,
        timeout=None if timeout is None else max(0.0, timeout),
    )




def structured_of(s: pb.SamplingParameters) -> StructuredOutput | None:
    if not s.HasField("structured_output"):
        return None
    kind = s.structured_output.WhichOneof("kind")
    if kind is None:
        raise InvalidRequestError("structured_output", "set one of json_schema, regex, grammar or choices")
    value = getattr(s.structured_output, kind)
    return StructuredOutput(kind, tuple(value.choices) if kind == "choices" else value)


def _logprobs(lps):
    return [pb.TokenLogprob(token_id=l.token_id, logprob=l.logprob, top=[pb.TopLogprob(token_id=t, logprob=v) for t, v in l.top])
            for l in (lps or [])]


def _final_fields(c: StreamChunk | Completion) -> dict:
    d = dict(finish_reason=FINISH[c.finish_reason], stop=c.stop or "",
             usage=pb.Usage(prompt_tokens=c.usage.prompt_tokens, completion_tokens=c.usage.completion_tokens,
                            cached_tokens=c.usage.cached_tokens),
             timings=pb.Timings(queue_seconds=c.timings.queue_s, ttft_seconds=c.timings.ttft_s or 0.0,
                                total_seconds=c.timings.total_s))
    if c.stop_token_id is not None:
        d["stop_token_id"] = c.stop_token_id
    return d


def chunk_pb(c: StreamChunk) -> pb.GenerateChunk:
    return pb.GenerateChunk(request_id=c.request_id, token_ids=c.token_ids, text=c.text, logprobs=_logprobs(c.logprobs),
                            finished=c.finished, index=c.index, prompt_logprobs=_logprobs(c.prompt_logprobs),
                            **(_final_fields(c) if c.finished else {}))


def response_pb(chunks: list[StreamChunk]) -> pb.GenerateResponse:
    """Every sample's chunks (interleaved when n > 1) as one response: sample 0 at the top level, every sample in
    ``samples``; usage counts the prompt once (sample 0's) and every sample's completion tokens."""
    by_index: dict[int, list[StreamChunk]] = {}
    for c in chunks:
        by_index.setdefault(c.index, []).append(c)
    done = [Completion.from_chunks([], by_index[i]) for i in sorted(by_index)]
    samples = [pb.Sample(index=i, token_ids=d.token_ids, text=d.text, logprobs=_logprobs(d.logprobs),
                         **{k: v for k, v in _final_fields(d).items() if k not in ("usage", "timings")})
               for i, d in zip(sorted(by_index), done)]
    first = done[0]
    fields = _final_fields(first)
    fields["usage"].completion_tokens = sum(d.usage.completion_tokens for d in done)
    fields["timings"].total_seconds = max(d.timings.total_s for d in done)
    return pb.GenerateResponse(request_id=first.request_id, token_ids=first.token_ids, text=first.text,
                               logprobs=_logprobs(first.logprobs), prompt_logprobs=_logprobs(first.prompt_logprobs),
                               samples=samples, **fields)


def _pool(u: dict) -> pb.PoolUsage:
    return pb.PoolUsage(used=u["used"], total=u["total"], cached=u.get("cached", 0))


def model_info_pb(snap, replicas=()) -> pb.ModelInfo:
    """From a frontend.EngineSnapshot and, with replicas, their ReplicaViews (usage then sums over the ready ones)."""
    sw = snap.swaa
    swaa = pb.SWAA(sinks=sw.sinks, fa_decode=str(sw.fa_decode).lower() if isinstance(sw.fa_decode, bool) else str(sw.fa_decode),
                   fa_layers=str(sw.fa_layers) if sw.fa_layers else "", fa_tail=sw.fa_tail)
    if sw.window is not None:
        swaa.window = sw.window
    usage, pre, prefix = snap.usage, snap.preemptions, dict(snap.prefix)
    if replicas:
        ready = [r.load for r in replicas if r.ready and r.load is not None]
        usage = {p: {k: sum(l.usage[p].get(k, 0) for l in ready) for k in ("used", "cached", "total")} for p in ("paged", "ring")}
        pre = {k: sum(l.preemptions.get(k, 0) for l in ready) for k in pb.Preemptions.DESCRIPTOR.fields_by_name}
        prefix = {k: sum(l.prefix.get(k, 0) for l in ready) for k in ("queried_tokens", "hit_tokens")}
        prefix["enabled"] = any(l.prefix.get("enabled", False) for l in ready)
    return pb.ModelInfo(
        model=snap.model_name, architecture=snap.architecture, max_context=snap.max_model_len, swaa=swaa,
        layers=[pb.LayerInfo(layer=s.layer, attention=ATTENTION[s.kind], cache=CACHE[s.cache_kind]) for s in snap.specs],
        block_size=snap.block_size, paged=_pool(usage["paged"]), ring=_pool(usage["ring"]), vocab_size=snap.vocab_size,
        replicas=[pb.ReplicaStatus(index=r.index, ready=r.ready, restarts=r.restarts,
                                   **({} if r.load is None else dict(paged=_pool(r.load.usage["paged"]), ring=_pool(r.load.usage["ring"]),
                                                                     running=r.load.running, waiting=r.load.waiting)))
                  for r in replicas],
        replicas_ready=sum(r.ready for r in replicas) if replicas else 1,
        cache_bytes=snap.cache_bytes, cache_budget=snap.cache_budget,
        preemptions=pb.Preemptions(**pre), prefix_cache=pb.PrefixCache(**prefix),
        chat_template=snap.chat_template,
        special_tokens=pb.SpecialTokens(**{k: v for k, v in snap.special_tokens.items() if v is not None}),
    )
