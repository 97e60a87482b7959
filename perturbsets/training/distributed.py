"""Data parallelism under ``torchrun``: one process per device, each training on its rows of every global batch.

Every rank reads the same seeded global batch and draws the randomness of the *whole*
batch (reparameterisation noise, latent samples) from the same generator, then keeps its
contiguous slice of rows (:class:`StepDraws`). After the backward pass the gradients are
averaged over the ranks with one all-reduce of the flattened gradients, each rank's loss
weighted so the average is the gradient of the single-process loss. A K-process run thus
sees exactly the single-process epoch — the config's batch size is the *global* batch and
no draw depends on K — up to the summation order of the all-reduce.

We average gradients ourselves instead of wrapping the model in DistributedDataParallel:
attacks and the CVAE's own methods (``loss``, ``generate``) call the plain module, which a
wrapper would have to be threaded through; the price is that communication does not
overlap the backward pass. Backends: NCCL on CUDA, gloo on CPU. On CUDA, BatchNorm layers
become SyncBatchNorm (statistics of the global batch, as one process computes them); gloo
has no SyncBatchNorm, so on CPU each rank normalises with its own rows — equal to one
process only for models without BatchNorm. Without ``torchrun`` (no ``WORLD_SIZE`` in the
environment) everything here is the identity.

After training every rank evaluates: :class:`World` is a
:class:`~perturbsets._util.sharding.BatchShard`, and :func:`share_weights` first gives
every rank rank 0's weights and BatchNorm statistics.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Callable, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from perturbsets._util.sharding import BatchShard
from perturbsets.pairs.batch import PairBatch

T = TypeVar("T")

__all__ = [
    "StepDraws",
    "World",
    "average_gradients",
    "from_main",
    "init_distributed",
    "is_main_process",
    "local_rows",
    "share_weights",
    "sum_over_ranks",
    "synchronize",
]


def is_main_process() -> bool:
    """Rank 0 of a ``torchrun`` launch (or the only process): the one that writes files and holds locks."""
    return int(os.environ.get("RANK", "0")) == 0


@dataclass(frozen=True)
class World(BatchShard):
    """This process's place among the data-parallel processes; as a :class:`BatchShard`, its share of an evaluation."""

    def check_batch_size(self, batch_size: int) -> None:
        if batch_size % self.size:
            raise ValueError(
                f"training.batch_size {batch_size} (the global batch) does not divide over {self.size} processes; "
                f"choose a multiple of {self.size} or another number of processes"
            )

    def rows(self, total: int) -> slice:
        """This rank's contiguous rows of a global batch of ``total`` rows (a short last batch splits unevenly)."""
        bounds = [total * r // self.size for r in range(self.size + 1)]
        return slice(bounds[self.rank], bounds[self.rank + 1])


def init_distributed(device: torch.device) -> World:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE`` > 1), once; otherwise the single process.

    On CUDA each process takes the GPU ``LOCAL_RANK``. Multi-node runs are the same call:
    start ``torchrun --nnodes N --node_rank R --rdzv_backend c10d --rdzv_endpoint HOST:PORT
    --nproc_per_node K -m perturbsets train …`` on every node.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return World()
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return World(dist.get_rank(), dist.get_world_size())


def prepare_model(model: nn.Module, world: World, device: torch.device) -> None:
    """Make every rank start from rank 0's weights, with SyncBatchNorm on CUDA (in place)."""
    if world.size == 1:
        return
    if device.type == "cuda":
        for name, child in list(model.named_children()):
            setattr(model, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
    share_weights(model, world)


def share_weights(model: nn.Module, world: World) -> None:
    """Copy rank 0's parameters and buffers to every rank (in place).

    Before a split evaluation: on CPU each rank's BatchNorm statistics are its own rows',
    so without this the ranks would evaluate different models.
    """
    if world.size == 1:
        return
    for tensor in [*model.parameters(), *model.buffers()]:
        dist.broadcast(tensor.data, src=0)


def from_main(value: T, world: World) -> T:
    """Rank 0's ``value`` on every rank (a picklable object, e.g. a result every rank must agree on bitwise)."""
    if world.size == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@dataclass(frozen=True)
class StepDraws:
    """The randomness of one training step: drawn for the whole global batch, sliced to this rank's rows.

    ``generator`` is the step's generator (seeded by (seed, epoch)); ``rows`` and ``total``
    locate the rank's rows in the global batch (``None``: this process trains on the whole batch).
    """

    generator: torch.Generator
    rows: slice | None = None
    total: int | None = None

    def per_example(self, draw: Callable[[int], Tensor], local: int) -> Tensor:
        """``draw(n)`` returns n rows of draws; the rows of this rank's ``local`` examples."""
        if self.rows is None or self.total is None:
            return draw(local)
        return draw(self.total)[self.rows]


def local_rows(batch: PairBatch, rows: slice) -> PairBatch:
    """The rows ``rows`` of a global batch."""
    pick: Callable[[Tensor | None], Tensor | None] = lambda t: None if t is None else t[rows]  # noqa: E731
    return replace(batch, x=batch.x[rows], x_tilde=batch.x_tilde[rows], y=pick(batch.y), index=pick(batch.index))


def average_gradients(model: nn.Module, world: World) -> None:
    """Sum each parameter's gradient over the ranks (one all-reduce; the losses are pre-weighted)."""
    if world.size == 1:
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def sum_over_ranks(values: dict[str, float], world: World) -> dict[str, float]:
    """The per-key sums of ``values`` over the ranks (the epoch's logged totals)."""
    if world.size == 1 or not values:
        return values
    keys = sorted(values)
    flat = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(flat)
    return dict(zip(keys, flat.tolist()))


def synchronize() -> None:
    """Wait for every rank (e.g. for rank 0 to save a set the next stage reads); nothing for one process."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
