"""KV cache bookkeeping (torch-free: pools, manager) and storage (torch: storage.py)."""
