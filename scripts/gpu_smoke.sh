#!/usr/bin/env bash
# One GPU: a few PPO steps of the tiny countdown recipe with vLLM (sleep/wake each step) and the
# Triton kernels, then step time by phase, tokens/s and GPU memory awake / asleep.
#   pip install -e '.[gpu]' && bash scripts/gpu_smoke.sh [hydra overrides]
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_DIR=${RUN_DIR:-outputs/gpu_smoke/$(date +%Y-%m-%d_%H-%M-%S)}
python -c "import torch, vllm; assert torch.cuda.is_available(), 'no GPU visible'; print('torch', torch.__version__, 'vllm', vllm.__version__, torch.cuda.get_device_name())"
python scripts/train.py experiment=gpu_smoke hydra.run.dir="$RUN_DIR" "$@"
python scripts/phase_report.py "$RUN_DIR"
