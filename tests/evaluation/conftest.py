import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    # the test machine has 2 shared cores; one thread also keeps CPU results bit-reproducible
    yield
