#!/usr/bin/env bash
# Every check dropkit needs a GPU for, as one prepared command for a session that is lent one:
#
#   1. the CUDA-only tests: the Triton kernels compiled for the device give the CPU's bits for every
#      op and dtype (tests/test_ops.py), WeightDrop on cuDNN's RNN kernels (tests/test_weights.py),
#      the noise kernels' bits and the noise layers' CPU = GPU noise (tests/test_noise_kernels.py);
#   2. the kernel benchmark on the device: forward / forward + backward against torch eager,
#      torch.compile and x.clone(), the copy bandwidth of forward and backward, and fused
#      bias + dropout + residual against eager (issue 3's GPU targets: >= 90 % of the copy
#      bandwidth, fused >= 2x eager).
#
# It runs from the checkout without installing anything (PYTHONPATH=src), on the image's python3
# (torch, triton, numba, numpy, pytest and hypothesis are there; nothing can be fetched there).
# Output goes to the terminal and to $OUT (the device tool's folder that comes back) or
# /tmp/dropkit-gpu. Not yet run on a GPU (no task so far was lent one); checked here only up to its
# "no CUDA device" stop. Usage, from the repository root:
#
#   bash benchmarks/gpu_check.sh            # PYTHON=... to pick another interpreter
#
# Record the tables in BENCHMARKS.md with the GPU's name and this command.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
OUT=${OUT:-/tmp/dropkit-gpu}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# The C++ node is a CPU path; building it would only cost time here.
export DROPKIT_NATIVE=0

"$PYTHON" - <<'EOF' 2>&1 | tee "$OUT/device.txt"
import torch, triton, dropkit
print(f"torch {torch.__version__}, triton {triton.__version__}, dropkit {dropkit.__version__}")
if not torch.cuda.is_available():
    raise SystemExit("no CUDA device: this script is for a GPU machine")
print(f"GPU: {torch.cuda.get_device_name()}")
EOF
status=${PIPESTATUS[0]}
[ "$status" -eq 0 ] || exit "$status"

"$PYTHON" -m pytest -q -o addopts="" -p no:cacheprovider \
    tests/test_ops.py tests/test_weights.py tests/test_noise_kernels.py -k "cuda or cudnn" 2>&1 \
    | tee "$OUT/tests.txt"
tests=${PIPESTATUS[0]}

"$PYTHON" -m dropkit.bench --device cuda 2>&1 | tee "$OUT/bench_cuda.txt"
bench=${PIPESTATUS[0]}

# Counter-based noise: saved bytes per layer, Gaussian dropout against randn_like on the device.
"$PYTHON" benchmarks/bench_noise.py --device cuda --quick 2>&1 | tee "$OUT/bench_noise_cuda.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || bench=1

echo "tests: exit $tests; benchmark: exit $bench (files in $OUT)"
[ "$tests" -eq 0 ] && [ "$bench" -eq 0 ]
