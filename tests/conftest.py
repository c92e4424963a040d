import os

import pytest
import torch

# CuTeDSL reads its target once, at the first `import cutlass`: on a CPU-only machine every
# compile test needs sm_90a, so set it before any test module is imported.
if not torch.cuda.is_available():
    from fa4_tq.kernels.compile import configure_cpu_compile_env

    configure_cpu_compile_env()

# The reference Lloyd-Max tables are cached on disk; keep the test run's cache local.
os.environ.setdefault("FA4TQ_CACHE_DIR", os.path.join(os.path.dirname(__file__), "..", ".cache"))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
