"""The closed form of a zoo name never imports transformers (issue 17, item 6), its plain config agrees
with transformers' field by field, and the committed speed benchmark is complete and self-consistent.
No wall-clock speed is asserted here (benchmarks/bench_estimator_speed.py measures it)."""
import json
import os
import subprocess
import sys

import pytest

from minigpt.memory import zoo
from minigpt.paths import ROOT

RESULTS = ROOT / "benchmarks" / "results" / "estimator_speed.json"


def test_closed_form_of_zoo_names_does_not_import_transformers():
    code = ("import sys; from minigpt.memory.estimate import estimate; "
            "estimate('llama-7b', method='lora', rank=16, precision='amp-bf16', batch=1, seq=2048); "
            "estimate('llama-13b', method='qlora', rank=16, precision='amp-bf16', batch=1, seq=2048); "
            "estimate('roberta-base', method='lora', batch=8, seq=128).config['spec']; "
            "assert 'transformers' not in sys.modules, 'transformers was imported'")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]


@pytest.mark.parametrize("name", list(zoo.HF_CONFIGS))
def test_zoo_config_agrees_with_transformers(name):
    real, light = zoo.hf_config(name), zoo.light_config(name)
    for k, v in vars(light).items():
        if k != "zoo_name":
            assert getattr(real, k) == v, k
    described = light.described()
    assert described == json.loads(real.to_json_string(use_diff=True))
    assert list(described) == list(json.loads(real.to_json_string(use_diff=True)))   # the same key order


def test_zoo_name_with_overrides_still_validated_by_transformers():
    from minigpt.memory.estimate import EstimateError, resolve_model
    spec = resolve_model("llama-7b", num_hidden_layers=2)
    assert type(spec.config).__name__ == "LlamaConfig" and spec.n_layer == 2
    with pytest.raises(EstimateError, match="no field"):
        resolve_model("llama-7b", no_such_field=1)


def test_committed_speed_results_are_complete_and_consistent():
    r = json.loads(RESULTS.read_text(encoding="utf-8"))
    for key in ("command", "date", "machine", "versions", "baseline_commit", "times", "ratios_old_over_new",
                "targets", "note"):
        assert key in r, key
    assert {"cpu", "cores", "load_average_before", "load_average_after"} <= set(r["machine"])
    t = r["times"]
    for k in ("old", "new"):
        assert len(t["cli_estimate_s"][k]["runs"]) >= 3
        assert sorted(t["cli_estimate_s"][k]["runs"])[len(t["cli_estimate_s"][k]["runs"]) // 2] == \
            t["cli_estimate_s"][k]["median"]
    assert set(t["closed_form_s"]["new"]) == {"llama-7b lora", "llama-7b qlora", "llama-13b lora", "llama-13b qlora"}
    assert t["closed_form_imports_transformers"]["new"] is False
    assert t["fake_trace_peak_bytes"]["old"] == t["fake_trace_peak_bytes"]["new"]   # the same traced bytes
    ratios = r["ratios_old_over_new"]
    assert ratios["cli_estimate"] == pytest.approx(t["cli_estimate_s"]["old"]["median"] / t["cli_estimate_s"]["new"]["median"])
    assert ratios["fake_trace_cli"] == pytest.approx(t["fake_trace_cli_s"]["old"] / t["fake_trace_cli_s"]["new"])
    worst = max(max(v["first"], v["median"]) for v in t["closed_form_s"]["new"].values())
    recorded = {"cli_estimate_s": t["cli_estimate_s"]["new"]["median"], "closed_form_s": worst,
                "fake_trace_s": t["fake_trace_cli_s"]["new"]}
    for name, value in recorded.items():
        target = r["targets"][name]
        assert target["new"] == pytest.approx(value)
        assert target["met"] == (value < target["target"]), name
