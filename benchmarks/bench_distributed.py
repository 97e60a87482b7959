"""Data-parallel CVAE training throughput: 1 vs 2 processes on CPU (gloo), and 1 GPU bf16 vs fp32.

Run on demand (not part of the tests)::

    python benchmarks/bench_distributed.py [--arch mnist_conv] [--pairs 1024] [--batch 128]

Each configuration trains one epoch of ``--pairs`` real MNIST ℓ∞ pairs (the embedded
digits) from scratch and reports the epoch's training throughput (pairs/s, the
``pairs_per_second`` of ``history.json``: all processes' pairs over the epoch's wall time,
validation included). The 2-process run splits every global batch over two gloo processes
with one torch thread each; the 1-process baseline is measured with 1 and with 2 threads,
so the comparison uses the same two cores. The GPU rows run only where CUDA is available.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from perturbsets.config.learn import Config, DataConfig, ModelConfig, Schedule, TrainingConfig
from perturbsets.training.cvae import train_cvae
from perturbsets.workflows.sources import load_splits


def config(arch: str, pairs: int, batch: int, device: str, amp: bool = False) -> Config:
    return Config(
        name="bench",
        seed=0,
        data=DataConfig(
            source="mnist5k",
            canvas=42 if arch == "mnist_stn" else 28,
            perturbation={"name": "linf", "epsilon": 0.3},
            split={"train": pairs, "val": batch, "test": batch},
        ),
        model=ModelConfig(architecture=arch),
        training=TrainingConfig(
            epochs=1, batch_size=batch, lr=Schedule([0, 1], [1e-3, 1e-3]), beta=Schedule([0, 1], [1e-3, 1e-3]),
            device=device, amp=amp,
        ),
    )


def throughput(out: Path) -> float:
    return json.loads((out / "history.json").read_text())[-1]["pairs_per_second"]


def single(cfg: Config, threads: int) -> float:
    torch.set_num_threads(threads)
    out = Path(tempfile.mkdtemp()) / "run"
    train_cvae(cfg, load_splits(cfg.data, cfg.seed), out, progress=False)
    return throughput(out)


def _rank(rank: int, world: int, port: int, cfg: Config, out: str) -> None:
    os.environ.update(
        {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    )
    torch.set_num_threads(1)
    try:
        train_cvae(cfg, load_splits(cfg.data, cfg.seed), out, progress=False)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def parallel(cfg: Config, world: int) -> float:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = Path(tempfile.mkdtemp()) / "run"
    mp.spawn(_rank, args=(world, port, cfg, str(out)), nprocs=world, join=True)
    return throughput(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="mnist_conv")
    parser.add_argument("--pairs", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    print(f"command: python {' '.join(sys.argv)}; torch {torch.__version__}, os.cpu_count()={os.cpu_count()}")
    cpu = config(args.arch, args.pairs, args.batch, "cpu")
    rows = {
        "1 process, 1 thread (CPU)": single(cpu, 1),
        "1 process, 2 threads (CPU)": single(cpu, 2),
        "2 processes x 1 thread (CPU, gloo)": parallel(cpu, 2),
    }
    if torch.cuda.is_available():
        rows["1 GPU fp32"] = single(config(args.arch, args.pairs, args.batch, "cuda"), 1)
        rows["1 GPU bf16 autocast"] = single(config(args.arch, args.pairs, args.batch, "cuda", amp=True), 1)
    base = rows["1 process, 1 thread (CPU)"]
    for name, value in rows.items():
        print(f"{name:<40} {value:10.1f} pairs/s   {value / base:5.2f}x")


if __name__ == "__main__":
    main()
