import numpy as np
import pytest
import torch

from idtprior.evaluation import FinetuneParams, extract_features, finetune
from idtprior.models import ArrayClipSource, moving_squares, resnet3d

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_features_and_finetuning_on_cuda_agree_with_the_cpu():
    videos, labels = moving_squares(16, frames=10, size=32, seed=0)
    src = ArrayClipSource(videos)
    torch.manual_seed(0)
    encoder = resnet3d(width=0.125, embed_dim=8)
    cpu = extract_features(encoder, src, None, 8, 32, clips=2, seed=0, device="cpu")
    gpu = extract_features(encoder, src, None, 8, 32, clips=2, seed=0, device="cuda")
    np.testing.assert_allclose(gpu, cpu, rtol=1e-3, atol=1e-3)
    params = FinetuneParams(batch_size=8, clip_length=8, crop_size=32, crop_scales=(1.0,), test_clips=2,
                            val_fraction=0.25, lr=0.03, epochs=2, device="cuda")
    r = finetune(encoder.cpu(), src, labels, src, labels, params)
    assert r.test_probabilities.shape == (16, 4) and np.isfinite(r.test_probabilities).all()
    assert next(r.model.parameters()).device.type == "cpu"
