"""Robust evaluation of a downstream model against a learned perturbation set (Tables 2, 3 and 9).

Clean accuracy, accuracy on the dataset's perturbed data and on held-out perturbations,
robust accuracy under latent PGD at a list of radii, and certified accuracy by randomized
smoothing in the latent space. The caller supplies the model, the set and the test data;
the results are written as ``robust_metrics.json`` (and the certificates) in ``out_dir``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from perturbsets._util.io import write_json
from perturbsets._util.sharding import BatchShard
from perturbsets._util.seeding import Stream, derive_seed, seeded_generator
from perturbsets.certify.smoothed import SmoothedClassifier
from perturbsets.certify.statistics import certified_accuracy
from perturbsets.classifiers.scoring import Scorer
from perturbsets.config.robust import AttackConfig, RobustConfig
from perturbsets.core.perturbation_set import PerturbationSet
from perturbsets.evaluation.certification_store import (
    CertificateStore,
    ExampleTableStore,
    PixelMapStore,
    Shard,
    certify_to_store,
    merge_shards,
)
from perturbsets.pairs.batch import PairBatch
from perturbsets.pairs.paired import PairedData
from perturbsets.training.loop import resolve_device
from perturbsets.training.robust import make_attack, require_labels


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


@dataclass
class Certificates:
    """The radius and correctness of every certified output, and the noise level they were certified at."""

    radius: np.ndarray
    correct: np.ndarray
    sigma: float


@dataclass
class RobustEvaluation:
    """What :func:`robust_evaluate` returns: the report, and the certificates when it certified."""

    report: RobustReport
    certificates: Certificates | None


@torch.no_grad()
def score(model: nn.Module, batches, pick: Callable[[PairBatch], Tensor], shard: BatchShard = BatchShard()) -> Scorer:
    """Accuracy (pixel accuracy and mIoU for segmentation) of ``model`` on ``pick(batch)``, over the batches ``shard`` owns."""

    def work(batch: PairBatch) -> Scorer:
        scorer = Scorer()
        scorer.update(model(pick(batch)), require_labels(batch))
        return scorer

    return Scorer.combined(shard.compute(batches, work).values())


def gathered(scorer: Scorer, shard: BatchShard) -> Scorer:
    """The counts of every process's share of a test set (a collective): integer sums, so exactly one process's."""
    total = Scorer.combined(shard.everyone(scorer))
    if total.examples == 0:
        raise ValueError("no test examples to evaluate")
    return total


def pgd_scores(
    model: nn.Module,
    pset: PerturbationSet,
    batches,
    cfg: AttackConfig,
    radii: list[float],
    seed: int,
    shard: BatchShard = BatchShard(),
) -> list[Scorer]:
    """Accuracy of ``model`` under latent PGD at each radius in ``radii`` (one Scorer each) over the batches ``shard`` owns.

    Radii are attacked from the smallest up. For classification an example misclassified at
    a smaller radius is counted wrong at every larger one without attacking it again: its
    adversarial point lies in the larger ball too, so this is exact for the reported
    accuracy (never higher than attacking afresh) and spares the attack on broken examples.
    """
    if cfg.random_start:
        # The random starts are drawn for the examples that survived the smaller radii, so the
        # draws of a batch depend on earlier batches' results: no process can replay them.
        shard = shard.unsplit()
    order = sorted(range(len(radii)), key=lambda i: radii[i])
    attacks = {
        i: make_attack(model, pset, cfg, radii[i], torch.Generator(device=pset.device).manual_seed(seed)) for i in order
    }
    scorers = [Scorer() for _ in radii]

    def work(batch: PairBatch) -> None:
        y = require_labels(batch)
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

    shard.compute(batches, work)
    return scorers


def certify_sigma(config: RobustConfig) -> float:
    """The smoothing noise level of the evaluation: ``certify.sigma``, else the training σ."""
    cc = config.evaluation.certify
    assert cc is not None
    return cc.sigma if cc.sigma is not None else config.training.sigma


def first_input(test: PairedData, device) -> Tensor:
    """The first test input, to learn the model's output shape (classes; maps or labels)."""
    return next(test.batches(1, shuffle=False, seed=0, device=device)).x


def smoothed_classifier(
    model: nn.Module, pset: PerturbationSet | None, config: RobustConfig, test: Any, device
) -> SmoothedClassifier | None:
    """The smoothed classifier a ``smoothing`` run is evaluated as (Table 9), else ``None``."""
    if config.training.mode != "smoothing" or pset is None or config.evaluation.certify is None:
        return None
    with torch.no_grad():
        num_classes = model(first_input(test, device)).shape[1]
    return SmoothedClassifier(model, pset, certify_sigma(config), num_classes)


def predict_score(
    smoothed: SmoothedClassifier, batches, config: RobustConfig, seed: int, shard: BatchShard = BatchShard()
) -> Scorer:
    """Accuracy of the smoothed classifier's PREDICT (Algorithm 2) on x̃ over the batches ``shard`` owns, abstentions wrong.

    PREDICT draws ``certify.n0`` samples per input (the paper predicts with n0 = 100) and
    answers at level ``certify.alpha``, from one generator seeded by ``seed`` across the
    batches; the batches ``shard`` leaves to other processes have their draws replayed.
    """
    cc = config.evaluation.certify
    assert cc is not None
    gen = torch.Generator(device=smoothed.perturbation_set.device).manual_seed(seed)
    scorer = Scorer()

    def work(batch: PairBatch) -> None:
        y = require_labels(batch)
        prediction = smoothed.predict(batch.x_tilde, cc.n0, cc.alpha, cc.batch_size, generator=gen).prediction
        scorer.add_predictions(prediction.to(y.device), y)

    shard.compute(batches, work, skip=lambda batch: smoothed.skip_counts(batch.x_tilde.shape[0], cc.n0, gen))
    return scorer


def image_batches(test: Any, config: RobustConfig, device) -> Iterator[PairBatch]:
    """The batches clean accuracy and latent PGD start from (``evaluation.inputs``)."""
    ev = config.evaluation
    mode = "sample" if ev.inputs == "examples" else "versions"
    if mode == "versions" and not hasattr(test, "num_versions"):
        raise ValueError("evaluation.inputs 'versions' needs data with stored versions (cifar10c, multi_illumination)")
    seed = derive_seed(config.seed, Stream.ROBUST_EVAL_BATCHES)
    return test.batches(ev.batch_size, shuffle=False, seed=seed, device=device, mode=mode)


def robust_evaluate(
    config: RobustConfig,
    model: nn.Module,
    pset: PerturbationSet | None,
    test: Any,
    out_dir: str | Path,
    *,
    ood: Any = None,
    name: str | None = None,
    shard: BatchShard = BatchShard(),
) -> RobustEvaluation | None:
    """Evaluate ``model`` (in eval mode) on ``test`` (and the held-out ``ood`` pairs) and write ``robust_metrics.json``.

    Clean and latent-PGD accuracy use every test image once; perturbed accuracy uses every
    stored test pair (or ``passes`` passes of fresh on-the-fly pairs). Certificates go to
    ``certify.tsv`` (classification) or ``certify/`` (segmentation), resumably.

    With a ``shard`` of several processes (same model, set and data on each) every process
    computes its share of the clean, perturbed, OOD and PGD batches and certifies the inputs
    of its certification shard; rank 0 gathers the single-process figures, merges the
    certificate stores, writes and returns the evaluation, and the other processes return
    ``None``.
    """
    out_dir = Path(out_dir)
    device = resolve_device(config.training.device)
    ev = config.evaluation
    eval_seed = derive_seed(config.seed, Stream.ROBUST_EVAL_BATCHES)
    images = lambda: image_batches(test, config, device)  # noqa: E731
    scores = {"clean": gathered(score(model, images(), lambda b: b.x, shard), shard)}
    pairs = lambda data: data.evaluation_batches(  # noqa: E731
        ev.batch_size, seed=eval_seed, passes=ev.passes, device=device, max_pairs=ev.max_pairs
    )
    smoothed = smoothed_classifier(model, pset, config, test, device)

    def perturbed_score(batches, stream: Stream) -> Scorer:
        """Accuracy on the pairs' x̃: of the model, or of the smoothed classifier's PREDICT."""
        if smoothed is None:
            return gathered(score(model, batches, lambda b: b.x_tilde, shard), shard)
        return gathered(predict_score(smoothed, batches, config, derive_seed(config.seed, stream), shard), shard)

    scores["perturbed"] = perturbed_score(pairs(test), Stream.SMOOTHED_PERTURBED)
    if ood is not None:
        scores["ood"] = perturbed_score(pairs(ood), Stream.SMOOTHED_OOD)
    pgd, radii = {}, {}
    if pset is not None:
        radii = {str(spec): pset.resolve_radius(spec) for spec in ev.radii}
    # A smoothed classifier is judged by its certificates (Table 9 has no PGD columns):
    # attacking its base model would measure another classifier.
    if pset is not None and smoothed is None:
        seed = derive_seed(config.seed, Stream.PGD_STARTS)
        for spec, scorer in zip(radii, pgd_scores(model, pset, images(), ev.attack, list(radii.values()), seed, shard)):
            scores[spec] = scorer = gathered(scorer, shard)
            pgd[spec] = scorer.accuracy
    if pset is not None and ev.certify is not None and shard.size > 1:
        # Every rank certifies the inputs of its shard into its own store, then rank 0 merges
        # them; equal to one process's certificates, as each input's noise depends on (seed,
        # input index) alone. The folder must be one every rank sees (one node, or shared).
        certify_shard(config, model, pset, test, out_dir, Shard(shard.rank, shard.size))
        shard.wait()
        if shard.is_main:
            merge_certificate_shards(out_dir, shard.size)
    if not shard.is_main:
        return None
    certified: dict[str, float] = {}
    certificates = None
    clean = scores["clean"].accuracy
    counts = {"test": scores["clean"].examples, "perturbed": scores["perturbed"].examples}
    if "ood" in scores:
        counts["ood"] = scores["ood"].examples
    if pset is not None and ev.certify is not None:
        sigma = certify_sigma(config)
        with torch.no_grad():
            logits = model(first_input(test, device))
        store = certificate_store(out_dir, segmentation=logits.dim() == 4)
        radius, correct = certify_to_store(model, pset, test, config, sigma, store, logits.shape[1])
        counts[store.count_key] = int(radius.size)
        accs = certified_accuracy(radius, correct, list(radii.values()))
        certified = {spec: float(a) for spec, a in zip(radii, accs)}
        certificates = Certificates(radius, correct, sigma)
        if smoothed is not None:
            # Table 9's clean accuracy is the smoothed classifier's: CERTIFY's prediction, abstentions wrong.
            clean = float(np.mean(correct))
    miou = {k: v.miou for k, v in scores.items() if v.miou is not None}
    if smoothed is not None:
        miou.pop("clean", None)  # the base model's, not the smoothed classifier's
    report = RobustReport(
        name or config.name, clean, scores["perturbed"].accuracy, scores["ood"].accuracy if "ood" in scores else None,
        pgd, certified, radii, counts, miou, base_clean=scores["clean"].accuracy if smoothed is not None else None,
    )  # fmt: skip
    write_json(out_dir / "robust_metrics.json", report.to_dict())
    return RobustEvaluation(report, certificates)


def certificate_store(out_dir: Path, *, segmentation: bool, shard: Shard | None = None) -> CertificateStore:
    """``certify.tsv`` (classification) or ``certify/`` (segmentation) in ``out_dir``, or a shard's own store beside it."""
    base = out_dir / ("certify" if segmentation else "certify.tsv")
    location = base if shard is None else shard.location(base)
    return PixelMapStore(location) if segmentation else ExampleTableStore(location)


def certify_shard(
    config: RobustConfig, model: nn.Module, pset: PerturbationSet, test: Any, out_dir: str | Path, shard: Shard
) -> int:
    """Certify only ``shard``'s test inputs into its own store in ``out_dir``; returns how many outputs it holds.

    Run shards 0/k … k−1/k anywhere (same config, model and set), copy their stores into one
    folder, then :func:`merge_certificate_shards` and evaluate as usual: the merged
    certificates equal an unsharded run's, because each input's noise depends on
    (seed, input index) alone.
    """
    if config.evaluation.certify is None:
        raise ValueError("--shard splits certification, but the config has no evaluation.certify section")
    device = resolve_device(config.training.device)
    with torch.no_grad():
        logits = model(first_input(test, device))
    store = certificate_store(Path(out_dir), segmentation=logits.dim() == 4, shard=shard)
    radius, _ = certify_to_store(model, pset, test, config, certify_sigma(config), store, logits.shape[1], shard)
    return int(radius.size)


def merge_certificate_shards(out_dir: str | Path, count: int) -> Path:
    """Merge the stores of shards 0/count … count−1/count in ``out_dir`` into the unsharded store; returns its path."""
    out_dir = Path(out_dir)
    shards = [Shard(i, count) for i in range(count)]
    segmentation = shards[0].location(out_dir / "certify").is_dir()
    target = certificate_store(out_dir, segmentation=segmentation)
    merge_shards(target, [certificate_store(out_dir, segmentation=segmentation, shard=s) for s in shards])
    return target.location


@dataclass
class AdversarialMaps:
    """Four test inputs, their adversarial versions, and the predicted and true class maps of both (on the CPU)."""

    x: Tensor
    prediction: Tensor
    x_adv: Tensor
    prediction_adv: Tensor
    labels: Tensor
    num_classes: int


def adversarial_maps(
    model: nn.Module, pset: PerturbationSet, batch: PairBatch, cfg: AttackConfig, eps: float, seed: int
) -> AdversarialMaps | None:
    """Segmentation only: the first four inputs of ``batch`` under latent PGD at ``eps`` (Figures 14–16).

    ``None`` for a classifier. The attack draws from the run's adversarial-maps stream.
    """
    y = require_labels(batch)
    with torch.no_grad():
        logits = model(batch.x[:4])
    if logits.dim() != 4:
        return None
    gen = seeded_generator(seed, Stream.ADVERSARIAL_MAPS, device=pset.device)
    x_adv = make_attack(model, pset, cfg, eps, gen)(batch.x[:4], y[:4]).x_adv
    with torch.no_grad():
        adv_pred = model(x_adv).argmax(1)
    return AdversarialMaps(batch.x[:4].cpu(), logits.argmax(1).cpu(), x_adv.cpu(), adv_pred.cpu(), y[:4].cpu(), logits.shape[1])
