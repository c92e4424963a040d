import os

import pytest
import torch

# The reference Lloyd-Max tables are cached on disk; keep the test run's cache local.
os.environ.setdefault("FA4TQ_CACHE_DIR", os.path.join(os.path.dirname(__file__), "..", ".cache"))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
