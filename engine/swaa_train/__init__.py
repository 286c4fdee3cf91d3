"""SWA-aware fine-tuning: self-distilled data, LoRA training under the serving mask, adapter merging."""
