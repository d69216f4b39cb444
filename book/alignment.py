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
# # Feature alignment of one run: CAM versus boxes

# %% tags=["parameters"]
# the run folder (papermill injects the absolute path); the default, relative to the
# repository root, is the smoke grid's first run: `imbalens grid params/smoke.yaml`
run_dir = "runs/smoke/t-densenet-bce-binary-s0"
# checkpoint whose CAMs are shown: best | last
which = "best"

# %% tags=["remove-cell"]
# relative paths name folders under the repository root ($IMBALENS_REPO), from Jupyter
# (working directory book/) as from papermill (which injects absolute paths)
from imbalens.paths import repo_path

run_dir = str(repo_path(run_dir))

# %% [markdown]
# ## Overview
#
# Does the model look at the lesion? For every test image with a box and every boxed
# finding, the class activation map (CAM) of that finding's output (binary task: the
# single *Unhealthy* output) is compared with the box mask $M$ by two soft overlaps,
#
# $$ \mathrm{IoBB} = \frac{\sum \mathrm{CAM}\cdot M}{\sum M}, \qquad
#    \mathrm{IoR} = \frac{\sum \mathrm{CAM}\cdot M}{\sum \mathrm{CAM}}. $$
#
# IoBB is the share of the box that is salient (recall-like), IoR the share of the
# saliency that lies in the box (precision-like). The paper's Table 1 reports their mean
# over all maps. A *dead* map (zero everywhere) scores 0 on both, as in the authors'
# code, and is counted (`n_dead`). In the binary task the default (`analysis.binary_boxes:
# union`, the authors' code) is one map per image against the union of all its boxes;
# `per_finding` makes one row per (image, finding). The `boxes` column says which.
#
# 1. Computing the maps and overlaps (`imbalens.explain.analyse.align_run`)
# 2. One example per finding, box outlined
# 3. IoBB and IoR by finding
#
# ## Prerequisites
#
# | Concept | Importance | Notes |
# | --- | --- | --- |
# | The Methods page | Necessary | CAM, IoBB, IoR |
# | Zhou et al. (2016), CAM | Helpful | |
#
# - **Time to learn**: 10 minutes
#
# ## Imports

# %%
# %matplotlib inline
from pathlib import Path

import pandas as pd

from imbalens.config import load_config
from imbalens.explain.analyse import align_run
from imbalens.explain.samples import cam_samples
from imbalens.runfolder import RunFolder
from imbalens.study.labels import run_title
from imbalens.study.plots import alignment_bars, cam_gallery

run = Path(run_dir)
folder = RunFolder(run)
cfg = load_config(folder.config)
loss = cfg["loss"]["name"]
title = run_title(cfg)

# %% [markdown]
# ## Computing the analysis
#
# `align_run` computes the CAMs and overlaps of every boxed test image and nothing else
# (`alignment.csv`, `alignment_summary.csv`, then the marker `alignment.done`); it does
# nothing when the marker exists. The concepts page runs the dissection on its own.

# %%
alignment = align_run(run)
{k: alignment[k] for k in ("n_images", "n_boxes", "n_maps", "n_dead", "boxes", "iobb", "ior")}

# %% [markdown]
# ## Examples
#
# For each boxed finding, the first test image (by file name) that has a box of it;
# the CAM of that finding's output is drawn in the colour map *inferno* over the
# image, and the box (the union of the finding's boxes) is outlined in blue. Bright
# inside the outline means high IoBB; dark outside means high IoR.

# %%
samples = cam_samples({loss: run}, which=which)
if samples:
    fig = cam_gallery(samples, loss, title=f"CAMs of {title}")
else:
    print("no boxed test images in this data set")

# %% [markdown]
# ## IoBB and IoR by finding
#
# Mean, standard deviation and number of maps per finding, and how many of them are
# dead (`n_dead`, counted as 0 in the means); the *all* row, the mean over every map, is
# the number the paper's Table 1 reports. A union map of an image with boxes of several
# findings counts in each of their rows and once in *all*.

# %%
summary = pd.read_csv(folder.alignment_summary)
summary.set_index("finding").round(3)

# %%
fig = alignment_bars(summary, title=title)

# %% [markdown]
# ## Summary
#
# The CAMs and the overlaps with the boxes show where this run's model looks. Alone
# they say little; the results page compares them across the four losses, beside the
# paper's Table 1.
#
# ### What's next?
#
# The concepts page counts the individual feature maps that fire inside the boxes.

# %% [markdown]
# ## Resources and references
#
# - Khakzar, Li, Zhang, Sanisoglu, Kim, Rezaei, Bischl, Navab (2022). *Analyzing the Effects of Handling Data Imbalance on Learned Features from Medical Images by Looking Into the Models.* IMLH workshop at ICML 2022, [arXiv:2204.01729](https://arxiv.org/abs/2204.01729); official code: CAMP-eXplain-AI/imba-explain.
# - Zhou, Khosla, Lapedriza, Oliva, Torralba (2016). *Learning Deep Features for Discriminative Localization* (CAM). CVPR 2016, [arXiv:1512.04150](https://arxiv.org/abs/1512.04150).
# - Adebayo, Gilmer, Muelly, Goodfellow, Hardt, Kim (2018). *Sanity Checks for Saliency Maps.* NeurIPS 2018, [arXiv:1810.03292](https://arxiv.org/abs/1810.03292): the randomisation baselines `align_run` writes to `baselines.csv` (`imbalens.explain.baselines`).
# - The overlaps: `imbalens.explain.cam`, `imbalens.explain.alignment`; the example CAMs: `imbalens.explain.samples`.
# - This page's source is `book/alignment.py`, a [jupytext](https://jupytext.readthedocs.io) percent-format notebook that [papermill](https://papermill.readthedocs.io) executes with the grid's parameters. Run it alone: README, *Run one stage with papermill* (`papermill --help-notebook book/alignment.ipynb` lists its parameters).
