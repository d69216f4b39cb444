#!/usr/bin/env bash
# CUDA checks, for a machine with an NVIDIA GPU (CI has none; run by hand):
#   0. tests/training/test_cuda.py (bf16/fp16/fp32 training, RNG state and resume through a GPU)
#   1. AMP training (precision auto -> bf16 where supported) and fp16 with a GradScaler,
#      both models, on a phantom written here; evaluate; analyse (CAM, alignment, dissection)
#   2. torchrun with the NCCL backend and train.sync_bn=true (SyncBatchNorm)
#   3. a run killed mid-epoch on the GPU resumes and finishes
#   4. benchmarks/speed.py on the GPU: fp32 vs bf16+channels_last, 128 and 224 px
# Usage: bash benchmarks/cuda_check.sh [WORKDIR]   (python3 must have torch with CUDA and
# the package's dependencies; the package itself is taken from ./src)
set -euo pipefail
W=${1:-$(mktemp -d)}
PY=${PY:-python3}
# dry run of the script's flow on a CPU: DEVICE=cpu SIZE=32 IMAGES=200 NG=2 SPEED=0 SYNC_BN=false bash benchmarks/cuda_check.sh
DEVICE=${DEVICE:-cuda} SIZE=${SIZE:-224} IMAGES=${IMAGES:-1500}
NG=${NG:-$(nvidia-smi -L 2>/dev/null | wc -l)}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
imb() { "$PY" -m imbalens.cli "$@"; }
step() { printf '\n=== %s (%s)\n' "$*" "$(date +%T)"; }
ok() { printf 'CHECK %s: %s\n' "$1" "$2"; }

step environment
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA')"

step "pytest tests/training/test_cuda.py"
[ "$DEVICE" = cpu ] || "$PY" -m pytest -q -p no:cacheprovider -o addopts= tests/training/test_cuda.py

step phantom
imb synth --out "$W/phantom" --images "$IMAGES" --size 256 --workers "$(nproc)"

cat >"$W/base.yaml" <<EOF
data: {root: $W/phantom, image_size: $SIZE, task: multilabel, cache: true}
model: {name: t-densenet, weights: null}
loss: {name: wbce}
train: {epochs: 3, batch_size: 64, eval_batch_size: 256, lr: 1.0e-3,
        max_steps_per_epoch: 15, precision: auto, workers: 4, device: $DEVICE, progress: "off"}
analysis: {batch_size: 64}
EOF

metric() { "$PY" -c "import json,sys; m=json.load(open(sys.argv[1]+'/metrics.json')); print(round(m['auroc_mean'],3))" "$1"; }
losses() { "$PY" -c "import pandas as pd,sys; h=pd.read_csv(sys.argv[1]+'/history.csv'); print(' -> '.join(f'{v:.4f}' for v in h.train_loss))" "$1"; }

for spec in "t-densenet auto" "resnet50 auto" "t-densenet fp16" "resnet50 fp16"; do
  set -- $spec
  run="$W/runs/$1-$2"
  step "train $1 precision=$2"
  /usr/bin/time -f "wall %e s" "$PY" -m imbalens.cli train --config "$W/base.yaml" \
    --set model.name="$1" --set train.precision="$2" --out "$run"
  ok "train $1 $2" "test AUROC $(metric "$run"), train loss $(losses "$run")"
done

step "evaluate + analyse on CUDA (t-densenet auto)"
imb evaluate "$W/runs/t-densenet-auto"
/usr/bin/time -f "wall %e s" "$PY" -m imbalens.cli analyse "$W/runs/t-densenet-auto" --device "$DEVICE"
ls "$W/runs/t-densenet-auto"
ok analyse "$(head -c 400 "$W/runs/t-densenet-auto/concepts.json" | tr '\n' ' ')"

step "torchrun, NCCL, SyncBatchNorm ($NG processes, one per GPU)"
"$PY" -m torch.distributed.run --standalone --nproc_per_node "$NG" -m imbalens.cli train \
  --config "$W/base.yaml" --set train.sync_bn="${SYNC_BN:-true}" --set model.name=resnet50 --out "$W/runs/ddp"
ok "torchrun nccl sync_bn" "test AUROC $(metric "$W/runs/ddp"), train loss $(losses "$W/runs/ddp")"

step "kill after step 20 on CUDA, then resume"
set +e
IMBALENS_TEST_CRASH_AFTER_STEP=20 "$PY" -m imbalens.cli train --config "$W/base.yaml" \
  --set train.checkpoint_every_steps=8 --out "$W/runs/resume"
rc=$?
set -e
echo "killed run exit code $rc (75 expected)"
imb train --config "$W/base.yaml" --set train.checkpoint_every_steps=8 --out "$W/runs/resume"
ok "resume" "exit $rc then finished: AUROC $(metric "$W/runs/resume") vs uninterrupted $(metric "$W/runs/t-densenet-auto"), epochs $(($(wc -l <"$W/runs/resume/history.csv") - 1))"

step "speed on the GPU"
[ "${SPEED:-1}" = 0 ] || "$PY" benchmarks/speed.py --device "$DEVICE" --batch 64 --sizes 128 224 --warmup 3 --iters 10
step done
