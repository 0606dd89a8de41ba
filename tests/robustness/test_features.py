"""Precomputed features that are missing, misshapen, of another dtype or not finite, in training and in evaluation.

What `tests/test_extract.py`, `tests/test_loaders.py` and `tests/test_collator.py` already check (the validation of
`check_feature`, loaders refusing missing or misshapen features, the collator refusing a wrong number of rows) is
listed in `RELIABILITY.md`.
"""

import re

import numpy as np
import pytest

from vtimellm_hf.evaluation_runs import read_jsonl_records
from vtimellm_hf.training import VTimeDataCollator

from .conftest import FEATURE_DIM, write_features, write_queries


def bad_feature(kind: str) -> np.ndarray:
    features = np.random.default_rng(0).standard_normal((100, FEATURE_DIM)).astype(np.float16)
    if kind == "nan":
        features[7, 3] = np.nan
    elif kind == "inf":
        features[0, 0] = np.inf
    elif kind == "int64":
        features = np.arange(100 * FEATURE_DIM, dtype=np.int64).reshape(100, FEATURE_DIM)
    elif kind == "few_rows":
        features = features[:7]
    elif kind == "wrong_width":
        features = features[:, : FEATURE_DIM // 2]
    elif kind == "one_dimensional":
        features = features[0]
    return features


# Training


class InMemoryFeatures:
    def __init__(self, features: dict):
        self.features = features

    def load(self, feature_id):
        return self.features[feature_id]


@pytest.mark.parametrize("kind", ["nan", "inf", "int64"])
def test_collator_refuses_features_that_are_not_finite_floats(processor, kind):
    collator = VTimeDataCollator(processor, InMemoryFeatures({"v1": bad_feature(kind)}))
    example = {"id": "r1", "video_id": "v1", "messages": [
        {"role": "user", "content": "<video>\nWhen?"}, {"role": "assistant", "content": "From 05 to 23."}]}  # fmt: skip
    with pytest.raises(ValueError, match="'v1'"):
        collator([example])


# Evaluation (`vtimellm-hf evaluate grounding --features DIR`)


def test_missing_features_stop_the_evaluation_and_the_rerun_keeps_earlier_answers(tmp_path, checkpoint, run_cli):
    features = write_features(tmp_path / "features", ["v0"])
    queries = write_queries(tmp_path / "queries.jsonl", ["v0", "v1"], per_video=2)
    results = tmp_path / "results.jsonl"
    command = ["evaluate", "grounding", "--model", checkpoint, "--annotations", queries, "--features", features,
               "--out", results, "--batch-size", 2, "--max-new-tokens", 4]  # fmt: skip

    status, _, err = run_cli(*command)
    assert status == 2 and f"No feature 'v1' in {features}: v1.npy does not exist" in err
    answered = results.read_text()
    assert [record["video_id"] for record in read_jsonl_records(results)] == ["v0"] * 2

    write_features(features, ["v1"], seed=1)
    status, _, err = run_cli(*command)
    assert status == 0 and "4 queries answered" in err and "(2 by an earlier run)" in err
    assert results.read_text().startswith(answered)


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("wrong_width", r"shape \(100, 16\), expected \(100, 32\)"),
        ("few_rows", r"shape \(7, 32\), expected \(100, 32\)"),
        ("one_dimensional", r"shape \(32,\), expected \(100, 32\)"),
        ("nan", r"1 non-finite value\(s\) \(NaN or inf\), the first at index \(7, 3\)"),
        ("int64", r"dtype int64, expected float16"),
    ],
)
def test_evaluation_refuses_unusable_features_naming_them(tmp_path, checkpoint, run_cli, kind, reason):
    features = tmp_path / "features"
    features.mkdir()
    np.save(features / "broken.npy", bad_feature(kind))
    queries = write_queries(tmp_path / "queries.jsonl", ["broken"], per_video=1)
    results = tmp_path / "results.jsonl"
    status, _, err = run_cli("evaluate", "grounding", "--model", checkpoint, "--annotations", queries, "--features",
                             features, "--out", results, "--max-new-tokens", 2)  # fmt: skip
    assert status == 2
    assert re.search(f"error: {re.escape(str(features / 'broken.npy'))}: Feature 'broken': {reason}", err), err
    assert not results.exists() or results.read_text() == ""
