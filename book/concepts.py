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
# # Concepts of one run: feature maps that fire on pathology

# %% tags=["parameters"]
# the run folder (papermill injects the absolute path); the default, relative to the
# repository root, is the smoke grid's first run: `imbalens grid params/smoke.yaml`
run_dir = "runs/smoke/t-densenet-bce-binary-s0"
# how many channels to list per finding
top = 5
# the first N boxed images re-dissected under other analysis choices (the sensitivity
# page's `max_images`: it reads this run's sensitivity.csv when the two agree)
sensitivity_images = 64

# %% tags=["remove-cell"]
# relative paths name folders under the repository root ($IMBALENS_REPO), from Jupyter
# (working directory book/) as from papermill (which injects absolute paths)
from imbalens.paths import repo_path

run_dir = str(repo_path(run_dir))

# %% [markdown]
# ## Overview
#
# Network dissection (Bau et al. 2017) asks which individual channels of a layer act
# as detectors. Each channel $c$ gets a threshold $\tau_c$ with
# $P(A^c \ge \tau_c) = q$ over the boxed images; every connected region of a
# thresholded map that overlaps a box is a *pathology-related concept*. Normalised by
# the number of images,
#
# - **Disjoint** counts all such regions, over all channels;
# - **Unique** counts, per image, the channels with at least one such region.
#
# The paper's Table 2 compares these counts across losses.
#
# 1. Running the dissection (`imbalens.explain.analyse.concepts_run`)
# 2. The counts and the settings they were computed with
# 3. Counts per finding
# 4. Which channels detect what
# 5. This run under other analysis choices (for the sensitivity page)
#
# ## Prerequisites
#
# | Concept | Importance | Notes |
# | --- | --- | --- |
# | The Methods page | Necessary | thresholds, components, Disjoint/Unique |
# | The alignment page of this run | Helpful | CAMs of the same run |
#
# - **Time to learn**: 10 minutes
#
# ## Imports

# %%
# %matplotlib inline
import json
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import Markdown, display

from imbalens.config import load_config
from imbalens.explain.analyse import concepts_run
from imbalens.runfolder import RunFolder
from imbalens.study.labels import run_title
from imbalens.study.plots import concept_channels_figure
from imbalens.study.results import detectors_by_finding
from imbalens.study.sensitivity import measure_run
from imbalens.study.stats import concept_ci

run = Path(run_dir)
folder = RunFolder(run)
cfg = load_config(folder.config)
title = run_title(cfg)

# %% [markdown]
# ## Running the dissection
#
# `concepts_run` thresholds every channel of the analysed layers over the boxed test
# images and counts the concepts (`concepts.json`, `concepts_channels.csv`, then the
# marker `concepts.done`); it does nothing when the marker exists. It needs only the
# trained checkpoint, not the alignment page. `analysis.dissection: paper` (default)
# follows the paper's text; `official` the authors' code (per-batch thresholds, contours
# of the maps clipped to the boxes with holes, averages over box entries; see Methods).

# %%
done = concepts_run(run)
concepts = json.loads(folder.concepts.read_text())

# %% [markdown]
# ## Disjoint and Unique
#
# The two normalised counts of the first analysed layer (the one the results page
# uses), with the quantile $q$, threshold mode (`dataset`: the paper; `batch`: the
# official code), counting (`components` or the official `contours`), and normaliser
# (`images`, or the official per-box-entry `entries`) they were computed with.

# %%
scalars = {k: v for k, v in concepts.items() if not isinstance(v, dict | list)}
pd.Series(scalars, name=title).to_frame()

# %% [markdown]
# How sure are these two numbers? The same counts with a 95% bootstrap interval over
# this run's boxed images (each image's concepts and detector channels resampled, the
# thresholds held fixed; `concepts_images.csv`, see Methods). The results page compares
# losses with the paired version of this bootstrap.

# %%
terms = pd.read_csv(folder.concepts_images)
concept_ci(terms[terms["primary"]]).round(3)

# %% [markdown]
# Every analysed layer. The paper does not say which layer it dissects. For ResNet50
# this project dissects `layer4` (the last feature maps, the ones its CAMs use) and
# `layer3`; the authors' code dissects `layer3.5`, the last block of `layer3` (the same
# output as `layer3`), with q = 0.04 (`quantile_threshold=0.96` in its ResNet50 configs;
# the paper's text also says 0.04) while its base config's default is 0.01 (0.99). For
# T-DenseNet both use `features.norm5` with q = 0.01. Both ResNet50 layers are shown:

# %%
layers = pd.DataFrame(concepts.get("layers", {concepts.get("layer"): concepts})).T
layers[[c for c in ("disjoint", "unique", "q", "n_detector_channels", "n_channels") if c in layers]]

# %% [markdown]
# ## Counts per finding
#
# Disjoint and Unique restricted to the boxes of one finding, normalised by the images
# that have a box of it.

# %%
per_finding = pd.DataFrame(concepts.get("per_finding", {})).T
per_finding.round(2) if len(per_finding) else "no per-finding counts in concepts.json"

# %% [markdown]
# ## Which channels detect what
#
# `concepts_channels.csv` has one row per channel. A channel *detects* a finding when
# one of its above-threshold regions overlaps a box of that finding. The table lists,
# per finding, the number of detector channels and the strongest ones with their
# number of regions; the figure shows how concentrated the detections are.

# %%
channels = pd.read_csv(folder.concepts_channels)
if "layer" not in channels:
    channels["layer"] = concepts.get("layer", "?")
for layer, part in channels.groupby("layer", sort=False):
    display(Markdown(f"**Layer `{layer}`**: {len(part)} channels"))
    display(detectors_by_finding(part, top=top).set_index("finding"))
    fig = concept_channels_figure(part, title=f"{title}, layer {layer}")
    display(fig)
    plt.close(fig)

# %% [markdown]
# ## This run under other analysis choices
#
# The same checkpoint re-measured on the first boxed images under the choices the
# sensitivity page compares across the grid: the dissection quantile $q$ and layer
# (Disjoint, Unique, per image normalisation) and the CAM normalisation (soft IoBB/IoR,
# pointing game, top-k IoU). Measured here, in the run's own job, so the grid's runs
# share the work; the sensitivity page reads the run's `sensitivity.csv`
# (`imbalens.study.sensitivity.measure_run`). These are point values on the first
# `sensitivity_images` boxed images, without CIs: they feed the sensitivity page's
# loss rankings (Kendall's $\tau$), not this study's verdicts.

# %%
sensitivity = measure_run(run_dir, max_images=sensitivity_images, force=True)
sensitivity.pivot_table(
    index=["factor", "setting"], columns="metric", values="value", aggfunc="first"
).round(3)

# %% [markdown]
# ## Summary
#
# The counts above are this run's entry in the paper's Table 2. Whether the weighted
# losses raise them is decided on the results page across the grid's runs.
#
# ### What's next?
#
# The grid's results page.

# %% [markdown]
# ## Resources and references
#
# - Khakzar, Li, Zhang, Sanisoglu, Kim, Rezaei, Bischl, Navab (2022). *Analyzing the Effects of Handling Data Imbalance on Learned Features from Medical Images by Looking Into the Models.* IMLH workshop at ICML 2022, [arXiv:2204.01729](https://arxiv.org/abs/2204.01729); official code: CAMP-eXplain-AI/imba-explain.
# - Bau, Zhou, Khosla, Oliva, Torralba (2017). *Network Dissection: Quantifying Interpretability of Deep Visual Representations.* CVPR 2017, [arXiv:1704.05796](https://arxiv.org/abs/1704.05796).
# - The counts: `imbalens.explain.dissect`.
# - This page's source is `book/concepts.py`, a [jupytext](https://jupytext.readthedocs.io) percent-format notebook that [papermill](https://papermill.readthedocs.io) executes with the grid's parameters. Run it alone: README, *Run one stage with papermill* (`papermill --help-notebook book/concepts.ipynb` lists its parameters).
