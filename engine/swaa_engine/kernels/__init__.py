"""Triton kernels outside attention (attention's own live in ``attention/triton_ops.py``)."""
