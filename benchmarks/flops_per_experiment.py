"""Floating-point work of every paper experiment, and the GPU-hours it implies at an *assumed* throughput.

Run: ``python benchmarks/flops_per_experiment.py [--tflops 100] [--experiments NAME ...]``
(under a minute on 2 CPU cores: nothing is computed, only counted).

No GPU was available to this project, so no GPU time has been measured. This script counts
the arithmetic each experiment file of ``perturbsets/configs/paper/`` asks for and divides it
by a sustained throughput that is an assumption, not a measurement:

    GPU-hours = FLOPs / (tflops · 10¹²) / 3600.

The default ``--tflops 100`` (100 TFLOP/s sustained) is about 10 % of the dense bf16 peak of
an H100/H200 SXM (≈ 989 TFLOP/s; TF32 ≈ 494, plain FP32 ≈ 67). Convnets of these sizes
(32×32 to 500×750 images, batches of 8 to 128) reach a modest fraction of peak; the MNIST
models are far too small to fill a GPU, and only the Multi-Illumination CVAEs train in mixed
precision (``amp: true``); the rest run in float32, where PyTorch lets cuDNN convolutions use
TF32 but not matmuls by default. Pass the ``--tflops`` you believe (or measure) instead.

How: each piece of work runs once, on ``meta`` tensors (shapes only, no arithmetic), under
``torch.utils.flop_counter.FlopCounterMode``, at the batch size the config uses; the totals
multiply those counts by how often the experiment runs them. FlopCounterMode counts only the
matmul and convolution families (mm, addmm, bmm, convolution, their backward passes,
attention). Elementwise ops, reductions, normalisation, pooling, resampling (``grid_sample``,
bilinear upsampling), losses and the optimizer's update are *not* counted, so every figure is
a lower bound of the arithmetic; the ``uncounted ops`` column names the non-elementwise ops
each row ran without counting them. Data movement is not arithmetic and is not listed.

Counted, per experiment file (``perturbation_set`` part: a Config; ``robust`` part: a
RobustConfig, whose perturbation set is the CVAE of the ``requires`` experiment):

* CVAE train: one step (forward with a posterior sample, the β-weighted negative ELBO,
  backward, with the recomputation of gradient checkpointing where the model has it)
  × epochs × ⌈train examples / batch⌉ (one pair per training example per epoch, as the
  library draws them; the last, partial batch counted as a full one).
* CVAE validation: forward and loss on every validation example, every epoch.
* radius ε: the prior and recognition forwards on the validation pairs ε is chosen from.
* quality (Appendix B), per test pair: prior, recognition and the generator's x-only part
  once; Enc AE, Recon and each EAE draw one generator forward; PGD AE and OAE ``pgd_steps``
  generator forward + backward to u each, plus the final forward of ``select="best"``.
* robust train: classifier forward + loss + backward per step, plus the step's input:
  ``cvae_augment`` and ``smoothing`` a prior and generator forward, ``cvae_adversarial``
  the prior, ``attack.steps`` × (generator and classifier forward, backward to u) and the
  final generator forward; ``standard`` and ``perturbed`` nothing.
* robust validation: that input and a classifier forward per validation example, every epoch.
* clean / perturbed / OOD: a classifier forward per test input or pair; a ``smoothing`` run
  scores perturbed and OOD pairs with PREDICT: n0 × (generator + classifier forward) each.
* latent PGD, per test input and radius: the prior, ``attack.steps`` × (generator and
  classifier forward, backward to u), the ``select="best"`` evaluation of the last iterate
  and the adversarial input's generator and classifier forwards. An upper bound of what
  runs: early stopping and skipping inputs already broken at a smaller radius cut it.
* certify: (n0 + n) × (generator + classifier forward) per certified input.

Not counted at all: data loading, augmentation and MNIST's on-the-fly perturbations, sample
grids and figures, the adversarial maps of four inputs, confusion matrices (``bincount``),
checkpoints, and weight-only work a frozen model caches once per weight version (``mnist_stn``
folding its linear maps). A robust experiment's total excludes its ``requires`` set, counted in its own file.

Sizes: train / val sizes come from the config's ``split`` where it has one (MNIST 59,000 /
1,000, CIFAR-10 49,000 / 1,000, as the authors split), test sizes from the datasets' own
constants (MNIST and CIFAR-10 10,000 test images; Multi-Illumination 960 / 25 / 30 scenes of
25 lightings), and pairs per example from the library's pairing tables (CIFAR-10-C centered:
12 per image, so 120,000 test pairs; Multi-Illumination ``with_original``: 600 per scene).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from perturbsets.classifiers.architectures import build_classifier
from perturbsets.classifiers.scoring import per_example_loss
from perturbsets.config.learn import Config, DataConfig
from perturbsets.config.robust import AttackConfig, RobustConfig
from perturbsets.core.perturbation_set import ConditionedSet, PerturbationSet
from perturbsets.cvae.model import CVAE
from perturbsets.cvae.registry import build_cvae
from perturbsets.datasets.cifar10 import CIFAR10_SIZES
from perturbsets.datasets.cifar10c.registry import TRAIN_CORRUPTIONS
from perturbsets.datasets.mnist import MNIST_SIZES
from perturbsets.datasets.multi_illumination.arrays import LIGHTINGS
from perturbsets.datasets.multi_illumination.loader import SPLIT_SIZES
from perturbsets.pairs.versioned import VersionedData
from perturbsets.workflows.experiments import experiment_names, load_experiment

DEFAULT_TFLOPS = 100.0
META = torch.device("meta")

# The ops these models run that only create, copy or rearrange data (padding included): no
# arithmetic is missed by not counting them, so the uncounted-ops column leaves them out.
DATA_MOVEMENT = frozenset("arange cat constant_pad_nd copy_ empty ones_like reflection_pad2d stack unsafe_view".split())


# --------------------------------------------------------------------------- counting


@dataclass(frozen=True)
class Work:
    """Counted FLOPs (matmul and convolution families) and the non-elementwise ops that ran uncounted."""

    flops: float
    uncounted: frozenset[str] = frozenset()

    def __add__(self, other: Work) -> Work:
        return Work(self.flops + other.flops, self.uncounted | other.uncounted)

    def __mul__(self, factor: float) -> Work:
        return Work(self.flops * factor, self.uncounted)

    __rmul__ = __mul__


NOTHING = Work(0.0)


class _OpsSeen(TorchDispatchMode):
    """Every aten op that runs, to name those FlopCounterMode has no formula for."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: set = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(func.overloadpacket)
        return func(*args, **(kwargs or {}))


def _does_arithmetic(op) -> bool:
    """False for elementwise ops, reductions, views and random draws (left out of the uncounted list)."""
    packets = [getattr(op, overload) for overload in op.overloads()]
    tags = {tag for packet in packets for tag in packet.tags}
    skipped = {torch.Tag.pointwise, torch.Tag.reduction, torch.Tag.nondeterministic_seeded}
    return not (tags & skipped or any(packet.is_view for packet in packets))


def count(work: Callable[[], object]) -> Work:
    """The FLOPs FlopCounterMode counts while ``work()`` runs, and the arithmetic ops it does not count."""
    seen = _OpsSeen()
    with FlopCounterMode(display=False) as counter, seen:
        work()
    uncounted = {_family(op) for op in seen.ops - set(counter.flop_registry) if _does_arithmetic(op)}
    return Work(float(counter.get_total_flops()), frozenset(uncounted) - DATA_MOVEMENT)


def _family(op) -> str:
    """An op's name without the private prefix and forward/backward suffixes (``_log_softmax_backward_data`` → ``log_softmax``)."""
    name = op.__name__.lstrip("_")
    for suffix in ("_backward_data", "_backward", "_forward"):
        name = name.removesuffix(suffix)
    return name


def _meta(*shape: int, dtype: torch.dtype = torch.float32) -> Tensor:
    return torch.empty(shape, device=META, dtype=dtype)


def meta_cvae(config: Config) -> CVAE:
    """The CVAE of ``config`` with meta parameters: its shapes, none of its memory."""
    with META:
        return build_cvae(config.model.architecture, distribution=config.model.distribution, **config.model.options)


def cvae_train_step(config: Config, batch: int) -> Work:
    """One CVAE training step on ``batch`` pairs: forward with a posterior sample, loss, backward."""
    cvae = meta_cvae(config).train()
    x, x_tilde = _meta(batch, *cvae.input_shape), _meta(batch, *cvae.input_shape)
    noise = _meta(batch, *cvae.latent_shape)

    def step() -> None:
        out = cvae(x, x_tilde, noise=noise)
        cvae.loss(out, x_tilde, beta=1.0, variance=config.model.variance).objective.backward()

    return count(step)


def cvae_validation(config: Config, batch: int) -> Work:
    """Per example: the CVAE's forward and loss without gradients (the validation of every epoch)."""
    cvae = meta_cvae(config).eval()
    x = _meta(batch, *cvae.input_shape)

    def forward() -> None:
        with torch.no_grad():
            cvae.loss(cvae(x, x, noise=_meta(batch, *cvae.latent_shape)), x, beta=1.0, variance=config.model.variance)

    forward()  # outside the count: the weight-only work a first call caches (see _conditioned) is not per example
    return count(forward) * (1 / batch)


@dataclass(frozen=True)
class SetWork:
    """Per-example work of a trained (frozen) perturbation set's networks."""

    prior: Work
    recognition: Work
    context: Work  # the generator's x-only part, computed once per input (the mi_unet encoder)
    decode: Work  # g(μ(x) + u·σ(x), x) from a computed prior and context
    decode_grad: Work  # that forward and the backward to u

    @property
    def condition(self) -> Work:
        """What conditioning S(x) on an input costs: its prior and generator context."""
        return self.prior + self.context


def _conditioned(config: Config, batch: int) -> ConditionedSet:
    """The set of ``config`` conditioned on a meta batch, its prior and generator context computed outside any count."""
    pset = PerturbationSet(meta_cvae(config), radius=1.0)
    x = _meta(batch, *pset.input_shape)
    with torch.no_grad():
        # Built directly: PerturbationSet.condition checks values, which meta tensors have none of.
        cond = ConditionedSet(pset, x, pset.cvae.prior_params(x))
        # Both outside any count: the context is computed on first use, and a first decode may
        # cache weight-only work (mnist_stn folds its linear maps once per weight version), which
        # a run does once, not per example.
        cond.decode(_meta(batch, pset.latent_dim))
    return cond


def set_work(config: Config, batch: int) -> SetWork:
    """:class:`SetWork` of the set of ``config``, counted at ``batch`` inputs."""
    cond = _conditioned(config, batch)
    cvae, x = cond.pset.cvae, cond.x
    u = _meta(batch, cond.pset.latent_dim)

    no_grad = torch.no_grad()  # as a decorator of each forward below

    def decode_grad() -> None:
        v = u.clone().requires_grad_(True)
        torch.autograd.grad(cond.decode(v).sum(), v)

    parts = (
        count(no_grad(lambda: cvae.prior_params(x))),
        count(no_grad(lambda: cvae.posterior_params(x, x))),
        count(no_grad(lambda: cvae.generator_context(x))),
        count(no_grad(lambda: cond.decode(u))),
        count(decode_grad),
    )
    return SetWork(*(part * (1 / batch) for part in parts))


@dataclass(frozen=True)
class ClassifierWork:
    """Per-example work of the downstream model, alone and behind the perturbation set."""

    train: Work  # forward, loss and backward in train mode
    forward: Work  # eval mode, no gradients
    attack_step: Work  # one latent PGD step: generator and classifier forward, backward to u


def classifier_work(robust: RobustConfig, set_config: Config, batch: int) -> ClassifierWork:
    """:class:`ClassifierWork` of the model of ``robust`` on the inputs of the set of ``set_config``, at ``batch`` inputs."""
    with META:
        model = build_classifier(robust.model.architecture, **robust.model.options)
    cond = _conditioned(set_config, batch)
    x, u = cond.x, _meta(batch, cond.pset.latent_dim)

    def loss(logits: Tensor) -> Tensor:
        labels = _meta(logits.shape[0], *logits.shape[2:], dtype=torch.long)
        return per_example_loss(logits, labels)

    def train() -> None:
        loss(model.train()(x)).mean().backward()

    def forward() -> None:
        with torch.no_grad():
            model.eval()(x)

    def attack_step() -> None:
        v = u.clone().requires_grad_(True)
        torch.autograd.grad(loss(model.eval()(cond.decode(v))).sum(), v)

    return ClassifierWork(*(count(part) * (1 / batch) for part in (train, forward, attack_step)))


def _steps_work(cfg: AttackConfig, s: SetWork, c: ClassifierWork) -> Work:
    """Latent PGD per input (:class:`~perturbsets.attacks.LatentPGD`): prior, steps, the last
    iterate's evaluation where ``select="best"`` or restarts need it, and the adversarial input."""
    evaluates_last = cfg.select == "best" or cfg.restarts > 1
    per_restart = cfg.steps * c.attack_step + (s.decode + c.forward if evaluates_last else NOTHING)
    return s.condition + cfg.restarts * per_restart + s.decode


# --------------------------------------------------------------------------- sizes


@dataclass(frozen=True)
class Split:
    """How many examples one split has, and how many stored pairs (or versions) each."""

    examples: int
    pairs_per_example: int | None  # None: one fresh on-the-fly pair per example per pass
    versions: int = 1

    def pairs(self, passes: int = 1, cap: int | None = None) -> int:
        n = self.examples * self.pairs_per_example if self.pairs_per_example else passes * self.examples
        return n if cap is None else min(n, cap)


def _pairs_per_example(pairing: str, versions: int) -> int:
    """The library's pairing table size, read off a one-example :class:`VersionedData`."""
    return VersionedData(torch.zeros(1, versions, 1, 1, 1), pairing=pairing).pairs_per_example


def data_splits(data: DataConfig) -> tuple[dict[str, Split], str]:
    """Train / val / test :class:`Split` of a paper data config, and a line saying where the sizes come from."""
    if data.source == "mnist":
        k = data.fixed_perturbations
        sizes = {"train": data.split["train"], "val": data.split["val"], "test": MNIST_SIZES["test"]}
        kind = f"{k} stored perturbation(s) per image" if k else "perturbed on the fly"
        splits = {name: Split(n, k) for name, n in sizes.items()}
        return splits, f"MNIST {sizes['train']:,} / {sizes['val']:,} (config split) / {sizes['test']:,} test images, {kind}"
    if data.source == "cifar10c":
        corruptions = data.corruptions or TRAIN_CORRUPTIONS
        versions = 1 + len(corruptions) * len(data.severities)
        p = _pairs_per_example(data.pairing, versions)
        sizes = {"train": data.split["train"], "val": data.split["val"], "test": CIFAR10_SIZES["test"]}
        splits = {name: Split(n, p, versions) for name, n in sizes.items()}
        return splits, (
            f"CIFAR-10-C {sizes['train']:,} / {sizes['val']:,} (config split) / {sizes['test']:,} test images × "
            f"{len(corruptions)} corruption(s), {data.pairing}: {p} pairs per image"
        )
    if data.source == "multi_illumination":
        p = _pairs_per_example(data.pairing, LIGHTINGS)
        splits = {name: Split(SPLIT_SIZES[name], p, LIGHTINGS) for name in ("train", "val", "test")}
        return splits, (
            f"Multi-Illumination MIP{data.mip} {SPLIT_SIZES['train']} / {SPLIT_SIZES['val']} / {SPLIT_SIZES['test']} scenes × "
            f"{LIGHTINGS} lightings, {data.pairing}: {p} pairs per scene (one per scene per training epoch)"
        )
    raise ValueError(f"no paper sizes for data.source {data.source!r}")


# --------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class Row:
    what: str
    per_unit: Work
    unit: str
    units: int

    @property
    def flops(self) -> float:
        return self.per_unit.flops * self.units


def cvae_rows(config: Config) -> tuple[list[Row], str]:
    """Learning a perturbation set: training, validation, choosing ε, the quality metrics."""
    tc, ev = config.training, config.evaluation
    splits, sizes = data_splits(config.data)
    s = set_work(config, ev.batch_size)
    quality = (
        s.condition + s.recognition
        + (2 + ev.eae_samples) * s.decode  # Enc AE, Recon, the EAE draws
        + 2 * (ev.pgd_steps * s.decode_grad + s.decode)  # PGD AE and OAE, each with select="best"'s last evaluation
    )  # fmt: skip
    test_pairs = splits["test"].pairs(ev.passes, ev.max_pairs)
    rows = [
        Row("CVAE train", cvae_train_step(config, tc.batch_size), f"step of {tc.batch_size}",
            tc.epochs * math.ceil(splits["train"].examples / tc.batch_size)),
        Row("CVAE validation", cvae_validation(config, tc.batch_size), "val pair", tc.epochs * splits["val"].examples),
        Row("radius ε", s.prior + s.recognition, "val pair", splits["val"].pairs(ev.radius_passes)),
        Row(f"quality ({ev.pgd_steps}-step PGD AE + OAE)", quality, "test pair", test_pairs),
    ]  # fmt: skip
    return rows, sizes


def robust_rows(robust: RobustConfig, set_config: Config) -> tuple[list[Row], str]:
    """Robust training and evaluation of a downstream model against the set of ``set_config``."""
    tc, ev = robust.training, robust.evaluation
    splits, sizes = data_splits(robust.data)
    s, c = set_work(set_config, tc.batch_size), classifier_work(robust, set_config, tc.batch_size)
    inputs = {
        "standard": NOTHING,
        "perturbed": NOTHING,
        "cvae_augment": s.condition + s.decode,
        "smoothing": s.condition + s.decode,
        "cvae_adversarial": _steps_work(tc.attack, s, c),
    }[tc.mode]
    rows = [
        Row(f"robust train ({tc.mode})", (c.train + inputs) * tc.batch_size, f"step of {tc.batch_size}",
            tc.epochs * math.ceil(splits["train"].examples / tc.batch_size)),
        Row("robust validation", c.forward + inputs, "val input", tc.epochs * splits["val"].examples),
    ]  # fmt: skip
    s, c = set_work(set_config, ev.batch_size), classifier_work(robust, set_config, ev.batch_size)
    test = data_splits(ev.test)[0]["test"] if ev.test is not None else splits["test"]
    images = test.examples * (test.versions if ev.inputs == "versions" else 1)
    smoothed = tc.mode == "smoothing" and ev.certify is not None
    # A smoothed classifier scores x̃ with PREDICT (n0 draws), and is not attacked (Table 9).
    per_pair = (s.condition + ev.certify.n0 * (s.decode + c.forward)) if smoothed else c.forward
    rows += [
        Row("clean", c.forward, "test input", images),
        Row("perturbed" + (" (PREDICT)" if smoothed else ""), per_pair, "test pair", test.pairs(ev.passes, ev.max_pairs)),
    ]
    if ev.ood is not None:
        ood = data_splits(ev.ood)[0]["test"]
        rows.append(Row("OOD" + (" (PREDICT)" if smoothed else ""), per_pair, "OOD pair", ood.pairs(ev.passes, ev.max_pairs)))
    if not smoothed:
        rows.append(Row(f"latent PGD ({ev.attack.steps} steps, upper bound)", _steps_work(ev.attack, s, c) + c.forward,
                        f"test input × {len(ev.radii)} radii", images * len(ev.radii)))  # fmt: skip
    if ev.certify is not None:
        cc = ev.certify
        # Certification runs at its own batch of noise draws.
        s, c = set_work(set_config, cc.batch_size), classifier_work(robust, set_config, cc.batch_size)
        certified = min(test.examples, cc.max_examples or test.examples)
        rows.append(Row(f"certify (n0 {cc.n0:,} + n {cc.n:,})", s.condition + (cc.n0 + cc.n) * (s.decode + c.forward),
                        "certified input", certified))  # fmt: skip
    return rows, sizes


def experiment_rows(name: str) -> tuple[list[Row], list[str]]:
    """Every counted row of experiment ``name`` and the data sizes it used."""
    exp = load_experiment(name)
    rows, sizes = [], []
    if exp.perturbation_set is not None:
        part, line = cvae_rows(exp.perturbation_set)
        rows += part
        sizes.append(line)
    if exp.robust is not None:
        if exp.requires is None:
            raise ValueError(f"experiment {name}: a robust part needs `requires`, the experiment whose set it uses")
        part, line = robust_rows(exp.robust, load_experiment(exp.requires).perturbation_set)
        rows += part
        sizes.append(f"{line}; set: {exp.requires}")
    return rows, sizes


# --------------------------------------------------------------------------- report


def _si(flops: float) -> str:
    for scale, prefix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if flops >= scale:
            return f"{flops / scale:.3g} {prefix}FLOP"
    return f"{flops:.3g} FLOP"


def _amount(value: float) -> str:
    """1 decimal from 1 up, 2 significant digits below (so the MNIST rows do not read 0.0)."""
    return f"{value:,.1f}" if value >= 1 else f"{value:.2g}"


def _pflop(flops: float) -> str:
    return _amount(flops / 1e15)


def _hours(flops: float, tflops: float) -> str:
    return _amount(flops / (tflops * 1e12) / 3600)


def report(names: list[str], tflops: float, command: str) -> str:
    """The Markdown report: assumptions, one row per counted piece of work, totals per experiment and a summary."""
    lines = [
        "# FLOPs and estimated GPU-hours of the paper experiments",
        "",
        f"Command: `{command}` (torch {torch.__version__}).",
        "",
        f"Assumed sustained throughput: **{tflops:g} TFLOP/s** (an assumption, not a measurement; no GPU run exists). "
        "GPU-hours = FLOPs / throughput. FLOPs are FlopCounterMode's matmul/convolution count on meta tensors; "
        "elementwise work, normalisation, pooling, resampling and losses are excluded (an underestimate).",
        "",
        "| experiment | what | FLOPs per unit | unit | units | PFLOP | GPU-h | uncounted ops |",
        "|---|---|---:|---|---:|---:|---:|---|",
    ]
    totals, size_lines = {}, []
    for name in names:
        rows, sizes = experiment_rows(name)
        size_lines += [f"* `{name}`: {line}" for line in sizes]
        for row in rows:
            uncounted = ", ".join(sorted(row.per_unit.uncounted)) or "—"
            lines.append(
                f"| {name} | {row.what} | {_si(row.per_unit.flops)} | {row.unit} | {row.units:,} | "
                f"{_pflop(row.flops)} | {_hours(row.flops, tflops)} | {uncounted} |"
            )
        totals[name] = sum(row.flops for row in rows)
        lines.append(f"| **{name}** | **total** | | | | **{_pflop(totals[name])}** | **{_hours(totals[name], tflops)}** | |")
    grand = sum(totals.values())
    lines += ["", "Sizes used:", "", *size_lines, "", f"## Summary at {tflops:g} TFLOP/s", "",
              "| experiment | requires | PFLOP | GPU-h |", "|---|---|---:|---:|"]  # fmt: skip
    for name, flops in totals.items():
        requires = load_experiment(name).requires or "—"
        lines.append(f"| {name} | {requires} | {_pflop(flops)} | {_hours(flops, tflops)} |")
    lines.append(f"| **all** | | **{_pflop(grand)}** | **{_hours(grand, tflops)}** |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tflops", type=float, default=DEFAULT_TFLOPS, help="assumed sustained TFLOP/s per GPU (default %(default)s)")
    parser.add_argument("--experiments", nargs="+", choices=experiment_names(), default=experiment_names(), metavar="NAME",
                        help="experiment files to count (default: all)")  # fmt: skip
    args = parser.parse_args()
    if not args.tflops > 0:
        parser.error("--tflops must be > 0")
    began = time.perf_counter()
    print(report(args.experiments, args.tflops, " ".join(["python", *sys.argv])))
    print(f"\n(counted in {time.perf_counter() - began:.0f} s)")


if __name__ == "__main__":
    main()
