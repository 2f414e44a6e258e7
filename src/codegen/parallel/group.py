"""The processes of a multi-process run: torch.distributed's groups, set up once from torchrun's
environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT).

`world = dp * tp` ranks form `dp` tensor-parallel groups of `tp` consecutive ranks: group g holds
ranks [g * tp, (g + 1) * tp); its first rank (`tp_rank == 0`) is the one that speaks to the user,
serves HTTP or writes an evaluation shard, the others follow it. Collectives of the network run on
the group's `tp_group` (gloo on CPU, NCCL on GPU); the driver's commands go over `ctrl`, a gloo group
of the same ranks (pickled objects travel on CPU tensors whatever the device).
"""

from __future__ import annotations

import atexit
import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from . import RankError, launched

logger = logging.getLogger(__name__)

# An idle server's followers wait for the next command this long before their wait fails (the
# driver also sends a keep-alive, see lockstep.KEEPALIVE_S); a rank that dies is noticed at once.
TIMEOUT_S = int(os.environ.get("CODEGEN_DIST_TIMEOUT", str(24 * 3600)))


@dataclass(frozen=True)
class Layout:
    rank: int  # global rank
    world: int
    tp: int  # ranks per tensor-parallel group
    device: torch.device
    tp_group: object = None  # the network's collectives (None when tp == 1)
    ctrl: object = None  # the driver's commands (gloo; None when tp == 1)

    @property
    def tp_rank(self) -> int:
        return self.rank % self.tp

    @property
    def dp_rank(self) -> int:
        return self.rank // self.tp

    @property
    def dp_size(self) -> int:
        return self.world // self.tp

    @property
    def driver(self) -> int:
        """The global rank of this group's first rank."""
        return self.dp_rank * self.tp

    @property
    def is_driver(self) -> bool:
        return self.tp_rank == 0


_LAYOUT: Layout | None = None


def layout() -> Layout | None:
    """The layout set up by `init`, or None in a single-process run."""
    return _LAYOUT


def init(tp: int = 1, device: str = "cpu") -> Layout:
    """Join the run torchrun started (once per process) with `tp` ranks per tensor-parallel group.
    ValueError naming the mismatch when the launch cannot hold that split."""
    global _LAYOUT
    if not isinstance(tp, int) or tp < 1:
        raise ValueError(f"--tp must be an integer >= 1, got {tp!r}")
    if _LAYOUT is not None:
        if _LAYOUT.tp != tp:
            raise ValueError(f"this process already runs with --tp {_LAYOUT.tp}")
        return _LAYOUT
    if not launched():
        if tp > 1:
            raise ValueError(f"--tp {tp} needs {tp} processes: start the command with "
                             f"`torchrun --nproc-per-node {tp} -m codegen ...`")
        _LAYOUT = Layout(0, 1, 1, torch.device(device))
        return _LAYOUT
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if world % tp:
        raise ValueError(f"--tp {tp} does not divide the {world} processes torchrun started")
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=TIMEOUT_S))
        # A process that ends with the group alive aborts (SIGABRT, "terminate called without an active
        # exception"): gloo's worker threads outlive the interpreter's teardown. Destroy it while Python
        # still runs; a no-op when the caller already shut down.
        atexit.register(shutdown)
    tp_group = ctrl = None
    for g in range(world // tp):  # every rank creates every group, in the same order (torch's rule)
        ranks = list(range(g * tp, (g + 1) * tp))
        group = dist.new_group(ranks, backend=backend) if tp > 1 else None
        control = (group if backend == "gloo" else dist.new_group(ranks, backend="gloo")) if tp > 1 else None
        if rank in ranks:
            tp_group, ctrl = group, control
    _LAYOUT = Layout(rank, world, tp, dev, tp_group, ctrl)
    logger.info("rank %d of %d: tensor-parallel rank %d of %d, data-parallel rank %d of %d (%s)",
                rank, world, _LAYOUT.tp_rank, tp, _LAYOUT.dp_rank, _LAYOUT.dp_size, backend)
    return _LAYOUT


def agree(error: str | None) -> None:
    """Every rank says whether its part went well; all raise the first failure's reason, naming its
    rank, when any failed (so one rank's bad file ends every rank with the same message)."""
    if _LAYOUT is None or _LAYOUT.world == 1:
        if error:
            raise RuntimeError(error)
        return
    said: list = [None] * _LAYOUT.world
    dist.all_gather_object(said, error)
    failed = [(r, e) for r, e in enumerate(said) if e]
    if failed:
        r, e = failed[0]
        raise RankError(f"rank {r} of {_LAYOUT.world}: {e}")


def shutdown() -> None:
    global _LAYOUT
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _LAYOUT = None
