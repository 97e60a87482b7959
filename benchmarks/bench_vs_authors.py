"""Our pipeline against faithful re-statements of the authors' algorithms, interleaved.

Run on demand (not part of the tests)::

    PYTHONPATH=. python benchmarks/bench_vs_authors.py [--quick] [--repeats R] [--only ROWS] [--profile]

``--profile`` adds, per row, the share of our time spent in convolution / matrix-product /
BatchNorm / grid-sample kernels, which the same network arithmetic needs whoever runs it,
and the ratio that share bounds: the ratio if everything else took no time at all.

Every row times our code ("ours") and a re-statement of the authors' procedure ("theirs",
written here from the facts in shared/reference/official-implementation.md, no code copied)
on the same networks and inputs, alternating A, B, A, B… and reporting medians; ratio =
theirs / ours (> 1: we are faster). Networks are our architectures, which are the authors'
(same layers, weights and parameter counts); theirs run them layer by layer as their code
does (:func:`their_generate`: each spatial transformer in turn with ``F.affine_grid``),
ours as the library runs them (one batched warp; with frozen weights the STN's two
linear maps folded into one; channels-last training where the paper config asks for it).
The re-statements otherwise differ only in the surrounding algorithm:

* training: their step = forward with a posterior sample, Σ recon + β Σ KL (BCE on the
  sigmoid output for Bernoulli models, plain squared error for Gaussian ones), backward,
  default ``torch.optim.Adam`` (per-tensor loop on the CPU), per-batch ``np.interp`` lr and
  three ``.item()`` meters.
* quality (per pair, mnist_stn, ε = 14, α = 0.7, 50 steps): their Enc AE (division by the
  prior log-variance), PGD AE (50 steps, column-wise ``renorm`` projection), EAE (5 prior
  draws with the any-norm-above-ε check), Recon, KL; their OAE is hard-coded to 0. Ours adds
  the OAE (another 50-step PGD). Their gradient is taken with ``autograd.grad`` w.r.t. u only
  (if their code used ``backward()``, weight gradients would make theirs slower still).
* certification: their per-image loop (prior once per image; per chunk float32 ``randn``,
  z = μ + u·exp(½ logvar), x repeated, generator, model, argmax, a Python loop adding one
  vote at a time (classification) or a loop over present labels (segmentation)), for n0 and
  n. "Bare forwards" = each side's own generator + classifier forwards on ready-made inputs.
  The overhead of a method is timed directly, with the generator and the classifier
  replaced by their precomputed outputs (:class:`Replay`, which costs nothing), next to a
  floor: reading every logit once (``sum``). Their per-pixel Python loop of
  Clopper–Pearson bounds (segmentation) is *not* included (it would dominate); both sides
  use one vectorised bound call.
* RTS: per image, PIL 8-bit ``RandomAffine`` (nearest, fill 0) + ``RandomCrop(42, pad 7)`` +
  ToTensor, against our batched ``rts``.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np
import yaml
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import stats
from torch import nn

import perturbsets
from perturbsets._util.allocator import keep_freed_memory
from perturbsets.certify.smoothed import SmoothedClassifier
from perturbsets.core.perturbation_set import PerturbationSet
from perturbsets.core.quality import approximation_errors
from perturbsets.config.io import from_dict
from perturbsets.config.learn import Config
from perturbsets.cvae.mnist import STNGenerator
from perturbsets.cvae.model import CVAE
from perturbsets.cvae.registry import build_cvae
from perturbsets.perturbations import rts
from perturbsets.training.cvae import make_adam

PAPER_CONFIGS = Path(perturbsets.__file__).parent / "configs" / "paper"


# Kernels any implementation of the same network arithmetic runs: convolutions, matrix
# products, BatchNorm and grid sampling, forward and backward. Everything else (element-wise
# ops, copies, Python) is what an implementation could still remove.
KERNELS = re.compile(r"convolution|(^|::)(add|b|badd)?mm$|batch_norm|grid_sampler")
PROFILE: dict[str, float] = {}


def kernel_share(fn) -> float:
    """Fraction of fn's self CPU time spent in :data:`KERNELS` (one profiled call)."""
    from torch.profiler import profile

    with profile() as prof:
        fn()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    return sum(e.self_cpu_time_total for e in events if KERNELS.search(e.key)) / total


def interleaved(ours, theirs, repeats: int, extra: dict | None = None, *, profile: bool = True) -> dict[str, float]:
    """Median seconds of each callable, run A, B(, C…), A, B… after one warm-up each."""
    fns = {"ours": ours, "theirs": theirs, **(extra or {})}
    for fn in fns.values():
        fn()
    if profile and "enabled" in PROFILE:
        PROFILE["share"] = kernel_share(ours)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            began = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - began)
    return {k: float(np.median(v)) for k, v in times.items()}


# ------------------------------------------------------------------ training
def training_row(name: str, config: str, batch: int, steps: int, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    ours_model = build_cvae(name).train()
    theirs_model = copy.deepcopy(ours_model)
    # Ours as the paper config trains it (e.g. channels-last weights); theirs as they did.
    experiment = yaml.safe_load((PAPER_CONFIGS / config).read_text(encoding="utf-8"))
    if from_dict(Config, experiment["perturbation_set"]).training.channels_last:
        ours_model.to(memory_format=torch.channels_last)
    x = torch.rand(batch, *ours_model.input_shape)
    x_tilde = torch.rand_like(x)
    gen = torch.Generator().manual_seed(0)
    ours_opt = make_adam(ours_model.parameters(), 0.0)
    theirs_opt = torch.optim.Adam(theirs_model.parameters(), lr=1.0)  # their default Adam, lr overwritten per batch
    bern = ours_model.distribution == "bernoulli"

    def ours() -> None:
        for _ in range(steps):
            for group in ours_opt.param_groups:
                group["lr"] = 1e-4
            noise = torch.randn((batch, *ours_model.latent_shape), generator=gen)
            out = ours_model(x, x_tilde, noise=noise)
            loss = ours_model.loss(out, x_tilde, 0.5)
            _ = (loss.total.item(), loss.reconstruction.mean().item(), loss.kl.mean().item())
            ours_opt.zero_grad(set_to_none=True)
            loss.objective.backward()
            ours_opt.step()

    def theirs() -> None:
        m = theirs_model
        for i in range(steps):
            theirs_opt.param_groups[0]["lr"] = float(np.interp(i / steps, [0, 1], [1e-4, 1e-4]))
            beta = float(np.interp(0, [0, 1], [0.5, 0.5]))
            mu_p, lv_p = m.prior(x)
            mu_q, lv_q = m.recognition(x, x_tilde)
            z = mu_q + torch.randn_like(mu_q) * torch.exp(0.5 * lv_q)
            recon = their_generate(m, z, x)
            if bern:
                nll = F.binary_cross_entropy(recon, x_tilde, reduction="sum")
            else:
                nll = ((recon - x_tilde) ** 2).sum()
            kl = 0.5 * (lv_p - lv_q + (lv_q.exp() + (mu_q - mu_p) ** 2) / lv_p.exp() - 1).sum()
            loss = nll + beta * kl
            theirs_opt.zero_grad()
            loss.backward()
            theirs_opt.step()
            _ = (nll.item() / batch, beta * kl.item() / batch, loss.item() / batch)

    t = interleaved(ours, theirs, repeats)
    return {k: v / steps for k, v in t.items()}


def their_generate(cvae: CVAE, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """g(z, x) as their code computes it: for the STN, each transformer's layers in turn, then
    ``F.affine_grid`` and ``grid_sample``; other generators as they are."""
    gen = cvae.generator
    if not isinstance(gen, STNGenerator):
        return cvae.generate(z, x)
    loc = gen.fc(z).view(-1, 1, *gen.image_size)
    warped = []
    for stn in gen.stns:
        theta = stn.fc(stn.localization(loc)).view(-1, 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        warped.append(F.grid_sample(x, grid, padding_mode="border", align_corners=False))
    h = gen.block(torch.cat(warped, dim=1))
    return torch.sigmoid(gen.conv(F.pad(h, (2, 2, 2, 2), mode="reflect")))


# ------------------------------------------------------------------ quality
def quality_row(batch: int, repeats: int, steps: int = 50) -> dict[str, float]:
    torch.manual_seed(0)
    cvae = build_cvae("mnist_stn").eval()
    # A freshly built STN's last localisation layer is zero, so the latent gradient is exactly
    # 0 and their unclamped ∇/‖∇‖ is NaN (whose grid then crashes grid_sample): jitter the
    # weights as training would.
    with torch.no_grad():
        for p in cvae.parameters():
            p.add_(0.01 * torch.randn_like(p))
    pset = PerturbationSet(copy.deepcopy(cvae), radius=14.0)
    theirs_model = cvae.requires_grad_(False)
    x = torch.rand(batch, 1, 42, 42)
    x_tilde = torch.rand_like(x)
    eps, alpha = 14.0, 0.7

    def ours() -> None:
        approximation_errors(pset, x, x_tilde, steps=steps, generator=torch.Generator().manual_seed(0))

    def theirs() -> None:
        m = theirs_model
        d = F.binary_cross_entropy
        with torch.no_grad():
            mu_p, lv_p = m.prior(x)
            mu_q, lv_q = m.recognition(x, x_tilde)
            std_p = torch.exp(0.5 * lv_p)
            g = lambda u: their_generate(m, mu_p + u * std_p, x)  # noqa: E731
            z = mu_q + torch.randn_like(mu_q) * torch.exp(0.5 * lv_q)
            _recon = d(their_generate(m, z, x), x_tilde)
            _kl = 0.5 * (lv_p - lv_q + (lv_q.exp() + (mu_q - mu_p) ** 2) / lv_p.exp() - 1).sum() / batch
            u = ((mu_q - mu_p) / lv_p).renorm(2, 1, eps)
            _enc = d(g(u), x_tilde)
        for _ in range(steps):
            u = u.detach().requires_grad_(True)
            with torch.enable_grad():
                loss = -d(g(u), x_tilde)
                loss.backward()
                grad = u.grad
            with torch.no_grad():
                u = (u + alpha * grad / grad.norm(dim=1, keepdim=True)).renorm(2, 1, eps)
        with torch.no_grad():
            _ae = -d(g(u), x_tilde)
            eae = 0.0
            for _ in range(5):
                v = torch.randn_like(mu_p)
                if bool((v.norm(dim=1) > eps).any()):
                    v = torch.from_numpy(stats.truncnorm.rvs(-eps, eps, size=tuple(v.shape))).float()
                eae += d(g(v), x_tilde).item() / 5

    t = interleaved(ours, theirs, repeats)
    return {k: v / batch for k, v in t.items()}


# ------------------------------------------------------------------ certification
class TinyClassifier(nn.Module):
    def __init__(self, channels: int = 1, classes: int = 10) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(channels, 8, 5, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(128, classes))

    def forward(self, x):
        return self.net(x)


class TinyPrior(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(48, 2 * dim)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(x, 4).flatten(1)).chunk(2, 1)


class TinyGenerator(nn.Module):
    """z (N, d), x (N, 3, H, W) → logits: x shifted per channel by a linear map of z."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, 3)

    def forward(self, z, x):
        return x + self.fc(z)[:, :, None, None]


def their_sampling(cvae: CVAE, model, x1, n: int, batch: int, sigma: float, k: int, segmentation: bool):
    """Their per-image SAMPLEUNDERNOISE (x1 one image)."""
    with torch.no_grad():
        mu_p, lv_p = cvae.prior(x1)
        counts = torch.zeros((k, *([] if not segmentation else x1.shape[-2:])), dtype=torch.long)
        remaining = n
        while remaining > 0:
            b = min(batch, remaining)
            remaining -= b
            u = sigma * torch.randn(b, mu_p.shape[1], dtype=torch.float32)
            z = mu_p + u * torch.exp(0.5 * lv_p)
            pred = model(their_generate(cvae, z, x1.repeat(b, 1, 1, 1))).argmax(1)
            if segmentation:
                for label in pred.unique().tolist():
                    counts[label] += (pred == label).sum(0)
            else:
                for idx in pred.tolist():
                    counts[idx] += 1
        return counts


def bare_forwards(generate, model, x1, n: int, batch: int, z_all):
    """The generator and classifier forwards of n draws on ready-made latent codes, nothing else."""
    with torch.no_grad():
        for s in range(0, n, batch):
            b = min(batch, n - s)
            model(generate(z_all[:b], x1.expand(b, *x1.shape[1:]).contiguous()))


class Replay(nn.Module):
    """A network replaced by its precomputed output (the first rows asked for): costs nothing."""

    def __init__(self, out: torch.Tensor) -> None:
        super().__init__()
        self.out = out

    def forward(self, first, *rest):
        return self.out[: first.shape[0]]


def certify_row(segmentation: bool, n: int, n0: int, batch: int, repeats: int, *, replay: bool = False) -> dict[str, float]:
    """Times of certifying one image, ours and theirs; with ``replay`` the generator and the
    classifier are replaced by precomputed outputs, so what is timed is each method's overhead alone."""
    torch.manual_seed(0)
    if segmentation:
        dim, k = 16, 36
        cvae = CVAE(TinyPrior(dim), TinyPrior(dim), TinyGenerator(dim), input_shape=(3, 125, 187), latent_shape=(dim,), distribution="gaussian")
        model = nn.Conv2d(3, k, 1).eval()
        x1 = torch.rand(1, 3, 125, 187)
    else:
        k = 10
        cvae = build_cvae("mnist_stn")
        model = TinyClassifier().eval()
        x1 = torch.rand(1, 1, 42, 42)
    if replay:
        with torch.no_grad():
            images = cvae.generator(torch.randn(batch, *cvae.latent_shape), x1.expand(batch, *x1.shape[1:]))
            model = Replay(model(images))
            images = torch.sigmoid(images)  # the output activation is part of the generator: replayed too
        cvae = CVAE(cvae.prior, cvae.recognition, Replay(images), input_shape=cvae.input_shape, latent_shape=cvae.latent_shape, distribution="gaussian", output="identity")
    pset = PerturbationSet(cvae, radius=10.0)
    sigma = 1.0
    smoothed = SmoothedClassifier(model, pset, sigma, k)
    z_all = torch.randn(batch, pset.latent_dim)
    alpha = 0.001

    def ours() -> None:
        smoothed.certify(x1, n0, n, alpha, batch, torch.Generator().manual_seed(0))

    def theirs() -> None:
        guess = their_sampling(cvae, model, x1, n0, batch, sigma, k, segmentation).argmax(0)
        counts = their_sampling(cvae, model, x1, n, batch, sigma, k, segmentation)
        n_a = counts.gather(0, guess.unsqueeze(0)).squeeze(0).numpy()
        lower = np.nan_to_num(stats.beta.ppf(alpha, n_a, n - n_a + 1))
        _ = np.where(lower < 0.5, -1.0, sigma * stats.norm.ppf(np.clip(lower, 0.5, 1 - 1e-16)))

    def bare(generate):
        def run() -> None:
            bare_forwards(generate, model, x1, n0, batch, z_all)
            bare_forwards(generate, model, x1, n, batch, z_all)

        return run

    if replay:
        logits = model.out

        def read_once() -> None:
            # A floor for any vote count: every logit of the n0 + n draws streamed once.
            for _ in range(0, n0 + n, batch):
                logits.sum()

        def class_maxima() -> None:
            # PyTorch's cheapest reduction over the classes (maxima only, no indices).
            for _ in range(0, n0 + n, batch):
                logits.amax(1)

        def noise() -> None:
            # The latent draws both sides make: n0 + n float32 standard normals per latent dimension.
            torch.randn(n0 + n, pset.latent_dim)

        floors = {"read once": read_once, "class maxima": class_maxima, "noise": noise}
        return interleaved(ours, theirs, repeats, extra=floors, profile=False)
    # Each side's total is also compared with its own network forwards: ours are cheaper
    # where the generator reuses work (the frozen STN's folded linear maps).
    return interleaved(ours, theirs, repeats, extra={"bare ours": bare(cvae.generate), "bare theirs": bare(lambda z, x: their_generate(cvae, z, x))})


# ------------------------------------------------------------------ RTS
def their_rts(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    out = []
    for img in x:
        pil = Image.fromarray((img[0] * 255).byte().numpy(), mode="L")
        angle, scale = rng.uniform(-45, 45), rng.uniform(0.7, 1.3)
        w, h = pil.size
        cx, cy = w * 0.5, h * 0.5
        r = math.radians(angle)
        a, b = math.cos(r) / scale, math.sin(r) / scale
        c, d = -math.sin(r) / scale, math.cos(r) / scale
        matrix = (a, b, cx - a * cx - b * cy, c, d, cy - c * cx - d * cy)
        pil = pil.transform((w, h), Image.AFFINE, matrix, resample=Image.NEAREST, fillcolor=0)
        arr = np.pad(np.asarray(pil), 7)
        top, left = rng.integers(0, 15, size=2)
        arr = arr[top : top + 42, left : left + 42]
        out.append(torch.from_numpy(arr.astype(np.float32) / 255)[None])
    return torch.stack(out)


def rts_row(batch: int, repeats: int, reps_per_call: int = 10) -> dict[str, float]:
    x = torch.rand(batch, 1, 42, 42)
    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)

    def ours() -> None:
        for _ in range(reps_per_call):
            rts(x, generator=gen)

    def theirs() -> None:
        for _ in range(reps_per_call):
            their_rts(x, rng)

    t = interleaved(ours, theirs, repeats)
    return {k: v / (reps_per_call * batch) for k, v in t.items()}


# ------------------------------------------------------------------ main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and smaller n (about a minute or two)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--only", default="", help="comma-separated subset: train,quality,certify,segment,rts")
    parser.add_argument("--profile", action="store_true", help="also profile ours: the share of network kernels, and the ratio it bounds")
    args = parser.parse_args()
    keep_freed_memory()  # as the perturbsets command line does
    if args.profile:
        PROFILE["enabled"] = 1.0
    quick = args.quick
    reps = args.repeats or (3 if quick else 5)
    only = set(filter(None, args.only.split(",")))
    want = lambda key: not only or key in only  # noqa: E731

    print("perturbsets vs the authors' algorithms (interleaved, medians); ratio = theirs / ours")
    print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, os.cpu_count()={os.cpu_count()}, "
          f"torch {torch.__version__}, torch threads {torch.get_num_threads()}, python {platform.python_version()}")
    print("command: PYTHONPATH=. python " + " ".join(sys.argv))
    print()
    rows = []

    def show(label: str, unit: str, t: dict[str, float], scale: float) -> None:
        ratio = t["theirs"] / t["ours"]
        line = f"{label:<48} ours {t['ours'] * scale:10.3f} {unit}  theirs {t['theirs'] * scale:10.3f} {unit}  ratio {ratio:6.2f}x"
        if "bare ours" in t:
            line += (f"\n{'':<48} bare forwards ours {t['bare ours'] * scale:.3f}, theirs {t['bare theirs'] * scale:.3f} {unit}; "
                     f"ours total / own bare forwards {t['ours'] / t['bare ours']:.3f}")
        if "read once" in t:
            line += (f"\n{'':<48} floors: drawing the latent noise {t['noise'] * scale:.3f} {unit}, reading every logit once "
                     f"{t['read once'] * scale:.3f} {unit}, their maxima over the classes (amax) {t['class maxima'] * scale:.3f} {unit}; "
                     f"1/20 of theirs is {t['theirs'] * scale / 20:.3f} {unit}")
        if "share" in PROFILE:
            share = PROFILE.pop("share")
            line += (f"\n{'':<48} ours spends {share:.0%} of its time in convolution/GEMM/BatchNorm/grid-sample kernels: "
                     f"with nothing else left the ratio could reach at most {ratio / share:.2f}x")
        print(line, flush=True)
        rows.append((label, t))

    if want("train"):
        show("CVAE training cifar10_rectangle, batch 32", "s/step", training_row("cifar10_rectangle", "cifar10c-original-perturbed.yaml", 32, 2 if quick else 3, reps), 1)
        show("CVAE training mnist_stn, batch 128", "s/step", training_row("mnist_stn", "mnist-rts.yaml", 128, 3 if quick else 5, reps), 1)
    if want("quality"):
        batch = 16 if quick else 32
        show(f"quality eval mnist_stn (ours adds OAE), batch {batch}", "ms/pair", quality_row(batch, reps), 1e3)
    if want("certify"):
        n = 2000 if quick else 10_000
        show(f"certification mnist_stn + small CNN, n0=100 n={n}", "s/image", certify_row(False, n, 100, 1000, reps), 1)
        show("  overhead alone (networks replayed)", "ms/image", certify_row(False, n, 100, 1000, reps, replay=True), 1e3)
    if want("segment"):
        n = 200 if quick else 1000
        show(f"segmentation certification 125x187, K=36, n={n}", "s/image", certify_row(True, n, 100, 50, reps), 1)
        show("  overhead alone (networks replayed)", "ms/image", certify_row(True, n, 100, 50, reps, replay=True), 1e3)
    if want("rts"):
        show("RTS pair generation 42x42, batch 128", "ms/image", rts_row(128, reps), 1e3)


if __name__ == "__main__":
    main()
