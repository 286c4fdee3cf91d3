import pytest


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if not has_cuda:
        skip = pytest.mark.skip(reason="needs CUDA")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_qwen3(tmp_path_factory):
    """(folder, transformers model in float32) of a tiny random Qwen3."""
    from tests.models import save_tiny_qwen3

    folder = tmp_path_factory.mktemp("tiny-qwen3")
    model = save_tiny_qwen3(folder)
    return str(folder), model


@pytest.fixture(scope="session")
def smollm2():
    """(transformers model in float32, tokenizer) of the embedded SmolLM2-135M-Instruct, loaded once."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from swaa_engine.models.loader import resolve_source

    src = resolve_source(None)
    model = AutoModelForCausalLM.from_pretrained(src.folder, dtype=torch.float32, **src.hf_kwargs()).eval()
    tok = AutoTokenizer.from_pretrained(src.folder, **src.hf_kwargs())
    return model, tok
