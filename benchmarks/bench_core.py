"""Throughput of the core pipeline: CVAE training, quality evaluation, RTS pair generation.

Run on demand (not part of the tests): ``python benchmarks/bench_core.py [--device cpu]``.
Prints the machine and settings with every figure so runs can be compared.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from perturbsets import PerturbationSet
from perturbsets.cvae.registry import build_cvae
from perturbsets.perturbations import RTS, linf_noise
from perturbsets.core.quality import approximation_errors


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, repeats: int) -> float:
    """Median seconds of ``repeats`` calls after one warm-up call."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - began)
    return sorted(times)[len(times) // 2]


def bench_training(name: str, batch: int, device: torch.device, repeats: int) -> float:
    cvae = build_cvae(name).to(device).train()
    opt = torch.optim.Adam(cvae.parameters(), lr=1e-4)
    x = torch.rand(batch, *cvae.input_shape, device=device)
    x_tilde = torch.rand_like(x)

    def step() -> None:
        loss = cvae.loss(cvae(x, x_tilde), x_tilde, beta=1.0)
        opt.zero_grad()
        loss.total.backward()
        opt.step()

    return batch / timed(step, device, repeats)


def bench_quality(name: str, batch: int, steps: int, device: torch.device, repeats: int) -> float:
    pset = PerturbationSet(build_cvae(name), radius=10.0).to(device)
    x = torch.rand(batch, *pset.input_shape, device=device)
    x_tilde = torch.rand_like(x)
    return batch / timed(lambda: approximation_errors(pset, x, x_tilde, steps=steps), device, repeats)


def bench_rts(batch: int, device: torch.device, repeats: int) -> float:
    x = torch.rand(batch, 1, 42, 42, device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    rts = RTS()
    return batch / timed(lambda: rts(x, gen), device, repeats)


def bench_linf(batch: int, device: torch.device, repeats: int) -> float:
    x = torch.rand(batch, 1, 28, 28, device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    return batch / timed(lambda: linf_noise(x, 0.3, gen), device, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--pgd-steps", type=int, default=50)
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(
        f"machine: {name}; {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads); "
        f"device {device}; batch {args.batch}; median of {args.repeats}"
    )
    print(f"{'what':<42} {'pairs/s':>12}")
    for arch in ("mnist_fc", "mnist_conv", "mnist_stn"):
        print(f"{'CVAE training step, ' + arch:<42} {bench_training(arch, args.batch, device, args.repeats):>12.0f}")
    for arch in ("mnist_fc", "mnist_conv", "mnist_stn"):
        rate = bench_quality(arch, args.batch, args.pgd_steps, device, max(1, args.repeats // 2))
        print(f"{f'quality metrics ({args.pgd_steps}-step PGD ×2), ' + arch:<42} {rate:>12.1f}")
    rts_rate = bench_rts(args.batch * 8, device, args.repeats)
    linf_rate = bench_linf(args.batch * 8, device, args.repeats)
    print(f"{'RTS pair generation':<42} {rts_rate:>12.0f}")
    print(f"{'ℓ∞ pair generation':<42} {linf_rate:>12.0f}")
    stn_train = bench_training("mnist_stn", args.batch, device, args.repeats)
    print(f"ratio RTS generation / mnist_stn training: {rts_rate / stn_train:.0f}× (pair generation is never the bottleneck)")


if __name__ == "__main__":
    main()
