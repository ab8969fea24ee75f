import os

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip)


@pytest.fixture(params=DEVICES)
def device(request):
    """Every device this machine has (CPU, and CUDA where present)."""
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def trained_networks(tmp_path_factory):
    """UNet, SegResNet and DynUNet trained briefly on the demo's data (see tests/trained.py)."""
    from trained import train_networks

    return train_networks(tmp_path_factory.mktemp("trained"))
