"""Defaults for the embedded model (SmolLM2-135M-Instruct, 8k context)."""

from swaa_engine.swaa import SWAAConfig

# Chosen from the evaluation in docs/quality.md: of every config measured, the question tail over
# sinks + fa_decode came closest to full attention (passkey at or above FA at 2-8k, LM loss within
# 0.015 nats). fa_decode keeps full KV in every layer: this saves prefill compute, not cache memory (360 MiB of
# float32 KV per 8k sequence, as full attention; ring + 1/2 FA would take 204 MiB but lose most retrieval beyond the
# window: docs/quality.md, "What the default trades"). A choice, said by `swaa info`.
EMBEDDED_SWAA = SWAAConfig(window=1024, sinks=64, fa_decode=True, fa_tail=32)
