"""swaa.v1 messages <-> the SDK's typed results (no I/O)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from swaa_client._pb.swaa.v1 import generation_pb2 as pb
from swaa_client.types import (Chunk, Completion, FinishReason, LayerInfo, ModelInfo, PoolUsage, Preemptions, PrefixCache, ReplicaStatus, Sample,
                               SpecialTokens, Timings, TokenLogprob, Usage)

Prompt = str | Sequence[int] | Sequence[Mapping[str, str]]

_FINISH = {pb.FINISH_REASON_LENGTH: FinishReason.LENGTH, pb.FINISH_REASON_STOP: FinishReason.STOP,
           pb.FINISH_REASON_EOS: FinishReason.EOS, pb.FINISH_REASON_ABORT: FinishReason.ABORT}
_ATTENTION = {pb.ATTENTION_KIND_FULL: "full", pb.ATTENTION_KIND_SLIDING_FA_DECODE: "sliding_fa_decode",
              pb.ATTENTION_KIND_SLIDING_RING: "sliding_ring"}
_CACHE = {pb.CACHE_KIND_PAGED: "paged", pb.CACHE_KIND_RING: "ring"}


# The chat roles the service's templates know (proto ChatMessage.role); anything else is refused before sending.
CHAT_ROLES = ("system", "user", "assistant", "tool")

# The documented ranges of SamplingParameters (proto/swaa/v1/generation.proto): checked here so that a bad value is
# refused before anything is sent, with the same error and field path the server would give (and never a bare
# protobuf ValueError for a value its wire type cannot hold, such as top_k=-1).
_RANGES = {
    "temperature": (0.0, 100.0, "in [0, 100]"), "top_k": (0, 2**32 - 1, "an integer >= 0"),
    "top_p": (0.0, 1.0, "in (0, 1]"), "min_p": (0.0, 1.0, "in [0, 1]"), "repetition_penalty": (0.0, 10.0, "in (0, 10]"),
    "seed": (0, 2**63 - 1, "in [0, 2^63)"), "max_tokens": (1, 2**31 - 1, "an integer >= 1"), "logprobs": (0, 20, "in [0, 20]"),
    "n": (1, 16, "in [1, 16]"),
    "presence_penalty": (-2.0, 2.0, "in [-2, 2]"), "frequency_penalty": (-2.0, 2.0, "in [-2, 2]"),
    "min_tokens": (0, 2**31 - 1, "an integer >= 0"), "prompt_logprobs": (0, 20, "in [0, 20]"),
    "priority": (-2**31, 2**31 - 1, "a 32-bit integer"),
}
_FIELD = {"n": "n", "priority": "priority"}  # request fields outside SamplingParameters
MAX_LOGIT_BIAS, MAX_LOGIT_BIAS_ENTRIES = 100.0, 300  # sampling.logit_bias: |bias| and entries (the proto's limits)
_OPEN_BELOW = ("top_p", "repetition_penalty")  # 0 itself is out of range


def invalid(field: str, description: str):
    """The InvalidArgumentError the server would raise for this field, raised before sending."""
    import grpc

    from swaa_client.errors import FieldViolation, InvalidArgumentError

    return InvalidArgumentError(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {description} (checked by the client)",
                                (FieldViolation(field, description),))


def check_sampling(**values) -> None:
    for name, value in values.items():
        if value is None:
            continue
        lo, hi, what = _RANGES[name]
        ok = (not isinstance(value, bool) and isinstance(value, (int, float)) and lo <= value <= hi
              and not (name in _OPEN_BELOW and value <= lo)
              and (isinstance(value, int) or not isinstance(lo, int)))
        if not ok:
            raise invalid(_FIELD.get(name, f"sampling.{name}"), f"must be {what}, got {value!r}")


def _check_ids(field: str, ids) -> None:
    for t in ids:
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < 2**32:
            raise invalid(field, f"token ids must be integers >= 0, got {t!r}")


def set_prompt(msg, prompt: Prompt) -> None:
    """str → raw text; a sequence of ints → token ids; a sequence of {"role", "content"} → chat messages."""
    if isinstance(prompt, str):
        msg.text = prompt
    elif isinstance(prompt, Sequence) and prompt and all(isinstance(m, Mapping) for m in prompt):
        for i, m in enumerate(prompt):
            if m.get("role") not in CHAT_ROLES:
                raise invalid(f"chat.messages[{i}].role", f"must be one of {', '.join(CHAT_ROLES)}, got {m.get('role')!r}")
        msg.chat.messages.extend(pb.ChatMessage(role=m["role"], content=m["content"]) for m in prompt)
    elif isinstance(prompt, Sequence) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        msg.token_ids.ids.extend(prompt)
    else:
        raise TypeError("prompt must be a str, a sequence of token ids, or a sequence of {'role', 'content'} messages")


def generate_request(prompt: Prompt, *, max_tokens: int | None = None, temperature: float = 0.0, top_k: int = 0,
                     top_p: float | None = None, min_p: float = 0.0, repetition_penalty: float | None = None,
                     seed: int | None = None, stop: Sequence[str] | str | None = None,
                     stop_token_ids: Sequence[int] | None = None, logprobs: int | None = None, ignore_eos: bool = False,
                     request_id: str | None = None, json_schema: str | Mapping | None = None, regex: str | None = None,
                     grammar: str | None = None, choices: Sequence[str] | None = None,
                     n: int | None = None, presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
                     logit_bias: Mapping[int, float] | None = None, min_tokens: int = 0,
                     bad_words: Sequence[str] | None = None, banned_token_ids: Sequence[int] | None = None,
                     prompt_logprobs: int | None = None, priority: int = 0) -> pb.GenerateRequest:
    """The arguments of ``generate`` and ``stream`` (both clients), listed once: ``prompt`` is raw text (str), token
    ids, or chat messages ``[{"role": "user", "content": "..."}]``; ``logprobs=n`` returns each token's logprob and
    its top-n alternatives (0 = the token's only); greedy unless ``temperature`` > 0; ``seed`` makes sampling
    reproducible. Structured output (at most one): ``json_schema`` (a dict or JSON text), ``regex``, ``grammar`` (EBNF,
    start rule ``root``) or ``choices``; the output is forced to match it. ``n``: that many samples (1..16), the
    prompt computed once. ``presence_penalty``/``frequency_penalty`` ([-2, 2]) penalize generated tokens;
    ``logit_bias`` ({token id: bias}, |bias| <= 100, at most 300) shifts logits; ``min_tokens`` holds EOS and stop ids
    back; ``bad_words`` and ``banned_token_ids`` are never generated; ``prompt_logprobs=n`` returns each prompt
    token's logprob (from the second) with top-n alternatives; ``priority``: higher is admitted first. Out-of-range
    values are refused here, before anything is sent."""
    check_sampling(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, repetition_penalty=repetition_penalty,
                   seed=seed, max_tokens=max_tokens, logprobs=logprobs, presence_penalty=presence_penalty,
                   frequency_penalty=frequency_penalty, min_tokens=min_tokens, prompt_logprobs=prompt_logprobs,
                   priority=priority, n=n)
    _check_ids("sampling.stop_token_ids", stop_token_ids or ())
    _check_ids("sampling.banned_token_ids", banned_token_ids or ())
    bias = dict(logit_bias or {})
    _check_ids("sampling.logit_bias", bias)
    if len(bias) > MAX_LOGIT_BIAS_ENTRIES:
        raise invalid("sampling.logit_bias", f"at most {MAX_LOGIT_BIAS_ENTRIES} entries, got {len(bias)}")
    for t, b in bias.items():
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not abs(b) <= MAX_LOGIT_BIAS:
            raise invalid("sampling.logit_bias", f"each bias must be in [-100, 100], got {b!r} for token {t}")
    s = pb.SamplingParameters(temperature=temperature, top_k=top_k, min_p=min_p, ignore_eos=ignore_eos,
                              stop=[stop] if isinstance(stop, str) else list(stop or ()),
                              stop_token_ids=list(stop_token_ids or ()), presence_penalty=presence_penalty,
                              frequency_penalty=frequency_penalty, logit_bias=bias, min_tokens=min_tokens,
                              bad_words=[bad_words] if isinstance(bad_words, str) else list(bad_words or ()),
                              banned_token_ids=list(banned_token_ids or ()))
    if prompt_logprobs is not None:
        s.prompt_logprobs = prompt_logprobs
    for name, value in (("top_p", top_p), ("repetition_penalty", repetition_penalty), ("seed", seed), ("max_tokens", max_tokens)):
        if value is not None:
            setattr(s, name, value)
    if logprobs is not None:
        s.return_logprobs, s.logprobs = True, logprobs
    _set_structured(s, json_schema=json_schema, regex=regex, grammar=grammar, choices=choices)
    req = pb.GenerateRequest(request_id=request_id or "", sampling=s, priority=priority)
    if n is not None:
        req.n = n
    set_prompt(req, prompt)
    return req


def _set_structured(s: pb.SamplingParameters, **specs) -> None:
    given = {k: v for k, v in specs.items() if v is not None}
    if len(given) > 1:
        raise invalid("sampling.structured_output", f"give at most one of json_schema, regex, grammar, choices; got {', '.join(given)}")
    for kind, spec in given.items():
        if kind == "json_schema":
            s.structured_output.json_schema = spec if isinstance(spec, str) else json.dumps(spec)
        elif kind == "choices":
            if isinstance(spec, str) or not all(isinstance(c, str) for c in spec):
                raise invalid("sampling.structured_output.choices", "must be a sequence of strings")
            s.structured_output.choices.choices.extend(spec)
        else:
            setattr(s.structured_output, kind, spec)


def _logprobs(lps) -> tuple[TokenLogprob, ...]:
    return tuple(TokenLogprob(l.token_id, l.logprob, tuple((t.token_id, t.logprob) for t in l.top)) for l in lps)


def _final(msg) -> dict:
    return dict(finish_reason=_FINISH.get(msg.finish_reason),
                stop=msg.stop or None,
                stop_token_id=msg.stop_token_id if msg.HasField("stop_token_id") else None,
                usage=Usage(msg.usage.prompt_tokens, msg.usage.completion_tokens, msg.usage.cached_tokens),
                timings=Timings(msg.timings.queue_seconds, msg.timings.ttft_seconds, msg.timings.total_seconds))


def chunk(msg: pb.GenerateChunk) -> Chunk:
    return Chunk(request_id=msg.request_id, token_ids=tuple(msg.token_ids), text=msg.text, logprobs=_logprobs(msg.logprobs),
                 finished=msg.finished, index=msg.index, prompt_logprobs=_logprobs(msg.prompt_logprobs),
                 **(_final(msg) if msg.finished else {}))


def completion(msg: pb.GenerateResponse) -> Completion:
    samples = tuple(Sample(s.index, tuple(s.token_ids), s.text, _FINISH.get(s.finish_reason), _logprobs(s.logprobs), s.stop or None,
                           s.stop_token_id if s.HasField("stop_token_id") else None) for s in msg.samples)
    return Completion(request_id=msg.request_id, token_ids=tuple(msg.token_ids), text=msg.text,
                      logprobs=_logprobs(msg.logprobs), prompt_logprobs=_logprobs(msg.prompt_logprobs), samples=samples,
                      **_final(msg))


def model_info(msg: pb.ModelInfo) -> ModelInfo:
    sw = msg.swaa
    return ModelInfo(
        model=msg.model, architecture=msg.architecture, max_context=msg.max_context,
        window=sw.window if sw.HasField("window") else None, sinks=sw.sinks, fa_decode=sw.fa_decode, fa_layers=sw.fa_layers,
        layers=tuple(LayerInfo(l.layer, _ATTENTION.get(l.attention, "unspecified"), _CACHE.get(l.cache, "unspecified"))
                     for l in msg.layers),
        block_size=msg.block_size, paged=PoolUsage(msg.paged.used, msg.paged.total, msg.paged.cached),
        ring=PoolUsage(msg.ring.used, msg.ring.total, msg.ring.cached),
        vocab_size=msg.vocab_size, fa_tail=sw.fa_tail,
        replicas=tuple(ReplicaStatus(r.index, r.ready, PoolUsage(r.paged.used, r.paged.total), PoolUsage(r.ring.used, r.ring.total),
                                     r.running, r.waiting, r.restarts) for r in msg.replicas),
        replicas_ready=msg.replicas_ready, cache_bytes=msg.cache_bytes, cache_budget=msg.cache_budget,
        preemptions=Preemptions(**{f.name: getattr(msg.preemptions, f.name) for f in msg.preemptions.DESCRIPTOR.fields}),
        prefix_cache=PrefixCache(msg.prefix_cache.enabled, msg.prefix_cache.queried_tokens, msg.prefix_cache.hit_tokens),
        chat_template=msg.chat_template, special_tokens=special_tokens(msg.special_tokens))


def special_tokens(st: pb.SpecialTokens) -> SpecialTokens:
    return SpecialTokens(bos_id=st.bos_id if st.HasField("bos_id") else None, bos=st.bos, eos_ids=tuple(st.eos_ids),
                         eos=st.eos, pad_id=st.pad_id if st.HasField("pad_id") else None, pad=st.pad)


def detokenize_request(token_ids: Sequence[int], skip_special_tokens: bool) -> pb.DetokenizeRequest:
    _check_ids("token_ids", token_ids)
    return pb.DetokenizeRequest(token_ids=list(token_ids), skip_special_tokens=skip_special_tokens)
