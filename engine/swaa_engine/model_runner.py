"""Turns a scheduled step into tensors, runs the model, and samples."""

from __future__ import annotations

import torch

from swaa_engine.attention.base import AttentionBackend, StepEntry, StepLayout
from swaa_engine.models.llama import AttentionContext, LlamaFamilyModel
from swaa_engine.sampler import SampleResult, SampleRow, TokenPresence, sample, token_logprobs, upload
from swaa_engine.scheduler import Chunk
from swaa_engine.swaa import LayerSpec


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

    @torch.inference_mode()  # the logits are inference tensors: changing them in place needs the same mode
    def _sample(self, logits: torch.Tensor, rows: list[SampleRow]) -> SampleResult:
        if self.presence is None and any(r.params.repetition_penalty != 1.0 for r in rows):
            self.presence = TokenPresence(logits.shape[1], logits.device)
        if self.counts is None and any(r.params.penalizes_output for r in rows):
            self.counts = TokenPresence(logits.shape[1], logits.device, counts=True)
        # this step's logits, read by nobody else
        return sample(logits, rows, self.presence, inplace=True, counts=self.counts)

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

    def hidden(self, chunks: list[Chunk]) -> torch.Tensor:
        """Final hidden states ``[tokens, hidden]`` of ``chunks`` (already in :meth:`order`); writes their KV."""
        ids, pos = [], []
        for c in chunks:
            ids.extend(c.seq.token_ids[c.start : c.end])
            pos.extend(range(c.start, c.end))
        meta = self.backend.prepare(self.layout(chunks))
        input_ids = upload(ids, torch.long, self.device)  # pinned and asynchronous on CUDA
        positions = upload(pos, torch.long, self.device)
        return self.model(input_ids, positions, AttentionContext(self.backend, meta, self.caches, self.specs))

    def execute(self, chunks: list[Chunk], rows: list[SampleRow],
                prompt_logprobs: dict[str, tuple[int, int]] | None = None) -> SampleResult | None:
        """Run ``chunks`` (already in :meth:`order`) and sample for those whose ``samples`` is set, in order.

        ``prompt_logprobs``: request id -> (first prompt position still to score, top-n); the logprobs of the prompt
        tokens after each such chunk's positions come back in ``SampleResult.prompt_logprobs``."""
        g = self.graphs
        decodes = sum(c.is_decode for c in chunks)
        if g is not None and len(chunks) <= g.max_batch and decodes == len(chunks) and all(c.samples for c in chunks):
            self.step_kinds["graph"] += 1
            logits = g.run([c.seq.token_ids[c.start] for c in chunks], [c.start for c in chunks],
                           [c.seq.block_table for c in chunks], [c.seq.ring for c in chunks])
            return self._sample(logits, rows)
        self.step_kinds["decode" if decodes == len(chunks) else "mixed" if decodes else "prefill"] += 1
        last, t = [], 0
        for c in chunks:
            t += c.num_tokens
            if c.samples:
                last.append(t - 1)
        hidden = self.hidden(chunks)
        scored = self._prompt_logprobs(chunks, hidden, prompt_logprobs) if prompt_logprobs else None
        if not last:
            return SampleResult([], [], scored) if scored else None
        logits = self.model.logits(hidden[upload(last, torch.long, self.device)])
        result = self._sample(logits, rows)
        result.prompt_logprobs = scored
        return result

    # rows of the lm head computed at once for prompt logprobs: bounds the [rows, vocab] logits a long chunk makes
    PROMPT_LOGITS_ROWS = 256

    @torch.inference_mode()
    def _prompt_logprobs(self, chunks: list[Chunk], hidden: torch.Tensor, wanted: dict[str, tuple[int, int]]) -> dict:
        """Position p's logits score prompt token p + 1: for each wanted chunk, the positions from where its request
        still needs scores up to the prompt's second-to-last token."""
        out, t = {}, 0
        for c in chunks:
            want = wanted.get(c.seq.request_id)
            lo, hi = (max(c.start, want[0]), min(c.end, c.seq.num_prompt - 1)) if want else (0, 0)
            if lo < hi:
                scores = out.setdefault(c.seq.request_id, [])
                for a in range(lo, hi, self.PROMPT_LOGITS_ROWS):
                    b = min(hi, a + self.PROMPT_LOGITS_ROWS)
                    logits = self.model.logits(hidden[t + a - c.start : t + b - c.start])
                    scores += token_logprobs(logits, c.seq.token_ids[a + 1 : b + 1], want[1])
            t += c.num_tokens
        return out
