"""Running a command on every rank of a launch: load this rank's part, agree that every rank
loaded, then the group's driver runs the command while its followers mirror its steps.

    torchrun --nproc-per-node 2 -m codegen complete "def f():" --tp 2

Every rank ends with the same exit: a rank that fails to load makes all of them raise the same
RankError (naming that rank and its reason); a driver that fails mid-command still releases its
followers; followers ignore SIGINT/SIGTERM (the driver handles them, e.g. the server's graceful
shutdown, and releases them at its end) and stop with an error if the driver goes away.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable

import torch.distributed as dist

from . import RankError, launched
from .group import Layout, agree, init, layout, shutdown

logger = logging.getLogger(__name__)


def local_threads() -> int:
    """Torch threads per rank when none are asked: this machine's cores shared by its ranks."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, (os.cpu_count() or 1) // max(1, local))


def _exit_on_term(signum, frame):
    raise SystemExit(128 + signum)


def run_ranks(load: Callable[[Layout], tuple], body: Callable, *, tp: int, device: str = "cpu",
              before: Callable[[], None] | None = None, after: Callable[[], int] | None = None,
              one_group: bool = False) -> int:
    """`load(layout)` -> (model, tokenizer) on every rank; `body(model, tokenizer, layout)` on each
    group's driver; `before()` on rank 0 before anything is loaded, `after()` on rank 0 once every
    group is done (its exit code is the command's). one_group: the command is not data-parallel
    (complete, serve): the launch must hold exactly one tensor-parallel group."""
    owner = layout() is None  # a caller that set up the groups itself keeps them
    lay = init(tp, device)
    try:
        if one_group and lay.dp_size != 1:
            raise ValueError(f"this command runs one model: start {tp} processes for --tp {tp}, not {lay.world}")
        error = None
        try:
            if before is not None and lay.rank == 0:
                before()
        except Exception as e:
            error = str(e)
        agree(error)  # rank 0's refusal (e.g. a mismatched resume) ends every rank before loading
        model = tokenizer = None
        try:
            model, tokenizer = load(lay)
        except Exception as e:
            logger.debug("rank %d: load failed", lay.rank, exc_info=True)
            error = f"{e}"
        agree(error)
        code = 0
        if lay.tp > 1:
            from .lockstep import attach, follow

            link = attach(model, lay)
            if not lay.is_driver:
                old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
                try:
                    follow(model, tokenizer, link)
                finally:
                    for s, h in old.items():
                        signal.signal(s, h)
            else:
                # SIGTERM ends the driver through its finally blocks (the server's graceful shutdown re-raises
                # it when done), so that its followers are released instead of losing it mid-wait.
                if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
                    signal.signal(signal.SIGTERM, _exit_on_term)
                try:
                    code = body(model, tokenizer, lay)
                finally:
                    link.close()
        else:
            code = body(model, tokenizer, lay)
        if after is not None:
            if lay.world > 1:
                dist.barrier()
            if lay.rank == 0:
                code = after()
        return code or 0
    finally:
        if owner:
            shutdown()


def run_model(load: Callable[[Layout | None], tuple], body: Callable, *, tp: int, device: str = "cpu",
              before: Callable[[], None] | None = None, after: Callable[[], int] | None = None,
              one_group: bool = False) -> int:
    """`run_ranks` under a launch or with tp > 1; in a plain single process the same steps without
    torch.distributed: before(), body(*load(None), None), after()."""
    if tp == 1 and not launched():
        if before is not None:
            before()
        code = body(*load(None), None)
        return after() if after is not None else code
    return run_ranks(load, body, tp=tp, device=device, before=before, after=after, one_group=one_group)


def launch(argv: list[str], ranks: int) -> int:
    """Start `ranks` processes of `codegen <argv>` on this machine with torchrun (its rendezvous on a
    free local port); their exit code."""
    import subprocess

    if ranks < 1:
        raise ValueError(f"--ranks must be >= 1, got {ranks}")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
           "-m", "codegen", *argv]
    logger.info("starting %d ranks: %s", ranks, " ".join(cmd))
    return subprocess.call(cmd)


__all__ = ["RankError", "launch", "layout", "local_threads", "run_model", "run_ranks"]
