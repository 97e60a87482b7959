"""Robust training and evaluation of downstream models with a learned perturbation set.

Training (paper Section 5, Appendix C) — one loop, five modes:

* ``standard``: clean x;
* ``perturbed``: the dataset's own x̃ (e.g. "CIFAR10-C data augmentation" of Table 2);
* ``cvae_augment``: x̃ = g(μ(x) + u·σ(x), x) with u from the truncated prior (Table 2);
* ``cvae_adversarial``: latent PGD at the full radius, training on the adversarial point
  only (Algorithm 1; the authors' code used max(clean, adversarial) and attacked in train
  mode — we follow the paper and attack in eval mode);
* ``smoothing``: u ~ N(0, σ²I) fed through the prior reparameterisation (Appendix C.2).

Evaluation (Tables 2, 3, 9; Figures 11, 17): clean accuracy, accuracy on the dataset's
perturbed data and on held-out perturbations, robust accuracy under latent PGD at a list
of radii, and certified accuracy by randomized smoothing in the latent space.
"""

from __future__ import annotations

import dataclasses
import math
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from perturbsets._util.io import atomic_path, write_json, write_text
from perturbsets.attacks.latent_pgd import LatentPGD
from perturbsets.config.io import load_config, to_dict
from perturbsets.config.robust import AttackConfig, RobustConfig
from perturbsets.pairs.paired import PairBatch, PairedData
from perturbsets.workflows.sources import load_splits, load_test
from perturbsets._util.checkpoint import load_checkpoint
from perturbsets.training.loop import BEST, LATEST, StepOutput, derive_seed, fit, prepare_run, resolve_device
from perturbsets.classifiers.architectures import build_classifier
from perturbsets.core.perturbation_set import PerturbationSet
from perturbsets.reports.plots import plot_curve, plot_segmentation
from perturbsets.certify.smoothing import SmoothedClassifier, certified_accuracy, certified_accuracy_curve
from perturbsets.classifiers.scoring import (
    IGNORE_INDEX,
    Scorer,
    check_labels,
    per_example_error,
    per_example_loss,
)

CERT_COLUMNS = ("idx", "label", "predict", "radius", "correct", "time")


def make_attack(model: nn.Module, pset: PerturbationSet, cfg: AttackConfig, eps: float, generator) -> LatentPGD:
    step = cfg.step_size if cfg.step_size is not None else eps / cfg.step_divisor
    return LatentPGD(
        model, pset, eps, cfg.steps, step, cfg.random_start,
        restarts=cfg.restarts, early_stop=cfg.early_stop, select=cfg.select, generator=generator,
    )  # fmt: skip


class InputTransform:
    """The training input of each mode: batch (x, x̃, y) → model input (N, C, H, W)."""

    def __init__(self, config: RobustConfig, model: nn.Module, pset: PerturbationSet | None) -> None:
        self.mode = config.training.mode
        self.config = config
        self.model = model
        self.pset = pset
        self.eps = pset.resolve_radius(config.training.attack.eps) if pset is not None else None

    def __call__(self, batch: PairBatch, generator: torch.Generator, epoch: float = math.inf) -> Tensor:
        """``epoch`` (fractional) sets the attack radius during ``attack.warmup_epochs``."""
        mode, pset = self.mode, self.pset
        if mode == "standard":
            return batch.x
        if mode == "perturbed":
            return batch.x_tilde
        assert pset is not None
        n = batch.x.shape[0]
        if mode == "cvae_augment":
            with torch.no_grad():
                return pset.sample(batch.x, 1, generator=generator)[:, 0]
        if mode == "smoothing":
            sigma = self.config.training.sigma
            u = sigma * torch.randn(n, pset.latent_dim, generator=generator, device=batch.x.device)
            with torch.no_grad():
                return pset.perturb(batch.x, u)
        cfg = self.config.training.attack
        # A linear ramp of the radius: training directly at a large radius can fail to
        # learn at all (the robust loss stays at chance), which the ramp avoids.
        eps = self.eps * min(1.0, epoch / cfg.warmup_epochs) if cfg.warmup_epochs > 0 else self.eps
        if eps <= 0:
            return batch.x
        return make_attack(self.model, pset, cfg, eps, generator)(batch.x, batch.y).x_adv


@dataclass
class RobustTrainResult:
    model: nn.Module
    history: list[dict[str, Any]]
    best_epoch: int
    out_dir: Path


def load_set(config: RobustConfig, device) -> PerturbationSet | None:
    if config.perturbation_set is None:
        return None
    pset = PerturbationSet.load(Path(config.perturbation_set).expanduser(), device=device)
    if config.training.channels_last:
        pset.cvae.to(memory_format=torch.channels_last)
    return pset


def build_model(config: RobustConfig) -> nn.Module:
    torch.manual_seed(derive_seed(config.seed, 0, 5))
    model = build_classifier(config.model.architecture, **config.model.options)
    return model.to(memory_format=torch.channels_last) if config.training.channels_last else model


def _labels(batch: PairBatch) -> Tensor:
    if batch.y is None:
        raise ValueError("robust training and evaluation need labels; the data has none (give y / a labelled source)")
    return batch.y


def robust_train(
    config: RobustConfig, out_dir: str | Path, *, resume: bool = False, data: PairedData | None = None, progress: bool = True
) -> RobustTrainResult:
    """Train the downstream model of ``config`` in its mode; checkpoints and resume as in CVAE training."""
    out_dir = Path(out_dir)
    prepare_run(out_dir, resume)
    tc = config.training
    device = resolve_device(tc.device)
    pset = load_set(config, device)
    splits = load_splits(config.data, config.seed, data)
    if pset is not None and tuple(splits.train.image_shape) != pset.input_shape:
        raise ValueError(
            f"the data's images are {tuple(splits.train.image_shape)} but the perturbation set takes {pset.input_shape}; "
            "use data of the shape the set was learned on"
        )
    if pset is not None:
        # Fail now, not after training, if an evaluation radius cannot be resolved.
        for spec in config.evaluation.radii:
            pset.resolve_radius(spec)
    model = build_model(config).to(device)
    if tc.optimizer == "adam":
        optimizer: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=0.0, weight_decay=tc.weight_decay)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=tc.momentum, weight_decay=tc.weight_decay)
    transform = InputTransform(config, model, pset)

    def step(batch: PairBatch, t: float, gen: torch.Generator) -> StepOutput:
        y = _labels(batch)
        inputs = transform(batch, gen, t)
        logits = model(inputs)
        check_labels(logits, y)
        loss = per_example_loss(logits, y)
        err = per_example_error(logits.detach(), y)
        return StepOutput(loss.mean(), {"loss": loss.mean().item(), "error": err.mean().item()}, y.shape[0])

    def validate() -> dict[str, float]:
        gen = torch.Generator(device=device).manual_seed(derive_seed(config.seed, 0, 6))
        errors, losses = [], []
        for batch in splits.val.batches(tc.batch_size, shuffle=False, seed=config.seed, device=device):
            y = _labels(batch)
            inputs = transform(batch, gen)
            with torch.no_grad():
                logits = model(inputs)
            errors.append(per_example_error(logits, y))
            losses.append(per_example_loss(logits, y))
        if not errors:
            raise ValueError("the validation split is empty; give data.split.val a positive size")
        err = torch.cat(errors).mean().item()
        return {"val_loss": err, "val_error": err, "val_ce": torch.cat(losses).mean().item()}

    result = fit(
        model,
        optimizer,
        config=config,
        out_dir=out_dir,
        train=splits.train,
        step=step,
        validate=validate,
        device=device,
        resume=resume,
        progress=progress,
    )
    return RobustTrainResult(model, result.history, result.best_epoch, out_dir)


# --------------------------------------------------------------------------- evaluation


@dataclass
class RobustReport:
    """Accuracies of one model: clean, perturbed, OOD, PGD per radius, certified per radius.

    For segmentation the accuracies are pixel accuracies (certified: the fraction of
    pixels certified correct), and ``miou`` holds the mean IoU of the clean, perturbed,
    OOD and PGD predictions under the same keys.

    A ``smoothing`` run is reported as its smoothed classifier, as in Table 9: ``clean`` is
    the accuracy of CERTIFY's prediction on the certified test inputs, ``perturbed`` and
    ``ood`` that of PREDICT on x̃ (abstentions count as wrong), and ``base_clean`` the
    base model's clean accuracy; it has no ``pgd`` entries (its robustness is ``certified``).
    """

    name: str
    clean: float
    perturbed: float | None
    ood: float | None
    pgd: dict[str, float]
    certified: dict[str, float]
    radii: dict[str, float]
    counts: dict[str, int]
    miou: dict[str, float] = dataclasses.field(default_factory=dict)
    base_clean: float | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def reports_to_markdown(reports: list[RobustReport]) -> str:
    """One row per model, in the layout of the paper's Tables 2/3 (accuracies in %)."""
    radii = list(reports[0].radii)
    cols = ["Clean", "Perturbed", "OOD"] + [f"PGD ε={reports[0].radii[r]:.3g} ({r})" for r in radii]
    cert_keys = list(dict.fromkeys(k for r in reports for k in r.certified))
    cols += [f"Certified ε={reports[0].radii.get(k, float('nan')):.3g} ({k})" for k in cert_keys]

    def pct(v: float | None) -> str:
        return "–" if v is None else f"{100 * v:.1f}"

    miou_keys = list(dict.fromkeys(k for r in reports for k in r.miou))
    cols += [f"mIoU {k if k not in radii else f'PGD ε={reports[0].radii[k]:.3g}'}" for k in miou_keys]
    lines = ["| Method | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for r in reports:
        cells = [pct(r.clean), pct(r.perturbed), pct(r.ood)] + [pct(r.pgd.get(k)) for k in radii]
        cells += [pct(r.certified.get(k)) for k in cert_keys]
        cells += [pct(r.miou.get(k)) for k in miou_keys]
        lines.append(f"| {r.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


@torch.no_grad()
def score(model: nn.Module, batches, pick: Callable[[PairBatch], Tensor]) -> Scorer:
    """Accuracy (pixel accuracy and mIoU for segmentation) of ``model`` on ``pick(batch)``."""
    scorer = Scorer()
    for batch in batches:
        scorer.update(model(pick(batch)), _labels(batch))
    if scorer.examples == 0:
        raise ValueError("no test examples to evaluate")
    return scorer


def pgd_scores(
    model: nn.Module, pset: PerturbationSet, batches, cfg: AttackConfig, radii: list[float], seed: int
) -> list[Scorer]:
    """Accuracy of ``model`` under latent PGD at each radius in ``radii`` (one Scorer each).

    Radii are attacked from the smallest up. For classification an example misclassified at
    a smaller radius is counted wrong at every larger one without attacking it again: its
    adversarial point lies in the larger ball too, so this is exact for the reported
    accuracy (never higher than attacking afresh) and spares the attack on broken examples.
    """
    order = sorted(range(len(radii)), key=lambda i: radii[i])
    attacks = {
        i: make_attack(model, pset, cfg, radii[i], torch.Generator(device=pset.device).manual_seed(seed)) for i in order
    }
    scorers = [Scorer() for _ in radii]
    for batch in batches:
        y = _labels(batch)
        alive = torch.ones(len(y), dtype=torch.bool, device=y.device)
        for i in order:
            idx = alive.nonzero().squeeze(1)
            if len(idx) == 0:
                scorers[i].add_predictions(torch.full_like(y, -1), y)
                continue
            x_adv = attacks[i](batch.x[idx], y[idx]).x_adv
            with torch.no_grad():
                logits = model(x_adv)
            if logits.dim() == 4 or len(idx) == len(y):
                scorers[i].update(logits, y[idx])
                if logits.dim() == 4:
                    continue
                prediction = logits.argmax(1)
            else:
                prediction = torch.full_like(y, -1)
                prediction[idx] = logits.argmax(1)
                scorers[i].add_predictions(prediction, y)
            alive &= prediction == y
    return scorers


def certify_sigma(config: RobustConfig) -> float:
    """The smoothing noise level of the evaluation: ``certify.sigma``, else the training σ."""
    cc = config.evaluation.certify
    assert cc is not None
    return cc.sigma if cc.sigma is not None else config.training.sigma


def _smoothed_classifier(
    model: nn.Module, pset: PerturbationSet | None, config: RobustConfig, test: Any, device
) -> SmoothedClassifier | None:
    """The smoothed classifier a ``smoothing`` run is evaluated as (Table 9), else ``None``."""
    if config.training.mode != "smoothing" or pset is None or config.evaluation.certify is None:
        return None
    with torch.no_grad():
        num_classes = model(_first_input(test, device)).shape[1]
    return SmoothedClassifier(model, pset, certify_sigma(config), num_classes)


def predict_score(smoothed: SmoothedClassifier, batches, config: RobustConfig, seed: int) -> Scorer:
    """Accuracy of the smoothed classifier's PREDICT (Algorithm 2) on each batch's x̃, abstentions wrong.

    PREDICT draws ``certify.n0`` samples per input (the paper predicts with n0 = 100) and
    answers at level ``certify.alpha``.
    """
    cc = config.evaluation.certify
    assert cc is not None
    gen = torch.Generator(device=smoothed.perturbation_set.device).manual_seed(seed)
    scorer = Scorer()
    for batch in batches:
        y = _labels(batch)
        prediction = smoothed.predict(batch.x_tilde, cc.n0, cc.alpha, cc.batch_size, generator=gen).prediction
        scorer.add_predictions(prediction.to(y.device), y)
    if scorer.examples == 0:
        raise ValueError("no test examples to evaluate")
    return scorer


def certify_examples(
    model: nn.Module, pset: PerturbationSet, data: PairedData, config: RobustConfig, sigma: float, tsv: Path, num_classes: int
) -> np.ndarray:
    """Certify test examples one batch at a time, appending rows to ``tsv`` (resumable).

    Rows already in the file are kept and skipped, so an interrupted run continues where
    it stopped. Returns the table as a structured array with :data:`CERT_COLUMNS`.
    """
    cc = config.evaluation.certify
    assert cc is not None
    smoothed = SmoothedClassifier(model, pset, sigma, num_classes)
    fingerprint = _certify_fingerprint(model, pset, config, sigma)
    stamp = tsv.with_suffix(".json")
    done = set()
    if tsv.is_file():
        _require_same_settings(stamp, fingerprint, tsv)
        _drop_partial_rows(tsv)
        done = {int(row["idx"]) for row in read_certificates(tsv)}
    else:
        write_json(stamp, fingerprint)
        write_text(tsv, "\t".join(CERT_COLUMNS) + "\n")
    limit = cc.max_examples if cc.max_examples is not None else len(data)
    for batch in data.batches(config.evaluation.batch_size, shuffle=False, seed=config.seed, device=pset.device):
        y = _labels(batch)
        rows = []
        assert batch.index is not None
        for i, idx in enumerate(batch.index.tolist()):
            if len(done) >= limit:
                break
            if idx in done:
                continue
            began = time.perf_counter()
            cert = _certify_one(smoothed, batch.x[i : i + 1], idx, config)
            pred, rad, label = int(cert.prediction[0]), float(cert.radius[0]), int(y[i])
            rows.append(f"{idx}\t{label}\t{pred}\t{rad:.6g}\t{int(pred == label)}\t{time.perf_counter() - began:.4g}\n")
            done.add(idx)
        with tsv.open("a") as f:
            f.write("".join(rows))
        if len(done) >= limit:
            break
    return read_certificates(tsv)


def _certify_one(smoothed: SmoothedClassifier, x: Tensor, idx: int, config: RobustConfig) -> Any:
    """CERTIFY one test input (1, C, H, W) with noise seeded by (seed, idx) alone, so a resumed
    run writes exactly the certificates an uninterrupted run would have written."""
    cc = config.evaluation.certify
    assert cc is not None
    gen = torch.Generator(device=x.device).manual_seed(derive_seed(config.seed, 17, idx))
    return smoothed.certify(x, cc.n0, cc.n, cc.alpha, cc.batch_size, generator=gen, correction=cc.correction, tau=cc.tau)


def _require_same_settings(stamp: Path, fingerprint: dict[str, Any], holder: Path) -> None:
    """Refuse to resume into ``holder`` unless ``stamp`` records exactly these settings."""
    previous = json.loads(stamp.read_text()) if stamp.is_file() else None
    if previous != fingerprint:
        raise ValueError(
            f"{holder} holds certificates of another model or other settings ({stamp.name} differs); "
            "delete it to start afresh, or write to another --out"
        )


def _certify_fingerprint(model: nn.Module, pset: PerturbationSet, config: RobustConfig, sigma: float) -> dict[str, Any]:
    """What saved certificates depend on: they may only be reused by a run that would write the same ones."""
    cc = config.evaluation.certify
    assert cc is not None
    return {
        "model_sha256": state_dict_sha256(model),
        "perturbation_set_sha256": state_dict_sha256(pset.cvae),
        "sigma": sigma,
        "n0": cc.n0,
        "n": cc.n,
        "alpha": cc.alpha,
        "correction": cc.correction,
        "tau": cc.tau,
        "batch_size": cc.batch_size,
        "seed": config.seed,
        "test_data": to_dict(config.evaluation.test or config.data),
    }


def certify_segmentation(
    model: nn.Module, pset: PerturbationSet, data: Any, config: RobustConfig, sigma: float, folder: Path, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel certification of test images (Appendix F.3, Figure 17), resumable.

    Each image's maps are saved as ``folder/<idx>.npz`` (``prediction`` int16 with -1 for
    abstentions, ``radius`` float32, ``label`` int16) as soon as they are computed; images
    already saved are skipped. Returns (radius, correct) over every scored pixel of the
    certified images, where ``correct`` means certified and equal to the label.
    """
    cc = config.evaluation.certify
    assert cc is not None
    smoothed = SmoothedClassifier(model, pset, sigma, num_classes)
    fingerprint = _certify_fingerprint(model, pset, config, sigma)
    stamp = folder / "fingerprint.json"
    if stamp.is_file():
        _require_same_settings(stamp, fingerprint, folder)
    else:
        write_json(stamp, fingerprint)
    limit = cc.max_examples if cc.max_examples is not None else len(data)
    done: list[Path] = []
    for batch in data.batches(config.evaluation.batch_size, shuffle=False, seed=config.seed, device=pset.device):
        y = _labels(batch)
        assert batch.index is not None
        for i, idx in enumerate(batch.index.tolist()[: limit - len(done)]):
            path = folder / f"{idx:06d}.npz"
            done.append(path)
            if path.is_file():
                continue
            cert = _certify_one(smoothed, batch.x[i : i + 1], idx, config)
            with atomic_path(path) as tmp, open(tmp, "wb") as f:
                np.savez(
                    f,
                    prediction=cert.prediction[0].numpy().astype(np.int16),
                    radius=cert.radius[0].numpy().astype(np.float32),
                    label=y[i].cpu().numpy().astype(np.int16),
                )
        if len(done) >= limit:
            break
    radii, correct = [], []
    for path in done:
        with np.load(path, allow_pickle=False) as maps:
            scored = maps["label"] != IGNORE_INDEX
            radii.append(maps["radius"][scored].astype(np.float64))
            correct.append((maps["prediction"] == maps["label"])[scored])
    return np.concatenate(radii), np.concatenate(correct)


_CERT_DTYPE = [("idx", int), ("label", int), ("predict", int), ("radius", float), ("correct", int), ("time", float)]


def _parse_row(line: str) -> tuple | None:
    fields = line.split("\t")
    if len(fields) != len(_CERT_DTYPE):
        return None
    try:
        return tuple(t(v) for (_, t), v in zip(_CERT_DTYPE, fields))
    except ValueError:
        return None


def _drop_partial_rows(tsv: Path) -> None:
    """Keep only complete rows: a run killed while appending may leave a cut-off last line."""
    text = tsv.read_text()
    lines = text.split("\n")
    # The last element is '' when the file ends with a newline, else an unfinished row.
    good = [line for line in lines[1:-1] if _parse_row(line) is not None]
    if len(good) != len(lines) - 2 or lines[-1] or lines[0] != "\t".join(CERT_COLUMNS):
        write_text(tsv, "\n".join(["\t".join(CERT_COLUMNS), *good]) + "\n")


def read_certificates(tsv: Path) -> np.ndarray:
    """The per-example certification table (``idx label predict radius correct time``)."""
    rows = [_parse_row(line) for line in tsv.read_text().splitlines()[1:] if line.strip()]
    return np.array([r for r in rows if r is not None], dtype=_CERT_DTYPE)


def state_dict_sha256(module: nn.Module) -> str:
    """A digest of a module's weights, to recognise the model that produced saved results."""
    digest = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def robust_evaluate(
    config: RobustConfig,
    run_dir: str | Path,
    out_dir: str | Path,
    *,
    model: nn.Module | None = None,
    name: str | None = None,
    data: PairedData | None = None,
    progress: bool = True,
) -> RobustReport:
    """Evaluate a robust-training run's model (the checkpoint ``training.select`` picks) and write the results.

    Clean and latent-PGD accuracy use every test image once; perturbed accuracy uses every
    stored test pair (or ``passes`` passes of fresh on-the-fly pairs).
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    device = resolve_device(config.training.device)
    if model is None:
        model = build_model(config).to(device)
        load_checkpoint(run_dir / "checkpoints" / (BEST if config.training.select == "best" else LATEST), model)
    model.eval()
    pset = load_set(config, device)
    ev = config.evaluation
    test = load_test(ev.test, config.seed) if ev.test is not None else load_splits(config.data, config.seed, data).test
    eval_seed = derive_seed(config.seed, 13)
    mode = "sample" if ev.inputs == "examples" else "versions"
    if mode == "versions" and not hasattr(test, "num_versions"):
        raise ValueError("evaluation.inputs 'versions' needs data with stored versions (cifar10c, multi_illumination)")
    images = lambda: test.batches(ev.batch_size, shuffle=False, seed=eval_seed, device=device, mode=mode)  # noqa: E731
    scores = {"clean": score(model, images(), lambda b: b.x)}
    pairs = lambda data: data.evaluation_batches(  # noqa: E731
        ev.batch_size, seed=eval_seed, passes=ev.passes, device=device, max_pairs=ev.max_pairs
    )
    smoothed = _smoothed_classifier(model, pset, config, test, device)

    def perturbed_score(batches, stream: int) -> Scorer:
        """Accuracy on the pairs' x̃: of the model, or of the smoothed classifier's PREDICT."""
        if smoothed is None:
            return score(model, batches, lambda b: b.x_tilde)
        return predict_score(smoothed, batches, config, derive_seed(config.seed, stream))

    scores["perturbed"] = perturbed_score(pairs(test), 29)
    if ev.ood is not None:
        scores["ood"] = perturbed_score(pairs(load_test(ev.ood, config.seed)), 31)
    pgd, radii = {}, {}
    certified: dict[str, float] = {}
    clean = scores["clean"].accuracy
    counts = {"test": scores["clean"].examples, "perturbed": scores["perturbed"].examples}
    if "ood" in scores:
        counts["ood"] = scores["ood"].examples
    if pset is not None:
        radii = {str(spec): pset.resolve_radius(spec) for spec in ev.radii}
        # A smoothed classifier is judged by its certificates (Table 9 has no PGD columns):
        # attacking its base model would measure another classifier.
        if smoothed is None:
            attacked = pgd_scores(model, pset, images(), ev.attack, list(radii.values()), derive_seed(config.seed, 19))
            for spec, scorer in zip(radii, attacked):
                scores[spec] = scorer
                pgd[spec] = scorer.accuracy
        if radii:
            _plot_adversarial_maps(model, pset, images(), ev.attack, max(radii.values()), out_dir, config.seed)
        if ev.certify is not None:
            sigma = certify_sigma(config)
            with torch.no_grad():
                logits = model(_first_input(test, device))
            if logits.dim() == 4:
                radii_flat, correct = certify_segmentation(model, pset, test, config, sigma, out_dir / "certify", logits.shape[1])
                counts["certified_pixels"] = int(radii_flat.size)
            else:
                table = certify_examples(model, pset, test, config, sigma, out_dir / "certify.tsv", logits.shape[1])
                radii_flat, correct = table["radius"], table["correct"] == 1
                counts["certified"] = int(table.size)
            accs = certified_accuracy(radii_flat, correct, list(radii.values()))
            certified = {spec: float(a) for spec, a in zip(radii, accs)}
            write_certified_curve(radii_flat, correct, out_dir / "certified_accuracy.png", sigma, pset.radius)
            if smoothed is not None:
                # Table 9's clean accuracy is the smoothed classifier's: CERTIFY's prediction, abstentions wrong.
                clean = float(np.mean(correct))
    miou = {k: v.miou for k, v in scores.items() if v.miou is not None}
    if smoothed is not None:
        miou.pop("clean", None)  # the base model's, not the smoothed classifier's
    ood = scores["ood"].accuracy if "ood" in scores else None
    report = RobustReport(
        name or config.name, clean, scores["perturbed"].accuracy, ood, pgd, certified, radii, counts, miou,
        base_clean=scores["clean"].accuracy if smoothed is not None else None,
    )  # fmt: skip
    write_json(out_dir / "robust_metrics.json", report.to_dict())
    write_text(out_dir / "robust_table.md", reports_to_markdown([report]))
    return report


def _plot_adversarial_maps(model: nn.Module, pset: PerturbationSet, batches, cfg: AttackConfig, eps: float, out_dir: Path, seed: int) -> None:
    """Segmentation only: benign and adversarial lightings with their predicted maps (Figures 14–16)."""
    batch = next(iter(batches))
    y = _labels(batch)
    with torch.no_grad():
        logits = model(batch.x[:4])
    if logits.dim() != 4:
        return
    gen = torch.Generator(device=pset.device).manual_seed(derive_seed(seed, 23))
    x_adv = make_attack(model, pset, cfg, eps, gen)(batch.x[:4], y[:4]).x_adv
    with torch.no_grad():
        adv_pred = model(x_adv).argmax(1)
    plot_segmentation(
        batch.x[:4].cpu(), logits.argmax(1).cpu(), x_adv.cpu(), adv_pred.cpu(), y[:4].cpu(),
        out_dir / "adversarial_segmentation.png", logits.shape[1], title=f"latent PGD at ε = {eps:.3g}",
    )  # fmt: skip


def _first_input(test: PairedData, device) -> Tensor:
    return next(test.batches(1, shuffle=False, seed=0, device=device)).x


def write_certified_curve(radii: np.ndarray, correct: np.ndarray, path: Path, sigma: float, max_radius: float) -> Path:
    """Certified accuracy against the latent radius, up to the set's radius (Figures 11 and 17)."""
    grid, acc = certified_accuracy_curve(radii, correct, max_radius=max_radius)
    return plot_curve(grid, {f"σ = {sigma:.3g}": acc}, path, "radius ε (latent ℓ2)", "certified accuracy", step=True)


def load_robust_config(path: str | Path) -> RobustConfig:
    return load_config(path, RobustConfig)
