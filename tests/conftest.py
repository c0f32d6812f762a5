import os
import sys

# Tests import the shared bounds helper as `from tests.stats import ...` or `from stats import ...`.
sys.path.insert(0, os.path.dirname(__file__))

import torch  # noqa: E402

# Tests use tiny tensors: one intra-op thread avoids oversubscription on the 2-core CI machine
# (a small MLP fit took 2.0 s with the default threads and 0.03 s with one under load).
torch.set_num_threads(1)

# numba compiles in the test process on first use, as it did before the background warm-up
# (dropkit.kernels.warmup): tests must not depend on how far a background compile has got.
# tests/test_coldstart.py tests the warm-up itself.
os.environ.setdefault("DROPKIT_WARMUP", "0")
