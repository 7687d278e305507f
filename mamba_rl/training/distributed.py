"""One run on several processes: torchrun, ``torch.distributed`` and ``DistributedDataParallel``.

    torchrun --nproc_per_node N train.py --config configs/h1000_gpu.yaml --run-dir runs/h1000_n4

torchrun starts ``N`` copies of ``train.py`` and sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``
(and the rendezvous address) in each; :func:`init_from_torchrun` reads them, joins the process
group (NCCL on CUDA, gloo on the CPU) and returns the :class:`Ranks` the trainer takes. A process
started without them is rank 0 of 1: the trainer then runs no collective at all.

How the work is split (docs/DISTRIBUTED.md has the commands and the resume rules):

- each rank steps its own ``num_envs`` environments (``num_envs`` is per rank: the global batch
  is ``world_size * num_envs``), seeded by :func:`rank_seed`;
- DDP averages the gradients over the ranks in every minibatch, and the loss's normalisers (the
  policy-weight sum, the advantage mean and std) are sums over every rank, so that a minibatch's
  gradient is that of the whole global minibatch;
- the logged statistics and every decision to stop are the same on every rank (reduced over
  them), so that no rank leaves the loop while the others wait in a collective;
- rank 0 alone writes the run directory; the other ranks send it their states for checkpoints.
"""

from __future__ import annotations

import os
import pickle
import warnings
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist

from mamba_rl.envs.delayed_memory import mix32

__all__ = ["Ranks", "init_from_torchrun", "launched_by_torchrun", "rank_seed", "rank_device", "TORCHRUN_VARS"]

# the variables torchrun sets in every process it starts
TORCHRUN_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK")


def launched_by_torchrun() -> bool:
    """Whether this process was started by torchrun (``torch.distributed.run``)."""
    return all(name in os.environ for name in TORCHRUN_VARS)


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s environments and action sampling in a run seeded ``seed``: ``seed``
    itself on rank 0 (a run on one process is the run on one rank), a 31-bit hash of ``(seed, rank)``
    on the others, so that the ranks of one run, and those of runs with nearby seeds, draw apart."""
    if rank == 0:
        return int(seed)
    return mix32(mix32(int(seed) & 0xFFFFFFFF) ^ mix32(int(rank) ^ 0x52414E4B)) & 0x7FFFFFFF


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run, and the collectives the trainer uses.

    With ``world_size == 1`` every method returns its input (no collective runs, whether or not a
    process group exists), so that a run on one process computes what it always computes.

    Attributes:
        rank: this process's rank, ``0 .. world_size - 1``.
        world_size: the number of processes.
        local_rank: the rank on this host (the CUDA device index on GPUs).
        launched: a process group is up (started by torchrun); the trainer wraps the policy in DDP.
        device: where the collectives' tensors live (``cuda:local_rank`` with NCCL, else the CPU).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launched: bool = False
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        """Rank 0: the rank that prints and writes the run directory."""
        return self.rank == 0

    def share(self, count: int) -> tuple[int, int]:
        """``[first, last)``: this rank's contiguous block of ``count`` items split over the ranks
        (the first ``count % world_size`` ranks take one more)."""
        base, extra = divmod(count, self.world_size)
        first = self.rank * base + min(self.rank, extra)
        return first, first + base + (self.rank < extra)

    def sum(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each 0-d tensor summed over the ranks (one collective, in float64, each result back in
        its own dtype); the inputs themselves with one rank."""
        if self.world_size == 1:
            return list(tensors)
        packed = torch.stack([t.detach().to(self.device, torch.float64) for t in tensors])
        dist.all_reduce(packed)
        return [value.to(t.device, t.dtype) for value, t in zip(packed, tensors)]

    def mean(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each 0-d tensor averaged over the ranks."""
        if self.world_size == 1:
            return list(tensors)
        return [t / self.world_size for t in self.sum(tensors)]

    def any(self, flags: list[bool]) -> list[bool]:
        """Each flag, True where it is True on any rank."""
        if self.world_size == 1:
            return list(flags)
        packed = torch.tensor([int(f) for f in flags], dtype=torch.int64, device=self.device)
        dist.all_reduce(packed, op=dist.ReduceOp.MAX)
        return [bool(v) for v in packed.tolist()]

    def gather(self, obj) -> list | None:
        """Every rank's ``obj`` (picklable; CPU tensors) on rank 0, in rank order; None elsewhere."""
        if self.world_size == 1:
            return [obj]
        out = [None] * self.world_size if self.main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def all_gather(self, obj) -> list:
        """Every rank's ``obj`` on every rank, in rank order."""
        if self.world_size == 1:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def scatter(self, objs: list | None):
        """Rank ``r`` receives ``objs[r]`` (``objs`` is read on rank 0 only)."""
        if self.world_size == 1:
            return objs[0]
        out = [None]
        dist.scatter_object_list(out, objs if self.main else None, src=0)
        return out[0]

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank."""
        if self.world_size == 1:
            return obj
        box = [obj if self.main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def on_main(self, fn):
        """``fn()`` run on rank 0, its result on every rank. An exception it raises is raised on
        every rank (the original on rank 0, a copy elsewhere), so that a failed check on rank 0
        stops the whole run at once instead of leaving the others waiting in a collective."""
        if self.world_size == 1:
            return fn()
        outcome, error = None, None
        if self.main:
            try:
                outcome = ("ok", fn())
            except Exception as err:
                error = err
                outcome = ("error", _picklable(err))
        outcome = self.broadcast(outcome)
        if outcome[0] == "error":
            if error is not None:
                raise error
            copy = outcome[1]
            # the command line prints such an error once, on rank 0
            copy.from_rank_0 = True
            raise copy
        return outcome[1]


def _picklable(err: Exception) -> Exception:
    try:
        return pickle.loads(pickle.dumps(err))
    except Exception:
        return RuntimeError(f"rank 0 failed: {type(err).__name__}: {err}")


def rank_device(device: torch.device, ranks: Ranks) -> torch.device:
    """The device of this rank: ``cuda:local_rank`` when ``device`` is CUDA and the run has several
    ranks (one GPU per process), else ``device``."""
    if ranks.world_size > 1 and device.type == "cuda":
        return torch.device("cuda", ranks.local_rank)
    return device


def init_from_torchrun(device: str, timeout_s: float) -> Ranks:
    """Join torchrun's process group and return this process's :class:`Ranks`; ``Ranks()`` (rank 0
    of 1, no process group) when torchrun did not start this process.

    Args:
        device: the config's ``device``: NCCL when it names CUDA (or ``"auto"`` finds CUDA), with
            one GPU per process (``cuda:LOCAL_RANK``); gloo on the CPU.
        timeout_s: how long a collective waits for the other ranks before it fails (a rank that
            died or hangs then stops the run instead of holding every other rank forever).

    Raises:
        ValueError: ``device`` names one GPU (``cuda:N``) while torchrun starts several processes,
            or there are fewer GPUs on this host than processes.
    """
    if not launched_by_torchrun():
        return Ranks()
    rank, world_size, local_rank = (int(os.environ[name]) for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    cuda = device != "cpu" and torch.cuda.is_available()
    if cuda:
        if device.startswith("cuda:") and world_size > 1:
            raise ValueError(
                f"device={device!r} names one GPU, but torchrun starts {world_size} processes, each on its own GPU "
                "(cuda:LOCAL_RANK); use device=cuda"
            )
        if local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK={local_rank} but this host has {torch.cuda.device_count()} CUDA device(s); start at "
                "most one process per GPU (torchrun --nproc_per_node)"
            )
        torch.cuda.set_device(local_rank)
    if (
        rank == 0
        and int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0
        and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    ):
        warnings.warn(
            "torchrun --max-restarts shares its rendezvous store with the workers: restarted workers may read the "
            "previous attempt's addresses there and fail to connect. Start torchrun with "
            "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 (docs/DISTRIBUTED.md)"
        )
    collective_device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout_s))
    return Ranks(rank, world_size, local_rank, launched=True, device=collective_device)
