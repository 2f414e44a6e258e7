"""Tensor parallelism on 2 CPU ranks (gloo, loopback): TP=2 against TP=1 in logits and ids, the
lockstep engine (batching, cancels, prefix caches), quantized slices, and failures on one rank."""

from __future__ import annotations

import json
import os

from ranks import HERE, tiny_lm, torchrun

WORKER = os.path.join(HERE, "tp_worker.py")


def _run(mode: str, out: str, *checkpoints: str):
    return torchrun(WORKER, mode, out, *checkpoints)


def test_tp2_equals_tp1_with_4_8_and_1_qkv_shards(tmp_path, lm_dir):
    """4 shards (CodeGen-1), 8 (CodeGen2-1B/3.7B's layout: each rank 4 whole shards) and 1 (the
    heads split inside a shard: rows gathered), and a .bin checkpoint: fp32 logits within 1e-5, the
    engine's ids equal."""
    eight = tiny_lm(str(tmp_path / "s8"), seed=1, n_head=8, mp_num=8)
    one = tiny_lm(str(tmp_path / "s1"), seed=2, n_head=4, mp_num=1)
    pickled = tiny_lm(str(tmp_path / "bin"), seed=3, bin=True)
    assert os.listdir(pickled).count("pytorch_model.bin") == 1
    out = str(tmp_path / "r.json")
    done = _run("parity", out, lm_dir, eight, one, pickled)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.load(open(out))
    for ckpt in (lm_dir, eight, one, pickled):
        r = results[ckpt]
        assert r["logits"]["prefill"] < 1e-5 and r["logits"]["decode"] < 1e-5, r
        assert r["logits"]["local_heads"] * 2 == r["logits"]["heads"]
        assert all(r["engine"].values()), r["engine"]  # greedy, sampled, stream, turns, batched
        assert r["reused"][0] == r["reused"][1] > 0  # the prefix cache hit the same positions on both
        assert 2 <= r["cancelled_len"] < 12


def test_tp2_quantized_and_bf16_slices(tmp_path, lm_dir):
    out = str(tmp_path / "q.json")
    done = _run("quant", out, lm_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.load(open(out))
    # bf16: summation order and rounding; int8/int4: each rank quantizes its own slices (column-split
    # layers' int8 row scales cover half the columns), so TP=2 is close to TP=1, not equal.
    assert r["bf16"]["maxdiff"] < 0.05 * r["bf16"]["scale"], r
    for name in ("int8", "int4"):
        assert r[name]["maxdiff"] < 0.1 * r[name]["scale"], r
        assert r[name]["tokens"] == 8


def test_a_rank_that_chooses_other_tokens_stops_every_rank(tmp_path, lm_dir):
    done = _run("diverge", str(tmp_path / "d.json"), lm_dir)
    assert done.returncode != 0
    assert "diverged from its driver (rank 0)" in done.stderr, done.stderr[-3000:]


def test_a_rank_that_fails_to_load_ends_every_rank_with_its_reason(tmp_path, lm_dir):
    done = _run("badload", str(tmp_path / "b.json"), lm_dir)
    assert done.returncode != 0
    # both ranks raise the same RankError, naming rank 1 and its reason
    assert done.stderr.count("rank 1 of 2: /nowhere/model.safetensors: no such file") >= 2, done.stderr[-3000:]
