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


def _check(ok: bool, field_name: str, message: str) -> None:
    if not ok:
        raise InvalidRequestError(field_name, message)
