import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # the test machine has 2 shared cores; one thread also keeps CPU results bit-reproducible
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
