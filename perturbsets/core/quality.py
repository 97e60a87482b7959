"""How good is a learned perturbation set? The six metrics of paper Appendix B.

For a pair (x, x̃) and the set S(x) = {g(μ(x) + u·σ(x), x) : ‖u‖₂ ≤ ε}:

* Enc AE   error at u = Proj_ε((μ(x, x̃) − μ(x)) / σ(x))               (necessary subset)
* PGD AE   min over the ball, PGD warm-started at the Enc AE point      (necessary subset)
* EAE      mean error over N draws u ~ N_ε(0, I), the truncated prior   (sufficient likelihood)
* OAE      max over the ball, PGD from a uniform random point           (how large the set is)
* Recon    error at one posterior sample z ~ q(z | x, x̃)                (CVAE metric)
* KL       KL(q(z | x, x̃) ‖ p(z | x))                                   (CVAE metric)

Every error is a per-pixel mean. With ``metric="nll"`` it is the generator's own error
term (binary cross-entropy for a Bernoulli generator, squared error for a Gaussian one),
which is how the paper's tables were computed; ``metric="mse"`` uses squared error always,
as the paper's definitions are written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from perturbsets._util.sharding import BatchShard
from perturbsets.cvae.model import kl_divergence
from perturbsets.core.latent import project, sample_truncated_normal, sample_uniform_ball
from perturbsets.core.pgd import projected_ascent
from perturbsets.core.perturbation_set import ConditionedSet, PerturbationSet
from perturbsets.core.radius import LatentNormStats, PairLike

METRICS = ("enc_ae", "pgd_ae", "eae", "oae", "recon", "kl")
LABELS = {
    "enc_ae": "Enc. AE",
    "pgd_ae": "PGD AE",
    "eae": "EAE",
    "oae": "OAE",
    "recon": "Recon. err",
    "kl": "KL",
}


def pixel_error(pset: PerturbationSet, logits: Tensor, target: Tensor, metric: str = "nll") -> Tensor:
    """Per-example, per-pixel-mean error between generator output and x̃: shape (N,)."""
    cvae = pset.cvae
    if metric == "nll" and cvae.distribution == "bernoulli":
        err = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    elif metric in ("nll", "mse"):
        mean = torch.sigmoid(logits) if cvae.output == "sigmoid" else logits
        err = (mean - target) ** 2
    else:
        raise ValueError(f"unknown metric {metric!r}; use 'nll' or 'mse'")
    return err.flatten(1).mean(1)


@dataclass(frozen=True)
class QualityDraws:
    """The random draws of :func:`approximation_errors` for one batch of N pairs.

    ``eae``: ``eae_samples`` tensors (N, latent_dim) from the truncated prior N_ε(0, I);
    ``oae_start``: (N, latent_dim) uniform in the ball; ``recon_noise``: (N, *latent_shape)
    standard normal, the posterior sample's reparameterisation noise.
    """

    eae: tuple[Tensor, ...]
    oae_start: Tensor
    recon_noise: Tensor

    @classmethod
    def draw(
        cls, pset: PerturbationSet, n: int, eae_samples: int, generator: torch.Generator | None, *, device, dtype
    ) -> "QualityDraws":
        """Draw in the order the metrics have always used (EAE samples, OAE start, Recon noise).

        The generator's state afterwards depends only on (n, set, eae_samples, device,
        dtype), so drawing and discarding replays a skipped batch exactly.
        """
        dim, radius = pset.latent_dim, pset.radius
        eae = tuple(
            sample_truncated_normal(n, dim, radius, generator, device=device, dtype=dtype) for _ in range(eae_samples)
        )
        start = sample_uniform_ball(n, dim, radius, generator, device=device, dtype=dtype)
        noise = torch.randn((n, *pset.latent_shape), generator=generator, device=device, dtype=dtype)
        return cls(eae, start, noise)


@torch.no_grad()
def approximation_errors(
    pset: PerturbationSet,
    x: Tensor,
    x_tilde: Tensor,
    *,
    steps: int = 50,
    step_size: float | None = None,
    eae_samples: int = 5,
    metric: str = "nll",
    generator: torch.Generator | None = None,
    draws: QualityDraws | None = None,
) -> dict[str, Tensor]:
    """The six metrics of Appendix B for a batch of pairs, each a tensor of shape (N,).

    Args:
        pset: the learned set S(x).
        x, x_tilde: pairs, (N, C, H, W) in the set's value range.
        steps, step_size: PGD AE and OAE take ``steps`` steps of ``step_size`` (default
            ε/20) of :func:`perturbsets.core.pgd.projected_ascent`, keeping the best iterate.
        eae_samples: draws from the truncated prior N_ε(0, I) averaged for EAE.
        metric: ``"nll"`` (the generator's own error term, as the paper's tables) or ``"mse"``.
        generator: torch generator for the EAE draws, the OAE start and the Recon sample.
        draws: those draws, made beforehand (:meth:`QualityDraws.draw`); then ``generator``
            and ``eae_samples`` are not used.

    Returns ``{"enc_ae", "pgd_ae", "eae", "oae", "recon", "kl"}``, each of shape (N,).

    Example::

        errs = approximation_errors(pset, x, x_tilde, steps=50)
        print(errs["pgd_ae"].mean(), errs["oae"].mean())
    """
    cond = pset.condition(x)
    posterior = cond.posterior(x_tilde)
    radius = pset.radius
    step_size = radius / 20 if step_size is None else float(step_size)
    n = x.shape[0]
    if draws is None:
        draws = QualityDraws.draw(pset, n, eae_samples, generator, device=x.device, dtype=x.dtype)

    def error_at(u: Tensor) -> Tensor:
        return pixel_error(pset, cond.decode_logits(u), x_tilde, metric)

    u_enc = project(cond.encode(x_tilde, posterior), radius)
    out = {"enc_ae": error_at(u_enc)}
    out["pgd_ae"], out["oae"] = _pgd_and_oae(cond, x_tilde, u_enc, draws.oae_start, radius, steps, step_size, metric)
    # One draw per example at a time keeps the decoding at one batch, whatever eae_samples is.
    out["eae"] = sum(error_at(u) for u in draws.eae) / len(draws.eae)
    out["recon"] = pixel_error(pset, cond.generate_logits(posterior.rsample(draws.recon_noise)), x_tilde, metric)
    out["kl"] = kl_divergence(posterior, cond.prior)
    return out


def _pgd_and_oae(
    cond: ConditionedSet, x_tilde: Tensor, u_enc: Tensor, oae_start: Tensor, radius: float, steps: int, step_size: float, metric: str
) -> tuple[Tensor, Tensor]:
    """PGD AE (min error from the Enc AE point) and OAE (max error from a random point) as one ascent.

    Rows 0…N−1 descend the error and rows N…2N−1 ascend it: the two searches are
    independent per row, and one batch of 2N halves the number of generator calls.
    Returns (pgd_ae, oae), each (N,).
    """
    n = u_enc.shape[0]
    both = cond.select(torch.cat([torch.arange(n, device=u_enc.device)] * 2))
    target = torch.cat([x_tilde, x_tilde])
    sign = torch.cat([torch.full((n,), -1.0), torch.ones(n)]).to(u_enc)
    never = torch.zeros(2 * n, dtype=torch.bool, device=u_enc.device)
    # Every example moves until the end, so the objective is always called on the whole batch.
    result = projected_ascent(
        lambda v, idx: (sign * pixel_error(cond.pset, both.decode_logits(v), target, metric), never),
        torch.cat([u_enc, oae_start]), radius, steps, step_size, select="best",
    )
    value = sign * result.value
    return value[:n], value[n:]


@dataclass(frozen=True)
class MetricSummary:
    mean: float
    std: float
    count: int


@dataclass
class QualityReport:
    """Per-example metrics of a perturbation set on a test set, with summaries.

    per_example maps each of ``METRICS`` to an array of shape (num_pairs,); ``latent_norms``
    are the validation statistics the radius came from (Table 8).

    Example::

        report = evaluate_quality(pset, batches)
        report.summary()["pgd_ae"].mean, report.to_dict()["oae"]
    """

    radius: float
    metric: str
    per_example: dict[str, np.ndarray]
    latent_norms: LatentNormStats | None = None
    extra: dict = field(default_factory=dict)

    def summary(self) -> dict[str, MetricSummary]:
        return {
            k: MetricSummary(float(v.mean()), float(v.std()), int(v.size)) for k, v in self.per_example.items()
        }

    def to_dict(self) -> dict:
        """JSON-ready: ``radius``, each metric as ``{mean, std, count}``, ``latent_norms``."""
        out: dict = {"radius": self.radius, "metric": self.metric}
        out.update({k: vars(s) for k, s in self.summary().items()})
        out["latent_norms"] = self.latent_norms.to_dict() if self.latent_norms else None
        out.update(self.extra)
        return out


def quality_batches(
    pset: PerturbationSet,
    batches: Iterable[PairLike],
    *,
    eae_samples: int = 5,
    seed: int = 0,
    shard: BatchShard = BatchShard(),
    progress: bool = False,
    **options,
) -> dict[int, dict[str, np.ndarray]]:
    """:func:`approximation_errors` of the batches ``shard`` owns: ``{batch index: {metric: (N,) float64}}``.

    ``options`` are :func:`approximation_errors`' ``steps``, ``step_size`` and ``metric``.
    One generator seeded by ``seed`` serves the batches in order; a batch owned by another
    process has its draws made and discarded, so every owned batch sees the draws it sees
    when one process evaluates everything.
    """
    from tqdm.auto import tqdm

    generator = torch.Generator(device=pset.device).manual_seed(seed)

    def draws(batch: PairLike) -> QualityDraws:
        return QualityDraws.draw(pset, batch.x.shape[0], eae_samples, generator, device=batch.x.device, dtype=batch.x.dtype)

    def work(batch: PairLike) -> dict[str, np.ndarray]:
        errs = approximation_errors(pset, batch.x, batch.x_tilde, draws=draws(batch), **options)
        return {k: errs[k].double().cpu().numpy() for k in METRICS}

    return shard.compute(tqdm(batches, desc="quality", disable=not progress, leave=False), work, skip=draws)


def quality_report(
    pset: PerturbationSet, parts: list[dict[str, np.ndarray]], metric: str, latent_norms: LatentNormStats | None = None
) -> QualityReport:
    """The :class:`QualityReport` of per-batch results in batch order (:func:`quality_batches`' values)."""
    if not parts:
        raise ValueError("no pairs to evaluate: the test data is empty")
    per_example = {k: np.concatenate([part[k] for part in parts]) for k in METRICS}
    return QualityReport(pset.radius, metric, per_example, latent_norms)


def evaluate_quality(
    pset: PerturbationSet,
    batches: Iterable[PairLike],
    *,
    steps: int = 50,
    step_size: float | None = None,
    eae_samples: int = 5,
    metric: str = "nll",
    seed: int = 0,
    latent_norms: LatentNormStats | None = None,
    progress: bool = False,
    shard: BatchShard = BatchShard(),
) -> QualityReport:
    """Run :func:`approximation_errors` over all batches and collect a :class:`QualityReport` (Appendix B, Table 4).

    ``batches`` yields objects with ``x`` and ``x_tilde`` (N, C, H, W), e.g. a pair source's
    evaluation batches; the draws are seeded by ``seed``. With a ``shard`` of several
    processes (each reading the same batches) every process evaluates its share and all
    receive the report of one process evaluating every batch.

    Example::

        report = evaluate_quality(pset, test.evaluation_batches(256, seed=0), steps=50)
        print(report.summary()["oae"].mean)
    """
    parts = quality_batches(
        pset, batches, steps=steps, step_size=step_size, eae_samples=eae_samples, metric=metric, seed=seed,
        shard=shard, progress=progress,
    )  # fmt: skip
    return quality_report(pset, shard.gather(parts), metric, latent_norms)
