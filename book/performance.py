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
# # Performance of one run

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
# The paper's first observation is that the imbalance losses hardly change AUROC and AP
# but do change the predicted probabilities. This page shows, for one trained run, the
# three numbers the paper's Figure 2 compares across losses:
#
# 1. AUROC per class (ranking quality, insensitive to calibration)
# 2. AP per class (precision-recall, sensitive to prevalence)
# 3. Mean predicted probability per class (how much probability mass the model gives)
#
# The results page puts the four losses side by side.
#
# ## Prerequisites
#
# | Concept | Importance | Notes |
# | --- | --- | --- |
# | The training page of this run | Necessary | its test metrics |
# | ROC and precision-recall curves | Helpful | |
#
# - **Time to learn**: 5 minutes
#
# ## Imports

# %%
# %matplotlib inline
import json
from pathlib import Path

import pandas as pd

from imbalens.config import load_config
from imbalens.runfolder import RunFolder
from imbalens.study.labels import run_title
from imbalens.study.plots import performance_bars
from imbalens.study.results import performance_rows

run = Path(run_dir)
folder = RunFolder(run)
cfg = load_config(folder.config)
task = cfg["data"]["task"]
title = run_title(cfg)

# %% [markdown]
# ## Per-class table
#
# From `metrics.json` (the best checkpoint on the test split). `n_pos` is the number of
# positive test images of the class: with few positives AUROC and AP are noisy, and a
# class without positives has none (NaN). Multi-label runs get an *Average* row, the
# NaN-excluded mean over classes; the binary task has the single class *Unhealthy*.

# %%
metrics = json.loads((folder.metrics).read_text())
table = pd.DataFrame(performance_rows(metrics, task)).set_index("class")
table["n_pos"] = pd.Series(metrics.get("n_pos", {}), dtype="Int64")
table.round(3)

# %% [markdown]
# ## Prevalence of the predictions
#
# Mean predicted probability compared with the share of positives among the test images
# (`predictions_test.csv`): a model trained with plain BCE on imbalanced data tends to
# predict less than the prevalence for rare classes.

# %%
pred = pd.read_csv(folder.predictions("test"))
classes = [c.split(":", 1)[1] for c in pred.columns if c.startswith("prob:")]
prevalence = pd.DataFrame(
    {
        "test prevalence": [pred[f"target:{c}"].mean() for c in classes],
        "mean predicted probability": [pred[f"prob:{c}"].mean() for c in classes],
    },
    index=pd.Index(classes, name="class"),
)
prevalence.round(3)

# %% [markdown]
# ## Bar charts
#
# The same numbers as bars; the dashed line marks chance-level AUROC 0.5 and the
# hatched bar is the class average.

# %%
fig = performance_bars(table.reset_index(), title=title)

# %% [markdown]
# ## Summary
#
# The table and bars above are this run's contribution to the paper's Figure 2. Whether
# AUROC/AP stay equal and mean probability rises with the weighted losses is decided on
# the results page, across the runs of the grid.
#
# ### What's next?
#
# The alignment page looks at *where* the model looks.

# %% [markdown]
# ## Resources and references
#
# - Khakzar, Li, Zhang, Sanisoglu, Kim, Rezaei, Bischl, Navab (2022). *Analyzing the Effects of Handling Data Imbalance on Learned Features from Medical Images by Looking Into the Models.* IMLH workshop at ICML 2022, [arXiv:2204.01729](https://arxiv.org/abs/2204.01729); official code: CAMP-eXplain-AI/imba-explain.
# - scikit-learn's [`roc_auc_score`](https://scikit-learn.org/stable/modules/generated/sklearn.metrics.roc_auc_score.html) and [`average_precision_score`](https://scikit-learn.org/stable/modules/generated/sklearn.metrics.average_precision_score.html); the metrics: `imbalens.training.metrics`.
# - This page's source is `book/performance.py`, a [jupytext](https://jupytext.readthedocs.io) percent-format notebook that [papermill](https://papermill.readthedocs.io) executes with the grid's parameters. Run it alone: README, *Run one stage with papermill* (`papermill --help-notebook book/performance.ipynb` lists its parameters).
