from swaa_engine.attention.base import AttentionBackend, StepEntry, StepLayout, available_backends, create_backend

__all__ = ["AttentionBackend", "StepEntry", "StepLayout", "available_backends", "create_backend"]
