"""Resumable, data-parallel sampling output (codegen.eval.shards): which units a rank still owes,
what survives a killed writer, and the merge into one file."""

from __future__ import annotations

import json
import os

from codegen.eval import humaneval, shards

UNITS = [(("A", 0), 2), (("A", 2), 2), (("B", 0), 2), (("B", 2), 1)]  # task chunks of 2, n = 3 or 4


def ident(r):
    return (r["task"], r["index"] - r["index"] % 2), r["index"]


def rec(task, index):
    return {"task": task, "index": index, "text": f"{task}{index}"}


def write(path, records, torn=False):
    with open(path, "a") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")
        if torn:
            fh.write('{"task": "B", "ind')


def test_ranks_take_every_other_unit_and_skip_the_complete_ones(tmp_path):
    out = str(tmp_path / "samples.jsonl")
    assert shards.pending(out, UNITS, ident, 0, 2) == [UNITS[0], UNITS[2]]
    assert shards.pending(out, UNITS, ident, 1, 2) == [UNITS[1], UNITS[3]]
    write(shards.part_file(out, 1, 2), [rec("A", 2), rec("A", 3), rec("B", 2)])
    assert shards.pending(out, UNITS, ident, 1, 2) == []
    # a different rank count later reads every part: rank 0 of 1 owes only rank 0's old units
    assert shards.pending(out, UNITS, ident, 0, 1) == [UNITS[0], UNITS[2]]


def test_a_killed_writers_half_unit_and_torn_line_are_dropped_and_redone(tmp_path):
    out = str(tmp_path / "samples.jsonl")
    part = shards.part_file(out, 0, 2)
    write(part, [rec("A", 0), rec("A", 1), rec("B", 0)], torn=True)  # killed inside unit (B, 0)
    assert shards.pending(out, UNITS, ident, 0, 2) == [UNITS[2]]
    assert [json.loads(line)["index"] for line in open(part)] == [0, 1]  # its own file: complete units only
    write(part, [rec("B", 0), rec("B", 1)])
    write(shards.part_file(out, 1, 2), [rec("A", 2), rec("A", 3), rec("B", 2), rec("B", 2)])  # a duplicate too
    merged = shards.merge(out, UNITS, ident)
    assert [(r["task"], r["index"]) for r in merged] == [("A", 0), ("A", 1), ("A", 2), ("A", 3), ("B", 0), ("B", 1), ("B", 2)]
    assert shards.part_files(out) == [] and [json.loads(line) for line in open(out)] == merged


def test_humaneval_units_seed_by_chunk_and_old_files_without_indices_resume(tmp_path):
    problems = {"HumanEval/1": {}, "HumanEval/0": {}}
    assert humaneval.sample_units(problems, 70, 32) == [(("HumanEval/0", 0), 32), (("HumanEval/0", 32), 32),
                                                        (("HumanEval/0", 64), 6), (("HumanEval/1", 0), 32),
                                                        (("HumanEval/1", 32), 32), (("HumanEval/1", 64), 6)]
    ident = humaneval.sample_ident(2)
    old = [{"task_id": "T", "completion": "x"}, {"task_id": "T", "completion": "y"}, {"task_id": "T", "completion": "z"}]
    assert [ident(r) for r in old] == [(("T", 0), 0), (("T", 0), 1), (("T", 2), 2)]  # file order gives the indices


def test_restart_removes_unmerged_parts_and_a_mismatch_sees_them(tmp_path):
    import pytest

    out = str(tmp_path / "samples.jsonl")
    humaneval.check_run_settings(str(tmp_path), {"n": 4})
    write(shards.part_file(out, 1, 2), [rec("A", 2)])
    with pytest.raises(ValueError, match="holds samples made with n 4"):
        humaneval.check_run_settings(str(tmp_path), {"n": 8})
    humaneval.check_run_settings(str(tmp_path), {"n": 8}, restart=True)
    assert shards.part_files(out) == [] and os.path.exists(tmp_path / "settings.json")
