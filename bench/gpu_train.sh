#!/usr/bin/env bash
# GPU training benchmark: seconds per step and peak VRAM of a LoRA run on one GPU, from the project's own files
# (real-shape random SD1.5 and SDXL checkpoints written into bench/out/ by library/models/factory.py; no download).
#
#   SD1.5 at 512 px and SDXL at 1024 px, bf16, PyTorch SDPA attention, rank 16, batch 1, cached latents
#   (SDXL also caches its text-encoder outputs), U-Net only, 12 steps each (the first step is not timed).
#
#   bash bench/gpu_train.sh            # about 5 minutes on one H100/H200-class GPU, most of it writing checkpoints
#   STEPS=30 bash bench/gpu_train.sh   # longer runs
#
# Prints one table row per family (s/step: median wall time per step; VRAM peak: torch.cuda.max_memory_allocated).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
STEPS="${STEPS:-12}"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'bench/gpu_train.sh needs a CUDA GPU')"
"$PY" -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))"
"$PY" bench/train_speed.py --family sd1 --models real --resolution 512 --rank 16 --mixed_precision bf16 \
    --settings cached --steps "$STEPS"
"$PY" bench/train_speed.py --family sdxl --models real --resolution 1024 --rank 16 --mixed_precision bf16 \
    --settings cached --steps "$STEPS"
