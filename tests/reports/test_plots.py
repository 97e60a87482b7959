"""Tests for perturbsets.plots: grid layout, PNG output, input validation, atomic saving."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.image import imread

from perturbsets.reports import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _reference_grid(images: np.ndarray, pad: int, pad_value: float) -> np.ndarray:
    """The obvious, slow way: paste each clipped image into its block."""
    R, K, C, H, W = images.shape
    out = np.full((R * H + (R - 1) * pad, K * W + (K - 1) * pad, 3), pad_value, np.float32)
    for r in range(R):
        for k in range(K):
            img = np.clip(images[r, k], 0, 1).transpose(1, 2, 0)
            out[r * (H + pad) : r * (H + pad) + H, k * (W + pad) : k * (W + pad) + W] = img
    return out


@pytest.fixture
def captured(monkeypatch):
    """Record every figure the plot functions save, so tests can inspect what was drawn."""
    figs = []
    real_save = plots._save

    def save(fig, path):
        figs.append(fig)
        return real_save(fig, path)

    monkeypatch.setattr(plots, "_save", save)
    return figs


def _assert_png(path, min_side=50):
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    img = imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    assert min(img.shape[:2]) >= min_side
    # atomic_path's temporary sibling must be gone.
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    return img


# ---------------------------------------------------------------------------- image_grid


@pytest.mark.parametrize("pad", [1, 2])
@pytest.mark.parametrize("channels", [1, 3])
def test_image_grid_matches_double_loop(pad, channels):
    rng = np.random.default_rng(0)
    images = rng.uniform(-0.5, 1.5, size=(3, 4, channels, 5, 7)).astype(np.float32)
    grid = plots.image_grid(images, pad=pad, pad_value=0.25)
    assert grid.shape == (3 * 5 + 2 * pad, 4 * 7 + 3 * pad, 3)
    assert grid.dtype == np.float32
    np.testing.assert_array_equal(grid, _reference_grid(images, pad, 0.25))


def test_image_grid_default_separator_is_white_and_thin():
    grid = plots.image_grid(np.zeros((2, 2, 3, 4, 4), np.float32))
    pad = grid.shape[0] - 8
    assert 1 <= pad <= 2
    np.testing.assert_array_equal(grid[4 : 4 + pad], 1.0)
    np.testing.assert_array_equal(grid[:, 4 : 4 + pad], 1.0)
    np.testing.assert_array_equal(grid[:4, :4], 0.0)


def test_image_grid_grayscale_becomes_three_equal_channels():
    images = torch.rand(2, 3, 1, 6, 6)
    grid = plots.image_grid(images)
    assert grid.shape[-1] == 3
    np.testing.assert_array_equal(grid[..., 0], grid[..., 1])
    np.testing.assert_array_equal(grid[..., 0], grid[..., 2])
    np.testing.assert_allclose(grid[:6, :6, 0], images[0, 0, 0].numpy())


def test_image_grid_clips_to_unit_interval():
    images = torch.tensor([-3.0, 0.4, 7.0]).view(1, 3, 1, 1, 1).expand(1, 3, 3, 2, 2)
    grid = plots.image_grid(images, pad=1)
    assert grid.min() == 0.0 and grid.max() == 1.0
    np.testing.assert_array_equal(grid[:, 0:2], 0.0)
    np.testing.assert_allclose(grid[:, 3:5], 0.4)
    np.testing.assert_array_equal(grid[:, 6:8], 1.0)


def test_image_grid_accepts_bfloat16_and_float64():
    images = torch.rand(1, 2, 3, 4, 4)
    ref = plots.image_grid(images)
    np.testing.assert_allclose(plots.image_grid(images.double().numpy()), ref)
    np.testing.assert_allclose(plots.image_grid(images.bfloat16()), ref, atol=1e-2)


@pytest.mark.parametrize(
    "images, kwargs, match",
    [
        (np.zeros((2, 3, 4, 4)), {}, "rank 5"),
        (np.zeros((1, 2, 2, 4, 4)), {}, "C in"),
        (np.zeros((1, 2, 3, 4, 4), np.uint8), {}, "floating point"),
        (np.full((1, 1, 3, 2, 2), np.nan), {}, "NaN"),
        (np.zeros((0, 2, 3, 4, 4)), {}, "empty"),
        (np.zeros((1, 1, 3, 2, 2)), {"pad": -1}, "pad"),
        (np.zeros((1, 1, 3, 2, 2)), {"pad_value": 2.0}, "pad_value"),
    ],
)
def test_image_grid_rejects_bad_input(images, kwargs, match):
    with pytest.raises(ValueError, match=match):
        plots.image_grid(images, **kwargs)


# ---------------------------------------------------------------------------- image figures


def test_plot_pairs_writes_png_and_caps_rows(tmp_path, captured):
    x = torch.rand(10, 3, 8, 8)
    out = plots.plot_pairs(x, 1 - x, x * 0.5, tmp_path / "pairs.png", max_rows=4, title="t")
    assert out == tmp_path / "pairs.png"
    _assert_png(out)
    (ax,) = captured[0].axes
    shown = ax.images[0].get_array()
    expected = plots.image_grid(torch.stack([x[:4], 1 - x[:4], x[:4] * 0.5], dim=1))
    np.testing.assert_allclose(shown, expected)
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == [r"$x$", r"perturbed $\tilde{x}$", "reconstruction"]


def test_plot_samples_writes_png_with_gray_colormap(tmp_path, captured):
    x = torch.rand(3, 1, 12, 12) * 0.2
    samples = torch.rand(3, 5, 1, 12, 12)
    out = plots.plot_samples(x, samples, tmp_path / "samples.png")
    img = _assert_png(out)
    assert img.shape[1] > img.shape[0]  # 6 columns by 3 rows
    im = captured[0].axes[0].images[0]
    assert im.get_array().shape == (3 * 12 + 2 * 2, 6 * 12 + 5 * 2)
    assert im.get_cmap().name == "gray"
    # Fixed limits: a dim batch must not be contrast-stretched.
    assert im.get_clim() == (0.0, 1.0)
    assert len(captured[0].axes[0].get_xticklabels()) == 6


def test_plot_interpolation_marks_endpoints(tmp_path, captured):
    x = np.random.default_rng(1).uniform(size=(2, 3, 8, 8)).astype(np.float32)
    path_images = np.repeat(x[:, None], 5, axis=1)
    out = plots.plot_interpolation(x, path_images, tmp_path / "sub" / "interp.png", title="i")
    _assert_png(out)
    labels = [t.get_text() for t in captured[0].axes[0].get_xticklabels()]
    assert labels == ["$x$", r"$\tilde{x}_a$", "", "", "", r"$\tilde{x}_b$"]


def test_png_pixels_reflect_the_images(tmp_path):
    # A black clean image next to a white perturbed one: the saved PNG must contain both.
    x = torch.zeros(1, 3, 16, 16)
    img = imread(plots.plot_pairs(x, x + 1, x + 0.5, tmp_path / "p.png"))
    lum = img[..., :3].mean(-1)
    assert (lum < 0.05).sum() > 100 * 100 * 0.5
    assert (np.abs(lum - 0.5) < 0.05).sum() > 100 * 100 * 0.5


_z = np.zeros


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda p: plots.plot_pairs(_z((2, 3, 4)), _z((2, 3, 4)), _z((2, 3, 4)), p), "rank 4"),
        (lambda p: plots.plot_pairs(_z((2, 3, 4, 4)), _z((3, 3, 4, 4)), _z((2, 3, 4, 4)), p),
         "x and x_tilde"),
        (lambda p: plots.plot_pairs(_z((2, 3, 4, 4)), _z((2, 3, 4, 4)), _z((2, 3, 5, 4)), p),
         "x and reconstruction"),
        (lambda p: plots.plot_pairs(*[_z((2, 2, 4, 4))] * 3, p), "C in"),
        (lambda p: plots.plot_pairs(*[_z((2, 3, 4, 4))] * 3, p, max_rows=0), "max_rows"),
        (lambda p: plots.plot_samples(_z((2, 3, 4, 4)), _z((3, 5, 3, 4, 4)), p), "same N"),
        (lambda p: plots.plot_samples(_z((2, 3, 4, 4)), _z((2, 3, 4, 4)), p), "rank 5"),
        (lambda p: plots.plot_samples(_z((2, 1, 4, 4)), _z((2, 5, 3, 4, 4)), p), r"\(C, H, W\)"),
        (lambda p: plots.plot_samples(_z((2, 4, 4, 4)), _z((2, 5, 4, 4, 4)), p), "C in"),
        (lambda p: plots.plot_interpolation(_z((2, 3, 4, 4)), _z((2, 1, 3, 4, 4)), p), "T >= 2"),
        (lambda p: plots.plot_interpolation(_z((2, 3, 4, 4)), _z((1, 4, 3, 4, 4)), p), "same N"),
    ],
)  # fmt: skip
def test_image_plots_reject_bad_input(tmp_path, call, match):
    with pytest.raises(ValueError, match=match):
        call(tmp_path / "bad.png")
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------------------- latent norms


def test_plot_latent_norms_histogram_kde_and_lines(tmp_path, captured):
    norms = np.random.default_rng(0).chisquare(8, size=500) ** 0.5
    out = plots.plot_latent_norms(torch.as_tensor(norms), 10.2, tmp_path / "norms.png", title="n")
    _assert_png(out)
    (ax,) = captured[0].axes
    assert ax.get_xlabel() == "latent norm ‖u‖₂"
    assert ax.get_ylabel() == "density"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    for p in (25, 50, 75):
        assert f"p{p} = {np.percentile(norms, p):.3g}" in legend
    assert "ε = 10.2" in legend
    assert "KDE" in legend
    lines = {line.get_label(): line for line in ax.get_lines()}
    eps_line = lines["ε = 10.2"]
    p50_line = lines[f"p50 = {np.median(norms):.3g}"]
    assert eps_line.get_xdata()[0] == 10.2
    assert p50_line.get_xdata()[0] == pytest.approx(np.median(norms), abs=5e-3)
    assert eps_line.get_linestyle() != p50_line.get_linestyle()
    # The histogram is a density: bar areas sum to one.
    area = sum(b.get_width() * b.get_height() for b in ax.patches)
    assert area == pytest.approx(1.0)


@pytest.mark.parametrize("norms", [[3.0], [2.0, 2.0, 2.0]])
def test_plot_latent_norms_skips_kde_without_two_distinct_values(tmp_path, captured, norms):
    _assert_png(plots.plot_latent_norms(norms, 1.0, tmp_path / "n.png"))
    legend = [t.get_text() for t in captured[0].axes[0].get_legend().get_texts()]
    assert "KDE" not in legend
    assert "ε = 1" in legend


@pytest.mark.parametrize(
    "norms, radius, kwargs, match",
    [
        ([], 1.0, {}, "empty"),
        ([[1.0, 2.0]], 1.0, {}, "1-D"),
        ([1.0, np.nan], 1.0, {}, "NaN or infinite"),
        ([1.0, np.inf], 1.0, {}, "NaN or infinite"),
        ([1.0, -2.0], 1.0, {}, "non-negative"),
        ([1.0, 2.0], 0.0, {}, "radius"),
        ([1.0, 2.0], -1.0, {}, "radius"),
        ([1.0, 2.0], float("nan"), {}, "radius"),
        ([1.0, 2.0], 1.0, {"percentiles": (50, 101)}, "percentiles"),
    ],
)
def test_plot_latent_norms_rejects_bad_input(tmp_path, norms, radius, kwargs, match):
    with pytest.raises(ValueError, match=match):
        plots.plot_latent_norms(norms, radius, tmp_path / "n.png", **kwargs)
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------------------- curves


@pytest.mark.parametrize("step", [False, True])
def test_plot_curve(tmp_path, captured, step):
    xs = np.linspace(0, 10, 21)
    ys = {"σ = 0.5": np.exp(-xs / 3), "σ = 1": torch.exp(-torch.as_tensor(xs) / 5)}
    out = plots.plot_curve(xs, ys, tmp_path / "c.png", "radius", "certified accuracy", step=step)
    _assert_png(out)
    (ax,) = captured[0].axes
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("radius", "certified accuracy")
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == list(ys)
    expected_style = "steps-post" if step else "default"
    assert all(line.get_drawstyle() == expected_style for line in lines)
    np.testing.assert_allclose(lines[0].get_ydata(), np.exp(-xs / 3))


@pytest.mark.parametrize(
    "xs, ys, match",
    [
        (np.arange(3.0), {}, "empty"),
        (np.zeros((2, 2)), {"a": np.zeros((2, 2))}, "xs"),
        (np.array([]), {"a": np.array([])}, "xs"),
        (np.array([0.0, np.inf]), {"a": np.zeros(2)}, "xs"),
        (np.arange(3.0), {"a": np.zeros(3), "b": np.zeros(4)}, r"ys_by_label\['b'\]"),
    ],
)
def test_plot_curve_rejects_bad_input(tmp_path, xs, ys, match):
    with pytest.raises(ValueError, match=match):
        plots.plot_curve(xs, ys, tmp_path / "c.png", "x", "y")


# ---------------------------------------------------------------------------- atomic saving


def _boom(*args, **kwargs):
    raise RuntimeError("disk full")


@pytest.mark.parametrize(
    "call",
    [
        lambda p: plots.plot_pairs(*[torch.rand(2, 3, 4, 4)] * 3, p),
        lambda p: plots.plot_latent_norms([1.0, 2.0, 3.0], 2.5, p),
        lambda p: plots.plot_curve([0, 1], {"a": [1, 0]}, p, "x", "y"),
    ],
)
def test_failed_save_keeps_old_file_and_leaves_no_partial(tmp_path, monkeypatch, call):
    target = tmp_path / "fig.png"
    target.write_bytes(b"previous figure")
    monkeypatch.setattr(FigureCanvasAgg, "print_png", _boom)
    with pytest.raises(RuntimeError, match="disk full"):
        call(target)
    assert target.read_bytes() == b"previous figure"
    assert [p.name for p in tmp_path.iterdir()] == ["fig.png"]


def test_failed_save_without_previous_file_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(FigureCanvasAgg, "print_png", _boom)
    with pytest.raises(RuntimeError):
        plots.plot_samples(torch.rand(1, 3, 4, 4), torch.rand(1, 2, 3, 4, 4), tmp_path / "s.png")
    assert not any(tmp_path.iterdir())


def test_overwrites_existing_file_on_success(tmp_path):
    target = tmp_path / "fig.png"
    target.write_bytes(b"old")
    plots.plot_curve([0, 1], {"a": [0, 1]}, target, "x", "y")
    assert target.read_bytes().startswith(PNG_MAGIC)


def test_plot_samples_column_labels(tmp_path):
    x = torch.rand(2, 1, 5, 5)
    samples = torch.rand(2, 3, 1, 5, 5)
    assert plots.plot_samples(x, samples, tmp_path / "a.png", labels=["a", "b", "c"]).is_file()
    with pytest.raises(ValueError, match="2 labels for 3 sample columns"):
        plots.plot_samples(x, samples, tmp_path / "b.png", labels=["a", "b"])


def test_colorize_labels_fixed_colours_and_ignored_pixels():
    from perturbsets.reports.plots import colorize_labels

    maps = np.array([[[0, 1], [35, -100]]])
    rgb = colorize_labels(maps, 36)
    assert rgb.shape == (1, 3, 2, 2) and np.all(rgb[0, :, 1, 1] == 0)
    assert not np.allclose(rgb[0, :, 0, 0], rgb[0, :, 0, 1]) and not np.allclose(rgb[0, :, 0, 0], rgb[0, :, 1, 0])
    assert np.array_equal(colorize_labels(np.array([[[1]]]), 36)[0, :, 0, 0], rgb[0, :, 0, 1])
    with pytest.raises(ValueError, match="labels must lie in"):
        colorize_labels(np.array([[[36]]]), 36)


def test_plot_segmentation_writes_a_png(tmp_path):
    from perturbsets.reports.plots import plot_segmentation

    rng = np.random.default_rng(0)
    x = rng.random((2, 3, 12, 18))
    maps = rng.integers(0, 36, (3, 2, 12, 18))
    path = plot_segmentation(x, maps[0], x, maps[1], maps[2], tmp_path / "seg.png", 36)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="share N, H and W"):
        plot_segmentation(x, maps[0][:, :6], x, maps[1], maps[2], tmp_path / "bad.png", 36)
