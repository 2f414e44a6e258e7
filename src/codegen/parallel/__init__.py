"""Runs past one process: tensor parallelism over torch.distributed (each rank holds a slice of
every block), the lockstep engine that keeps a group's ranks on the same decode steps, and
data-parallel evaluation. See `group` (process groups), `shard` (which slice a rank holds),
`load` (reading only those slices), `lockstep` (the driver and its followers)."""

import os


def launched() -> bool:
    """Whether this process is one rank of a torchrun (or torch.distributed) launch. (Here, without
    torch, so that the command line can ask it before importing anything heavy.)"""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


class RankError(RuntimeError):
    """A rank of a multi-process run failed or lost its peers; the message names the rank and why.
    (Here, not in `group`, so that the command line can catch it without importing torch.)"""
