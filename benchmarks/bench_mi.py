"""Multi-Illumination: training memory of ``mi_unet`` per MIP level, and per-pixel certification cost.

Run on demand (not part of the tests): ``python benchmarks/bench_mi.py [--device cpu|cuda] [--skip-cert]``.

1. Activation memory of one training step (forward + loss, the tensors autograd keeps for
   the backward pass) at the paper's batch sizes: 64 at MIP5, 32 at MIP4, 16 at MIP3.
   Computed on the ``meta`` device, so the shapes are exact and nothing is allocated;
   tensors shared by in-place ReLUs are counted twice, so the figures are upper bounds.
   bf16 is the model cast to bfloat16, an estimate of mixed precision (autocast keeps a
   few reductions in float32). On CUDA the peak of a real step is measured too.
2. Loading: training pairs per second from scene folders (two JPEG decodes per pair) and
   from the numpy batch files ``perturbsets data make-mi-arrays`` writes.
3. Per-pixel certification of one MIP5 image (36 classes, 125×187 pixels): the full-size
   generator and segmentation U-Net per noise draw, the generator with its encoder half run
   once per image (as the library does) against once per draw, and the vectorised per-pixel
   Clopper–Pearson bounds against a per-pixel loop of ``scipy.stats.binomtest`` calls
   (what the authors' code did, defect 37).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from perturbsets import PerturbationSet
from perturbsets.datasets.multi_illumination.arrays import mip_shape
from perturbsets.classifiers.architectures import build_classifier
from perturbsets.cvae.registry import build_cvae
from perturbsets.certify.smoothed import SmoothedClassifier
from perturbsets.certify.statistics import clopper_pearson_lower

PAPER_BATCH = {5: 64, 4: 32, 3: 16}
GIB = 2**30


def saved_activation_bytes(mip: int, batch: int, dtype: torch.dtype, checkpoint: bool) -> int:
    h, w = mip_shape(mip)
    with torch.device("meta"):
        model = build_cvae("mi_unet", input_shape=(3, h, w), checkpoint=checkpoint).to(dtype).train()
        x = torch.empty(batch, 3, h, w, dtype=dtype)
        noise = torch.empty(batch, 256, dtype=dtype)
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.loss(model(x, x, noise), x, 1.0).total
    return total


def cuda_peak(mip: int, batch: int, checkpoint: bool) -> float:
    h, w = mip_shape(mip)
    model = build_cvae("mi_unet", input_shape=(3, h, w), checkpoint=checkpoint).cuda().train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.rand(batch, 3, h, w, device="cuda")
    torch.cuda.reset_peak_memory_stats()
    for _ in range(2):  # the second step includes Adam's state
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model.loss(model(x, x), x, 1.0).total
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / GIB
    del model, opt, x, loss
    torch.cuda.empty_cache()
    return peak


def memory_table(device: torch.device) -> None:
    params = 258_066_597
    fixed = params * 4 * 4 / GIB  # weights, gradients, Adam's two moments (float32)
    print(f"weights + gradients + Adam state: {fixed:.1f} GiB")
    print("| MIP | batch | fp32 | bf16 | bf16 + checkpointing | measured peak (CUDA, bf16 autocast) |")
    print("|---|---|---|---|---|---|")
    for mip, batch in PAPER_BATCH.items():
        cells = [
            saved_activation_bytes(mip, batch, torch.float32, False) / GIB,
            saved_activation_bytes(mip, batch, torch.bfloat16, False) / GIB,
            saved_activation_bytes(mip, batch, torch.bfloat16, True) / GIB,
        ]
        peak = "–"
        if device.type == "cuda":
            try:
                peak = f"{cuda_peak(mip, batch, checkpoint=mip == 3):.1f} GiB"
            except torch.cuda.OutOfMemoryError:
                peak = "out of memory"
        print(f"| {mip} | {batch} | " + " | ".join(f"{c:.1f} GiB" for c in cells) + f" | {peak} |")


def generator_reuse(pset: PerturbationSet, x: torch.Tensor, draws: int) -> None:
    """The generator's draws for one image: its U-Net encoder run once per image (the conditioned
    view's context) against once per draw (the generator called on x for every z)."""
    u = torch.randn(1, draws, pset.latent_dim, device=x.device)

    def once() -> None:
        pset.condition(x).decode_draws(u)

    def per_draw() -> None:
        cond = pset.condition(x)
        z = cond.prior.mean + u[0] * cond.prior.std
        pset.cvae.generator(z, x.expand(draws, *x.shape[1:]))

    times = {}
    with torch.no_grad():
        for name, fn in (("per draw", per_draw), ("once", once)):
            fn()
            if x.device.type == "cuda":
                torch.cuda.synchronize()
            began = time.perf_counter()
            fn()
            if x.device.type == "cuda":
                torch.cuda.synchronize()
            times[name] = (time.perf_counter() - began) / draws
    print(
        f"generator per draw at MIP5, {draws} draws: encoder half per draw {1000 * times['per draw']:.1f} ms, "
        f"once per image {1000 * times['once']:.1f} ms ({times['per draw'] / times['once']:.2f}x)"
    )


def certification(device: torch.device, draws: int) -> None:
    h, w = mip_shape(5)
    torch.manual_seed(0)
    cvae = build_cvae("mi_unet").to(device).eval()
    pset = PerturbationSet(cvae, 17.0, architecture="mi_unet")
    unet = build_classifier("unet").to(device).eval()
    smoothed = SmoothedClassifier(unet, pset, 6.9, 36)
    x = torch.rand(1, 3, h, w, device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    smoothed.sample_counts(x, 2, 2, gen)
    if device.type == "cuda":
        torch.cuda.synchronize()
    began = time.perf_counter()
    counts = smoothed.sample_counts(x, draws, min(draws, 100), gen)
    if device.type == "cuda":
        torch.cuda.synchronize()
    per_draw = (time.perf_counter() - began) / draws
    print(f"generator + U-Net per noise draw at MIP5: {1000 * per_draw:.1f} ms -> n0 + n = 1,100 draws: {1100 * per_draw:.1f} s per image")
    assert int(counts.sum()) == draws * h * w
    generator_reuse(pset, x, min(draws, 16))

    rng = np.random.default_rng(0)
    n = 1000
    n_a = rng.integers(400, n + 1, (h, w))
    began = time.perf_counter()
    clopper_pearson_lower(n_a, n, 0.001)
    vectorised = time.perf_counter() - began
    sample = 500
    began = time.perf_counter()
    for k in n_a.reshape(-1)[:sample]:
        stats.binomtest(int(k), n).proportion_ci(0.998, method="exact")
    loop = (time.perf_counter() - began) / sample * h * w
    print(
        f"per-pixel lower bounds for {h * w} pixels (n = {n}): vectorised {1000 * vectorised:.1f} ms, "
        f"per-pixel loop {loop:.1f} s (extrapolated from {sample} pixels), ratio {loop / vectorised:.0f}x"
    )


def loading(batches: int = 10, batch_size: int = 64) -> None:
    """Training batches per second from scene folders (JPEG decoding) and from the numpy batch files."""
    import tempfile

    from perturbsets.datasets.multi_illumination.loader import load_multi_illumination, write_numpy_batches
    from perturbsets.datasets.tiny import write_tiny_multi_illumination
    from perturbsets.pairs.augment import JointCropFlip

    with tempfile.TemporaryDirectory() as tmp:
        scenes = write_tiny_multi_illumination(Path(tmp) / "scenes", np.random.default_rng(0), mip=5, scenes={"train": 40})
        write_numpy_batches(scenes, Path(tmp) / "arrays", 5, splits=["train"], check_size=False)
        rates = {}
        for layout, root in (("scenes", scenes), ("numpy", Path(tmp) / "arrays")):
            data = load_multi_illumination(root, "train", 5, layout=layout, check_size=False, augment=JointCropFlip(10, (125, 187)))
            began = time.perf_counter()
            for epoch in range(batches):
                next(data.batches(batch_size, shuffle=True, seed=0, epoch=epoch))
            rates[layout] = batches * batch_size / (time.perf_counter() - began)
    print(
        f"MIP5 training pairs per second (batch {batch_size}, crop/flip on): scene folders {rates['scenes']:.0f}, "
        f"numpy batches {rates['numpy']:.0f} ({rates['numpy'] / rates['scenes']:.1f}x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--draws", type=int, default=8, help="noise draws timed for certification")
    parser.add_argument("--skip-cert", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, {device} ({name}), {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    memory_table(device)
    loading()
    if not args.skip_cert:
        certification(device, args.draws)
    print(f"(an 80 GB GPU holds {80e9 / GIB:.1f} GiB)")


if __name__ == "__main__":
    main()
