"""Defaults for the embedded model (SmolLM2-135M-Instruct, 8k context)."""

from swaa_engine.swaa import SWAAConfig

# Provisional: the paper's strongest training-free combination (sinks + fa_decode + ½ full
# layers) at a window of 1/8 of the context. The long-context evaluation picks the final value.
EMBEDDED_SWAA = SWAAConfig(window=1024, sinks=64, fa_decode=True, fa_layers="odd")
