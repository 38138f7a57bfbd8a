#!/bin/bash
# One command for a GPU session of issue 19 (about 8 minutes on an H200): the CUDA replay tests, the
# issue's whole table (benchmarks/gpu_speed.py) and batch throughput, each capped so that one stuck step
# leaves time for the rest. Run from the repository root with .gpu_peers carried
# (benchmarks/gpu_carry.py); everything lands in $OUT (the run tool's folder) or benchmarks/results/gpu.
set -u
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
export PYTHONPATH="src:benchmarks:.gpu_peers${PYTHONPATH:+:$PYTHONPATH}"
PY=${PY:-python}
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
  for m in numpy PIL torchvision scipy cv2 medlrp zennit lxt pytorch_grad_cam; do
    $PY -c "import $m" 2>/dev/null && echo "import $m: ok" || echo "import $m: MISSING"
  done
} > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"
timeout 150 $PY -m pytest tests/test_lrp_replay_cuda.py -q -p no:cacheprovider -o addopts="" -x \
  > "$OUT/replay_cuda.txt" 2>&1
echo "replay tests: exit $? ($(tail -n 1 "$OUT/replay_cuda.txt"))"
timeout 300 $PY benchmarks/gpu_speed.py --out "$OUT/gpu_speed.json" > "$OUT/gpu_speed.txt" 2>&1
echo "gpu_speed: exit $?"
tail -n 60 "$OUT/gpu_speed.txt"
timeout 120 $PY benchmarks/batch_throughput.py --device cuda --procs 1 --n 2000 --workers 4 --writers 4,8 \
  > "$OUT/batch_throughput.txt" 2>&1
echo "batch_throughput: exit $?"
tail -n 15 "$OUT/batch_throughput.txt"
