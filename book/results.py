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
# # Results: the paper's tables and figures beside ours

# %% tags=["parameters"]
# the grid folder and its params file (papermill injects absolute paths)
# defaults relative to the repository root: the smoke grid (`imbalens grid params/smoke.yaml`)
grid_dir = "runs/smoke"
params_path = "params/smoke.yaml"
# equivalence margin of claim 1: AUROC/AP "about equal" when the 95% CI of loss - BCE lies in +-margin
margin = 0.02
# bootstrap resamples of the 95% CIs and the seed of the resampling
n_boot = 1000
boot_seed = 0
# checkpoint whose CAMs Figure 1 shows: best | last
which = "best"

# %% tags=["remove-cell"]
# relative paths name folders under the repository root ($IMBALENS_REPO), from Jupyter
# (working directory book/) as from papermill (which injects absolute paths)
from imbalens.paths import repo_path

grid_dir = str(repo_path(grid_dir))
params_path = str(repo_path(params_path)) if params_path else params_path

# %% [markdown]
# ## Overview
#
# Khakzar, Li et al. (2022) trained two CNNs (T-DenseNet, ResNet50) on NIH ChestX-ray14
# with four losses (BCE and the cost-sensitive WBCE, Focal, CB-Focal) for two tasks
# (multi-label, binary) and claimed that the cost-sensitive losses
#
# 1. leave AUROC and AP about equal,
# 2. raise the mean predicted probability,
# 3. make the CAMs cover more of the expert boxes (higher IoBB, lower IoR),
# 4. make the network encode more pathology-related concepts (Disjoint, Unique).
#
# This page collects every run of one grid, shows the paper's Table 1, Table 2,
# Figure 1 and Figure 2 beside ours, and ends with a claims table **computed from the
# runs**: nothing in it is typed in. Every number of ours comes with a 95% confidence
# interval (paired bootstrap over the test or boxed images; over seeds too when the grid
# has several: see Methods, "Uncertainty and verdicts"); the paper reports single numbers
# without intervals and is always labelled *paper (single numbers, no CI)*. The paper's
# numbers come from `imbalens/paper_numbers.yaml`.
#
# ## Prerequisites
#
# | Concept | Importance | Notes |
# | --- | --- | --- |
# | The Methods page | Necessary | losses, CAM, IoBB/IoR, dissection |
# | The run pages | Helpful | one page per stage and run |
#
# - **Time to learn**: 20 minutes
#
# ## Imports

# %%
# %matplotlib inline
import time
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import Markdown, display

from imbalens.study.claims import (
    claims_view,
    differences_view,
    evaluate_claims,
    style_claims,
    verdict_changes,
)
from imbalens.study.plots import comparison_bars, grid_figure1, grid_figure2
from imbalens.study.results import (
    baselines_summary,
    baselines_view,
    design_gaps,
    grid_label,
    load_baselines,
    load_grid,
    loss_table,
    paper_numbers,
    side_by_side_ci,
)
from imbalens.study.stats import grid_uncertainty

results = load_grid(grid_dir)
ours = grid_label(results)
table = loss_table(results)
started = time.perf_counter()
uncertainty = grid_uncertainty(results, n_boot=n_boot, seed=boot_seed)
boot_seconds = time.perf_counter() - started


def show(frame: pd.DataFrame, digits: int = 4):
    """Render a table with NaN as an em dash (a loss or stage absent from this grid)."""
    return frame.style.format(precision=digits, na_rep="—").set_table_styles(
        [{"selector": "td, th", "props": "padding: 2px 8px;"}]
    )


def show_figure(panel) -> None:
    """Display a figure and close it, or a Markdown note given instead of a figure."""
    if isinstance(panel, str):
        display(Markdown(panel))
    else:
        display(panel)
        plt.close(panel)


# %% [markdown]
# ## The grid
#
# One row per run: model, loss, task, seed and how far it got (`analysed`: all stages;
# `trained`: no analysis yet; `failed`: a stage raised, see the grid's report).

# %% tags=["hide-input"]
params_text = Path(params_path).read_text() if params_path and Path(params_path).is_file() else ""
display(Markdown(f"Grid folder `{results.grid_dir}`; our numbers are labelled **{ours}**."))
if params_text:
    display(Markdown(f"```yaml\n{params_text}\n```"))
results.runs.drop(columns="path").set_index("run_id")

# %% [markdown]
# What this grid lacks compared with the paper's design (4 losses x 2 models x 2 tasks);
# every table and figure below shows only what is there.

# %% tags=["hide-input"]
gaps = design_gaps(results) + results.problems
display(Markdown("\n".join(f"- {g}" for g in gaps) if gaps else "The grid is complete."))

# %% [markdown]
# ## Table 1: soft IoBB and IoR
#
# Mean over all (boxed test image, boxed finding) maps. Left: the paper (NIH
# ChestX-ray14, single numbers, no CI); right: this grid, `value [95% CI]` (seed mean
# where there are several seeds; the CI resamples the boxed images). Only the
# (task, model) pairs this grid has are shown; a missing loss shows as —.

# %% tags=["hide-input"]
show(side_by_side_ci(uncertainty, ("iobb", "ior"), ours))

# %% tags=["hide-input"]
if table[["iobb", "ior"]].notna().any().any():
    fig = comparison_bars(
        table, ["iobb", "ior"], title=f"IoBB and IoR (95% CI), {ours}", uncertainty=uncertainty
    )

# %% [markdown]
# ## Table 2: concept counts, Disjoint and Unique
#
# The paper's counts are over NIH's 880 boxed images with 512 (T-DenseNet) or 1,024/2,048
# (ResNet50) channels; ours come from a different data set, image size and training
# length, so compare the *ordering* across losses, not the magnitudes. A concept count is
# a ratio of sums over the boxed images, so its CI resamples the boxed images (each
# image's concepts, with the thresholds held at their full-set values; with several
# seeds, the seeds first); runs analysed before `concepts_images.csv` existed get the
# t-interval over seeds only.

# %% tags=["hide-input"]
show(side_by_side_ci(uncertainty, ("disjoint", "unique"), ours, digits=2))

# %% tags=["hide-input"]
if table[["disjoint", "unique"]].notna().any().any():
    fig = comparison_bars(
        table, ["disjoint", "unique"], title=f"Concept counts, {ours}", uncertainty=uncertainty
    )

# %% [markdown]
# ## Sanity baselines: what a model that learned nothing scores
#
# Every trained number above beside what it would be without learning, on the same
# boxed images (the first `analysis.baseline_images`) and computed the same way:
# *untrained* (the architecture at its seeded random initialisation), *randomised-k*
# (the trained model with its top k levels re-initialised, Adebayo et al. 2018's
# cascading randomisation; the layers are in `baselines.csv`), and two maps with no
# model at all, *uniform* (soft IoBB 1, IoR the box's area fraction: the two ends a
# diffuse map can reach) and *centre* (a Gaussian at the image centre). A number means
# something about learning only where it beats the untrained and randomised models;
# soft IoBB never beats the uniform map, which is why the pointing game stands beside
# it. First, how many runs beat each baseline (`k/n`, n the runs where it is defined):

# %% tags=["hide-input"]
baselines = load_baselines(results)
if len(baselines):
    display(show(baselines_summary(baselines)))
else:
    display(Markdown("*No run of this grid has `baselines.csv` yet (`analysis.baselines`).*"))

# %% [markdown]
# Each run, with the baselines its trained value does **not** beat (the flags):

# %% tags=["hide-input"]
if len(baselines):
    display(show(baselines_view(baselines), digits=3))

# %% [markdown]
# ## Figure 1: CAMs of the four losses
#
# Rows: one boxed test image per boxed finding (the first by file name); columns: the
# input with its box, then the CAM of that finding's output (binary: the single output)
# for each loss, box outlined. One figure per (model, task) of the grid.

# %% tags=["hide-input"]
for panel in grid_figure1(results, which=which, source=ours):
    show_figure(panel)

# %% [markdown]
# ## Figure 2: AUROC, AP and mean predicted probability
#
# Per class and for the summary (*Average* over classes, multi-label; *Unhealthy*,
# binary), bars per loss; error bars are 95% CIs (paired bootstrap over the test images,
# seeds resampled first when the grid has several). The paper shows these as bars without
# error bars, so there is no paper number to put beside them.

# %% tags=["hide-input"]
for panel in grid_figure2(results, uncertainty, source=ours):
    show_figure(panel)

# %% [markdown]
# The numbers the claims use: each weighted loss minus BCE on the same images, with its
# 95% CI and how it was computed (n images, n seeds). With several seeds, the t-interval
# over the per-seed differences is shown too.

# %% tags=["hide-input"]
differences = differences_view(uncertainty)
display(
    Markdown(
        f"{n_boot:,} resamples (seed {boot_seed}); the bootstrap of the whole grid took "
        f"{boot_seconds:.1f} s."
    )
)
differences if len(differences) else Markdown("*No differences.*")

# %% [markdown]
# ## Do the paper's claims hold here?
#
# Each claim is checked per (model, task) against plain BCE, on the 95% CI of each
# weighted loss's difference to BCE: it **holds** when every CI excludes 0 in the claimed
# direction, is **contradicted** when some CI excludes 0 the other way, and is
# **inconclusive** otherwise. Claim 1 ("about equal") is an equivalence test:
# **equivalent** when every AUROC and AP CI lies inside ±margin, **not equivalent** when
# one lies entirely outside, **inconclusive** otherwise. The *sign test (old)* column is
# the verdict this page gave before uncertainty was in (every weighted loss moves the
# mean the claimed way by any amount). The paper's verdict can only be that sign test:
# its Tables 1 and 2 give single numbers without intervals; claims 1 and 2 are shown in
# the paper only as bar charts (its Figure 2).

# %% tags=["hide-input"]
claims = evaluate_claims(results, margin=margin, uncertainty=uncertainty)
display(
    Markdown(
        f"Equivalence margin for claim 1: ±{margin:g}. Source of the paper's numbers: "
        f"{paper_numbers()['source']}"
    )
)
style_claims(claims_view(claims))

# %% [markdown]
# ### What changed once uncertainty is in
#
# Each verdict whose answer differs from the old sign test, and why (computed from the
# CIs above):

# %% tags=["hide-input"]
display(Markdown("\n".join(f"- {line}" for line in verdict_changes(claims))))

# %% [markdown]
# ## Summary
#
# The tables and figures above put this grid beside the paper, with 95% CIs on our side.
# The claims table is the page's verdict: read *holds* as "in this grid, for every
# weighted loss present, by more than the resampling noise of the test images (and of
# the seeds, when there are several)". *Inconclusive* is an answer too: this grid cannot
# tell the difference from noise. A one-seed grid does not see seed-to-seed variation
# (Methods), and a difference between losses matters only where the trained numbers
# beat the sanity baselines above. The paper's own tables do not
# support every claim for every loss either, and give no intervals: compare the verdict
# columns.
#
# ### What's next?
#
# The run pages show each run's training curves, per-class performance, CAMs and
# concept detectors; the Methods page gives the definitions.

# %% [markdown]
# ## Provenance of the grid's runs
#
# Where each run's numbers come from: the git commit (and whether the checkout had
# uncommitted changes), the config hash, torch and the machine, read from each run
# folder's `provenance.json` (written when the grid executed the run).

# %%
from imbalens.provenance import grid_table

provenance = pd.DataFrame(grid_table(grid_dir))
provenance.set_index("run") if len(provenance) else "no run recorded its provenance"

# %% [markdown]
# ## Resources and references
#
# - Khakzar, Li, Zhang, Sanisoglu, Kim, Rezaei, Bischl, Navab (2022). *Analyzing the Effects of Handling Data Imbalance on Learned Features from Medical Images by Looking Into the Models.* IMLH workshop at ICML 2022, [arXiv:2204.01729](https://arxiv.org/abs/2204.01729); official code: CAMP-eXplain-AI/imba-explain.
# - Zhou, Khosla, Lapedriza, Oliva, Torralba (2016). *Learning Deep Features for Discriminative Localization* (CAM). CVPR 2016, [arXiv:1512.04150](https://arxiv.org/abs/1512.04150).
# - Bau, Zhou, Khosla, Oliva, Torralba (2017). *Network Dissection: Quantifying Interpretability of Deep Visual Representations.* CVPR 2017, [arXiv:1704.05796](https://arxiv.org/abs/1704.05796).
# - Efron, Tibshirani (1993). *An Introduction to the Bootstrap.* Chapman & Hall, ch. 13: the paired bootstrap CIs (`imbalens.study.stats`).
# - Schuirmann (1987). *A comparison of the two one-sided tests procedure and the power approach for assessing the equivalence of average bioavailability.* J. Pharmacokinet. Biopharm. 15: the equivalence verdict of claim 1 (`imbalens.study.claims`).
# - The paper's numbers: `imbalens/study/paper_numbers.yaml`; the claims: `imbalens.study.claims`.
# - Each run's `provenance.json` (the table above): `imbalens.provenance`.
# - This page's source is `book/results.py`, a [jupytext](https://jupytext.readthedocs.io) percent-format notebook that [papermill](https://papermill.readthedocs.io) executes with the grid's parameters. Run it alone: README, *Run one stage with papermill* (`papermill --help-notebook book/results.ipynb` lists its parameters).
