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
# # The data: NIH ChestX-ray14 and its phantom

# %% tags=["parameters"]
# data (relative paths are resolved against the repository root, or $IMBALENS_REPO;
# papermill runs with the output folder as working directory, absolute paths also work)
phantom_root = "data/phantom"
nih_mini_root = "../shared/data/nih-mini"
# the phantom made when phantom_root holds none: the default grid's `phantom:` block
# (params/quick.yaml), passed to imbalens.study.grid.ensure_phantom as the grid does
phantom_params = {"n_images": 4000, "size": 256, "seed": 0, "difficulty": 0.0}
# figures
image_size = 256
n_examples = 3

# %% [markdown]
# ## Overview
#
# The study trains and inspects chest X-ray classifiers on NIH ChestX-ray14 (Wang et
# al., CVPR 2017): 112,120 frontal radiographs with 14 finding labels mined from the
# reports, and 984 expert boxes for 8 of the findings on 880 test images. The full
# release is 45 GB; so that every page of this book runs on a fresh, offline machine,
# the project ships a **phantom**: synthetic radiographs written in exactly NIH's
# layout (`images/`, `Data_Entry_2017.csv`, `BBox_List_2017.csv`, the split lists), read
# by the same code as the real data.
#
# The phantom is not a substitute for real radiographs. It is a controlled test bed:
# its label frequencies follow NIH's, its anatomy varies from patient to patient, and
# each of the 14 findings is drawn with its own appearance where it really occurs.
# Above all, its boxes are **exact**: every box is the support of the lesion that was
# planted, so whether a network's saliency "covers the pathology" has a true answer.
#
# This page shows
#
# 1. how often each label occurs in the phantom, beside NIH's full release,
# 2. phantom images of the 8 boxed findings with their boxes,
# 3. the same for `nih-mini`, 2,467 real NIH images, when it is available.
#
# ## Prerequisites
#
# | Concept | Importance | Notes |
# | --- | --- | --- |
# | Multi-label classification | Necessary | one sigmoid per finding |
# | The study (the Methods page) | Helpful | why boxes matter |
#
# - **Time to learn**: 5 minutes
#
# ## Imports

# %%
# %matplotlib inline
from imbalens.data.synth import read_manifest
from imbalens.paths import repo_path
from imbalens.study.dataviz import example_grid, prevalence, prevalence_bars
from imbalens.study.grid import ensure_phantom

phantom = repo_path(phantom_root)
nih_mini = repo_path(nih_mini_root)
# a complete phantom is shown as it is (the grid's, whatever its parameters); without
# one, the grid's own function makes the default grid's phantom
if read_manifest(phantom) is None:
    ensure_phantom(phantom, phantom_params)
manifest = read_manifest(phantom)
has_nih_mini = (nih_mini / "Data_Entry_2017.csv").is_file()
manifest["parameters"]

# %% [markdown]
# ## How the phantom is made
#
# - **Anatomy** (per patient, with small per-image changes of pose and exposure): body
#   outline and shoulders, two dark lung fields, the heart left of the patient's midline
#   (on the image's right, as on a PA film), diaphragm domes with costophrenic angles,
#   posterior and anterior ribs, spine, clavicles, vessel markings denser near the
#   hila, soft-tissue texture and quantum noise.
# - **Findings**: Nodule (small round opacity), Mass (larger, lobulated), Cardiomegaly
#   (enlarged heart), Effusion (basal opacity with a meniscus filling the costophrenic
#   angle), Pneumothorax (apical-lateral lucency without lung markings behind a thin
#   pleural line), Atelectasis (a plate or wedge opacity), Infiltration (patchy haze),
#   Pneumonia (lobar consolidation with air bronchograms, sometimes bounded by a
#   fissure); without boxes: Consolidation (dense patch), Edema (bilateral perihilar
#   haze), Emphysema (larger, darker lungs with flat domes and fewer markings),
#   Fibrosis (reticular upper-zone lines), Pleural_Thickening (a band along the lateral
#   chest wall) and Hernia (a retrocardiac opacity with an air-fluid level).
# - **Labels**: healthy with NIH's probability (53.8%); otherwise findings are drawn so
#   that each finding's prevalence equals NIH's count / 112,120. Every finding has at
#   least 3 positives in each split, which raises only Hernia's count noticeably.
# - **Boxes**: like NIH, only test images carry boxes, in the 1,024-px release space.
#
# ## Label prevalence
#
# The share of images with each label, on a log scale (rare classes such as Hernia,
# 0.2% of NIH, would vanish on a linear axis).

# %%
roots = {"phantom": phantom}
if has_nih_mini:
    roots["nih-mini"] = nih_mini
table = prevalence(roots)
table.round(4)

# %%
fig = prevalence_bars(table, title="Images per label: phantom vs NIH ChestX-ray14")

# %% [markdown]
# `nih-mini` is not a random sample: it holds all 880 boxed images, so the boxed
# findings are over-represented there.
#
# ## Phantom images with boxes
#
# Rows are the 8 boxed findings, columns random test images that have a box of that
# finding (other findings may be present too). The box is the exact extent of the
# planted lesion (for Cardiomegaly: of the enlarged heart).

# %%
fig = example_grid(phantom, image_size, n_examples, title="Phantom")

# %% [markdown]
# ## Real NIH images with boxes (nih-mini)

# %%
if has_nih_mini:
    fig = example_grid(nih_mini, image_size, n_examples, title="nih-mini (real NIH)")
else:
    print(f"nih-mini not found at {nih_mini}: set nih_mini_root to show real images")

# %% [markdown]
# ## Summary
#
# - The phantom follows NIH's label frequencies: "No Finding" in about half of the
#   images, Infiltration the most frequent finding, Hernia the rarest.
# - Each boxed finding is a visible lesion at the expected place with a box of about
#   NIH's median size; real boxes are drawn by radiologists and are looser.
# - The phantom's lesions are simpler and more uniform than real pathology: models will
#   reach higher scores on it than on NIH, and its purpose is to make saliency and
#   concept counts checkable against a known truth, not to stand in for clinical data.
#
# ### What's next
#
# The training page trains the study's models on this data.

# %% [markdown]
# ## Resources and references
#
# - Khakzar, Li, Zhang, Sanisoglu, Kim, Rezaei, Bischl, Navab (2022). *Analyzing the Effects of Handling Data Imbalance on Learned Features from Medical Images by Looking Into the Models.* IMLH workshop at ICML 2022, [arXiv:2204.01729](https://arxiv.org/abs/2204.01729); official code: CAMP-eXplain-AI/imba-explain.
# - Wang, Peng, Lu, Lu, Bagheri, Summers (2017). *ChestX-ray8: Hospital-scale Chest X-ray Database and Benchmarks.* CVPR 2017, [arXiv:1705.02315](https://arxiv.org/abs/1705.02315).
# - The phantom's generator: `imbalens.data.synth` (`imbalens synth --help`); the grid makes it with `imbalens.study.grid.ensure_phantom`.
# - This page's source is `book/data.py`, a [jupytext](https://jupytext.readthedocs.io) percent-format notebook that [papermill](https://papermill.readthedocs.io) executes with the grid's parameters. Run it alone: README, *Run one stage with papermill* (`papermill --help-notebook book/data.ipynb` lists its parameters).
