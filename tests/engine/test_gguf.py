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


def test_block_types_transformers_cannot_read_go_through_gguf_py(tmp_path):
    """Gemma 3 270M's Q4_K_M file holds Q5_0 blocks, which transformers' one-pass reader refuses: the fallback
    table (offsets after the aligned metadata) and gguf-py's dequantization give each tensor back, beside
    tensors of the types transformers does read."""
    import numpy as np
    from gguf import GGMLQuantizationType as Q, GGUFWriter
    from gguf.quants import dequantize, quantize
    from transformers.integrations.gguf.reader import GgufHeader

    from swaa_engine.models.gguf import _raw_reader_any_type

    rng = np.random.default_rng(0)
    tensors = {"a.weight": (rng.standard_normal((6, 64)).astype(np.float32), Q.Q5_0),
               "b.weight": (rng.standard_normal((3, 64)).astype(np.float32), Q.Q8_0),
               "c.weight": (rng.standard_normal((5,)).astype(np.float32), Q.F32),
               "d.weight": (rng.standard_normal((2, 32)).astype(np.float32), Q.Q5_0)}
    path = str(tmp_path / "mixed.gguf")
    w = GGUFWriter(path, "gemma3")
    w.add_string("general.name", "x" * 37)  # an odd length: the tensor data starts after alignment padding
    for name, (x, t) in tensors.items():
        data = x if t is Q.F32 else quantize(x, t)
        w.add_tensor(name, data, raw_shape=x.shape if t is Q.F32 else None, raw_dtype=t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match="not supported"):
        GgufHeader.from_file(path)
    arch, read = _raw_reader_any_type(path)
    assert arch == "gemma3" and set(read) == set(tensors)
    for name, (x, t) in tensors.items():
        want = x if t is Q.F32 else dequantize(quantize(x, t), t)
        got = read[name]()
        assert got.dtype == torch.float32 and tuple(got.shape) == x.shape
        assert torch.equal(got, torch.from_numpy(np.ascontiguousarray(want, dtype=np.float32)).reshape(x.shape)), name
