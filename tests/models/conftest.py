import pytest

from idtprior.models import ArrayClipSource, PretrainParams, moving_squares


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    # the test machine has 2 shared cores; one thread also keeps CPU results bit-reproducible
    yield


@pytest.fixture
def squares():
    """16 tiny moving-square videos (10 frames of 40x40; two shorter than the clip) and their motion labels."""
    videos, labels = moving_squares(16, frames=10, size=40, seed=3)
    videos[0] = videos[0][:3]  # shorter than the clip: must loop
    videos[5] = videos[5][:1]
    return ArrayClipSource(videos), labels


def make_tiny_params(**overrides) -> PretrainParams:
    base = dict(
        arch="resnet18", width=0.125, embed_dim=16, clip_length=4, crop_size=32, batch_size=4, lr=0.03, epochs=2,
        negatives=8, la_k=8, n_clusters=4, kmeans_runs=2, kmeans_iters=5, knn_k=3, num_workers=0,
        log_every_n_steps=1, progress_bar=False, accelerator="cpu", milestones=(1,), gamma=0.5,
    )
    base.update(overrides)
    return PretrainParams(**base)



@pytest.fixture
def tiny_params():
    """Factory of CPU-sized PretrainParams (width 1/8, 4x32x32 clips, batch 4, 2 epochs), with keyword overrides."""
    return make_tiny_params
