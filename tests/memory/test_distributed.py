"""Sharded fine-tuning for real: 2 CPU ranks (gloo) against the estimator's per-rank prediction.

Each run has its own time limit (run_sharded's timeout kills every rank); the whole file is skipped,
with the reason, where gloo cannot start a process group."""
from __future__ import annotations

import os

import pytest

from minigpt.memory.distributed import (ShardedRunError, _alive, estimate_rank, gloo_problem, rank_model_state,
                                        run_sharded)
from minigpt.memory.estimate import EstimateError, estimate
from minigpt.memory.estimate.sharding import fsdp2_rows, zero_redundancy_partition

BATCH, SEQ = 4, 64   # activations large enough that gloo's run-to-run spread (up to one block
# shard, ~0.1 MB, when a collective's buffer is freed late) stays well inside the 5%
TIMEOUT = 150


@pytest.fixture(scope="module")
def gloo():
    why = gloo_problem()
    if why:
        pytest.skip(f"torch.distributed's gloo backend cannot start a process group here: {why}")


@pytest.fixture(scope="module")
def runs(gloo):
    return {mode: run_sharded("tiny", mode, world=2, batch=BATCH, seq=SEQ, timeout=TIMEOUT)
            for mode in ("fsdp2", "zero1")}


def test_fsdp2_rows_pad_every_rank_to_the_same_shard():
    assert fsdp2_rows(65, 2, 0) == (33, 33)
    assert fsdp2_rows(65, 2, 1) == (33, 32)
    assert fsdp2_rows(3, 4, 3) == (1, 0)       # a rank can hold padding only


def test_zero_redundancy_partition_is_greedy_largest_first():
    assert zero_redundancy_partition([10, 1, 7, 3], 2) == [0, 0, 1, 1]   # 10->0, 7->1, 3->1, 1->0 (tie: first)
    assert zero_redundancy_partition([5, 5, 5], 2) == [0, 1, 0]


@pytest.mark.parametrize("mode", ["fsdp2", "zero1"])
def test_model_states_per_rank_match_the_estimate_to_the_byte(runs, mode):
    results = runs[mode]
    assert [r.rank for r in results] == [0, 1]
    for r in results:
        assert r.model_state == rank_model_state(estimate_rank(mode, "tiny", 2, r.rank, BATCH, SEQ))
    # tiny's 65-row embedding does not split evenly: the ranks' optimizer states differ
    assert results[0].model_state["optimizer"] != results[1].model_state["optimizer"]


@pytest.mark.parametrize("mode", ["fsdp2", "zero1"])
def test_peak_per_rank_within_5_percent(runs, mode):
    for r in runs[mode]:
        est = estimate_rank(mode, "tiny", 2, r.rank, BATCH, SEQ)
        assert abs(est.peak - r.peak) <= 0.05 * r.peak, (mode, r.rank, est.peak, r.peak)


def test_fsdp2_halves_the_model_states_and_sees_its_buffers(runs):
    single = estimate("tiny", batch=BATCH, seq=SEQ, semantics="cpu").model_state
    r0 = runs["fsdp2"][0]
    assert r0.model_state["weights"] < 0.51 * single["weights_trainable"]
    assert r0.peak_buckets["communication"] > 0          # all-gather / reduce-scatter buffers
    assert r0.peak_buckets["weight_copies"] > 0          # a gathered block
    assert r0.losses[-1] < r0.losses[0]                  # it trains


def test_a_failing_rank_stops_the_run_and_leaves_no_process(gloo):
    with pytest.raises(ShardedRunError, match="1 of 2 ranks|0 of 2 ranks") as err:
        run_sharded("tiny", "fsdp2", world=2, batch=BATCH, seq=SEQ, timeout=TIMEOUT, fail_rank=1)
    assert "fails on purpose" in str(err.value)
    assert err.value.pids and not any(_alive(p) for p in err.value.pids)


def test_bad_sharding_arguments_say_what_to_change():
    with pytest.raises(EstimateError, match="use zero=3"):
        estimate("tiny", seq=32, gpus=2, zero=1, sharding="fsdp2")
    with pytest.raises(EstimateError, match="rank_index=2"):
        estimate("tiny", seq=32, gpus=2, zero=3, sharding="fsdp2", rank_index=2)
    with pytest.raises(ValueError, match="mode must be one of"):
        run_sharded("tiny", "zero3")
    assert os.getpid()   # (nothing was started)


def test_the_committed_benchmark_agrees_with_todays_estimator():
    """theory/03's measured table comes from benchmarks/results/sharded_cpu.json (make benchmark-sharded):
    when the estimator changes, its predictions for those runs must still match what was measured."""
    import json
    from minigpt.paths import ROOT
    data = json.loads((ROOT / "benchmarks" / "results" / "sharded_cpu.json").read_text(encoding="utf-8"))
    assert {(r["mode"], r["world"]) for r in data["rows"]} == {(m, w) for m in ("ddp", "zero1", "fsdp2") for w in (1, 2)}
    for row in data["rows"]:
        est = estimate_rank(row["mode"], "pretrained", row["world"], row["rank"], data["batch"], data["seq"])
        assert row["measured"]["model_state"] == rank_model_state(est)
        assert row["estimated"]["peak"] == est.peak
        assert abs(est.peak - row["measured"]["peak"]) <= 0.05 * row["measured"]["peak"]


def test_the_rank_table_shows_every_bucket_beside_its_estimate(runs):
    from minigpt.memory.distributed import rank_table
    text = rank_table(runs["fsdp2"])
    assert "rank 0 measured" in text and "rank 1 measured" in text
    assert all(k in text for k in ("weights_trainable", "activations", "communication", "peak", "error"))


def test_the_cli_predicts_one_rank_and_refuses_sharding_for_a_single_process(capsys):
    from minigpt.memory.cli import main
    assert main(["estimate", "--model", "tiny", "--seq", "32", "--semantics", "cpu", "--gpus", "2",
                 "--zero", "3", "--sharding", "fsdp2", "--rank-index", "1"]) in (0, None)
    assert "FSDP2 on rank 1 of 2" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["measure", "--model", "tiny", "--sharding", "fsdp2", "--zero", "3", "--gpus", "2"])
    assert "python -m minigpt.memory.distributed" in capsys.readouterr().err


def test_the_time_limit_kills_every_rank(gloo):
    with pytest.raises(ShardedRunError, match="limit") as err:
        run_sharded("tiny", "fsdp2", world=2, batch=BATCH, seq=SEQ, timeout=1.0)
    assert len(err.value.pids) == 2 and not any(_alive(p) for p in err.value.pids)
