"""The embedded GGUF read in one pass (models/gguf.py) gives what transformers' from_pretrained gives."""

import pytest
import torch

from swaa_engine.models.gguf import read_gguf
from swaa_engine.models.loader import resolve_source


@pytest.fixture(scope="module")
def checkpoint():
    src = resolve_source(None)
    return read_gguf(src.folder, src.gguf_file)


def test_config_tokenizer_and_weights_equal_from_pretrained(checkpoint, smollm2):
    hf, tok = smollm2
    ours, theirs = checkpoint.config.to_dict(), hf.config.to_dict()
    skip = {"_name_or_path", "dtype", "torch_dtype", "transformers_version", "quantization_config"}  # set by the load
    assert {k: v for k, v in ours.items() if k not in skip} == {k: v for k, v in theirs.items() if k not in skip}
    for text in ["What is the capital of France?", "  spaces\tand\nnewlines ", "héllo wörld 🙂", "<|im_start|>user"]:
        assert checkpoint.tokenizer.encode(text) == tok.encode(text)
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert (checkpoint.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
            == tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False))
    assert (checkpoint.tokenizer.eos_token_id, checkpoint.tokenizer.bos_token_id) == (tok.eos_token_id, tok.bos_token_id)
    sd = hf.state_dict()
    assert set(checkpoint.state_dict) == set(sd) - {"lm_head.weight"}  # tied to the embeddings
    for name, w in checkpoint.state_dict.items():  # q/k rows un-permuted exactly as transformers does
        assert torch.equal(w, sd[name].float()), name


def test_engine_reads_the_file_once(monkeypatch):
    """from_pretrained(gguf_file=…) parsed it four times with gguf's slow reader (config twice, tokenizer, weights)."""
    import gguf

    from swaa_engine.config import CacheConfig, EngineConfig
    from swaa_engine.engine import LLMEngine

    parses = []
    real = gguf.GGUFReader.__init__
    monkeypatch.setattr(gguf.GGUFReader, "__init__", lambda self, *a, **k: (parses.append(a), real(self, *a, **k))[1])
    engine = LLMEngine(EngineConfig(cache=CacheConfig(budget_bytes=64 << 20), max_model_len=1024))
    assert parses == []
    assert engine.tokenizer.decode(engine.tokenizer.encode("Paris")) == "Paris"
