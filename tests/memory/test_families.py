"""The committed per-family table (benchmarks/bench_families.py) covers every configs/*.json, each
row's closed form is within 2% of its fake trace (or marked as the estimator's fallback to the trace),
and families.md is the table generated from it."""
import json
from pathlib import Path

from minigpt.memory.buckets import MODEL_STATE_BUCKETS
from minigpt.paths import ROOT

RESULTS = ROOT / "benchmarks" / "results" / "families.json"


def _load() -> dict:
    return json.loads(RESULTS.read_text(encoding="utf-8"))


def test_every_config_has_a_row():
    rows = _load()["rows"]
    assert sorted(Path(r["config"]).name for r in rows) == sorted(p.name for p in (ROOT / "configs").glob("*.json"))


def test_rows_within_two_percent_or_fallback():
    r = _load()
    assert {"command", "date", "machine", "versions", "setting"} <= set(r)
    for row in r["rows"]:
        assert set(row["model_state"]) == set(MODEL_STATE_BUCKETS)
        assert 0 < row["n_trainable"] < row["n_params"]
        if row["fallback"]:
            assert row["why"] and row["error_pct"] is None
            assert row["estimated_peak"] == row["traced_peak"]          # the estimate is the trace
        else:
            err = (row["estimated_peak"] - row["traced_peak"]) / row["traced_peak"] * 100
            assert abs(err - row["error_pct"]) < 1e-9
            assert abs(err) <= r["target_error_pct"] == 2.0, row["config"]


def test_markdown_is_generated_from_the_json():
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_families", ROOT / "benchmarks" / "bench_families.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert RESULTS.with_suffix(".md").read_text(encoding="utf-8") == mod.markdown(_load())
