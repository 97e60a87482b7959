"""A learned perturbation set: a trained CVAE plus its radius (paper Section 4, Appendix B).

S(x) = { g(μ(x) + u·σ(x), x) : ‖u‖₂ ≤ ε }, and its probabilistic version with u drawn from
the standard normal truncated to the same ball. Latent points u are always given flat,
shape (N, latent_dim), in prior coordinates (before the reparameterisation).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import save as safetensors_bytes
from torch import Tensor

from perturbsets import __version__
from perturbsets._util.checks import positive_finite
from perturbsets._util.io import atomic_path, write_json
from perturbsets._util.locking import folder_lock
from perturbsets._util.checkpoint import CheckpointError, read_safetensors, sha256_file, state_dict_sha256
from perturbsets.cvae.model import CVAE, Gaussian, output_activation
from perturbsets.core.radius import LatentNormStats, RadiusSpec
from perturbsets.core.latent import project, relative_encoding, sample_truncated_normal, to_latent
from perturbsets.cvae.registry import build_cvae

MANIFEST = "perturbation_set.json"
FORMAT = "perturbsets.PerturbationSet"
FORMAT_VERSION = 1


class PerturbationSet:
    """A trained CVAE and the radius ε of its latent ball.

    Args:
        cvae: the trained model; it is put in eval mode and its parameters frozen.
        radius: ε > 0, in prior coordinates (usually from
            :class:`perturbsets.core.radius.RadiusSpec`).
        architecture: registered name the CVAE was built from (needed to :meth:`load`
            without passing the model), or ``None`` for a CVAE made of your own modules.
        options: the builder's keyword options.
        value_range: (low, high) of the data the set was learned on.
        metrics: quality metrics to store alongside (e.g. a quality report's summary).
        latent_norms: statistics of the validation latent norms the radius was chosen from;
            they name the percentile radii (``"p50"``) attacks and certification use.

    Inputs are batches (N, C, H, W) of :attr:`input_shape` in :attr:`value_range`; latent
    points u are (N, latent_dim).

    Example::

        pset = PerturbationSet.load("runs/mnist_rts/perturbation_set")
        x_prime = pset.sample(x, n=8)      # (N, 8, C, H, W), inside S(x)
    """

    def __init__(
        self,
        cvae: CVAE,
        radius: float,
        *,
        architecture: str | None = None,
        options: dict[str, Any] | None = None,
        value_range: tuple[float, float] = (0.0, 1.0),
        metrics: dict[str, Any] | None = None,
        latent_norms: LatentNormStats | None = None,
    ) -> None:
        if not isinstance(cvae, CVAE):
            raise TypeError(f"cvae must be a perturbsets.cvae.CVAE, got {type(cvae).__name__}")
        radius = positive_finite(radius, "the radius")
        self.cvae = cvae.eval().requires_grad_(False)
        self.radius = radius
        self.architecture = architecture
        self.options = dict(options or {})
        self.value_range = (float(value_range[0]), float(value_range[1]))
        self.metrics = dict(metrics or {})
        if latent_norms is None and isinstance(self.metrics.get("latent_norms"), dict):
            latent_norms = LatentNormStats.from_dict(self.metrics["latent_norms"])
        self.latent_norms = latent_norms

    def resolve_radius(self, spec: float | str | RadiusSpec) -> float:
        """A radius inside this set: a number, ``"max"`` (:attr:`radius`) or a stored percentile ``"p50"``."""
        return RadiusSpec.parse(spec).resolve(self.radius, self.latent_norms)

    # ------------------------------------------------------------------ properties
    @property
    def latent_dim(self) -> int:
        return self.cvae.latent_dim

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return self.cvae.latent_shape

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.cvae.input_shape  # type: ignore[return-value]

    def _first_tensor(self) -> Tensor | None:
        return next(itertools.chain(self.cvae.parameters(), self.cvae.buffers()), None)

    @property
    def device(self) -> torch.device:
        """Where the generator lives (CPU for a set without parameters or buffers)."""
        first = self._first_tensor()
        return first.device if first is not None else torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """The floating dtype the generator computes in; inputs must have it."""
        first = self._first_tensor()
        return first.dtype if first is not None and first.dtype.is_floating_point else torch.get_default_dtype()

    def to(self, device: str | torch.device | None = None, *, memory_format: torch.memory_format | None = None) -> "PerturbationSet":
        """Move the generator to ``device`` and/or ``memory_format`` (e.g. ``torch.channels_last``); returns self."""
        if device is not None:
            self.cvae.to(device)
        if memory_format is not None:
            self.cvae.to(memory_format=memory_format)
        return self

    def weights_sha256(self) -> str:
        """sha256 of the CVAE's parameters and buffers: names a set's weights in run fingerprints."""
        return state_dict_sha256(self.cvae)

    def __repr__(self) -> str:
        return (
            f"PerturbationSet(architecture={self.architecture!r}, radius={self.radius:.4g}, "
            f"input_shape={self.input_shape}, latent_dim={self.latent_dim})"
        )

    # ------------------------------------------------------------------ checks
    def check_input(self, x: Tensor, name: str = "x") -> None:
        """Raise a ValueError unless x is a finite (N, C, H, W) batch of this set's shape and dtype."""
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        dtype = self.dtype
        if x.dtype != dtype:
            fix = "x.float() / 255" if not x.dtype.is_floating_point else f"{name}.to({dtype})"
            raise TypeError(
                f"{name} has dtype {x.dtype} but this perturbation set computes in {dtype}: pass images "
                f"in {list(self.value_range)} as {dtype} (e.g. {fix}), or convert the set with pset.cvae.to(dtype)"
            )
        if x.dim() != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"{name} has shape {tuple(x.shape)} but this perturbation set takes (N, {', '.join(map(str, self.input_shape))}); "
                "resize or pad the data to the shape the set was learned on"
            )
        if x.shape[0] == 0:
            raise ValueError(f"{name} is an empty batch; give at least one input")
        if not torch.isfinite(x).all():
            raise ValueError(f"{name} contains NaN or Inf values")

    def condition(self, x: Tensor) -> "ConditionedSet":
        """The set S(x) for the batch x (N, C, H, W): checks x and computes p(z | x) once.

        Every use of the set (perturbing, sampling, quality metrics, attacks, smoothing)
        decodes through the returned view, so z = μ(x) + u·σ(x) → g(z, x) lives in one place.

        Example::

            cond = pset.condition(x)
            x_adv = cond.decode(u)          # u (N, latent_dim), differentiable
        """
        self.check_input(x)
        return ConditionedSet(self, x, self.cvae.prior_params(x))

    # ------------------------------------------------------------------ the set
    def perturb(self, x: Tensor, u: Tensor) -> Tensor:
        """g(μ(x) + u·σ(x), x): x (N, C, H, W), u (N, latent_dim) → x' (N, C, H, W).

        Differentiable in u (attacks optimise through it). u is used as given: keep
        ‖u‖₂ ≤ radius (see :func:`perturbsets.core.latent.project`) to stay inside S(x).
        """
        if isinstance(u, Tensor) and not bool(torch.isfinite(u).all()):
            raise ValueError("u contains NaN or Inf values; latent points must be finite")
        return self.condition(x).decode(u)

    @torch.no_grad()
    def encode(self, x: Tensor, x_tilde: Tensor) -> Tensor:
        """u = (μ(x, x̃) − μ(x)) / σ(x), the posterior mean in prior coordinates: (N, latent_dim)."""
        return self.condition(x).encode(x_tilde)

    @torch.no_grad()
    def sample(self, x: Tensor, n: int = 1, generator: torch.Generator | None = None) -> Tensor:
        """Draw n perturbations of each input from the truncated prior: (N, n, C, H, W).

        u ~ N(0, I) conditioned on ‖u‖₂ ≤ ε (exact, see
        :func:`perturbsets.core.latent.sample_truncated_normal`), then g(μ(x) + u·σ(x), x).
        """
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        cond = self.condition(x).repeat(n)
        u = sample_truncated_normal(cond.batch_size, self.latent_dim, self.radius, generator, device=x.device, dtype=x.dtype)
        return cond.decode(u).view(x.shape[0], n, *self.input_shape)

    @torch.no_grad()
    def interpolate(self, x: Tensor, x_tilde_a: Tensor, x_tilde_b: Tensor, steps: int = 8) -> Tensor:
        """Walk the latent segment between two perturbations of x: (N, steps, C, H, W).

        Both endpoints are encoded (:meth:`encode`) and projected into the ball; the ball is
        convex, so every point of the segment is in S(x) (paper Figure 1, top row).
        """
        if steps < 2:
            raise ValueError(f"steps must be >= 2, got {steps}")
        for name, x_tilde in (("x_tilde_a", x_tilde_a), ("x_tilde_b", x_tilde_b)):
            self.check_input(x_tilde, name)
        cond = self.condition(x)
        u_a, u_b = (project(cond.encode(xt), self.radius) for xt in (x_tilde_a, x_tilde_b))
        t = torch.linspace(0, 1, steps, device=x.device, dtype=u_a.dtype).view(1, steps, 1)
        u = (1 - t) * u_a.unsqueeze(1) + t * u_b.unsqueeze(1)
        return cond.repeat(steps).decode(u.flatten(0, 1)).view(x.shape[0], steps, *self.input_shape)

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``weights-<sha>.safetensors`` and ``perturbation_set.json`` into ``directory``.

        The manifest records the architecture and its options, radius, shapes, value range,
        latent-norm statistics, metrics, library version and the weights' sha256. The
        weights file is named by its hash and written first, the manifest is swapped in
        atomically after it, and only then are the previous weights removed: an interrupted
        save leaves the previous set loadable. Saves into one folder are serialised by a
        folder lock, and files left by killed saves are cleaned up by the next one.
        """
        directory = Path(directory)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.cvae.state_dict().items()}
        payload = safetensors_bytes(tensors)
        digest = hashlib.sha256(payload).hexdigest()
        weights_name = f"weights-{digest[:16]}.safetensors"
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "library_version": __version__,
            "architecture": {"name": self.architecture, "options": self.options},
            "distribution": self.cvae.distribution,
            "output": self.cvae.output,
            "radius": self.radius,
            "input_shape": list(self.input_shape),
            "latent_shape": list(self.latent_shape),
            "value_range": list(self.value_range),
            "latent_norms": self.latent_norms.to_dict() if self.latent_norms is not None else None,
            "metrics": self.metrics,
            "weights": {"file": weights_name, "sha256": digest},
        }
        with folder_lock(directory, what="perturbation-set folder"):
            with atomic_path(directory / weights_name) as tmp:
                tmp.write_bytes(payload)
            write_json(directory / MANIFEST, manifest)
            # Under the lock no other save is running: every other weights file and every
            # temporary file is a leftover of an earlier or interrupted save.
            for leftover in (*directory.glob("weights-*.safetensors"), *directory.glob(".*.tmp")):
                if leftover.name != weights_name:
                    leftover.unlink(missing_ok=True)
        return directory

    @classmethod
    def load(
        cls, directory: str | os.PathLike, *, cvae: CVAE | None = None, device: str | torch.device = "cpu"
    ) -> "PerturbationSet":
        """Load a set written by :meth:`save`; never unpickles, and verifies the weights' sha256.

        Pass ``cvae`` (an untrained model of the same architecture) for sets built from
        your own modules, which cannot be rebuilt by name.
        """
        directory = Path(directory)
        manifest = _read_manifest(directory)
        weights = directory / manifest["weights"]["file"]
        if not weights.is_file():
            raise CheckpointError(f"{directory} lists weights file {weights.name}, which is missing")
        digest = sha256_file(weights)
        if digest != manifest["weights"]["sha256"]:
            raise CheckpointError(
                f"{weights} fails its checksum (sha256 {digest[:16]}… ≠ recorded {manifest['weights']['sha256'][:16]}…): "
                "the file was modified or corrupted; restore it or save the set again"
            )
        tensors = read_safetensors(weights, device="cpu")
        arch = manifest["architecture"]
        if cvae is None:
            if arch["name"] is None:
                raise ValueError(
                    f"{directory} holds a CVAE made of custom modules; pass cvae=<a model of the same architecture> to load it"
                )
            cvae = build_cvae(arch["name"], **{"distribution": manifest["distribution"], **arch["options"]})
        try:
            cvae.load_state_dict(tensors)
        except RuntimeError as err:
            raise CheckpointError(f"the weights in {weights} do not fit the architecture: {err}") from None
        pset = cls(
            cvae,
            manifest["radius"],
            architecture=arch["name"],
            options=arch["options"],
            value_range=tuple(manifest["value_range"]),
            metrics=manifest.get("metrics", {}),
            latent_norms=LatentNormStats.from_dict(manifest["latent_norms"]) if manifest.get("latent_norms") else None,
        )
        return pset.to(device)


def _read_manifest(directory: Path) -> dict[str, Any]:
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} does not exist or is not a directory")
    path = directory / MANIFEST
    if not path.is_file():
        raise ValueError(
            f"{directory} is not a saved perturbation set (no {MANIFEST}); "
            "create one with PerturbationSet.save or `perturbsets train`"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{path} is not a perturbation-set manifest (format field missing or wrong)")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"{path} was written by a newer perturbsets (format {manifest['format_version']}); upgrade the library"
        )
    weights = manifest.get("weights")
    name = weights.get("file") if isinstance(weights, dict) else None
    # Loading reads, and saving over it deletes, the file the manifest names: only a plain
    # file name inside the set folder is acceptable (no path, no "..").
    if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
        raise ValueError(
            f"{path} names the weights file {name!r}; a manifest may only name a file inside the set folder. "
            "The manifest was edited or damaged: save the set again"
        )
    return manifest


class ConditionedSet:
    """S(x) for one batch x: the set's generator with the prior p(z | x) computed once.

    Latent points u are flat, shape (M, latent_dim), in prior coordinates; row i of u is
    decoded with input i of the view. Views are cheap: :meth:`repeat` and :meth:`select`
    gather rows of x and of the prior instead of recomputing it.

    Example::

        cond = pset.condition(x)                 # x (N, C, H, W)
        u = cond.encode(x_tilde)                 # (N, latent_dim)
        x_prime = cond.decode(project(u, pset.radius))
        many = cond.repeat(16)                   # 16 draws per input, N·16 rows
    """

    def __init__(self, pset: PerturbationSet, x: Tensor, prior: Gaussian, context: tuple[Tensor, ...] | None = None) -> None:
        self.pset = pset
        self.x = x
        self.prior = prior
        self._context = context

    @property
    def batch_size(self) -> int:
        return self.x.shape[0]

    @property
    def context(self) -> tuple[Tensor, ...]:
        """What the generator computes from x alone (:meth:`CVAE.generator_context`), on first use, once per view."""
        if self._context is None:
            self._context = self.pset.cvae.generator_context(self.x)
        return self._context

    def _check_u(self, u: Tensor) -> Tensor:
        dim = self.pset.latent_dim
        if not isinstance(u, Tensor):
            raise TypeError(f"u must be a torch.Tensor, got {type(u).__name__}")
        if u.dim() < 1 or u.shape[0] != self.batch_size or u[0].numel() != dim:
            raise ValueError(
                f"u has shape {tuple(u.shape)}; expected ({self.batch_size}, {dim}) for a batch of {self.batch_size} inputs"
            )
        return u.reshape(self.batch_size, *self.pset.latent_shape)

    def latent(self, u: Tensor) -> Tensor:
        """z = μ(x) + u·σ(x): (N, *latent_shape)."""
        return to_latent(self._check_u(u), self.prior)

    def generate_logits(self, z: Tensor) -> Tensor:
        """The generator's output before its activation, for latent codes z (N, *latent_shape)."""
        return self.pset.cvae.generator_logits(z, self.context)

    def _activate(self, logits: Tensor) -> Tensor:
        return output_activation(logits, self.pset.cvae.output)

    def decode_logits(self, u: Tensor) -> Tensor:
        """g's pre-activation output at z = μ(x) + u·σ(x): (N, C, H, W); what NLL metrics compare."""
        return self.generate_logits(self.latent(u))

    def decode(self, u: Tensor) -> Tensor:
        """g(μ(x) + u·σ(x), x): (N, C, H, W) in the data range, differentiable in u."""
        return self._activate(self.decode_logits(u))

    def decode_draws(self, u: Tensor) -> Tensor:
        """Many latent points per input, u (N, m, latent_dim) → g(μ(x) + u·σ(x), x), (N·m, C, H, W), input-major.

        The prior is broadcast over the m draws and the generator's context of x (computed
        once per view) expanded, not recomputed or gathered row by row, which is what
        Monte-Carlo smoothing needs for its thousands of draws per input.
        """
        if u.dim() != 3 or u.shape[0] != self.batch_size or u.shape[2] != self.pset.latent_dim:
            raise ValueError(f"u has shape {tuple(u.shape)}; expected ({self.batch_size}, m, {self.pset.latent_dim})")
        n, m = u.shape[0], u.shape[1]
        mean, std = self.prior.mean.flatten(1).unsqueeze(1), self.prior.std.flatten(1).unsqueeze(1)
        z = torch.addcmul(mean, u, std).view(n * m, *self.pset.latent_shape)
        context = tuple(_each_row_repeated(t, m) for t in self.context)
        return self._activate(self.pset.cvae.generator_logits(z, context))

    def posterior(self, x_tilde: Tensor) -> Gaussian:
        """q(z | x, x̃) for the view's inputs and x̃ (N, C, H, W)."""
        self.pset.check_input(x_tilde, "x_tilde")
        if x_tilde.shape[0] != self.batch_size:
            raise ValueError(f"x_tilde has {x_tilde.shape[0]} examples but x has {self.batch_size}; pass pairs")
        return self.pset.cvae.posterior_params(self.x, x_tilde)

    def encode(self, x_tilde: Tensor, posterior: Gaussian | None = None) -> Tensor:
        """u = (μ(x, x̃) − μ(x)) / σ(x), the posterior mean in prior coordinates: (N, latent_dim).

        Pass ``posterior`` when it is already computed (:meth:`posterior`) to reuse it.
        """
        posterior = self.posterior(x_tilde) if posterior is None else posterior
        return relative_encoding(posterior, self.prior).flatten(1)

    def reconstruct(self, x_tilde: Tensor, noise: Tensor | None = None) -> Tensor:
        """g(z, x) at one posterior sample z ~ q(z | x, x̃) (the CVAE's reconstruction): (N, C, H, W).

        ``noise`` (N, *latent_shape) fixes the standard-normal draw of the reparameterisation.
        """
        return self._activate(self.generate_logits(self.posterior(x_tilde).rsample(noise)))

    def _derived(self, rows: Callable[[Tensor], Tensor], *, context: tuple[Tensor, ...] | None = None) -> "ConditionedSet":
        context = self._context if context is None else context
        context = None if context is None else tuple(rows(t) for t in context)
        return ConditionedSet(self.pset, rows(self.x), Gaussian(rows(self.prior.mean), rows(self.prior.logvar)), context)

    def select(self, index: Tensor | slice) -> "ConditionedSet":
        """The view of the inputs ``index`` ((M,) indices, repeats allowed, or a slice), without recomputing the prior."""
        return self._derived(lambda t: t[index])

    def repeat(self, m: int) -> "ConditionedSet":
        """Each input m times in a row (N·m rows: input 0 m times, then input 1…), e.g. for many draws per input."""
        if m < 1:
            raise ValueError(f"m must be >= 1, got {m}")
        # Repeated rows are decoded: compute the context on the N inputs, not on N·m copies.
        return self._derived(lambda t: _each_row_repeated(t, m), context=self.context)


def _each_row_repeated(t: Tensor, m: int) -> Tensor:
    """Rows of t (N, ...) each m times in a row, (N·m, ...); for one row a stride-0 view, no copy."""
    if t.shape[0] == 1:
        return t.expand(m, *t.shape[1:])
    return t.unsqueeze(1).expand(t.shape[0], m, *t.shape[1:]).reshape(t.shape[0] * m, *t.shape[1:])
