"""Reports from saved results: Markdown tables, figures, and the quality report of a learned set.

The figure modules import matplotlib; they are loaded on first use of one of their names,
so that reading tables never pays for it.
"""

from importlib import import_module

from perturbsets.reports.tables import latent_norm_table, paper_table, quality_table, robust_table

_LAZY = {
    "colorize_labels": "plots",
    "image_grid": "plots",
    "plot_curve": "plots",
    "plot_interpolation": "plots",
    "plot_latent_norms": "plots",
    "plot_pairs": "plots",
    "plot_samples": "plots",
    "plot_segmentation": "plots",
    "write_figures": "quality_report",
    "write_report": "quality_report",
}

__all__ = ["latent_norm_table", "paper_table", "quality_table", "robust_table", *_LAZY]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'perturbsets.reports' has no attribute {name!r}")
    return getattr(import_module(f"perturbsets.reports.{_LAZY[name]}"), name)
