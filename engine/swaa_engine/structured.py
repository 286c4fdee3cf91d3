"""Structured output with xgrammar: specs compiled to grammars, one matcher per request, token masks per step.

Compilation happens where a request is taken in (``LLMEngine.add_request``, on the intake pool's threads like
tokenization), never on the engine thread; xgrammar's compiler caches compiled grammars per spec (bounded by
``CACHE_BYTES``), so a repeated schema costs a matcher's construction only. Each step the sampler hands the masked
rows to the engine's ``TokenMasker`` right after the step's kernels were queued (on a GPU they run meanwhile): it fills
their bitmasks on the host in parallel (xgrammar's batch fill, on ``EngineConfig.grammar_threads`` threads without
the GIL) into buffers kept across steps (pinned on CUDA, two used by turns so a fill never overwrites one whose copy
may still be in flight), and applies them to the logits on their device. The matcher allows the end-of-sequence token
only where the spec is complete.

A row costs microseconds where the grammar's state is settled at compile time; JSON strings with a length bound
(``maxLength``) are rewritten so that they are (``expand_bounded_strings``: in xgrammar's form a row inside one cost
~0.2 ms at a 152k vocabulary, up to 27 ms near its bound).

xgrammar is an optional dependency (``pip install swaa-serve[structured]``), imported on first use.
"""

from __future__ import annotations

import functools
import json
import os
import re
import threading

import torch

from swaa_engine.errors import InvalidRequestError
from swaa_engine.sampling_params import StructuredOutput
from swaa_engine.transfer import upload

CACHE_BYTES = 256 << 20  # compiled grammars kept (xgrammar evicts the least recently used beyond it)
MAX_FILL_THREADS = 8  # the default's cap: a row takes ~20 us (bounded strings rewritten), more threads mostly wait


def default_fill_threads() -> int:
    """Threads filling a step's token masks when the config names none: half the cores (xgrammar's own default; the
    other half run the engine thread, the server and tokenization), at most ``MAX_FILL_THREADS``. On 2 cores that is
    1: bench/mask_bench.py measured a second thread slower there (64 rows: ~1.1 ms on one, ~1.7-3.9 ms on two)."""
    return max(1, min(MAX_FILL_THREADS, (os.cpu_count() or 1) // 2))


class Grammars:
    """Compiles ``StructuredOutput`` specs for one tokenizer and hands out matchers (thread-safe)."""

    def __init__(self, tokenizer, vocab_size: int, eos_ids, compile_threads: int = 1):
        self.tokenizer, self.vocab_size, self.eos_ids = tokenizer, vocab_size, sorted(eos_ids)
        self.compile_threads = compile_threads
        self._compiler = None
        self._lock = threading.Lock()

    def _get_compiler(self):
        with self._lock:  # built once (reading the vocabulary takes ~0.5 s for 50k tokens)
            if self._compiler is None:
                try:
                    import xgrammar as xgr
                except ImportError:
                    raise InvalidRequestError("structured_output", "this server has no grammar library "
                                              "(install swaa-serve[structured])") from None
                info = xgr.TokenizerInfo.from_huggingface(self.tokenizer, vocab_size=self.vocab_size,
                                                          stop_token_ids=self.eos_ids)
                self._compiler = xgr.GrammarCompiler(info, max_threads=self.compile_threads, cache_enabled=True,
                                                     cache_limit_bytes=CACHE_BYTES)
            return self._compiler

    def compile(self, so: StructuredOutput):
        """The compiled grammar (cached per spec); InvalidRequestError naming the field if the library refuses it."""
        if self.tokenizer is None:
            raise InvalidRequestError("structured_output", "this model has no tokenizer")
        compiler = self._get_compiler()
        field = f"structured_output.{so.kind}"
        try:
            if so.kind == "json_schema":
                json.loads(so.spec)  # a clear message for text that is not JSON at all
                return compiler.compile_grammar(json_schema_grammar(so.spec))
            if so.kind == "regex":
                return compiler.compile_regex(so.spec)
            if so.kind == "grammar":
                return compiler.compile_grammar(so.spec)
            return compiler.compile_grammar(choices_grammar(so.spec))
        except (RuntimeError, ValueError) as e:  # xgrammar raises RuntimeError with the parser's message
            raise InvalidRequestError(field, f"refused by the grammar compiler: {_first_line(e)}") from None

    def matcher(self, so: StructuredOutput):
        import xgrammar as xgr

        return xgr.GrammarMatcher(self.compile(so))


# xgrammar 0.2.8 writes a string with a length bound (minLength/maxLength) as this class repeated: it lets the other
# control characters (U+0000-U+001F) through unescaped, which JSON forbids (strict parsers refuse the output, e.g.
# Python's json.loads), and its unbounded strings already exclude them. Narrowed in the grammar's text before compiling;
# tests/server/test_structured.py validates outputs with a strict parser, so a change of spelling shows there.
_LOOSE_STRING_CHAR = r'[^\"\\\r\n]'
_JSON_STRING_CHAR = r'[^\0-\x1f\"\\]'

# ... and that repetition, ``"\"" C{lo, hi} "\""``, makes the masks slow: the closing quote lies outside the repeated
# rule, so xgrammar cannot settle at compile time which tokens fit the characters left and checks most of the
# vocabulary at every step inside the string, worst near the bound (measured at a 152k vocabulary: 0.2 ms a row inside
# such a string, 4-27 ms in its last characters, against ~0.04 ms elsewhere). Rewritten exactly as C repeated ``lo``
# times then ``tail_(hi-lo)``, where ``tail_j ::= "\"" | C tail_(j-1)`` and ``tail_0 ::= "\""``: every tail rule ends
# with its own quote, so a token either fits inside it or fails in it, known at compile time (same masks, ~20x
# cheaper on average, tests/engine/test_structured_masks.py compares them). Bounds above the cap stay as written (each
# tail rule costs compile time).
_BOUNDED_STRING = re.compile(r'"\\"" (\w+)\{(\d+), (\d+)\} "\\""')
MAX_EXPANDED_LENGTH = 256


@functools.lru_cache(maxsize=64)
def json_schema_grammar(schema: str) -> str:
    """The EBNF grammar of a JSON Schema (no free whitespace: a model could otherwise pad the output with spaces
    until max_tokens), strings held to JSON's rules."""
    import xgrammar as xgr

    ebnf = str(xgr.Grammar.from_json_schema(schema, any_whitespace=False))
    return expand_bounded_strings(ebnf.replace(_LOOSE_STRING_CHAR, _JSON_STRING_CHAR))


def expand_bounded_strings(ebnf: str, cap: int = MAX_EXPANDED_LENGTH) -> str:
    """Each quoted ``C{lo, hi}`` (hi at most ``cap``) rewritten with tail rules holding the closing quote (see
    ``_BOUNDED_STRING``): the same language, masks settled at compile time."""
    rules: dict[str, str] = {}

    def rewrite(mo: re.Match) -> str:
        char, lo, hi = mo.group(1), int(mo.group(2)), int(mo.group(3))
        tail = f"{char}_tail_"
        if hi > cap or lo > hi or re.search(rf"\b{tail}\d", ebnf):  # too long, or the names are taken: as written
            return mo.group(0)
        for j in range(hi - lo + 1):
            rules[f"{tail}{j}"] = r'(("\""))' if j == 0 else rf'(("\"") | ({char} {tail}{j - 1}))'
        return r'"\"" ' + " ".join([char] * lo + [f"{tail}{hi - lo}"])

    out = _BOUNDED_STRING.sub(rewrite, ebnf)
    return out + "".join(f"{name} ::= {body}\n" for name, body in rules.items())


def choices_grammar(choices: tuple[str, ...]) -> str:
    """An EBNF grammar matching exactly one of ``choices`` (JSON string escapes are EBNF string escapes)."""
    return "root ::= " + " | ".join(json.dumps(c) for c in choices)


def _first_line(e: BaseException) -> str:
    msg = str(e).strip()
    # drop xgrammar's "[time] /path/file.cc:line: " prefix: the caller wants the reason
    tail = msg.split(": ", 1)[1] if msg.startswith("[") and ": " in msg else msg
    return tail.splitlines()[0][:500] if tail else type(e).__name__


class TokenMasker:
    """Fills a step's masked rows' bitmasks in parallel and applies them to the logits (one per engine: its buffers
    are reused step after step, and it is used from the engine thread only)."""

    def __init__(self, threads: int):
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.threads = threads
        self._batch = None  # xgrammar's BatchGrammarMatcher (its thread pool), made on first use
        # two host buffers [rows, ceil(vocab / 32)] int32 used by turns, pinned for a CUDA device; each with the CUDA
        # event recorded after its copy was queued, waited on before it is filled again
        self._host: list[torch.Tensor | None] = [None, None]
        self._copied: list[torch.cuda.Event | None] = [None, None]
        self._turn = 0
        self._device_buf: torch.Tensor | None = None  # its copy on the logits' device (CUDA)

    def _buffers(self, n: int, width: int, device: torch.device) -> torch.Tensor:
        """This step's host buffer (at least ``n`` rows), safe to overwrite."""
        pin = device.type == "cuda"
        i = self._turn
        self._turn ^= 1 if pin else 0  # on CPU nothing is in flight: one buffer does
        buf = self._host[i]
        if buf is None or buf.shape[0] < n or buf.shape[1] != width or buf.is_pinned() != pin:
            rows = max(n, 2 * buf.shape[0]) if buf is not None and buf.shape[1] == width else n
            # a replaced pinned buffer may still be read by a copy: torch's pinned allocator holds it until then
            self._host[i] = buf = torch.empty((rows, width), dtype=torch.int32, pin_memory=pin)
            self._copied[i] = None
        elif self._copied[i] is not None:
            self._copied[i].synchronize()  # its copy of two steps ago (done long since unless steps overlap)
        return buf

    def fill(self, rows: list[int], matchers: list, n: int, vocab: int, device: torch.device) -> torch.Tensor:
        """The host bitmask (int32, at least ``n`` rows) with row ``rows[j]`` filled by ``matchers[j]``, in parallel
        without the GIL. Each listed row is written whole (the tests compare with fresh buffers); the other rows keep
        stale bits, never read (the apply takes ``indices=rows``)."""
        if self._batch is None:
            import xgrammar as xgr

            self._batch = xgr.BatchGrammarMatcher(max_threads=self.threads)
        host = self._buffers(n, (vocab + 31) // 32, device)
        self._batch.batch_fill_next_token_bitmask(matchers, host, rows)
        return host

    def apply(self, logits: torch.Tensor, rows: list[int], matchers: list) -> None:
        """Set to -inf, in place, the logits of tokens ``matchers[j]`` does not allow in row ``rows[j]``; the other
        rows are not touched."""
        import xgrammar as xgr

        n, vocab = logits.shape
        i = self._turn  # the buffer fill takes
        bitmask = self.fill(rows, matchers, n, vocab, logits.device)
        indices = rows
        if logits.device.type == "cuda":
            dev = self._device_buf
            if dev is None or dev.shape[0] < n or dev.shape[1] != bitmask.shape[1] or dev.device != logits.device:
                # one (grown with the host buffers), on the logits' stream: the previous step's apply read it before
                # this copy writes it
                self._device_buf = dev = torch.empty(bitmask.shape, dtype=torch.int32, device=logits.device)
            dev[:n].copy_(bitmask[:n], non_blocking=True)
            if self._copied[i] is None:
                self._copied[i] = torch.cuda.Event()
            self._copied[i].record()
            bitmask = dev
            # xgrammar's Triton path would copy a list from pageable memory, which waits for the step's kernels
            indices = upload(rows, torch.int32, logits.device)
        xgr.apply_token_bitmask_inplace(logits, bitmask, vocab_size=vocab, indices=indices)


def mask_logits(logits: torch.Tensor, rows: list[int], matchers: list, masker: TokenMasker | None = None) -> None:
    """Set to -inf, in place, the logits of tokens ``matchers[j]`` does not allow in row ``rows[j]`` (through
    ``masker``, the engine's; without one a single-threaded one for this call)."""
    (masker or TokenMasker(1)).apply(logits, rows, matchers)
