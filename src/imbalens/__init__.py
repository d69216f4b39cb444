"""imbalens: a literate, executable companion to Khakzar, Li et al. (2022),
"Analyzing the Effects of Handling Data Imbalance on Learned Features from Medical
Images by Looking Into the Models"."""

__version__ = "0.1.0"
