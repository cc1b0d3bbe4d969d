#!/bin/sh
# The GPU checks, as one script for a machine with a CUDA GPU and PyTorch (no install needed:
# dlm runs from src/): the CUDA tests of every process and sampler in fp32 and bf16, then the
# training and sampling throughput of the small and base presets, masked diffusion against AR.
# About 5-8 minutes on one H100. Results go to $OUT (default gpu-out/).
#
#   sh benchmarks/gpu_check.sh
set -e
export PYTHONPATH="$PWD/src" PYTHONUNBUFFERED=1
OUT="${OUT:-gpu-out}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt"
python3 -m pytest tests/test_devices.py -q -p no:cacheprovider -rs 2>&1 | tee "$OUT/tests.log"
python3 benchmarks/gpu_throughput.py --json "$OUT/throughput.json" 2>&1 | tee "$OUT/throughput.md"
