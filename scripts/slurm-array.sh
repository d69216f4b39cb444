#!/usr/bin/env bash
# The grid as a plain Slurm job array, without Dask: array task i runs the grid's i-th
# run (`imbalens grid --only`), then one dependent job builds the pages. Run folders
# live on the shared file system; a resubmitted array skips every finished stage, and
# a run already held by another job is refused by its lock (run.lock) naming the holder.
#
#   N=$(python -m imbalens.study.cluster ids params/paper.yaml | wc -l)
#   JOB=$(sbatch --parsable --array=0-$((N - 1)) scripts/slurm-array.sh params/paper.yaml \
#         --set data.root=/shared/ChestX-ray14)
#   sbatch --dependency=afterany:$JOB --wrap "imbalens grid params/paper.yaml \
#         --set data.root=/shared/ChestX-ray14"        # all runs skipped: the pages
#
# Extra arguments after PARAMS go to `imbalens grid` (use the same --set everywhere:
# overrides change the run ids and hashes). Several GPUs per run: submit with
# --gres=gpu:4 and train with torchrun first (see params/paper.yaml).
#SBATCH --job-name=imbalens-grid
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=64G
#SBATCH --time=24:00:00
#SBATCH --output=imbalens-grid-%A_%a.log
set -euo pipefail
PARAMS=${1:?usage: sbatch --array=0-N scripts/slurm-array.sh PARAMS [imbalens grid args]}
shift
INDEX=${SLURM_ARRAY_TASK_ID:?run this script as a Slurm array job (sbatch --array=...)}
SETS=()
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  if [[ ${args[i]} == --set ]]; then SETS+=(--set "${args[i + 1]}"); fi
done
# the --only glob that matches this task's run alone (a plain word matches as substring)
PATTERN=$(python -m imbalens.study.cluster ids "$PARAMS" --exact "${SETS[@]}" | sed -n "$((INDEX + 1))p")
if [[ -z $PATTERN ]]; then
  echo "array index $INDEX is past the grid's last run" >&2
  exit 2
fi
echo "array task $INDEX: run $PATTERN on $(hostname)"
exec imbalens grid "$PARAMS" --only "$PATTERN" --no-pages "$@"
