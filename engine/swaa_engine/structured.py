"""Structured output with xgrammar: specs compiled to grammars, one matcher per request, token masks per step.

Compilation happens where a request is taken in (``LLMEngine.add_request``, on the intake pool's threads like
tokenization), never on the engine thread; xgrammar's compiler caches compiled grammars per spec (bounded by
``CACHE_BYTES``), so a repeated schema costs a matcher's construction only. Each step the sampler fills the masked
rows' bitmasks on the host right after the step's kernels were queued (on a GPU they run meanwhile) and applies
them to the logits on their device. The matcher allows the end-of-sequence token only where the spec is complete.

xgrammar is an optional dependency (``pip install swaa-serve[structured]``), imported on first use.
"""

from __future__ import annotations

import functools
import json
import threading

import torch

from swaa_engine.errors import InvalidRequestError
from swaa_engine.sampling_params import StructuredOutput

CACHE_BYTES = 256 << 20  # compiled grammars kept (xgrammar evicts the least recently used beyond it)


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


@functools.lru_cache(maxsize=64)
def json_schema_grammar(schema: str) -> str:
    """The EBNF grammar of a JSON Schema (no free whitespace: a model could otherwise pad the output with spaces
    until max_tokens), strings held to JSON's rules."""
    import xgrammar as xgr

    ebnf = str(xgr.Grammar.from_json_schema(schema, any_whitespace=False))
    return ebnf.replace(_LOOSE_STRING_CHAR, _JSON_STRING_CHAR)


def choices_grammar(choices: tuple[str, ...]) -> str:
    """An EBNF grammar matching exactly one of ``choices`` (JSON string escapes are EBNF string escapes)."""
    return "root ::= " + " | ".join(json.dumps(c) for c in choices)


def _first_line(e: BaseException) -> str:
    msg = str(e).strip()
    # drop xgrammar's "[time] /path/file.cc:line: " prefix: the caller wants the reason
    tail = msg.split(": ", 1)[1] if msg.startswith("[") and ": " in msg else msg
    return tail.splitlines()[0][:500] if tail else type(e).__name__


def mask_logits(logits: torch.Tensor, rows: list[int], matchers: list) -> None:
    """Set to -inf, in place, the logits of tokens ``matchers[j]`` does not allow in row ``rows[j]``."""
    import xgrammar as xgr

    n, vocab = logits.shape
    bitmask = xgr.allocate_token_bitmask(n, vocab)  # host, int32; rows not listed stay all-allowed and untouched
    for i, m in zip(rows, matchers):
        m.fill_next_token_bitmask(bitmask, i)
    if logits.device.type == "cuda":
        bitmask = bitmask.pin_memory().to(logits.device, non_blocking=True)
    xgr.apply_token_bitmask_inplace(logits, bitmask, vocab_size=vocab, indices=rows)
