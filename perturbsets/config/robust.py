"""The config of a robust-training run: classifier, attacks, robust training, certification and robust evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from perturbsets._util.registry import unknown_name_message
from perturbsets.config.checks import check_loop, check_radius_spec, require
from perturbsets.config.io import ConfigError
from perturbsets.config.learn import DataConfig, Schedule

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
        check_radius_spec(self.eps, "eps")
        require(self.warmup_epochs >= 0, "warmup_epochs must be >= 0")
        require(self.steps >= 0, "steps must be >= 0")
        require(self.restarts >= 1, "restarts must be >= 1")
        require(self.restarts == 1 or self.random_start, "restarts > 1 repeat the same attack unless random_start is true")
        require(self.step_size is None or self.step_size > 0, "step_size must be > 0 or null")
        require(self.step_divisor > 0, "step_divisor must be > 0")
        require(self.select in ("final", "best"), f"select must be 'final' or 'best', got {self.select!r}")


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
    select: the checkpoint evaluated, ``best`` (lowest validation error ``val_error`` on
        the inputs of the mode) or ``latest``.
    channels_last: run the model and the perturbation set's convolutions channels-last (on
        2 CPU cores, 1.2× faster latent PGD and 1.4× faster sampling through ``mnist_stn``).
    sample_every: ``cvae_adversarial`` only: every this many epochs, and after the last, write
        a grid of the first 8 validation inputs over their adversarial examples at the full
        radius to ``samples/epoch_NNNN.png`` (and TensorBoard); 0: never.
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
    sample_every: int = 10

    def __post_init__(self) -> None:
        if self.mode not in ROBUST_MODES:
            raise ConfigError(unknown_name_message("training.mode", self.mode, ROBUST_MODES))
        check_loop(self)
        require(self.optimizer in ("adam", "sgd"), f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        require(0 <= self.momentum < 1, "momentum must lie in [0, 1)")
        require(self.sigma > 0, f"sigma must be > 0, got {self.sigma}")


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
        require(self.sigma is None or self.sigma > 0, "sigma must be > 0 or null (the training sigma)")
        require(
            self.correction in ("none", "bonferroni", "holm"),
            f"correction must be 'none', 'bonferroni' or 'holm', got {self.correction!r}",
        )
        require(0.5 <= self.tau < 1, f"tau must lie in [0.5, 1), got {self.tau}")
        require(self.n0 >= 1 and self.n >= 1, "n0 and n must be >= 1")
        require(0 < self.alpha < 1, f"alpha must lie in (0, 1), got {self.alpha}")
        require(self.batch_size >= 1, "batch_size must be >= 1")
        require(self.max_examples is None or self.max_examples >= 1, "max_examples must be >= 1 or null")


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
        require(self.inputs in ("examples", "versions"), f"inputs must be 'examples' or 'versions', got {self.inputs!r}")
        for spec in self.radii:
            check_radius_spec(spec, "radii")
        require(self.batch_size >= 1 and self.passes >= 1, "batch_size and passes must be >= 1")


@dataclass
class RobustConfig:
    """A robust-training run: pairs with labels + a saved perturbation set → robust model (paper Section 5).

    ``training.mode`` is one of ``standard``, ``perturbed``, ``cvae_augment``,
    ``cvae_adversarial`` (Algorithm 1) or ``smoothing``; ``evaluation`` lists the attack
    radii and the certification budget (Algorithm 2).

    Example::

        config = load_config("perturbsets/configs/demo/mnist_robust.yaml", RobustConfig)
        config.training.mode = "cvae_adversarial"
    """

    name: str = "robust"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    perturbation_set: str | None = None
    model: ClassifierConfig = field(default_factory=ClassifierConfig)
    training: RobustTrainingConfig = field(default_factory=RobustTrainingConfig)
    evaluation: RobustEvalConfig = field(default_factory=RobustEvalConfig)

    def __post_init__(self) -> None:
        mode = self.training.mode
        require(
            self.perturbation_set is not None or not (mode.startswith("cvae") or mode == "smoothing"),
            f"training.mode {mode!r} needs perturbation_set: the folder of a saved set",
        )
