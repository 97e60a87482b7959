"""Every Markdown table of the library, built from the JSON records the runs save.

The records are the dicts written to disk: a set's ``metrics.json`` (``QualityReport.to_dict``,
whose ``latent_norms`` is ``LatentNormStats.to_dict``) and a model's ``robust_metrics.json``
(``RobustReport.to_dict``). Building tables from the saved records means a table printed
at the end of a run and one rebuilt later from its folder are the same text.
"""

from __future__ import annotations

from typing import Any, Iterable

from perturbsets.core.quality import LABELS, METRICS


def quality_table(metrics: dict[str, Any], name: str = "CVAE") -> str:
    """One set's quality, laid out like the paper's Table 4: mean ± standard deviation *across test pairs*.

    The paper's ± is the spread of the mean over repeated evaluation passes, a much
    smaller number; the note under the table says which one this is.
    """
    header = "| Model | ε | " + " | ".join(LABELS[k] for k in METRICS) + " |"
    rule = "|" + "---|" * (len(METRICS) + 2)
    cells = " | ".join(f"{metrics[k]['mean']:.4g} ± {metrics[k]['std']:.2g}" for k in METRICS)
    note = (
        f"\n\nErrors are per-pixel means ({'the generator NLL term' if metrics['metric'] == 'nll' else 'squared error'}) "
        f"over {metrics['kl']['count']} test pairs; KL is per example. ± is the standard deviation across test pairs "
        "(the spread of single pairs), not the paper's spread over repeated evaluation passes."
    )
    return f"{header}\n{rule}\n| {name} | {metrics['radius']:.4g} | {cells} |{note}\n"


def latent_norm_table(stats: dict[str, Any]) -> str:
    """One set's validation latent-norm statistics (layout of Table 8)."""
    percentiles = stats["percentiles"]
    cells = " | ".join(f"{v:.3g}" for v in percentiles.values())
    lines = [
        "| mean | std | " + " | ".join(percentiles) + " | max |",
        "|" + "---|" * (len(percentiles) + 3),
        f"| {stats['mean']:.3g} | {stats['std']:.3g} | {cells} | {stats['max']:.3g} |",
    ]
    return "\n".join(lines) + "\n"


def robust_table(records: list[dict[str, Any]]) -> str:
    """One row per model, in the layout of the paper's Tables 2/3 (accuracies in %)."""
    radius_of = records[0]["radii"]
    radii = list(radius_of)
    cols = ["Clean", "Perturbed", "OOD"] + [f"PGD ε={radius_of[r]:.3g} ({r})" for r in radii]
    cert_keys = list(dict.fromkeys(k for r in records for k in r["certified"]))
    cols += [f"Certified ε={radius_of.get(k, float('nan')):.3g} ({k})" for k in cert_keys]

    def pct(v: float | None) -> str:
        return "–" if v is None else f"{100 * v:.1f}"

    miou_keys = list(dict.fromkeys(k for r in records for k in r.get("miou", {})))
    cols += ["mIoU " + (k if k not in radii else f"PGD ε={radius_of[k]:.3g}") for k in miou_keys]
    lines = ["| Method | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for r in records:
        cells = [pct(r["clean"]), pct(r["perturbed"]), pct(r["ood"])] + [pct(r["pgd"].get(k)) for k in radii]
        cells += [pct(r["certified"].get(k)) for k in cert_keys]
        cells += [pct(r.get("miou", {}).get(k)) for k in miou_keys]
        lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def paper_table(
    title: str,
    *,
    quality_rows: Iterable[tuple[str, dict[str, Any]]] = (),
    norm_rows: Iterable[tuple[str, float, dict[str, Any]]] = (),
    robust_records: list[dict[str, Any]] | None = None,
) -> str:
    """A paper table from finished experiments: ``# title``, then their rows.

    quality_rows: (row name, ``metrics.json``) of learned sets (layout of Tables 4, 7, 10).
    norm_rows: (row name, final β, ``metrics.json``) for the latent-norm Tables 8 and 11.
    robust_records: ``robust_metrics.json`` of trained models (layout of Tables 2, 3, 9).
    """
    quality_rows, norm_rows = list(quality_rows), list(norm_rows)
    lines = [f"# {title}", ""]
    if norm_rows:
        lines += ["| Method | β | Mean | Std | 25% | 50% | 75% | Max |", "|---|---|---|---|---|---|---|---|"]
        for row, beta, m in norm_rows:
            s = m["latent_norms"]
            cells = [f"{beta:g}", f"{s['mean']:.2f}", f"{s['std']:.2f}"] + [f"{s['percentiles'][p]:.2f}" for p in ("p25", "p50", "p75")]
            lines.append(f"| {row} | " + " | ".join(cells) + f" | {s['max']:.2f} |")
    elif quality_rows:
        lines += ["| Model | ε | " + " | ".join(LABELS[k] for k in METRICS) + " |", "|" + "---|" * (len(METRICS) + 2)]
        for row, m in quality_rows:
            lines.append(f"| {row} | {m['radius']:.3g} | " + " | ".join(f"{m[k]['mean']:.3g}" for k in METRICS) + " |")
    if robust_records:
        lines.append(robust_table(robust_records))
    if len(lines) == 2:
        lines.append("No experiment of this table has finished yet.")
    return "\n".join(lines) + "\n"
