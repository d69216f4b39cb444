# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: -jupytext.text_representation
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Training one run

# %% tags=["parameters"]
# the run folder (papermill injects the absolute path); the default, relative to the
# repository root, is the smoke grid's first run: `imbalens grid params/smoke.yaml`
run_dir = "runs/smoke/t-densenet-bce-binary-s0"

# %% tags=["remove-cell"]
# relative paths name folders under the repository root ($IMBALENS_REPO), from Jupyter
# (working directory book/) as from papermill (which injects absolute paths)
from imbalens.paths import repo_path

run_dir = str(repo_path(run_dir))

# %% [markdown]
# ## Overview
#
# This page trains one model of the grid with one loss on one task and shows how the
# training went. It is the first of four stages of a run: **train**, performance,
# alignment, concepts. Training resumes from `checkpoints/last.pt` when interrupted and
# is a no-op once `train.done` exists, so re-executing this page is cheap.
#
# 1. The run's resolved configuration
# 2. Training (or picking up the finished run)
# 3. Loss and validation AUROC per epoch
# 4. Test metrics of the best checkpoint
#
# ## Prerequisites
#
# | Concept | Importance | Notes |
# | --- | --- | --- |
# | The Methods page | Necessary | the four losses, the training recipe |
# | Adam, cosine learning-rate schedule | Helpful | |
#
# - **Time to learn**: 5 minutes
#
# ## Imports

# %%
# %matplotlib inline
from pathlib import Path

import pandas as pd
import yaml

from imbalens.config import load_config
from imbalens.runfolder import RunFolder
from imbalens.study.labels import run_title
from imbalens.study.plots import history_curves
from imbalens.study.results import performance_rows
from imbalens.training.train import train

run = Path(run_dir)
folder = RunFolder(run)
cfg = load_config(folder.config)
title = run_title(cfg)

# %% [markdown]
# ## The configuration
#
# Every key of the run, merged onto `imbalens.config.DEFAULTS`; the grid's params file
# chose the model, loss, task and seed.

# %%
print(yaml.safe_dump(cfg, sort_keys=False))

# %% [markdown]
# ## Training
#
# `imbalens.training.train.train` trains with the loss of the config, keeps the checkpoint with
# the best validation mean AUROC (`checkpoints/best.pt`) and evaluates it on the test
# split. Its return value is the test metrics.

# %%
metrics = train(cfg, run)
print(
    f"{title}: best epoch {metrics.get('best_epoch')}, test mean AUROC {metrics['auroc_mean']:.3f}"
)

# %% [markdown]
# ## Learning curves
#
# Training loss, validation loss and validation mean AUROC per epoch (`history.csv`).
# The star marks the epoch of the checkpoint used for all later stages. Losses of
# different loss functions are on different scales and cannot be compared across runs.

# %%
history = pd.read_csv(folder.history)
fig = history_curves(history, title=title)

# %% [markdown]
# ## Test metrics
#
# AUROC, average precision (AP) and mean predicted probability per class on the test
# split; the performance page shows them as bars.

# %%
test = pd.DataFrame(performance_rows(metrics, cfg["data"]["task"])).set_index("class")
test.round(3)

# %% [markdown]
# ## Summary
#
# The model is trained and its best checkpoint is stored in `checkpoints/best.pt`; the
# test predictions are in `predictions_test.csv` and the metrics in `metrics.json`.
#
# ### What's next?
#
# The performance page of the same run breaks the test metrics down per class.

# %% [markdown]
# ## Resources and references
#
# - Khakzar, Li, Zhang, Sanisoglu, Kim, Rezaei, Bischl, Navab (2022). *Analyzing the Effects of Handling Data Imbalance on Learned Features from Medical Images by Looking Into the Models.* IMLH workshop at ICML 2022, [arXiv:2204.01729](https://arxiv.org/abs/2204.01729); official code: CAMP-eXplain-AI/imba-explain.
# - Lin, Goyal, Girshick, He, Dollár (2017). *Focal Loss for Dense Object Detection.* ICCV 2017, [arXiv:1708.02002](https://arxiv.org/abs/1708.02002).
# - Cui, Jia, Lin, Song, Belongie (2019). *Class-Balanced Loss Based on Effective Number of Samples.* CVPR 2019, [arXiv:1901.05555](https://arxiv.org/abs/1901.05555).
# - The models come from [torchvision](https://pytorch.org/vision/stable/models.html): DenseNet121 (Huang, Liu, van der Maaten, Weinberger 2017, [arXiv:1608.06993](https://arxiv.org/abs/1608.06993)), truncated to T-DenseNet, and ResNet50 (He, Zhang, Ren, Sun 2016, [arXiv:1512.03385](https://arxiv.org/abs/1512.03385)); `imbalens.training.models`.
# - Goyal et al. (2017). *Accurate, Large Minibatch SGD* (zero-initialised residuals), [arXiv:1706.02677](https://arxiv.org/abs/1706.02677).
# - The training loop: `imbalens.training.train` (`imbalens train --help`).
# - This page's source is `book/train.py`, a [jupytext](https://jupytext.readthedocs.io) percent-format notebook that [papermill](https://papermill.readthedocs.io) executes with the grid's parameters. Run it alone: README, *Run one stage with papermill* (`papermill --help-notebook book/train.ipynb` lists its parameters).
