"""Per-request sampling parameters, validated on construction."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from swaa_engine.errors import InvalidRequestError


class RequestIdInUseError(ValueError):
    """A running request already has this id (the server maps this to ALREADY_EXISTS)."""

    def __init__(self, request_id: str):
        super().__init__(f"request_id: {request_id!r} is already in use by a running request")
        self.request_id = request_id

    def __reduce__(self):  # crosses process boundaries (Ray replicas)
        return type(self), (self.request_id,)


MAX_STOP_STRINGS = 16
MAX_STOP_LEN = 256
MAX_STOP_TOKEN_IDS = 64  # each generated token is checked against them: the list must stay short
MAX_LOGPROBS = 20
MAX_N = 16  # samples per request
MAX_PENALTY = 2.0  # presence and frequency penalties, as in OpenAI's API
MAX_LOGIT_BIAS = 100.0
MAX_LOGIT_BIAS_ENTRIES = 300
MAX_BAD_WORDS = 64
MAX_BAD_WORD_LEN = 256
MAX_BANNED_TOKEN_IDS = 1024
# Below this a temperature is greedy: dividing logits by a tiny (or denormal) temperature overflows float32,
# and the distribution it stands for is argmax anyway (a logit gap of 1e-4 is already a factor e^10).
GREEDY_TEMPERATURE = 1e-5


MAX_SPEC_CHARS = 64 << 10  # a schema, regex or grammar: compilation time and memory grow with it
MAX_CHOICES = 64
MAX_CHOICE_LEN = 256
STRUCTURED_KINDS = ("json_schema", "regex", "grammar", "choices")


@dataclass(frozen=True)
class StructuredOutput:
    """What the output must match: ``kind`` is one of ``STRUCTURED_KINDS``; ``spec`` is the JSON Schema (JSON
    text), the regular expression, the EBNF grammar (start rule ``root``), or the tuple of choices. Only the sizes
    are checked here (torch-free); whether the library accepts the spec is checked when it is compiled."""

    kind: str
    spec: str | tuple[str, ...]

    def __post_init__(self) -> None:
        _check(self.kind in STRUCTURED_KINDS, "structured_output", f"kind must be one of {', '.join(STRUCTURED_KINDS)}, got {self.kind!r}")
        field = f"structured_output.{self.kind}"
        if self.kind == "choices":
            object.__setattr__(self, "spec", tuple(self.spec))
            _check(0 < len(self.spec) <= MAX_CHOICES, field, f"1..{MAX_CHOICES} choices, got {len(self.spec)}")
            for c in self.spec:
                _check(isinstance(c, str) and 0 < len(c) <= MAX_CHOICE_LEN, field, f"each choice must have 1..{MAX_CHOICE_LEN} characters")
        else:
            _check(isinstance(self.spec, str) and self.spec.strip() != "", field, "must not be empty")
            _check(len(self.spec) <= MAX_SPEC_CHARS, field, f"at most {MAX_SPEC_CHARS} characters, got {len(self.spec)}")


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens and when to stop.

    ``temperature`` below ``GREEDY_TEMPERATURE`` (1e-5; 0 included) is greedy. ``top_k == 0`` and ``top_p == 1`` and ``min_p == 0`` disable
    those filters. ``seed`` makes sampling reproducible whatever else shares the batch.
    ``logprobs`` asks for the chosen token's log-probability plus that many top alternatives.
    ``presence_penalty``/``frequency_penalty`` apply to the generated tokens only (OpenAI's definition: minus the
    penalty once per token seen, minus the frequency penalty times its count), ``repetition_penalty`` to prompt and
    generated tokens. ``logit_bias`` ((token id, bias) pairs; a dict is accepted) is added to the logits;
    ``banned_token_ids`` and ``bad_words`` (tokenized by the engine) are masked; EOS and ``stop_token_ids`` are
    masked until ``min_tokens`` tokens are generated. ``prompt_logprobs`` asks for each prompt token's logprob (with
    that many alternatives). ``priority`` orders admission (higher first) and preemption (lowest first);
    ``timeout`` (seconds from when the engine receives the request) ends it with ``FinishReason.DEADLINE``.
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None
    structured_output: StructuredOutput | None = None  # token masks force the output to match it
    n: int = 1  # independent samples of the prompt (AsyncEngine fans them out: see ``sample_params``)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    min_tokens: int = 0
    bad_words: tuple[str, ...] = ()
    banned_token_ids: tuple[int, ...] = ()
    prompt_logprobs: int | None = None
    priority: int = 0
    timeout: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        _check(self.temperature >= 0 and self.temperature == self.temperature, "temperature", f"must be >= 0, got {self.temperature}")
        _check(self.temperature <= 100, "temperature", f"must be <= 100, got {self.temperature}")
        _check(isinstance(self.top_k, int) and self.top_k >= 0, "top_k", f"must be an integer >= 0, got {self.top_k}")
        _check(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")
        _check(0 <= self.min_p <= 1, "min_p", f"must be in [0, 1], got {self.min_p}")
        _check(0 < self.repetition_penalty <= 10, "repetition_penalty", f"must be in (0, 10], got {self.repetition_penalty}")
        _check(isinstance(self.max_tokens, int) and self.max_tokens >= 1, "max_tokens", f"must be an integer >= 1, got {self.max_tokens}")
        if self.seed is not None:
            _check(isinstance(self.seed, int) and 0 <= self.seed < 2**63, "seed", f"must be in [0, 2^63), got {self.seed}")
        _check(len(self.stop) <= MAX_STOP_STRINGS, "stop", f"at most {MAX_STOP_STRINGS} stop strings, got {len(self.stop)}")
        for s in self.stop:
            _check(isinstance(s, str) and 0 < len(s) <= MAX_STOP_LEN, "stop", f"each stop string must have 1..{MAX_STOP_LEN} characters")
        _check(len(self.stop_token_ids) <= MAX_STOP_TOKEN_IDS, "stop_token_ids",
               f"at most {MAX_STOP_TOKEN_IDS} stop token ids, got {len(self.stop_token_ids)}")
        for t in self.stop_token_ids:
            _check(isinstance(t, int) and t >= 0, "stop_token_ids", f"token ids must be >= 0, got {t}")
        _check(isinstance(self.n, int) and 1 <= self.n <= MAX_N, "n", f"must be in [1, {MAX_N}], got {self.n}")
        bias = self.logit_bias.items() if isinstance(self.logit_bias, dict) else self.logit_bias
        object.__setattr__(self, "logit_bias", tuple(sorted((t, float(b)) for t, b in bias)))
        object.__setattr__(self, "bad_words", (self.bad_words,) if isinstance(self.bad_words, str) else tuple(self.bad_words))
        object.__setattr__(self, "banned_token_ids", tuple(self.banned_token_ids))
        for name in ("presence_penalty", "frequency_penalty"):
            v = getattr(self, name)
            _check(-MAX_PENALTY <= v <= MAX_PENALTY, name, f"must be in [-{MAX_PENALTY:g}, {MAX_PENALTY:g}], got {v}")
        _check(len(self.logit_bias) <= MAX_LOGIT_BIAS_ENTRIES, "logit_bias",
               f"at most {MAX_LOGIT_BIAS_ENTRIES} entries, got {len(self.logit_bias)}")
        for t, b in self.logit_bias:
            _check(isinstance(t, int) and not isinstance(t, bool) and t >= 0, "logit_bias", f"token ids must be integers >= 0, got {t!r}")
            _check(abs(b) <= MAX_LOGIT_BIAS, "logit_bias", f"each bias must be in [-{MAX_LOGIT_BIAS:g}, {MAX_LOGIT_BIAS:g}], got {b} for token {t}")
        _check(isinstance(self.min_tokens, int) and 0 <= self.min_tokens <= self.max_tokens, "min_tokens",
               f"must be an integer in [0, max_tokens={self.max_tokens}], got {self.min_tokens}")
        _check(len(self.bad_words) <= MAX_BAD_WORDS, "bad_words", f"at most {MAX_BAD_WORDS} words, got {len(self.bad_words)}")
        for w in self.bad_words:
            _check(isinstance(w, str) and 0 < len(w) <= MAX_BAD_WORD_LEN, "bad_words", f"each word must have 1..{MAX_BAD_WORD_LEN} characters")
        _check(len(self.banned_token_ids) <= MAX_BANNED_TOKEN_IDS, "banned_token_ids",
               f"at most {MAX_BANNED_TOKEN_IDS} ids, got {len(self.banned_token_ids)}")
        for t in self.banned_token_ids:
            _check(isinstance(t, int) and not isinstance(t, bool) and t >= 0, "banned_token_ids", f"token ids must be >= 0, got {t!r}")
        if self.prompt_logprobs is not None:
            _check(isinstance(self.prompt_logprobs, int) and 0 <= self.prompt_logprobs <= MAX_LOGPROBS, "prompt_logprobs",
                   f"must be in [0, {MAX_LOGPROBS}], got {self.prompt_logprobs}")
        _check(isinstance(self.priority, int) and not isinstance(self.priority, bool) and -2**31 <= self.priority < 2**31,
               "priority", f"must be a 32-bit integer, got {self.priority!r}")
        if self.timeout is not None:
            _check(self.timeout == self.timeout and self.timeout >= 0, "timeout", f"must be >= 0 seconds, got {self.timeout}")
        if self.logprobs is not None:
            _check(isinstance(self.logprobs, int) and 0 <= self.logprobs <= MAX_LOGPROBS, "logprobs", f"must be in [0, {MAX_LOGPROBS}], got {self.logprobs}")

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_TEMPERATURE

    def sample_params(self, index: int) -> "SamplingParams":
        """The parameters of sample ``index`` of ``n``: one sequence each. A seeded request's sample 0 keeps the
        seed (n = 1 and sample 0 agree) and sample i > 0 gets one derived from (seed, i), so each sample is
        reproducible on its own; unseeded samples get independent random seeds from the engine."""
        seed = self.seed
        if seed is not None and index:
            seed = random.Random(f"swaa-sample/{seed}/{index}").getrandbits(63)
        return replace(self, n=1, seed=seed)

    @property
    def penalizes_output(self) -> bool:
        """Presence or frequency penalty: the sampler needs this request's generated-token counts."""
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0


def _check(ok: bool, field_name: str, message: str) -> None:
    if not ok:
        raise InvalidRequestError(field_name, message)
