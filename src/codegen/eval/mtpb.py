"""MTPB, the paper's Multi-Turn Programming Benchmark: sampling turn by turn, checking in the sandbox.

Protocol (Salesforce's mtpb_sample.py / mtpb_exec.py, described in shared/data/mtpb/PROVENANCE.md):
the conversation format of `codegen.paradigm` (the history starts with its HEADER; each turn
appends "# <prompt filled from the test case>\\n", a completion of at most max_gen_length tokens
(default 256) cut with CodeGen's truncation rule, and "\\n\\n"). The program's last top-level
expression is printed if it is not a print already; the first argument of the last print call is
compared with the expected output (`check_equivalence`). The single-turn variant puts all turns in
one prompt and samples one completion. Each turn prefills only its own tokens (a prefix cache).
"""

from __future__ import annotations

import ast
import inspect
import json
import os
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from ..paradigm import HEADER, TRUNCATE, TURN_TOKENS, Conversation
from ..progress import Progress
from .humaneval import read_jsonl
from .passk import mean_pass_at_k
from .sandbox import Limits, run_many

PREFIX = HEADER
DEFAULT_GEN_LENGTH = TURN_TOKENS


def load(path: str) -> list[dict]:
    problems = read_jsonl(path)
    for p in problems:
        missing = {"id", "prompts", "inputs", "outputs"} - set(p)
        if missing:
            raise ValueError(f"{path}: problem {p.get('id', '?')} lacks {', '.join(sorted(missing))}")
    return sorted(problems, key=lambda p: int(p["id"]))


def turns(problem: dict, case: int) -> list[str]:
    return [t.format(**problem["inputs"][case]) for t in problem["prompts"]]


def cases(problem: dict) -> int:
    return min(len(problem["inputs"]), len(problem["outputs"]))  # id 57 lists an extra output


# ----------------------------------------------------------------------------- checking
def normalize(value):
    """pandas Series -> numpy -> Python; numpy scalars -> Python; tuples (and lists of them) -> lists."""
    try:
        import numpy as np
    except ImportError:
        np = None
    try:
        import pandas as pd
    except ImportError:
        pd = None
    if pd is not None and isinstance(value, (pd.Series, pd.Index)):
        value = value.to_numpy()
    if pd is not None and isinstance(value, pd.DataFrame):
        value = value.to_numpy()
    if np is not None:
        if isinstance(value, np.ndarray):
            value = value.tolist()
        elif isinstance(value, np.generic):
            value = value.item()
    if isinstance(value, (list, tuple)):
        return [normalize(v) for v in value]
    if isinstance(value, dict):
        return {k: normalize(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        return value
    return value


def check_equivalence(value, expected, tol: float = 1e-6) -> bool:
    """Salesforce's checker: cast to the expected type on mismatch, bools compared as strings,
    floats within an absolute 1e-6, containers element by element."""
    value = normalize(value)
    if isinstance(expected, bool) or isinstance(value, bool):
        return str(value) == str(expected)
    if expected is None:
        return value is None
    if type(value) is not type(expected):
        try:
            value = type(expected)(value)
        except (TypeError, ValueError):
            return False
    if isinstance(expected, float):
        return abs(value - expected) <= tol
    if isinstance(expected, list):
        return len(value) == len(expected) and all(check_equivalence(v, e, tol) for v, e in zip(value, expected))
    if isinstance(expected, dict):
        return value.keys() == expected.keys() and all(check_equivalence(value[k], expected[k], tol) for k in expected)
    return value == expected


def print_last_expression(code: str) -> str:
    """Wrap the last top-level statement in print(...) if it is an expression that is not a print."""
    tree = ast.parse(code)
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = tree.body[-1].value
        if not (isinstance(last, ast.Call) and isinstance(last.func, ast.Name) and last.func.id == "print"):
            tree.body[-1] = ast.Expr(ast.Call(ast.Name("print", ast.Load()), [last], []))
            return ast.unparse(ast.fix_missing_locations(tree))
    return code


_HARNESS_HEAD = '''
import builtins as _cg_builtins
_cg_printed = []
_cg_print = _cg_builtins.print
_cg_builtins.print = lambda *args, **kwargs: _cg_printed.append(args)
'''
_HARNESS_TAIL = '''
_cg_builtins.print = _cg_print
_cg_expected = __import__("json").loads({expected!r})
if not _cg_printed:
    raise AssertionError("the program printed nothing")
_cg_value = _cg_printed[-1][0] if _cg_printed[-1] else None
if not check_equivalence(_cg_value, _cg_expected):
    raise AssertionError(f"printed {{_cg_value!r}}, expected {{_cg_expected!r}}")
'''


def check_program(code: str, expected) -> str | None:
    """The sandboxed program for one sample, or None when the code does not parse."""
    try:
        code = print_last_expression(code)
    except SyntaxError:
        return None
    checker = inspect.getsource(normalize) + "\n" + inspect.getsource(check_equivalence)
    return _HARNESS_HEAD + code + "\n" + checker + _HARNESS_TAIL.format(expected=json.dumps(expected))


# ----------------------------------------------------------------------------- sampling
def sample_case(model, tokenizer, problem: dict, case: int, n: int, *, single_turn: bool = False, temperature: float = 0.2,
                top_p: float = 0.95, top_k: int = 0, seed: int = 16, prefix_cache: bool = True) -> list[dict]:
    """n samples of one (problem, test case): records with id, case, index, turns, completions, program.
    Seeds depend on (seed, problem, case, turn) only. With `prefix_cache`, each turn prefills only
    its own tokens: the n histories' KV is kept from one turn to the next (the ids are those of
    re-prefilling every history, which is what False does)."""
    from ..completion import CompletionOptions, complete
    from ..engine.prefix import PrefixCache, kv_bytes_per_token

    p = problem
    gen_len = p.get("max_gen_length", DEFAULT_GEN_LENGTH)
    prompts = turns(p, case)
    talks = [Conversation() for _ in range(n)]
    window = kv_bytes_per_token(model) * model.config.n_positions
    pool = PrefixCache(n * window) if prefix_cache and not single_turn else None
    steps = [prompts] if single_turn else [[t] for t in prompts]
    for step, group in enumerate(steps):
        opts = CompletionOptions(
            max_new_tokens=gen_len * (len(prompts) if single_turn else 1), temperature=temperature, top_p=top_p,
            top_k=top_k, n=1, truncate_before_pattern=list(TRUNCATE[1:] if single_turn else TRUNCATE),
            seed=seed + 7919 * int(p["id"]) + 104729 * case + step, truncate_prompt=True,
        )
        results = complete(model, tokenizer, [t.prompt(group) for t in talks], opts, prefix_cache=pool)
        for talk, c in zip(talks, results):
            talk.add("\n".join(group), c.text)
    return [{"id": p["id"], "case": case, "index": i, "turns": prompts, "completions": [t.code for t in talks[i].turns],
             "program": talks[i].program()} for i in range(n)]


def sample(model, tokenizer, problems: list[dict], n: int, *, progress: bool | None = None, **kwargs) -> list[dict]:
    """`sample_case` for every (problem, test case), in order."""
    records = []
    with Progress(sum(cases(p) for p in problems), "sampling", "case", enabled=progress) as bar:
        for p in problems:
            for case in range(cases(p)):
                records += sample_case(model, tokenizer, p, case, n, **kwargs)
                bar.update(1)
    return records


def units(problems: list[dict], n: int) -> list[tuple[tuple[str, int], int]]:
    return [((str(p["id"]), case), n) for p in problems for case in range(cases(p))]


def ident(record: dict) -> tuple[tuple[str, int], int]:
    return (str(record["id"]), record["case"]), record["index"]


def sample_to(model, tokenizer, problems: list[dict], out_file: str, n: int, *, shard: tuple[int, int] = (0, 1),
              progress: bool | None = None, **kwargs) -> list[dict] | None:
    """`sample`, appended to `out_file` a test case at a time and resumable (codegen.eval.shards);
    `shard` (rank, ranks): this data-parallel rank's cases into its own part file, and None (the
    caller merges once every rank is done); else the whole file's records."""
    from . import shards

    rank, ranks = shard
    all_units = units(problems, n)
    todo = shards.pending(out_file, all_units, ident, rank, ranks)
    by_id = {str(p["id"]): p for p in problems}
    with open(shards.part_file(out_file, rank, ranks), "a", encoding="utf-8") as fh, \
            Progress(len(todo), "sampling", "case", enabled=progress) as bar:
        for (pid, case), _ in todo:
            for r in sample_case(model, tokenizer, by_id[pid], case, n, **kwargs):
                fh.write(json.dumps(r) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
            bar.update(1)
    return None if ranks > 1 else shards.merge(out_file, all_units, ident)


# ----------------------------------------------------------------------------- scoring
@dataclass
class Report:
    pass_rate: float
    pass_at_k: dict[str, float]
    per_problem: dict[str, dict]
    per_category: dict[str, dict]
    executed: int


def score(records: list[dict], problems: list[dict], ks: Iterable[int] = (1,), limits: Limits | None = None,
          workers: int | None = None, progress: bool | None = None, allow_unsafe: bool = False) -> tuple[list[dict], Report]:
    by_id = {p["id"]: p for p in problems}
    programs, runnable = [], []
    for i, r in enumerate(records):
        p = by_id.get(str(r.get("id")))
        if p is None:
            raise ValueError(f"sample {i}: unknown problem id {r.get('id')!r}")
        prog = check_program(r["program"], p["outputs"][r["case"]])
        if prog is not None:
            programs.append(prog)
            runnable.append(i)
    limits = limits or Limits(timeout=20.0)
    with Progress(len(programs), "executing", "program", enabled=progress) as bar:
        verdicts = run_many(programs, limits, workers, bar, preload=("numpy", "pandas"), allow_unsafe=allow_unsafe)
    results = [dict(r, passed=False, result="failed: SyntaxError (the program does not parse)") for r in records]
    for i, v in zip(runnable, verdicts):
        results[i].update(passed=v.passed, result=v.result)

    per_case: dict[tuple[str, int], list[bool]] = defaultdict(list)
    for r in results:
        per_case[(str(r["id"]), r["case"])].append(r["passed"])
    per_problem: dict[str, dict] = {}
    for p in problems:
        cs = [per_case[(p["id"], c)] for c in range(cases(p)) if (p["id"], c) in per_case]
        if not cs:
            continue
        flat = [x for c in cs for x in c]
        per_problem[p["id"]] = {"name": p.get("name", ""), "category": p.get("category", ""),
                                "pass_rate": sum(flat) / len(flat),
                                **mean_pass_at_k([(len(c), sum(c)) for c in cs], ks)}
    per_category: dict[str, dict] = {}
    for cat in sorted({v["category"] for v in per_problem.values()}):
        rows = [v for v in per_problem.values() if v["category"] == cat]
        per_category[cat] = {"problems": len(rows), "pass_rate": sum(v["pass_rate"] for v in rows) / len(rows)}
    counts = [(len(c), sum(c)) for c in per_case.values()]
    overall = sum(r["passed"] for r in results) / len(results) if results else 0.0
    return results, Report(overall, mean_pass_at_k(counts, ks), per_problem, per_category, len(results))
