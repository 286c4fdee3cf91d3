"""``transfer.upload`` on CUDA: every host form the step path hands it (lists, numpy arrays, host tensors) arrives
with its values and dtype. A numpy array failed here ("Can't pin tensor constructed from numpy") and took down
every CUDA step that built its metadata with numpy."""

import numpy as np
import pytest
import torch

from swaa_engine.transfer import upload

pytestmark = pytest.mark.gpu


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("form", [list, np.array, torch.tensor], ids=["list", "numpy", "tensor"])
def test_upload_takes_every_host_form(form):
    dev = torch.device("cuda")
    for dtype in (torch.int32, torch.long, torch.float32):
        out = upload(form([3, 1, 2]), dtype, dev)
        assert out.device.type == "cuda" and out.dtype == dtype
        assert out.cpu().tolist() == [3, 1, 2]
