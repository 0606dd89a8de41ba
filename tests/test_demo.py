"""`make demo`, shortened: the same path (synthetic data, tiny models, features, the three recipes, evaluation with
its control, the timeline) on little data and a few steps. It checks that the path runs and writes what it
promises; whether it learns is measured by the full `make demo` (targets in the README)."""

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_quick_demo_writes_metrics_and_timeline(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "vtimellm_hf.demo", "--quick", "--output", str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    metrics = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    scores = ["miou", "r1@0.3", "r1@0.5", "r1@0.7", "control_miou", "multi_event_miou", "query_blind_miou"]
    scores += ["query_swap_miou", "multi_event_r1@0.3", "multi_event_r1@0.5", "multi_event_r1@0.7"]
    for key in scores:
        low, high = metrics[f"{key}_ci"]
        assert 0.0 <= low <= metrics[key] <= high <= 1.0, key
    assert 0 < metrics["n_multi_event"] <= metrics["n"]
    swapped = (tmp_path / "demo" / "query_swap_predictions.jsonl").read_text().splitlines()
    assert len(swapped) == metrics["n_multi_event"]
    assert (tmp_path / "demo" / "timeline.png").stat().st_size > 1000
    predictions = (tmp_path / "demo" / "grounding_predictions.jsonl").read_text().splitlines()
    assert len(predictions) == metrics["n"]
    assert "metrics.json" in result.stdout and "timeline.png" in result.stdout
    # The progress shows by default (the stages, each with its time)
    assert "INFO vtimellm_hf.demo: stage 3 done in" in result.stderr
