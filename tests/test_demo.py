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


@pytest.mark.slow
def test_quick_family_demo_grounds_sounds_and_their_control(tmp_path):
    """`--family longvale`: the LongVALE path (videos that sound, audio and speech features through the extraction,
    VTimeLLM's stage 1, LongVALE's stages 2 and 3) writes every figure, the control asking the sounds alone."""
    result = subprocess.run(
        [sys.executable, "-m", "vtimellm_hf.demo", "--family", "longvale", "--quick", "--output", str(tmp_path)],
        capture_output=True, text=True, timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("miou", "r1@0.3", "r1@0.5", "r1@0.7", "sound_only_miou", "no_audio_control_miou", "shape_miou",
                "sound_only_fixed_span_miou"):  # fmt: skip
        assert 0.0 <= metrics[key] <= 1.0, key
    annotations = json.loads((tmp_path / "data" / "dense_captioning_val.json").read_text())
    sentences = [sentence for annotation in annotations.values() for sentence in annotation["sentences"]]
    sound_sentences = {"A beep sounds.", "A low hum starts.", "A hiss starts."}
    sounds = [sentence for sentence in sentences if sentence in sound_sentences]
    assert metrics["n"] == len(sentences) and metrics["n_sound_only"] == len(sounds) > 0
    assert metrics["n_shape"] == len(sentences) - len(sounds)
    assert len((tmp_path / "grounding_answers.jsonl").read_text().splitlines()) == len(sentences)
    assert len((tmp_path / "no_audio_control_answers.jsonl").read_text().splitlines()) == len(sounds)
    for stream in ("audio", "speech"):
        assert len(list((tmp_path / "streams" / f"{stream}_features").glob("*.npy"))) == 16
    assert "INFO vtimellm_hf.demo: longvale stage 3 done in" in result.stderr


def test_family_demo_scores_answers_by_the_grounding_convention():
    from vtimellm_hf.data.raw_annotations import GroundingQuery
    from vtimellm_hf.family_demo import scores

    references = [GroundingQuery("v", "A beep sounds.", 10.0, 50.0, 100.0),
                  GroundingQuery("v", "A red circle appears.", 60.0, 80.0, 100.0)]  # fmt: skip
    # On 100 s, 20 to 50 is 20 s to 50 s: IoU 30 / 40; the second answer names no moment (IoU 0)
    answers = {("v", "A beep sounds."): "From 20 to 50.", ("v", "A red circle appears."): "I cannot tell."}
    assert scores(references, answers) == {"miou": 0.375, "r1@0.3": 0.5, "r1@0.5": 0.5, "r1@0.7": 0.5}


def test_family_demo_refuses_another_backbone(capsys):
    from vtimellm_hf.demo import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--family", "longvale", "--backbone", "qwen3"])
    assert exit_info.value.code == 2
    assert "--family longvale trains a Vicuna v1.5 model: --backbone qwen3 does not apply" in capsys.readouterr().err
