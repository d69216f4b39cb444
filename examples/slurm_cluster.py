"""The paper's grid on Slurm through dask-jobqueue: one Slurm job = one Dask worker = one run.

    pip install -e '.[dask]'
    python examples/slurm_cluster.py params/paper.yaml --partition gpu --gpus 4 \
        --walltime 24:00:00 --jobs 4 --set data.root=/shared/ChestX-ray14

Run it on the login node, from a folder on the shared file system (the run folders,
``runs/`` by default, must be seen by every node at the same path). Each Slurm job asks
for ``--gres=gpu:N`` and starts one single-thread worker with the Dask resource
``GPU=N``; each run asks for ``GPU=N`` and, for N > 1, trains with ``torchrun`` inside
its task. A job that hits its walltime or loses its node is a dead worker: its run moves
to another job and resumes from ``checkpoints/last.pt``. Rerun the same command to
resume a grid; finished stages are skipped. Watch progress on the dashboard link it logs.
"""

from __future__ import annotations

import argparse
import logging
import sys

from imbalens.study.cluster import run_grid_dask, slurm_cluster


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("params")
    p.add_argument("--out", default="runs")
    p.add_argument("--partition", required=True, help="Slurm partition (sbatch -p)")
    p.add_argument("--gpus", type=int, default=1, help="GPUs per job and per run")
    p.add_argument("--walltime", default="24:00:00", help="per job (sbatch -t)")
    p.add_argument("--cores", type=int, default=8, help="CPU cores per job")
    p.add_argument("--memory", default="64GB", help="memory per job")
    p.add_argument("--jobs", type=int, default=4, help="Slurm jobs (workers) at once")
    p.add_argument("--account", default=None, help="sbatch -A")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    kwargs = {"account": a.account} if a.account else {}
    cluster = slurm_cluster(a.partition, a.gpus, a.walltime, a.cores, a.memory, **kwargs)
    print(cluster.job_script())  # what each sbatch gets
    cluster.scale(jobs=a.jobs)
    try:
        report = run_grid_dask(
            a.params, a.out, scheduler=cluster, overrides=a.overrides, gpus_per_run=a.gpus
        )
    finally:
        cluster.close()
    print(report.table())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
