"""Figures for learned perturbation sets: image grids, samples, interpolations, latent norms.

Everything here builds a ``matplotlib.figure.Figure`` with its own ``FigureCanvasAgg``
instead of going through ``pyplot``: no global backend switch, no global figure registry
to leak into, and separate figures can be drawn from separate threads.

Image inputs are torch tensors or numpy arrays of floats in [0, 1] with shape
``(..., C, H, W)`` where ``C`` is 1 (grayscale) or 3 (RGB). Values outside [0, 1] are clipped
for display. Every ``plot_*`` function writes a PNG atomically and returns its ``Path``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy.stats import gaussian_kde

from perturbsets._util.images import tile_images
from perturbsets._util.io import atomic_path

__all__ = [
    "image_grid",
    "plot_pairs",
    "plot_samples",
    "plot_interpolation",
    "plot_latent_norms",
    "plot_curve",
    "colorize_labels",
    "plot_segmentation",
]

# Image grids get about this many inches per image, shrunk so the page stays bounded.
_CELL_IN = 1.0
_MAX_GRID_WIDTH_IN = 16.0
# Agg refuses canvases wider or taller than 2**16 px; this keeps tall grids well below it.
_MAX_GRID_HEIGHT_IN = 60.0
_MIN_DPI, _MAX_DPI = 100, 300
_GRID_PAD = 2


def _array(a: Any) -> np.ndarray:
    # Duck-typed so that plotting never has to import torch just to recognise a tensor.
    if hasattr(a, "detach"):
        a = a.detach().cpu()
        # bfloat16 has no numpy counterpart, so widen floats before crossing over.
        return (a.float() if a.is_floating_point() else a).numpy()
    return np.asarray(a)


def _images(a: Any, name: str, ndim: int, layout: str) -> np.ndarray:
    arr = _array(a)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must have rank {ndim} {layout}, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        # Integer images are usually 0..255; clipping them to [0, 1] would silently wash out.
        raise ValueError(f"{name} must be floating point in [0, 1], got dtype {arr.dtype}")
    if arr.shape[-3] not in (1, 3):
        raise ValueError(f"{name} must have C in {{1, 3}} {layout}, got C={arr.shape[-3]}")
    if 0 in arr.shape:
        raise ValueError(f"{name} is empty: shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr.astype(np.float32, copy=False)


def _same_image_shape(a: np.ndarray, a_name: str, b: np.ndarray, b_name: str) -> None:
    if a.shape[-3:] != b.shape[-3:]:
        raise ValueError(
            f"{a_name} and {b_name} must share (C, H, W), got {a.shape[-3:]} and {b.shape[-3:]}"
        )


def _same_n(a: np.ndarray, a_name: str, b: np.ndarray, b_name: str) -> None:
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"{a_name} and {b_name} must have the same N, got {a.shape[0]} and {b.shape[0]}"
        )


def image_grid(images: Any, *, pad: int = _GRID_PAD, pad_value: float = 1.0) -> np.ndarray:
    """Tile a grid of images into one RGB array.

    Args:
        images: (R, K, C, H, W) floats in [0, 1], C in {1, 3}; image (r, k) goes to row r,
            column k. Values are clipped to [0, 1]; grayscale is repeated into 3 channels.
        pad: separator width in pixels between neighbouring images (none at the border).
        pad_value: separator intensity in [0, 1] (1.0 is white).

    Returns:
        float32 array of shape (R*H + (R-1)*pad, K*W + (K-1)*pad, 3).
    """
    arr = _images(images, "images", 5, "(R, K, C, H, W)")
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
        raise ValueError(f"pad must be a non-negative int, got {pad!r}")
    if not 0.0 <= pad_value <= 1.0:
        raise ValueError(f"pad_value must be in [0, 1], got {pad_value!r}")
    return tile_images(arr, pad, pad_value)


def _grid_figure(images: np.ndarray, col_labels: Sequence[str], title: str | None) -> Figure:
    """Figure showing ``images`` (R, K, C, H, W) as one grid, with a label above each column."""
    R, K, C, H, W = images.shape
    grid = image_grid(images)
    gh, gw = grid.shape[:2]
    cell = min(_CELL_IN, _MAX_GRID_WIDTH_IN / K, _MAX_GRID_HEIGHT_IN / R)
    width = max(cell * K * gw / (K * W), 3.0)
    height = width * gh / gw + 0.5 + (0.4 if title else 0.0)
    # Enough resolution that every image pixel gets at least one output pixel.
    dpi = float(np.clip(max(H, W) / cell, _MIN_DPI, _MAX_DPI))
    fig = Figure(figsize=(width, height), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if C == 1:
        # Fixed limits stop imshow from stretching the contrast of a dim grayscale batch.
        ax.imshow(grid[..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(grid, interpolation="nearest")
    ax.set_xticks([k * (W + _GRID_PAD) + (W - 1) / 2 for k in range(K)], list(col_labels))
    ax.set_yticks([])
    ax.tick_params(
        top=True, labeltop=True, bottom=False, labelbottom=False, length=0, labelsize="small"
    )
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        fig.suptitle(title)
    return fig


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        # The temporary name ends in .tmp, so the format cannot be inferred from it; the dpi
        # is the figure's own so that a user's savefig.dpi rcParam cannot resize our grids.
        fig.savefig(tmp, format="png", dpi="figure")
    return path


def plot_pairs(
    x: Any,
    x_tilde: Any,
    reconstruction: Any,
    path: str | os.PathLike,
    max_rows: int = 8,
    title: str | None = None,
) -> Path:
    """Show x | perturbed x̃ | reconstruction of x̃, one example per row.

    Args:
        x, x_tilde, reconstruction: (N, C, H, W) each, identical shapes.
        path: output PNG.
        max_rows: only the first ``min(N, max_rows)`` examples are drawn.
        title: optional figure title.
    """
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
        raise ValueError(f"max_rows must be a positive int, got {max_rows!r}")
    arrays = {
        name: _images(a, name, 4, "(N, C, H, W)")
        for name, a in (("x", x), ("x_tilde", x_tilde), ("reconstruction", reconstruction))
    }
    for name in ("x_tilde", "reconstruction"):
        if arrays[name].shape != arrays["x"].shape:
            raise ValueError(
                f"x and {name} must have the same shape, got {arrays['x'].shape} "
                f"and {arrays[name].shape}"
            )
    stacked = np.stack([a[:max_rows] for a in arrays.values()], axis=1)
    labels = [r"$x$", r"perturbed $\tilde{x}$", "reconstruction"]
    return _save(_grid_figure(stacked, labels, title), path)


def plot_samples(
    x: Any, samples: Any, path: str | os.PathLike, title: str | None = None, labels: list[str] | None = None
) -> Path:
    """Show each input followed by samples from its perturbation set, one input per row.

    Args:
        x: (N, C, H, W) inputs.
        samples: (N, S, C, H, W) perturbed samples; ``samples[i]`` belong to ``x[i]``.
        path: output PNG.
        title: optional figure title.
        labels: S column titles (default "sample 1" … "sample S").
    """
    xa = _images(x, "x", 4, "(N, C, H, W)")
    sa = _images(samples, "samples", 5, "(N, S, C, H, W)")
    _same_n(xa, "x", sa, "samples")
    _same_image_shape(xa, "x", sa, "samples")
    if labels is None:
        labels = [f"sample {s + 1}" for s in range(sa.shape[1])]
    elif len(labels) != sa.shape[1]:
        raise ValueError(f"got {len(labels)} labels for {sa.shape[1]} sample columns")
    labels = [r"$x$"] + list(labels)
    grid = np.concatenate([xa[:, None], sa], axis=1)
    return _save(_grid_figure(grid, labels, title), path)


def plot_interpolation(
    x: Any, path_images: Any, path: str | os.PathLike, title: str | None = None
) -> Path:
    """Show a latent interpolation between two perturbations of the same input (paper Fig. 1).

    Args:
        x: (N, C, H, W) clean inputs.
        path_images: (N, T, C, H, W) with T >= 2; ``path_images[i, 0]`` and
            ``path_images[i, -1]`` are the endpoints x̃_a and x̃_b of the path for ``x[i]``.
        path: output PNG.
        title: optional figure title.
    """
    xa = _images(x, "x", 4, "(N, C, H, W)")
    pa = _images(path_images, "path_images", 5, "(N, T, C, H, W)")
    _same_n(xa, "x", pa, "path_images")
    _same_image_shape(xa, "x", pa, "path_images")
    T = pa.shape[1]
    if T < 2:
        raise ValueError(f"path_images needs T >= 2 to have two endpoints, got T={T}")
    labels = [r"$x$", r"$\tilde{x}_a$"] + [""] * (T - 2) + [r"$\tilde{x}_b$"]
    grid = np.concatenate([xa[:, None], pa], axis=1)
    return _save(_grid_figure(grid, labels, title), path)


def plot_latent_norms(
    norms: Any,
    radius: float,
    path: str | os.PathLike,
    percentiles: Sequence[float] = (25, 50, 75),
    title: str | None = None,
) -> Path:
    """Histogram and KDE of latent norms, with percentile lines and the chosen radius ε.

    Args:
        norms: (M,) values of ‖(μ(x, x̃) − μ(x)) / σ(x)‖₂ over a validation set.
        radius: the perturbation-set radius ε, > 0.
        path: output PNG.
        percentiles: percentiles in [0, 100] to mark, labelled like "p50 = 3.91".
        title: optional axes title.
    """
    arr = _array(norms)
    if arr.ndim != 1:
        raise ValueError(f"norms must be 1-D (M,), got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError("norms is empty")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise ValueError("norms contains NaN or infinite values")
    if (arr < 0).any():
        raise ValueError(f"norms must be non-negative, got minimum {arr.min():g}")
    radius = float(radius)
    if not math.isfinite(radius) or radius <= 0:
        raise ValueError(f"radius must be a finite number > 0, got {radius!r}")
    pcts = [float(p) for p in percentiles]
    if any(not 0.0 <= p <= 100.0 for p in pcts):
        raise ValueError(f"percentiles must lie in [0, 100], got {tuple(percentiles)!r}")

    fig = Figure(figsize=(6.4, 4.2), dpi=_MIN_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    # "auto" can explode into thousands of bins when a few outliers sit far from a tight bulk.
    n_bins = min(len(np.histogram_bin_edges(arr, bins="auto")) - 1, 100)
    ax.hist(arr, bins=n_bins, density=True, color="0.75", edgecolor="white", label="histogram")
    # gaussian_kde needs a non-singular covariance, i.e. at least two distinct values.
    if np.unique(arr).size >= 2:
        kde = gaussian_kde(arr)
        bw = math.sqrt(kde.covariance[0, 0])
        grid = np.linspace(max(arr.min() - 3 * bw, 0.0), arr.max() + 3 * bw, 512)
        ax.plot(grid, kde(grid), color="tab:blue", lw=1.8, label="KDE")
    colors = ["tab:green", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive"]
    for i, (p, v) in enumerate(zip(pcts, np.percentile(arr, pcts))):
        ax.axvline(v, color=colors[i % len(colors)], ls="--", lw=1.2, label=f"p{p:g} = {v:.3g}")
    ax.axvline(radius, color="tab:red", ls="-", lw=2.2, label=f"ε = {radius:.3g}")
    ax.set_xlabel("latent norm ‖u‖₂")
    ax.set_ylabel("density")
    ax.legend(loc="best", fontsize="small")
    if title:
        ax.set_title(title)
    return _save(fig, path)


def plot_curve(
    xs: Any,
    ys_by_label: Mapping[str, Any],
    path: str | os.PathLike,
    xlabel: str,
    ylabel: str,
    title: str | None = None,
    step: bool = False,
) -> Path:
    """Line plot of one or more curves over shared x values (e.g. certified accuracy vs radius).

    Args:
        xs: (M,) x values.
        ys_by_label: legend label -> (M,) y values.
        path: output PNG.
        xlabel, ylabel: axis labels.
        title: optional axes title.
        step: draw piecewise-constant steps, each value holding until the next x
            (``where="post"``), which is how a certified-accuracy curve behaves.
    """
    x = _array(xs).astype(np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"xs must be a non-empty 1-D array (M,), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("xs contains NaN or infinite values")
    if not ys_by_label:
        raise ValueError("ys_by_label is empty: nothing to plot")
    curves = {}
    for label, ys in ys_by_label.items():
        y = _array(ys).astype(np.float64)
        if y.shape != x.shape:
            raise ValueError(f"ys_by_label[{label!r}] must have shape {x.shape}, got {y.shape}")
        curves[label] = y

    fig = Figure(figsize=(6.4, 4.2), dpi=_MIN_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, y in curves.items():
        if step:
            ax.step(x, y, where="post", label=str(label))
        else:
            ax.plot(x, y, label=str(label))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    if title:
        ax.set_title(title)
    return _save(fig, path)


def colorize_labels(labels: Any, num_classes: int, ignore_index: int = -100) -> np.ndarray:
    """(N, H, W) class maps → (N, 3, H, W) colours in [0, 1]; ``ignore_index`` pixels are black.

    Colours come from matplotlib's qualitative ``tab20``, ``tab20b`` and ``tab20c`` maps (60
    distinct colours), so the same class has the same colour in every figure.
    """
    from matplotlib import colormaps

    maps = _array(labels)
    if maps.ndim != 3:
        raise ValueError(f"labels must have shape (N, H, W), got {maps.shape}")
    if not 1 <= num_classes <= 60:
        raise ValueError(f"colorize_labels has 60 colours; num_classes must be in 1..60, got {num_classes}")
    palette = np.concatenate([colormaps[name].colors for name in ("tab20", "tab20b", "tab20c")])[:num_classes, :3]
    ignored = maps == ignore_index
    if ((maps < 0) | (maps >= num_classes))[~ignored].any():
        raise ValueError(f"labels must lie in [0, {num_classes}) or equal ignore_index {ignore_index}")
    rgb = palette[np.where(ignored, 0, maps).astype(np.int64)]
    rgb[ignored] = 0.0
    return rgb.transpose(0, 3, 1, 2).astype(np.float32)


def plot_segmentation(
    x: Any,
    prediction: Any,
    x_adv: Any,
    prediction_adv: Any,
    labels: Any,
    path: str | os.PathLike,
    num_classes: int,
    title: str | None = None,
) -> Path:
    """Benign input | its predicted map | adversarial input | its map | true map, per row (paper Figs. 14–16).

    Args:
        x, x_adv: (N, C, H, W) images in [0, 1].
        prediction, prediction_adv, labels: (N, H, W) class maps (labels may hold -100, drawn black).
        num_classes: K, for a fixed colour per class.
    """
    images = [_images(a, name, 4, "(N, C, H, W)") for name, a in (("x", x), ("x_adv", x_adv))]
    maps = [colorize_labels(m, num_classes) for m in (prediction, prediction_adv, labels)]
    columns = [images[0], maps[0], images[1], maps[1], maps[2]]
    if images[0].shape[1] == 1:
        columns = [np.repeat(c, 3, axis=1) if c.shape[1] == 1 else c for c in columns]
    shapes = {c.shape for c in columns}
    if len(shapes) != 1:
        raise ValueError(f"inputs and maps must share N, H and W, got shapes {sorted(shapes)}")
    labels_row = ["input", "prediction", "adversarial input", "prediction", "true map"]
    return _save(_grid_figure(np.stack(columns, axis=1), labels_row, title), path)
