"""Resumable sampling output, split over data-parallel ranks.

A run's samples are units of work in a fixed order (HumanEval: a task's chunk of samples; MTPB: a
problem's test case); rank r of d takes units r, r + d, r + 2d, ... and appends each unit's records
to its own part file (`samples.part<r>.jsonl`; the output file itself in a one-process run), flushed
and synced per unit. A rerun, with any number of ranks, reads every file first: a unit counts as
done when all its records are there (a killed rank's half-written unit is dropped and redone), so
nothing is lost or written twice. `merge` (rank 0, once every rank is done) writes the records in
unit order to the output file, one per (unit, index), and removes the parts. Samples depend only on
their unit's seed, never on which rank drew them: d ranks give one process's file.
"""

from __future__ import annotations

import glob
import json
import os
from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence

from .humaneval import read_jsonl

Ident = Callable[[dict], tuple[Hashable, int]]  # record -> (its unit's key, its index)


def _stem(out_file: str) -> str:
    return out_file[: -len(".jsonl")] if out_file.endswith(".jsonl") else out_file


def part_file(out_file: str, rank: int, size: int) -> str:
    return out_file if size == 1 else f"{_stem(out_file)}.part{rank}.jsonl"


def part_files(out_file: str) -> list[str]:
    stem = glob.escape(_stem(out_file))
    return sorted(f for f in glob.glob(stem + ".part*.jsonl") if f[len(_stem(out_file)) + 5:-6].isdigit())


def read_all(out_file: str) -> list[dict]:
    """The records of the output file and of every part file (torn last lines skipped)."""
    return [r for f in [out_file, *part_files(out_file)] if os.path.exists(f) for r in read_jsonl(f)]


def _write(path: str, records: list[dict]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)  # readers see the old file or the new one, never half of one


def pending(out_file: str, units: Sequence[tuple[Hashable, int]], ident: Ident, rank: int = 0, size: int = 1) -> list:
    """The units (key, records) of rank `rank` of `size` not yet complete in any file. This rank's
    own file keeps only complete units' records (and those of units not in this run)."""
    if not 0 <= rank < size:
        raise ValueError(f"rank {rank} outside [0, {size})")
    have: dict[Hashable, set[int]] = defaultdict(set)
    for r in read_all(out_file):
        key, index = ident(r)
        have[key].add(index)
    sizes = dict(units)
    complete = {key for key, n in units if len(have[key]) >= n}
    own = part_file(out_file, rank, size)
    if os.path.exists(own):
        records = read_jsonl(own)
        kept = [r for r in records if ident(r)[0] not in sizes or ident(r)[0] in complete]
        if len(kept) != len(records) or _torn(own):
            _write(own, kept)
    return [(key, n) for i, (key, n) in enumerate(units) if i % size == rank and key not in complete]


def _torn(path: str) -> bool:
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        if fh.tell() == 0:
            return False
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) != b"\n"


def merge(out_file: str, units: Sequence[tuple[Hashable, int]], ident: Ident) -> list[dict]:
    """Every file's records, one per (unit, index), in unit then index order (units not in this run
    after them, as found), written to `out_file`; the part files removed. The records."""
    order = {key: i for i, (key, _) in enumerate(units)}
    seen: dict[tuple, dict] = {}
    for r in read_all(out_file):
        key, index = ident(r)
        seen.setdefault((key, index), r)
    records = [r for _, r in sorted(seen.items(), key=lambda kv: (order.get(kv[0][0], len(order)), kv[0][1]) if kv[0][0] in order
                                    else (len(order), 0))]
    _write(out_file, records)
    for f in part_files(out_file):
        os.unlink(f)
    return records
