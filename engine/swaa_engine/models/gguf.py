"""A GGUF file → (config, tokenizer, state dict) in one pass, through transformers' own tables and kernels.

``from_pretrained(gguf_file=…)`` parses the file once per object it builds, and its legacy reader turns
every vocabulary and merge string into a Python object each time: four parses and ~60 s for the embedded
135M model on a 2-core machine (config twice, tokenizer, weights). Here the metadata is read with
transformers' memory-mapped reader, the config and tensor names mapped with the tables its legacy loader
uses, and each tensor read and dequantized once straight into a state dict. ``tests/engine/test_gguf.py``
checks the result against ``from_pretrained``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch


@dataclass
class GGUFCheckpoint:
    config: object  # a transformers PretrainedConfig
    tokenizer: object
    state_dict: Mapping[str, torch.Tensor]  # Hugging Face names, float32, read when asked for


def _config_dict(metadata: dict, tensor_names: tuple[str, ...], vocab: int) -> dict:
    """What ``load_gguf_checkpoint(…)["config"]`` gives, for the architectures models.registry supports."""
    from transformers.integrations.ggml import GGUF_CONFIG_DEFAULTS_MAPPING, GGUF_CONFIG_MAPPING

    arch = metadata["general.architecture"]
    # llama.cpp writes Mistral as llama; transformers renames it when the model's name is exactly "mistral"
    updated = "mistral" if "llama" in arch and metadata.get("general.name") == "mistral" else arch
    if updated not in GGUF_CONFIG_MAPPING:
        from swaa_engine.models.registry import UnsupportedModelError

        raise UnsupportedModelError(f"GGUF architecture {arch!r} is not supported")
    config = {"tie_word_embeddings": "output.weight" not in tensor_names}
    for key, value in GGUF_CONFIG_DEFAULTS_MAPPING.get(updated, GGUF_CONFIG_DEFAULTS_MAPPING.get(arch) or {}).items():
        config.setdefault(key, value)
    renames = GGUF_CONFIG_MAPPING
    for key, value in metadata.items():
        prefix, _, rest = key.replace(arch, updated).partition(".")
        target = renames.get(prefix, {}).get(rest)
        if target is None or target == -1:
            continue
        if isinstance(value, str) and arch in value:
            value = value.replace(arch, updated)
        config[target] = value
    config.setdefault("vocab_size", vocab)
    if config.get("model_type") == "gemma3":  # the file holds the text model only, as load_gguf_checkpoint says
        config["model_type"] = "gemma3_text"
    return config


def _tokenizer(folder: str, gguf_file: str):
    # AutoTokenizer would parse the whole file again (with the slow reader) only to pick this class; the
    # tokenizer itself is rebuilt from the file's vocabulary by transformers' GGUF converter either way.
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    return TokenizersBackend.from_pretrained(folder, gguf_file=gguf_file, local_files_only=True)


def _hf_names(config) -> list[str]:
    """The parameter names transformers' model of this config has (built on the meta device: no memory)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return list(model.state_dict())


def read_gguf(folder: str, gguf_file: str) -> GGUFCheckpoint:
    import os

    from gguf import MODEL_ARCH_NAMES, get_tensor_name_map
    from transformers import AutoConfig
    from transformers.integrations.gguf.reader import GgufHeader, read_gguf_metadata
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor

    path = os.path.join(folder, gguf_file)
    # the metadata (string arrays left as counts) and the tensor table; the tensor data stays mapped, unread
    try:
        header = GgufHeader.from_file(path)
        arch, raw = header.architecture, _raw_reader(header)
    except ValueError:  # a block type transformers' reader refuses (Q5_0, in Gemma 3 270M's Q4_K_M file)
        arch, raw = _raw_reader_any_type(path)
    metadata, names = read_gguf_metadata(path)
    cfg_dict = _config_dict(metadata, names, metadata.get("tokenizer.ggml.tokens", 0))
    config = AutoConfig.for_model(**cfg_dict)

    arch_enum = next(k for k, v in MODEL_ARCH_NAMES.items() if v == arch)
    name_map = get_tensor_name_map(arch_enum, config.num_hidden_layers)
    to_hf = {}
    for hf in _hf_names(config):
        base, _, suffix = hf.rpartition(".")
        gguf_name = name_map.get_name(base)
        if gguf_name is not None:
            to_hf[f"{gguf_name}.{suffix}"] = hf
    # llama.cpp permutes llama's q/k rows for its rotary layout; transformers' processor undoes it
    processor = TENSOR_PROCESSORS.get(arch, TensorProcessor)(config=cfg_dict)

    def read(name: str) -> torch.Tensor:
        w = processor.process(weights=raw[name]().numpy(), name=name).weights
        return torch.from_numpy(w.copy())  # the permutation may leave a view

    # tensors the engine does not use (rope_freqs: it computes its own rotary tables) are never read
    hf_to_gguf = {hf: g for g, hf in to_hf.items() if g in raw}
    return GGUFCheckpoint(config, _tokenizer(folder, gguf_file), LazyStateDict(hf_to_gguf, read))


def _raw_reader(header) -> dict:
    """GGUF name → a function reading that tensor as float32 in its torch shape (transformers' kernels)."""
    from transformers.integrations.gguf.dequant import GGML_BLOCK, dequantize
    from transformers.integrations.gguf.reader import load_gguf_state_dict

    lazy = load_gguf_state_dict(header)

    def reader(info):
        def read() -> torch.Tensor:
            raw = lazy[info.name][...]
            w = dequantize(raw.reshape(-1), info.ggml_type) if info.ggml_type in GGML_BLOCK else raw.float()
            return w.reshape(info.shape)
        return read

    return {i.name: reader(i) for i in header.tensors}


def _raw_reader_any_type(path: str) -> tuple[str, dict]:
    """(architecture, ``_raw_reader``'s map) for a file holding block types transformers cannot dequantize:
    the same tensor table (its parser), sizes and dequantization from gguf-py (numpy; slower, only for those
    types). gguf-py's own ``GGUFReader`` would take ~30 s on Gemma 3's 262k-entry vocabulary."""
    from math import prod

    import numpy as np
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    from gguf.quants import dequantize as gguf_dequantize
    from transformers.integrations.gguf import reader as hf_reader
    from transformers.integrations.gguf.dequant import GGML_BLOCK, dequantize

    blob = hf_reader._mapped(path)
    metadata, count, pos = hf_reader._read_metadata(blob, path)
    entries, pos = hf_reader._read_tensor_table(blob, count, pos)
    alignment = metadata.get("general.alignment", 32)
    start = (pos + alignment - 1) // alignment * alignment
    floats = {0: torch.float32, 1: torch.float16, 30: torch.bfloat16}

    def reader(shape, ggml_type, data):
        def read() -> torch.Tensor:
            if ggml_type in floats:
                return torch.from_numpy(np.copy(data)).view(floats[ggml_type]).float().reshape(shape)
            if ggml_type in GGML_BLOCK:
                return dequantize(torch.from_numpy(np.copy(data)), ggml_type).reshape(shape)
            rows = data.reshape(-1, len(data) // (prod(shape) // shape[-1]))
            w = gguf_dequantize(rows, GGMLQuantizationType(ggml_type))
            return torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32)).reshape(shape)
        return read

    out = {}
    for name, shape, ggml_type, offset in entries:
        block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
        nbytes = prod(shape) // block * block_bytes
        out[name] = reader(shape, ggml_type, blob[start + offset : start + offset + nbytes])
    return metadata["general.architecture"], out


class LazyStateDict(Mapping):
    """Hugging Face name → tensor, each read and dequantized when asked for: loading copies one tensor at a
    time into the model, so the float32 copy of the whole checkpoint never exists beside it."""

    def __init__(self, names: dict[str, str], read):
        self._names, self._read = names, read

    def __getitem__(self, hf_name: str) -> torch.Tensor:
        return self._read(self._names[hf_name])

    def __iter__(self):
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)
