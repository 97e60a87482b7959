"""The quality report of a learned perturbation set: its figures and ``report.md``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from perturbsets._util.io import write_text
from perturbsets.config.learn import Config
from perturbsets.core.perturbation_set import PerturbationSet
from perturbsets.pairs.paired import PairedData
from perturbsets.reports.plots import plot_interpolation, plot_latent_norms, plot_pairs, plot_samples
from perturbsets.reports.tables import latent_norm_table, quality_table

FIGURES = "figures"


def _two_perturbations(data: PairedData, n: int, seed: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n inputs with two perturbations each: fresh draws, or two stored ones when available.

    When an image owns a single stored perturbation, the clean image stands in for the
    first endpoint (the identity perturbation).
    """
    a = next(data.batches(n, shuffle=False, seed=seed, epoch=0, device=device))
    b = next(data.batches(n, shuffle=False, seed=seed, epoch=1, device=device))
    same = (a.x_tilde == b.x_tilde).flatten(1).all(1)
    x_tilde_a = torch.where(same.view(-1, 1, 1, 1), a.x, a.x_tilde)
    return a.x, x_tilde_a, b.x_tilde


@torch.no_grad()
def write_figures(out_dir: Path, pset: PerturbationSet, data: PairedData, seed: int, norms: np.ndarray | None, percentiles) -> dict[str, Path]:
    """Pairs/reconstructions, samples, an interpolation and the latent-norm histogram."""
    fig_dir = out_dir / FIGURES
    device = pset.device
    batch = next(data.batches(8, shuffle=False, seed=seed, device=device))
    gen = torch.Generator(device=device).manual_seed(seed)
    noise = torch.randn((batch.x.shape[0], *pset.latent_shape), generator=gen, device=device)
    recon = pset.condition(batch.x).reconstruct(batch.x_tilde, noise)
    figures = {
        "pairs": plot_pairs(batch.x, batch.x_tilde, recon, fig_dir / "pairs.png", title="test pairs and CVAE reconstructions"),
        "samples": plot_samples(
            batch.x, pset.sample(batch.x, 8, generator=gen), fig_dir / "samples.png", title=f"samples from S(x), ε = {pset.radius:.3g}"
        ),
    }
    x, x_a, x_b = _two_perturbations(data, 4, seed, device)
    figures["interpolation"] = plot_interpolation(
        x, pset.interpolate(x, x_a, x_b, steps=8), fig_dir / "interpolation.png", title="latent interpolation between two perturbations"
    )
    if norms is not None:
        figures["latent_norms"] = plot_latent_norms(
            norms, pset.radius, fig_dir / "latent_norms.png", percentiles=percentiles, title="validation encodings ‖u‖₂"
        )
    return figures


def write_report(
    out_dir: str | Path,
    pset: PerturbationSet,
    metrics: dict[str, Any],
    test: PairedData,
    config: Config,
    norms: np.ndarray | None,
    history: list[dict[str, Any]] | None,
) -> Path:
    """Write ``figures/*.png`` and ``report.md`` into ``out_dir``; returns the report path.

    ``metrics`` is the set's saved quality record (``metrics.json``).
    """
    out_dir = Path(out_dir)
    figures = write_figures(out_dir, pset, test, config.seed, norms, (25, 50, 75))
    lines = [
        f"# Perturbation set: {config.name}",
        "",
        f"Architecture `{pset.architecture}`, latent dimension {pset.latent_dim}, input {pset.input_shape}, "
        f"radius ε = {pset.radius:.4g} (rule: `{config.evaluation.radius}` over the validation encodings).",
        "",
        "## Quality (paper Appendix B, layout of Table 4)",
        "",
        quality_table(metrics, config.model.architecture),
    ]
    if metrics["latent_norms"] is not None:
        lines += [
            "## Validation latent norms ‖(μ(x,x̃) − μ(x))/σ(x)‖₂ (layout of Table 8)",
            "",
            latent_norm_table(metrics["latent_norms"]),
        ]
    if history:
        last = history[-1]
        best = min(history, key=lambda h: h["val_loss"])
        lines += [
            "## Training",
            "",
            f"{len(history)} epochs, {sum(h['seconds'] for h in history):.0f} s. Final training loss {last['loss']:.3f} "
            f"(reconstruction {last['reconstruction']:.3f}, KL {last['kl']:.3f}); best validation loss {best['val_loss']:.3f} "
            f"at epoch {best['epoch'] + 1}.",
            "",
        ]
    captions = {
        "pairs": "Test pairs: x, its perturbed version x̃, and the CVAE reconstruction of x̃.",
        "samples": "Eight samples from the truncated prior for each input.",
        "interpolation": "Interpolation in the latent ball between two perturbations of the same input (Figure 1, top row).",
        "latent_norms": "Distribution of validation encodings; the chosen radius and the 25/50/75th percentiles.",
    }
    lines += ["## Figures", ""]
    for key, path in figures.items():
        lines += [f"![{key}]({path.relative_to(out_dir).as_posix()})", "", captions[key], ""]
    path = out_dir / "report.md"
    write_text(path, "\n".join(lines))
    return path
