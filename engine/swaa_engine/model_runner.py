"""Turns a scheduled step into tensors, runs the model, and samples.

A step is copied out of its sequences under the engine lock (:meth:`ModelRunner.prepare` → one immutable
:class:`StepBatch`) and run outside it (:meth:`ModelRunner.execute`), which reads no ``Sequence``: an abort landing
while the step runs changes nothing the step reads (its slots are freed when the step ends)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from swaa_engine.attention.base import AttentionBackend, StepEntry, StepLayout
from swaa_engine.cuda_graphs import GraphStep
from swaa_engine.models.llama import AttentionContext, LlamaFamilyModel
from swaa_engine.sampler import SampleResult, SampleRow, TokenPresence, sample, token_logprobs
from swaa_engine.transfer import upload
from swaa_engine.scheduler import Chunk
from swaa_engine.swaa import LayerSpec


@dataclass(frozen=True, slots=True)
class PromptScores:
    """Prompt logprobs wanted from a chunk: its packed rows from ``row`` on score ``targets`` (the next prompt tokens)."""

    request_id: str
    row: int
    targets: tuple[int, ...]  # the prompt tokens at lo + 1 ...
    top_n: int


@dataclass(frozen=True)
class StepBatch:
    """What one step's kernels and sampler read, copied from its chunks under the engine lock."""

    request_ids: tuple[str, ...]  # of the step's chunks, in order
    layout: StepLayout | None  # None for a graph step
    token_ids: tuple[int, ...] = ()  # every token computed, packed in layout order
    sampled_rows: tuple[int, ...] = ()  # packed row of each sampling chunk's last token, in order
    prompt_scores: tuple[PromptScores, ...] = ()
    graph: GraphStep | None = None  # set: the step replays a decode graph

    @property
    def positions(self) -> list[int]:
        return [p for e in self.layout.entries for p in range(e.start, e.end)]


class ModelRunner:
    def __init__(self, model: LlamaFamilyModel, specs: tuple[LayerSpec, ...], backend: AttentionBackend,
                 caches: list[tuple[torch.Tensor, torch.Tensor]], device: torch.device, fa_tail: int = 0):
        self.model, self.specs, self.backend, self.caches, self.device = model, specs, backend, caches, device
        self.fa_tail = fa_tail
        self.graphs = None  # a DecodeGraphs when decode steps replay CUDA graphs
        # steps run, by kind: prefill (chunks only), mixed (decodes and chunks), decode, graph (decodes replayed)
        self.step_kinds = {"prefill": 0, "mixed": 0, "decode": 0, "graph": 0}
        self.presence: TokenPresence | None = None  # seen tokens per request (repetition penalty), made on first use
        self.counts: TokenPresence | None = None  # generated-token counts (presence/frequency penalties), same
        self.masker = None  # the engine's structured.TokenMasker (fill threads, buffers kept across steps)

    @torch.inference_mode()  # the logits are inference tensors: changing them in place needs the same mode
    def _sample(self, logits: torch.Tensor, rows: list[SampleRow]) -> SampleResult:
        if self.presence is None and any(r.params.repetition_penalty != 1.0 for r in rows):
            self.presence = TokenPresence(logits.shape[1], logits.device)
        if self.counts is None and any(r.params.penalizes_output for r in rows):
            self.counts = TokenPresence(logits.shape[1], logits.device, counts=True)
        # this step's logits, read by nobody else
        return sample(logits, rows, self.presence, inplace=True, counts=self.counts, masker=self.masker)

    def forget(self, request_id: str) -> None:
        """A request ended: its sampling state goes (any thread)."""
        for table in (self.presence, self.counts):
            if table is not None:
                table.drop(request_id)

    def use_graphs(self, graphs) -> None:
        graphs.capture()
        self.graphs = graphs

    @staticmethod
    def order(chunks: list[Chunk]) -> list[Chunk]:
        """Decodes first, as the attention backends expect."""
        return sorted(chunks, key=lambda c: not c.is_decode)  # stable: keeps scheduling order within each group

    def layout(self, chunks: list[Chunk]) -> StepLayout:
        entries = tuple(
            StepEntry(c.start, c.num_tokens, c.seq.num_prompt, tuple(c.seq.block_table), c.seq.ring,
                      max(0, c.seq.num_prompt - self.fa_tail) if self.fa_tail else None)
            for c in chunks
        )
        return StepLayout(entries, sum(e.is_decode for e in entries))

    def prepare(self, chunks: list[Chunk], prompt_logprobs: dict[str, tuple[int, int]] | None = None) -> StepBatch:
        """The step of ``chunks`` (already in :meth:`order`), copied from their sequences (under the engine lock).

        ``prompt_logprobs``: request id -> (first prompt position still to score, top-n); the logprobs of the prompt
        tokens after each such chunk's positions come back in ``SampleResult.prompt_logprobs``."""
        g = self.graphs
        if g is not None and g.eligible(chunks):
            return StepBatch(tuple(c.seq.request_id for c in chunks), None, graph=g.plan(chunks))
        return self._eager(chunks, prompt_logprobs)

    def _eager(self, chunks: list[Chunk], prompt_logprobs: dict[str, tuple[int, int]] | None = None) -> StepBatch:
        ids, last, scores, t = [], [], [], 0
        for c in chunks:
            ids.extend(c.seq.token_ids[c.start : c.end])
            want = prompt_logprobs.get(c.seq.request_id) if prompt_logprobs else None
            lo, hi = (max(c.start, want[0]), min(c.end, c.seq.num_prompt - 1)) if want else (0, 0)
            if lo < hi:  # position p's logits score prompt token p + 1
                scores.append(PromptScores(c.seq.request_id, t + lo - c.start, tuple(c.seq.token_ids[lo + 1 : hi + 1]),
                                           want[1]))
            t += c.num_tokens
            if c.samples:
                last.append(t - 1)
        return StepBatch(tuple(c.seq.request_id for c in chunks), self.layout(chunks), tuple(ids), tuple(last),
                         tuple(scores))

    def hidden(self, batch: StepBatch | list[Chunk]) -> torch.Tensor:
        """Final hidden states ``[tokens, hidden]`` of a step (or of chunks, prepared here); writes their KV."""
        if not isinstance(batch, StepBatch):
            batch = self._eager(batch)
        meta = self.backend.prepare(batch.layout)
        input_ids = upload(list(batch.token_ids), torch.long, self.device)  # pinned and asynchronous on CUDA
        positions = upload(batch.positions, torch.long, self.device)
        return self.model(input_ids, positions, AttentionContext(self.backend, meta, self.caches, self.specs))

    def execute(self, batch: StepBatch, rows: list[SampleRow]) -> SampleResult | None:
        """Run a prepared step and sample for its sampling chunks, in order (``rows``: their sampling rows)."""
        g = self.graphs
        if batch.graph is not None:
            self.step_kinds["graph"] += 1
            try:
                logits = g.run(batch.graph)
            except BaseException:
                g.invalidate()
                raise
            return self._sample(logits, rows)
        layout = batch.layout
        decodes = layout.num_decodes
        self.step_kinds["decode" if decodes == len(layout.entries) else "mixed" if decodes else "prefill"] += 1
        hidden = self.hidden(batch)
        scored = self._prompt_logprobs(hidden, batch.prompt_scores) if batch.prompt_scores else None
        if not batch.sampled_rows:
            return SampleResult([], [], scored) if scored else None
        logits = self.model.logits(hidden[upload(list(batch.sampled_rows), torch.long, self.device)])
        result = self._sample(logits, rows)
        result.prompt_logprobs = scored
        return result

    # rows of the lm head computed at once for prompt logprobs: bounds the [rows, vocab] logits a long chunk makes
    PROMPT_LOGITS_ROWS = 256

    @torch.inference_mode()
    def _prompt_logprobs(self, hidden: torch.Tensor, wanted: tuple[PromptScores, ...]) -> dict:
        out = {}
        for w in wanted:
            scores = out.setdefault(w.request_id, [])
            for a in range(0, len(w.targets), self.PROMPT_LOGITS_ROWS):
                b = min(len(w.targets), a + self.PROMPT_LOGITS_ROWS)
                logits = self.model.logits(hidden[w.row + a : w.row + b])
                scores += token_logprobs(logits, list(w.targets[a:b]), w.top_n)
        return out
