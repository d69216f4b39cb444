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
# # Sensitivity: do the loss rankings survive other analysis choices?

# %% tags=["parameters"]
# the grid folder (papermill injects the absolute path); relative to the repository root
grid_dir = "runs/smoke"
# the first N boxed images of each run are re-analysed (None: all)
max_images = 64

# %% [markdown]
# ## Overview
#
# The study's claims 3 and 4 compare the four losses by alignment (IoBB, IoR) and by
# concept counts (Disjoint, Unique). Each number rests on choices the paper fixed once:
# the dissection quantile $q$, the dissected layer, and whether the CAM is normalised at
# feature or at input resolution. Every trained run is re-measured from its saved
# checkpoint (no retraining; each run's concepts stage does it in the run's own job and
# writes `sensitivity.csv`, which this page reads, or measures where it is missing) under
#
# - $q \in \{0.005, 0.01, 0.04\}$ (the paper: 0.01 for T-DenseNet, 0.04 for ResNet50),
# - ResNet50's `layer3` and `layer4`, T-DenseNet's last block `features.norm5`,
# - CAMs normalised at feature or at input resolution,
#
# ranks the losses under each choice and compares each ranking with the one under the
# config's own choice by Kendall's $\tau$ (Kendall 1938; `scipy.stats.kendalltau`,
# tau-b): $\tau = 1$ the same order, $-1$ the reverse; with four losses one swapped pair
# gives $\tau = 2/3$. A claim about one loss beating another is only as firm as the
# $\tau$ of its metric. The loss variant (paper vs official formulas) needs retrained
# models and is compared on the results page when the grid has both.
#
# ## Prerequisites
#
# | Concept | Importance | Notes |
# | --- | --- | --- |
# | The Methods page | Necessary | CAM, IoBB/IoR, dissection, pointing game |
# | The results page | Helpful | the rankings this page stresses |
#
# - **Time to learn**: 10 minutes
#
# ## Imports

# %% tags=["remove-cell"]
# a relative path names a folder under the repository root ($IMBALENS_REPO)
from imbalens.paths import repo_path

grid_dir = str(repo_path(grid_dir))

# %%
from IPython.display import display

from imbalens.explain.localization import power_transform_table
from imbalens.study.sensitivity import kendall_table, measure_grid, ranking_table

measurements = measure_grid(grid_dir, max_images=max_images)
f"{measurements['run'].nunique()} runs re-measured"

# %% [markdown]
# ## Loss rankings under each choice
#
# Best loss first, per model, task and metric.

# %%
rankings = ranking_table(measurements)
for _, g in rankings.groupby("factor"):
    display(
        g.pivot_table(
            index=["model", "task", "metric"], columns="setting", values="ranking", aggfunc="first"
        ).dropna(axis=1, how="all")
    )

# %% [markdown]
# ## Kendall's tau against the config's own choice

# %%
tau = kendall_table(measurements)
for _, g in tau.groupby("factor"):
    display(
        g.pivot_table(index=["model", "task", "metric"], columns="setting", values="tau")
        .style.format("{:.2f}", na_rep="-")
        .background_gradient(cmap="RdBu", vmin=-1, vmax=1)
    )

# %% [markdown]
# Rankings whose $\tau$ is below 1 for some choice depend on that choice; $\tau \le 0$
# means the choice alone can reverse the conclusion.

# %%
unstable = tau[tau["tau"] < 1].sort_values("tau")
unstable if len(unstable) else "every ranking is the same under every choice"

# %% [markdown]
# ## Why not only soft IoBB and IoR: a diffuse map games them
#
# One Gaussian map and one box; raising the map to a power $\gamma < 1$ keeps its peak and
# its pixel ranking but flattens it. Soft IoBB rises and soft IoR falls, while the
# pointing game (Saporta et al. 2022) and the hard IoU at a fixed top-5 % budget do not
# move (`benchmarks/diffuse_maps.py` prints the same table).

# %%
power_transform_table().round(3)

# %% [markdown]
# ## Summary
#
# The tables above say which loss rankings hold whatever the analysis choice and which
# change with $q$, the layer or the CAM normalisation.

# %% [markdown]
# ## Resources and references
#
# - Khakzar, Li, Zhang, Sanisoglu, Kim, Rezaei, Bischl, Navab (2022). *Analyzing the Effects of Handling Data Imbalance on Learned Features from Medical Images by Looking Into the Models.* IMLH workshop at ICML 2022, [arXiv:2204.01729](https://arxiv.org/abs/2204.01729); official code: CAMP-eXplain-AI/imba-explain.
# - Bau, Zhou, Khosla, Oliva, Torralba (2017). *Network Dissection: Quantifying Interpretability of Deep Visual Representations.* CVPR 2017, [arXiv:1704.05796](https://arxiv.org/abs/1704.05796).
# - Zhou, Khosla, Lapedriza, Oliva, Torralba (2016). *Learning Deep Features for Discriminative Localization* (CAM). CVPR 2016, [arXiv:1512.04150](https://arxiv.org/abs/1512.04150).
# - Kendall (1938). *A new measure of rank correlation.* Biometrika 30; `scipy.stats.kendalltau` (tau-b).
# - Saporta, Gui, Agrawal, et al. (2022). *Benchmarking saliency methods for chest X-ray interpretation* (CheXlocalize). *Nature Machine Intelligence* 4: the pointing game and the hard IoU (`imbalens.explain.localization`).
# - This page's source is `book/sensitivity.py`, a [jupytext](https://jupytext.readthedocs.io) percent-format notebook that [papermill](https://papermill.readthedocs.io) executes with the grid's parameters. Run it alone: README, *Run one stage with papermill* (`papermill --help-notebook book/sensitivity.ipynb` lists its parameters).
