"""The engine: request intake, the step loop, output processing; and ``LLM`` for offline use."""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import os
import random
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from typing import Iterable, Sequence as Seq, Union

import torch

from swaa_engine.attention.windows import create_for_specs
from swaa_engine.config import CacheConfig, ConfigError, EngineConfig
from swaa_engine.cuda_graphs import DecodeGraphs
from swaa_engine.detokenizer import IncrementalDetokenizer
from swaa_engine.intake import PromptBounds, check_request_id
from swaa_engine.kv_cache.manager import CacheManager, KVShape, plan_pools
from swaa_engine.kv_cache.pools import SwapSpace
from swaa_engine.kv_cache.storage import allocate_kv
from swaa_engine.kv_cache.swap import HostSwap
from swaa_engine.model_runner import ModelRunner
from swaa_engine.models.gguf import read_gguf
from swaa_engine.models.loader import ModelNotFoundError, ModelSource, load_hf_config, load_model, load_tokenizer, resolve_source
from swaa_engine.models.registry import dims_from_config, model_layer_specs
from swaa_engine.outputs import Completion, StreamChunk, Timings, TokenLogprob, Usage
from swaa_engine.sampler import SampleRow
from swaa_engine.sampling_params import InvalidRequestError, RequestIdInUseError, SamplingParams
from swaa_engine.scheduler import Scheduler
from swaa_engine.sequence import FinishReason, Sequence
from swaa_engine.structured import Grammars, TokenMasker, default_fill_threads
from swaa_engine.swaa import CacheKind

log = logging.getLogger(__name__)

# The chat roles accepted (the proto's ChatMessage.role; the SDK checks the same list).
CHAT_ROLES = ("system", "user", "assistant", "tool")

# A prompt: text, token ids, or chat messages ([{"role": …, "content": …}, …]).
Prompt = Union[str, Seq[int], Seq[dict]]

# Joins a request id and a sample index into the engine sequence's id: a control character, which no caller's id
# may hold (check_request_id: printable only), so a sample's id never clashes with a request's.
_SAMPLE_SEP = "\x1f"


def sample_id(request_id: str, index: int) -> str:
    """The engine sequence id of sample ``index`` of a request with n > 1 samples."""
    return f"{request_id}{_SAMPLE_SEP}{index}"

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[name]


def free_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        # memory an engine dropped earlier in this process sits in cycles or in torch's cache, invisible to the
        # driver: collect it and hand it back first, or every later engine sizes its cache from what is left
        gc.collect()
        torch.cuda.empty_cache()
        return torch.cuda.mem_get_info(device)[0]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class EngineLoad:
    """An engine's load as plain data, republished after every change: readers (metrics, the front end's
    snapshot) take it without the engine's lock, so a scrape never waits for a step."""

    running: int = 0
    waiting: int = 0
    usage: dict = field(default_factory=dict)  # {"paged": {"used", "total"}, "ring": {...}}
    # what memory pressure cost: the fields of swaa.v1.Preemptions (total, swapped, swapped_bytes, recomputed,
    # recomputed_tokens, swap_used_bytes, swap_total_bytes)
    preemptions: dict = field(default_factory=dict)
    steps: int = 0  # engine steps that ran a batch, and the seconds they took (model + scheduling + sampling)
    step_seconds: float = 0.0
    prefix: dict = field(default_factory=dict)  # the fields of swaa.v1.PrefixCache (enabled, queried/hit tokens)


# A step that raises ends its own requests and the engine goes on; when the next step raises too (or the device
# probe after a failure raises), the fault is not in those requests but in the engine or the device (a sticky CUDA
# error fails every later kernel): the engine is then dead, and only a new process can recover.
DEAD_AFTER_FAILED_STEPS = 2


class StepError(RuntimeError):
    """A step raised: the requests in it (``request_ids``) were ended and their slots freed; the rest go on,
    unless ``dead`` is set (the reason the engine is now dead: see ``LLMEngine.dead``)."""

    def __init__(self, request_ids: list[str], cause: BaseException):
        super().__init__(f"engine step failed: {cause!r}")
        self.request_ids = request_ids
        self.cause = cause
        self.final_chunks: list[StreamChunk] = []
        self.dead: str | None = None


class EngineUnavailableError(RuntimeError):
    """The engine is dead (its device failed): it takes no more requests (the server answers UNAVAILABLE and
    exits, so that the orchestrator restarts it)."""


@dataclass
class _Request:
    seq: Sequence
    detok: IncrementalDetokenizer | None
    rng: random.Random | None
    arrival: float
    matcher: object | None = None  # structured output's xgrammar GrammarMatcher
    scheduled_at: float | None = None
    first_token_at: float | None = None
    always_masked: tuple[int, ...] = ()  # banned token ids and one-token bad words
    bad_words: tuple[tuple[int, ...], ...] = ()  # bad words of several tokens
    # prompt logprobs computed so far (entry p scores prompt token p + 1); None when not asked for
    prompt_logprobs: list[TokenLogprob] | None = None
    prompt_logprobs_sent: bool = False


class LLMEngine:
    """Synchronous core. ``add_request`` then ``step`` until ``has_work`` is false.

    Thread-safe for one stepping thread plus any number of threads calling ``add_request`` and
    ``abort``: scheduler state changes under a lock; the model runs outside it.
    """

    def __init__(self, config: EngineConfig, hf_config=None, *, hf_model=None, tokenizer=None):
        """``hf_config`` alone: random weights or a config-only model. ``hf_model``/``tokenizer``:
        reuse objects already loaded from ``config.model`` (tests, tools that hold the model)."""
        self.config = config
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        if config.num_threads and self.device.type == "cpu":
            torch.set_num_threads(config.num_threads)
        self.source: ModelSource | None = None
        state_dict = None
        if hf_model is not None:
            hf_config = hf_model.config
            try:  # only for the model's name: the weights are already here
                self.source = resolve_source(config.model)
            except ModelNotFoundError:
                self.source = None
        elif hf_config is None:
            self.source = resolve_source(config.model)
            if self.source.gguf_file:  # one read of the file for config, tokenizer and weights
                gguf = read_gguf(self.source.folder, self.source.gguf_file)
                hf_config, tokenizer, state_dict = gguf.config, gguf.tokenizer, gguf.state_dict
                del gguf
            else:
                hf_config = load_hf_config(self.source)
        self.hf_config = hf_config
        self.dims = dims_from_config(hf_config)
        self.tokenizer = tokenizer if tokenizer is not None else (load_tokenizer(self.source) if self.source else None)
        if self.source:
            self.model_name = self.source.name
        elif hf_model is not None:
            self.model_name = os.path.basename(str(getattr(hf_config, "name_or_path", "") or "model"))
        else:
            self.model_name = f"random-{self.dims.architecture}"
        if config.lora:
            self.model_name += f"+lora:{os.path.basename(os.path.normpath(config.lora))}"

        self.max_model_len = config.max_model_len or self.dims.max_position_embeddings
        if self.max_model_len > self.dims.max_position_embeddings:
            raise ConfigError("max_model_len", f"{self.max_model_len} exceeds the model's limit {self.dims.max_position_embeddings}")
        # A sequence never holds more than max_model_len tokens: rings are sized for that (one
        # definition, kv_cache.pools.ring_size), and the attention geometry below uses the same limit.
        # The model's own sliding layers (Gemma 3, Mistral's sliding_window) are part of the specs, SWAA on top.
        self.specs = model_layer_specs(config.swaa, hf_config, max_len=self.max_model_len)

        kv = KVShape(self.dims.num_kv_heads, self.dims.head_dim, torch.finfo(self.dtype).bits // 8)
        block_size = config.cache.block_size
        sched = config.scheduler
        budget, rings = self._budget(config.cache, kv)
        self.pool_plan = plan_pools(self.specs, kv, block_size, budget, rings)
        swap = SwapSpace(self._swap_budget(config.cache), self.pool_plan.block_bytes, self.pool_plan.ring_bytes)
        self.cache = CacheManager(self.specs, block_size, self.pool_plan.num_blocks, self.pool_plan.num_rings, swap,
                                  prefix_caching=config.cache.prefix_caching, fa_tail=config.swaa.fa_tail)
        self._check_plan(budget)
        self.scheduler = Scheduler(sched, self.cache)

        self.model = load_model(self.source, hf_config, self.dtype, self.device, random_weights=config.random_weights,
                                seed=config.seed, hf_model=hf_model, lora=config.lora, swaa=config.swaa, state_dict=state_dict)
        del state_dict  # the model holds its own copy now
        caches = allocate_kv(self.specs, self.pool_plan, kv, block_size, self.dtype, self.device)
        # one backend per sliding window of the specs (a model's own window and SWAA's may differ)
        self.backend = create_for_specs(
            config.attention_backend, self.device, self.specs, block_size, self.max_model_len,
            num_heads=self.dims.num_heads, num_kv_heads=self.dims.num_kv_heads, head_dim=self.dims.head_dim,
            scale=getattr(self.model, "attention_scale", None),
        )
        self.runner = ModelRunner(self.model, self.specs, self.backend, caches, self.device, fa_tail=config.swaa.fa_tail)
        self.swapper = HostSwap(caches, self.specs, self.device)
        if config.cuda_graphs and not getattr(self.backend, "supports_graphs", True):
            log.info("CUDA graphs off: the layers slide by several windows (decode steps run eagerly)")
        elif config.cuda_graphs and self.device.type == "cuda" and self.backend.decode_kernel.triton:
            self.runner.use_graphs(self.decode_graphs())
        self.eos_ids = self._eos_ids()
        self.grammars = Grammars(self.tokenizer, self.dims.vocab_size, self.eos_ids)  # compiled on first use
        self.runner.masker = TokenMasker(config.grammar_threads or default_fill_threads())  # threads start on first use
        self._requests: dict[str, _Request] = {}
        self._lock = threading.RLock()
        self._in_step: set[str] = set()  # request ids of the running step (an abort defers freeing their slots)
        self._seed_rng = random.Random(config.seed)
        self.steps = 0
        self.step_seconds = 0.0
        self._failed_steps = 0  # consecutive steps that raised
        self.dead: str | None = None  # why the engine is dead (set once, never cleared)
        self.load = EngineLoad()
        self._publish()

    def _publish(self) -> None:
        """Replace ``self.load`` (call under the lock; one attribute store, so readers never see half of it)."""
        sched, st, swap = self.scheduler, self.scheduler.stats, self.cache.swap
        pre = asdict(st)
        pre = dict(total=pre["preemptions"], swapped=pre["swapped_out"], swapped_bytes=pre["swapped_bytes"],
                   recomputed=pre["recomputed"], recomputed_tokens=pre["recomputed_tokens"],
                   swap_used_bytes=swap.used_bytes, swap_total_bytes=swap.budget_bytes)
        pc = self.cache.prefix
        prefix = dict(enabled=pc is not None, queried_tokens=pc.stats.queried_tokens if pc else 0,
                      hit_tokens=pc.stats.hit_tokens if pc else 0)
        self.load = EngineLoad(len(sched.running), len(sched.waiting), self.cache.usage(), pre, self.steps, self.step_seconds,
                               prefix)

    def decode_graphs(self) -> DecodeGraphs:
        """Decode graphs over this engine's model and caches (captured by ``runner.use_graphs``)."""
        kinds = {s.cache_kind for s in self.specs}
        return DecodeGraphs(self.model, self.backend, self.runner.caches, self.specs, self.backend.geometry,
                            max_batch=self.config.scheduler.max_num_seqs, max_model_len=self.max_model_len,
                            scratch_block=self.pool_plan.num_blocks if CacheKind.PAGED in kinds else None,
                            scratch_ring=self.pool_plan.num_rings if CacheKind.RING in kinds else None)

    def _check_plan(self, budget: int) -> None:
        """Refuse a budget that cannot hold one full-length sequence, naming the numbers and the knob."""
        plan, cache, L = self.pool_plan, self.cache, self.max_model_len
        knob = "raise --cache-bytes (CacheConfig.budget_bytes)"
        cap = cache.max_tokens_per_seq()
        if cap is not None and cap < L:
            raise ConfigError("cache", f"the cache budget of {budget} bytes ({self.cache_budget_reason}) holds {cap} tokens of paged KV "
                                       f"({plan.block_bytes} bytes per block of {cache.block_size}), fewer than "
                                       f"max_model_len={L}; {knob} or lower max_model_len")
        if cache.has_ring and cache.rings.total == 0:
            ring = [sp for sp in self.specs if sp.cache_kind is CacheKind.RING]
            need = ", ".join(f"{sum(sp.window == w for sp in ring)} ring layers of {sp.ring_slots} slots (min(sinks "
                             f"{sp.sinks} + window {w}, max_model_len {L}))" for w, sp in {sp.window: sp for sp in ring}.items())
            raise ConfigError("cache", f"the cache budget of {budget} bytes holds no ring: a ring needs {need}, "
                                       f"{plan.ring_bytes} bytes, and each running sequence holds one; {knob} to at "
                                       f"least {plan.ring_bytes} bytes")

    def _budget(self, cc: CacheConfig, kv: KVShape) -> tuple[int, int]:
        """(bytes, most rings) for ``plan_pools``; sets ``cache_budget_reason`` (which limit decided the bytes)."""
        # What max_num_seqs full-length sequences use, pools as planned: whole blocks in the paged layers,
        # one ring each in the ring layers (a plan's unit sizes do not depend on its budget).
        unit = plan_pools(self.specs, kv, cc.block_size, 1, self.config.scheduler.max_num_seqs)
        blocks_per_seq = -(-self.max_model_len // cc.block_size)
        # with prefix caching, rings for ring snapshots beside one per running sequence
        snapshots = min(16, self.config.scheduler.max_num_seqs) if cc.prefix_caching and unit.ring_bytes else 0
        need = self.config.scheduler.max_num_seqs * (blocks_per_seq * unit.block_bytes + unit.ring_bytes)
        need += snapshots * unit.ring_bytes
        free = free_memory_bytes(self.device) if cc.budget_bytes is None else 0
        size, self.cache_budget_reason = cc.resolve_budget(need, free, self.device.type == "cpu")
        rings = self.config.scheduler.max_num_seqs + snapshots
        if unit.ring_bytes and unit.block_bytes and size < need:
            # rings are planned first (one per running sequence): below what max_num_seqs need, keep one
            # full-length sequence's blocks out of their share, or a capped budget could hold no long prompt at all
            rings = max(1, min(rings, (size - blocks_per_seq * unit.block_bytes) // unit.ring_bytes))
        return size, rings

    def _swap_budget(self, cc: CacheConfig) -> int:
        if cc.swap_bytes is not None:
            return cc.swap_bytes
        host = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return min(self.pool_plan.total_bytes, host // 2)

    def _eos_ids(self) -> frozenset[int]:
        ids = set()
        for src in (getattr(self.hf_config, "eos_token_id", None), getattr(self.tokenizer, "eos_token_id", None)):
            if isinstance(src, int):
                ids.add(src)
            elif isinstance(src, (list, tuple)):
                ids.update(src)
        return frozenset(ids)

    # -- intake ---------------------------------------------------------------------------
    @functools.cached_property
    def prompt_bounds(self) -> PromptBounds:
        """Cheap bounds checked before tokenizing (computed once: a pass over the vocabulary)."""
        return PromptBounds.for_tokenizer(self.tokenizer, self.max_model_len)

    def tokenize(self, prompt: Prompt) -> list[int]:
        """Token ids of a prompt. Refuses what cannot fit the context before tokenizing it (``PromptBounds``),
        and chat message content is encoded as text: control tokens in it never become control tokens."""
        if isinstance(prompt, (str, list, tuple)) and len(prompt) == 0:
            raise InvalidRequestError("prompt", "is empty")
        bounds = self.prompt_bounds
        bounds.check(prompt)
        if isinstance(prompt, str):
            self._need_tokenizer("prompt")
            bounds.count(self._count_encode, prompt)
            ids = self.tokenizer.encode(prompt)
        elif isinstance(prompt, (list, tuple)) and prompt and all(isinstance(m, dict) for m in prompt):
            self._need_tokenizer("messages")
            for i, m in enumerate(prompt):
                if not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                    raise InvalidRequestError(f"messages[{i}]", "each message needs a string role and content")
                if m["role"] not in CHAT_ROLES:  # a template renders an unknown role as text, silently
                    raise InvalidRequestError(f"messages[{i}].role", f"must be one of {', '.join(CHAT_ROLES)}, got {m['role']!r}")
            bounds.count(self._count_encode, "\n".join(f"{m['role']}\n{m['content']}" for m in prompt))
            ids = self._encode_chat(prompt)
        elif isinstance(prompt, (list, tuple)):
            ids = list(prompt)
            for t in ids:
                if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < self.dims.vocab_size:
                    raise InvalidRequestError("prompt_token_ids", f"token id {t!r} outside the vocabulary [0, {self.dims.vocab_size})")
        else:
            raise InvalidRequestError("prompt", f"expected text, token ids or chat messages, got {type(prompt).__name__}")
        if not ids:
            raise InvalidRequestError("prompt", "is empty")
        return ids

    def _count_encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _encode_chat(self, messages: Seq[dict]) -> list[int]:
        """The model's chat template over the messages, with the control tokens that appear in any message
        encoded as plain text (transformers' ``sanitize_control_tokens``): only the template writes control
        tokens, so content like "<|im_start|>system" cannot open a turn, whatever the template."""
        import jinja2

        try:
            return list(self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True,
                                                           return_dict=False, sanitize_control_tokens=True))
        except (jinja2.TemplateError, ValueError) as e:  # the template refused the conversation (roles must
            # alternate, say), or this tokenizer has no chat template
            raise InvalidRequestError("messages", f"cannot render the chat: {e}") from None

    def _need_tokenizer(self, field: str) -> None:
        if self.tokenizer is None:
            raise InvalidRequestError(field, "this model has no tokenizer; send token ids")

    def validate(self, prompt_ids: list[int], params: SamplingParams) -> None:
        if len(prompt_ids) >= self.max_model_len:
            raise InvalidRequestError("prompt", f"{len(prompt_ids)} tokens; the limit is {self.max_model_len - 1} (max_model_len {self.max_model_len} minus one generated token)")
        if len(prompt_ids) + params.max_tokens > self.max_model_len:
            raise InvalidRequestError("max_tokens", f"{len(prompt_ids)} prompt tokens + max_tokens {params.max_tokens} exceed max_model_len {self.max_model_len}: with this max_tokens the longest prompt accepted is {self.max_model_len - params.max_tokens} tokens; lower max_tokens (default {SamplingParams.max_tokens}) for a longer prompt")
        for name, ids in (("stop_token_ids", params.stop_token_ids), ("banned_token_ids", params.banned_token_ids),
                          ("logit_bias", [t for t, _ in params.logit_bias])):
            for t in ids:
                if t >= self.dims.vocab_size:
                    raise InvalidRequestError(name, f"token id {t} outside the vocabulary [0, {self.dims.vocab_size})")
        if params.stop:
            self._need_tokenizer("stop")
        if params.n != 1:  # one sequence per request here; AsyncEngine fans n out into sequences
            raise InvalidRequestError("n", f"the engine takes one sample per sequence (AsyncEngine serves n > 1), got n={params.n}")
        if params.bad_words:
            self._need_tokenizer("bad_words")

    def bad_word_ids(self, words: Seq[str]) -> set[tuple[int, ...]]:
        """The token sequences of each word, as written and after a space (how it appears mid-text)."""
        out = set()
        for w in words:
            for text in (w, " " + w.lstrip(" ")):
                ids = tuple(self.tokenizer.encode(text, add_special_tokens=False))
                if ids:
                    out.add(ids)
        return out

    def _masked(self, req: _Request) -> tuple[int, ...]:
        """Token ids ``req`` cannot pick next: banned ones, EOS and stop ids before min_tokens, and the last token
        of each bad word whose other tokens the generated text ends with."""
        seq, p = req.seq, req.seq.params
        out = list(req.always_masked)
        if seq.num_generated < p.min_tokens:
            out += p.stop_token_ids
            if not p.ignore_eos:
                out += self.eos_ids
        for w in req.bad_words:
            k = len(w) - 1
            if seq.num_generated >= k and tuple(seq.token_ids[-k:]) == w[:-1]:
                out.append(w[-1])
        return tuple(out)

    def detokenize(self, token_ids: Seq[int], skip_special_tokens: bool = False) -> str:
        """Text of token ids (validated: in the vocabulary, at most max_model_len of them)."""
        self._need_tokenizer("token_ids")
        if len(token_ids) > self.max_model_len:
            raise InvalidRequestError("token_ids", f"{len(token_ids)} ids; at most max_model_len = {self.max_model_len}")
        for t in token_ids:
            if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < self.dims.vocab_size:
                raise InvalidRequestError("token_ids", f"token id {t!r} outside the vocabulary [0, {self.dims.vocab_size})")
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=skip_special_tokens)

    @functools.cached_property
    def special_tokens(self) -> dict:
        """bos/eos/pad ids and strings (the fields of swaa.v1.SpecialTokens; ids None when the model has none)."""
        tok = self.tokenizer
        def get(name):
            v = getattr(tok, name, None) if tok is not None else None
            return v if isinstance(v, (int, str)) else None
        bos_id = get("bos_token_id")
        if bos_id is None and isinstance(getattr(self.hf_config, "bos_token_id", None), int):
            bos_id = self.hf_config.bos_token_id
        return dict(bos_id=bos_id, bos=get("bos_token") or "", eos_ids=sorted(self.eos_ids), eos=get("eos_token") or "",
                    pad_id=get("pad_token_id"), pad=get("pad_token") or "")

    @property
    def chat_template(self) -> str:
        t = getattr(self.tokenizer, "chat_template", None) if self.tokenizer is not None else None
        return t if isinstance(t, str) else ""

    def add_request(self, prompt: Prompt, params: SamplingParams | None = None, request_id: str | None = None) -> str:
        """Queue a request; raises InvalidRequestError, RequestIdInUseError or QueueFullError without side effects."""
        check_request_id(request_id)
        return self._add(prompt, params or SamplingParams(), request_id)

    def add_sample(self, prompt: Prompt, params: SamplingParams, sequence_id: str) -> str:
        """One sample of a request with n > 1 (``AsyncEngine`` fans them out): like ``add_request``, but its id is the
        sample's sequence id (``sample_id``), which holds a control character on purpose (no caller's id
        can then clash with it) and so is not a caller's id to check."""
        return self._add(prompt, params, sequence_id)

    def add_samples(self, prompt: Prompt, params: SamplingParams, ids: Seq[str]) -> None:
        """The n samples of a request as sequences ``ids`` (``sample_id(request_id, i)``), in index order, each with
        ``params.sample_params(i)``: the prompt tokenized once; sample 0 is queued first, so it computes the prompt
        while the others wait for its prefill and then share its KV through prefix caching (the scheduler's
        ``_prefix_in_flight``). All or none are queued."""
        tokens = self.tokenize(prompt)
        try:
            for i, sid in enumerate(ids):
                self.add_sample(tokens, params.sample_params(i), sid)
        except BaseException:
            for sid in ids:
                self.abort(sid)
            raise

    def _add(self, prompt: Prompt, params: SamplingParams, request_id: str | None) -> str:
        received = time.monotonic()  # the deadline counts from here (tokenizing included)
        ids = self.tokenize(prompt)
        self.validate(ids, params)
        # compiled here, on the caller's thread (the server's intake pool), not on the engine thread
        matcher = self.grammars.matcher(params.structured_output) if params.structured_output is not None else None
        bad = self.bad_word_ids(params.bad_words) if params.bad_words else set()
        rid = request_id or uuid.uuid4().hex
        with self._lock:
            if self.dead is not None:
                raise EngineUnavailableError(f"the engine is dead: {self.dead}")
            if rid in self._requests:
                raise RequestIdInUseError(rid)
            if params.seed is None and not params.greedy:
                params = replace(params, seed=self._seed_rng.getrandbits(63))
            seq = Sequence(rid, list(ids), params, arrival=time.monotonic(),
                           deadline=None if params.timeout is None else received + params.timeout)
            self.scheduler.add(seq)
            self._requests[rid] = _Request(
                seq=seq,
                detok=IncrementalDetokenizer(self.tokenizer, ids, params.stop) if self.tokenizer else None,
                rng=None if params.greedy else random.Random(params.seed),
                arrival=seq.arrival,
                matcher=matcher,
                always_masked=tuple(sorted(set(params.banned_token_ids) | {w[0] for w in bad if len(w) == 1})),
                bad_words=tuple(sorted(w for w in bad if len(w) > 1)),
                prompt_logprobs=[] if params.prompt_logprobs is not None else None,
            )
            self._publish()
        return rid

    def abort(self, request_id: str) -> StreamChunk | None:
        """Stop a request wherever it is; returns its final chunk, or None if it is unknown or done."""
        with self._lock:
            req = self._requests.get(request_id)
            if req is None:
                return None
            # a request of the running step keeps its slots until the step ends: its kernels still write them
            self.scheduler.finish(req.seq, FinishReason.ABORT, defer_free=request_id in self._in_step)
            self._publish()
            return self._final_chunk(req, StreamChunk(request_id), time.monotonic())

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    # -- the step -------------------------------------------------------------------------
    def step(self) -> list[StreamChunk]:
        t0 = time.monotonic()
        with self._lock:
            late = self._expire(t0)
            out = self.scheduler.schedule()
            now = t0
            # before any kernel of this step: the slots a swap-out leaves may already belong to another sequence
            for op in out.swap_out:
                if op.request_id in self._requests:  # a preemption asked for between steps may have been aborted since
                    self.swapper.swap_out(op)
            if out.ring_copies:  # prefix-cache ring snapshots taken and restored
                self.swapper.copy_rings(out.ring_copies)
            for op in out.swap_in:
                self.swapper.swap_in(op)
            if not out:
                # a step that computes nothing still does its copies: e.g. the snapshot due at a prefill's last
                # chunk when that prefill yielded this step to a newcomer that then waits for it (skipped, the ring
                # moves on and the index keeps a snapshot nobody wrote)
                if late:
                    self._publish()
                return late
            chunks = self.runner.order(out.chunks)
            rows, scores = [], {}
            for c in chunks:
                req = self._requests[c.seq.request_id]
                p = c.seq.params
                if req.scheduled_at is None:
                    req.scheduled_at = now
                if req.prompt_logprobs is not None and len(req.prompt_logprobs) < c.seq.num_prompt - 1:
                    scores[c.seq.request_id] = (len(req.prompt_logprobs), p.prompt_logprobs)
                if c.samples:
                    penalized = p.repetition_penalty != 1.0 or p.penalizes_output
                    rows.append(SampleRow(p, req.rng, c.seq.token_ids if penalized else [], c.seq.request_id, req.matcher,
                                          num_prompt=c.seq.num_prompt, masked=self._masked(req)))
            # everything the kernels read, copied from the sequences now: the runner reads no Sequence
            batch = self.runner.prepare(chunks, scores)
            self._in_step = {c.seq.request_id for c in chunks}
        try:
            # outside the lock: aborts may land meanwhile (freed after)
            result = self.runner.execute(batch, rows)
        except Exception as e:
            with self._lock:
                self._in_step = set()
                self.scheduler.release_deferred()
                err = StepError([c.seq.request_id for c in chunks if not c.seq.finished], e)
                for rid in err.request_ids:
                    err.final_chunks.append(self.abort(rid))
                self._failed_steps += 1
                err.dead = self._check_failure(e)
                if err.dead is not None:  # every other request ends too
                    for rid in list(self._requests):
                        err.request_ids.append(rid)
                        err.final_chunks.append(self.abort(rid))
            raise err from e
        with self._lock:
            self._failed_steps = 0
            self._in_step = set()
            self.scheduler.release_deferred()
            self.scheduler.advance(out)
            emitted = late
            now = time.monotonic()
            for rid, lps in ((result.prompt_logprobs or {}) if result is not None else {}).items():
                req = self._requests.get(rid)
                if req is not None and req.prompt_logprobs is not None:
                    req.prompt_logprobs += [TokenLogprob(tok, lp, tuple(top)) for tok, (lp, top)
                                            in zip(req.seq.token_ids[len(req.prompt_logprobs) + 1:], lps)]
            sampled = [c for c in chunks if c.samples]
            for i, c in enumerate(sampled):
                req = self._requests.get(c.seq.request_id)
                if req is None or c.seq.finished:
                    self.runner.forget(c.seq.request_id)  # aborted while the step ran (which may have sampled it again)
                    continue
                emitted.append(self._accept(req, result.token_ids[i], result.logprobs[i], now))
            # where a replica's time goes: mean step time = step_seconds / steps (exported per replica)
            self.steps += 1
            self.step_seconds += now - t0
            self._publish()
            return emitted

    def _expire(self, now: float) -> list[StreamChunk]:
        """Final chunks of the requests whose deadline passed (under the lock, between steps: their slots are free)."""
        return [self._final_chunk(self._requests[s.request_id], StreamChunk(s.request_id), now)
                for s in self.scheduler.expire(now) if s.request_id in self._requests]

    def _check_failure(self, cause: BaseException) -> str | None:
        """After a step raised (under the lock): probe the device; if the probe fails or this is the
        ``DEAD_AFTER_FAILED_STEPS``-th failed step in a row, mark the engine dead and return the reason; else None
        (the engine goes on)."""
        reason = None
        try:
            self.probe_device()
        except Exception as probe_error:
            reason = f"the device probe after a failed step raised {probe_error!r} (step: {cause!r})"
        if reason is None and self._failed_steps >= DEAD_AFTER_FAILED_STEPS:
            reason = f"{self._failed_steps} steps in a row raised, the last: {cause!r}"
        if reason is not None:
            self.dead = reason
        return reason

    def probe_device(self) -> None:
        """A tiny kernel and a read back: raises if the device is broken (a sticky CUDA error raises here too)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        if torch.ones(1, device=self.device).add_(1).item() != 2.0:
            raise RuntimeError(f"the device {self.device} computed 1 + 1 wrongly")

    def _accept(self, req: _Request, token: int, lp, now: float) -> StreamChunk:
        seq, p = req.seq, req.seq.params
        seq.append(token)
        if req.first_token_at is None:
            req.first_token_at = now
        chunk = StreamChunk(seq.request_id, token_ids=[token])
        if req.prompt_logprobs is not None and not req.prompt_logprobs_sent:
            chunk.prompt_logprobs, req.prompt_logprobs_sent = list(req.prompt_logprobs), True
        if lp is not None:
            chunk.logprobs = [TokenLogprob(token, lp[0], tuple(lp[1]))]
        reason = None
        if req.matcher is not None and not req.matcher.accept_token(token):
            # the mask allowed only tokens the matcher accepts: this is a bug, not the caller's fault
            log.error("structured output: the sampled token %d was refused by its grammar", token,
                      extra={"request_id": seq.request_id})
            reason = FinishReason.ABORT
        elif not p.ignore_eos and token in self.eos_ids:
            reason = FinishReason.EOS
        elif token in p.stop_token_ids:
            reason, chunk.stop_token_id = FinishReason.STOP, token
        if req.detok is not None:
            if reason is None:
                req.detok.add(token)
            if req.detok.matched_stop is not None:
                reason, chunk.stop = FinishReason.STOP, req.detok.matched_stop
        if reason is None and req.matcher is not None and req.matcher.is_terminated():
            reason = FinishReason.EOS  # the grammar is complete and took the end token (ignore_eos or not)
        if reason is None and seq.num_generated >= p.max_tokens:
            reason = FinishReason.LENGTH
        if reason is None:
            chunk.text = req.detok.flush() if req.detok else ""
            return chunk
        self.scheduler.finish(seq, reason)
        return self._final_chunk(req, chunk, now)

    def _final_chunk(self, req: _Request, chunk: StreamChunk, now: float) -> StreamChunk:
        seq = req.seq
        self._requests.pop(seq.request_id, None)
        self.swapper.drop(seq.request_id)
        self.runner.forget(seq.request_id)
        chunk.text += req.detok.finish() if req.detok else ""
        chunk.finished = True
        chunk.finish_reason = seq.finish_reason
        chunk.usage = Usage(seq.num_prompt, seq.num_generated, cached_tokens=seq.prefix.cached_tokens)
        chunk.timings = Timings(
            queue_s=((req.scheduled_at or now) - req.arrival),
            ttft_s=(req.first_token_at - req.arrival) if req.first_token_at else None,
            total_s=now - req.arrival,
        )
        return chunk

    # -- start-up -------------------------------------------------------------------------
    def warmup(self, force: bool = False) -> dict[str, float]:
        """Run every kind of step once on throwaway requests before serving: prefill chunks, chunks mixed
        with decodes, and decodes. On CUDA each kernel configuration compiles on first use (flash-attn-4
        and Triton, seconds each; bench/RESULTS.md measures what a skipped kind costs). Elsewhere nothing
        compiles, so it returns at once unless ``force``. Needs an idle engine; returns the steps run by
        kind and the seconds spent."""
        if self.device.type != "cuda" and not force:
            return {}
        t0 = time.monotonic()
        with self._lock:
            if self.scheduler.has_work():
                raise RuntimeError("warmup needs an idle engine")
        before = dict(self.runner.step_kinds)
        chunk = self.config.scheduler.max_num_batched_tokens
        new = 4
        # two chunks and a bit per request: the second request's chunks then run beside the first's decodes
        n = max(1, min(2 * chunk + 1, self.max_model_len - new - 1))
        params = SamplingParams(max_tokens=new, ignore_eos=True)
        # prompts that share no prefix: with prefix caching the second would otherwise wait for the first's
        warm = [self.add_request([(i + k) % self.dims.vocab_size for i in range(n)], params,
                                 request_id=f"warmup-{k}-{uuid.uuid4().hex}")
                for k in range(min(2, self.config.scheduler.max_num_seqs, self.config.scheduler.max_waiting))]
        try:
            while self.has_work():
                self.step()
        finally:
            for rid in warm:
                self.abort(rid)
        with self._lock:
            self.steps, self.step_seconds = 0, 0.0  # the step counters describe serving
            self.cache.clear_prefix_cache()  # and the prefix cache holds what was served, not the warm-up's tokens
            self._publish()
        out = {k: float(v - before[k]) for k, v in self.runner.step_kinds.items()}
        out["seconds"] = time.monotonic() - t0
        return out

    @contextlib.contextmanager
    def idle(self, what: str):
        """Hold the engine between steps for offline work on its caches (``swaa_eval.scoring``); refuses while
        requests are in flight."""
        with self._lock:
            if self.scheduler.has_work():
                raise RuntimeError(f"{what} needs an idle engine")
            yield

    # -- teardown -------------------------------------------------------------------------
    def close(self) -> None:
        """Give the device memory back now (caches, CUDA graphs and their pools, weights); the engine is unusable after.

        Dropping the last reference does the same at the next garbage collection (the graphs, runner and
        model refer to each other, so reference counting alone does not)."""
        with self._lock:
            if self.model is None:
                return
            for rid in list(self._requests):
                self.abort(rid)
            self.runner = self.swapper = self.backend = self.model = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()

    # -- introspection --------------------------------------------------------------------
    def cache_usage(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return self.cache.usage()

    def num_requests(self) -> dict[str, int]:
        with self._lock:
            return {"running": len(self.scheduler.running), "waiting": len(self.scheduler.waiting)}


class LLM:
    """Offline generation.

    >>> llm = LLM(swaa=SWAAConfig(window=256, sinks=16, fa_decode=True))   # embedded SmolLM2
    >>> llm.generate(["What is the capital of France?"])[0].text
    """

    def __init__(self, model: str | EngineConfig | None = None, swaa=None, hf_config=None, *, hf_model=None, tokenizer=None, **kwargs):
        if isinstance(model, EngineConfig):
            config = model
        else:
            if swaa is not None:
                kwargs["swaa"] = swaa
            config = EngineConfig(model=model, **kwargs)
        self.engine = LLMEngine(config, hf_config=hf_config, hf_model=hf_model, tokenizer=tokenizer)

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def close(self) -> None:
        """Give the engine's device memory back now (``with LLM(...) as llm:`` does it on exit)."""
        self.engine.close()

    def __enter__(self) -> "LLM":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def generate(self, prompts: Prompt | Iterable[Prompt], params: SamplingParams | Seq[SamplingParams] | None = None,
                 progress: bool = False) -> list[Completion]:
        """One ``Completion`` per prompt. With ``n`` > 1 its ``samples`` hold every sample (the prompt computed once,
        the samples sharing it as the server's do: ``LLMEngine.add_samples``); its top-level fields are sample 0's."""
        if isinstance(prompts, str) or (isinstance(prompts, (list, tuple)) and prompts and isinstance(prompts[0], (int, dict))):
            prompts = [prompts]
        prompts = list(prompts)
        if params is None or isinstance(params, SamplingParams):
            params = [params or SamplingParams()] * len(prompts)
        groups: list[tuple[str, list[str]]] = []  # each prompt's request id and sequence ids, in sample order
        try:
            for p, sp in zip(prompts, params):
                if sp.n == 1:
                    rid = self.engine.add_request(p, sp)
                    groups.append((rid, [rid]))
                else:
                    rid = uuid.uuid4().hex
                    groups.append((rid, [sample_id(rid, i) for i in range(sp.n)]))
                    self.engine.add_samples(p, sp, groups[-1][1])
        except BaseException:  # a prompt refused: the ones queued before it go too
            for _, ids in groups:
                for sid in ids:
                    self.engine.abort(sid)
            raise
        chunks: dict[str, list[StreamChunk]] = {sid: [] for _, ids in groups for sid in ids}
        prompt_ids = {rid: list(self.engine.scheduler.get(ids[0]).token_ids) for rid, ids in groups}
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(chunks), desc="generate", unit="seq")
        while self.engine.has_work():
            for c in self.engine.step():
                chunks[c.request_id].append(c)
                if c.finished and bar is not None:
                    bar.update(1)
        if bar is not None:
            bar.close()
        out = []
        for rid, ids in groups:
            # the caller sees its samples under one request id, each with its index
            done = [replace(Completion.from_chunks(prompt_ids[rid], chunks[sid]), request_id=rid, index=i)
                    for i, sid in enumerate(ids)]
            out.append(Completion.of_samples(done))
        return out
