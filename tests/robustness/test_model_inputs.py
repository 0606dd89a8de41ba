"""Inputs that do not fit together (text, placeholders, features) and answers that name no moment.

`tests/test_processor.py::test_bad_inputs_say_what_mismatched` covers two `<video>`s, features without a
placeholder, features without text and batches mixing samples with and without a video; `tests/test_model.py`
covers placeholder / row and batch mismatches in the model and batches of mixed lengths. See `RELIABILITY.md`.
"""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from vtimellm_hf import evaluation_runs
from vtimellm_hf.data.raw_annotations import GroundingQuery
from vtimellm_hf.evaluation_runs import evaluate_grounding, read_jsonl_records
from vtimellm_hf.metrics import read_grounding_predictions, score_grounding

from .conftest import FEATURE_DIM


def test_placeholder_without_features_is_refused_by_the_processor(processor):
    with pytest.raises(ValueError, match="The text holds 1 <video> placeholders but 0 visual inputs were given"):
        processor(text="<video>\nWhen does the man crack the egg?")


def test_model_refuses_placeholders_without_features(processor, model):
    inputs = processor(text="<video>\nWhen?", video_features=[np.zeros((100, FEATURE_DIM))], return_tensors="pt")
    with pytest.raises(ValueError, match="video_features"):
        model(input_ids=inputs["input_ids"])


def test_model_names_the_expected_feature_width(processor, model):
    inputs = processor(text="<video>\nWhen?", video_features=[np.zeros((100, 16))], return_tensors="pt")
    with pytest.raises(ValueError, match=f"mm_hidden_size.*{FEATURE_DIM}"):
        model(**inputs)


def test_answers_that_name_no_moment_are_kept_as_null_and_scored_zero(tmp_path, monkeypatch):
    answers = {
        "reversed": "From 40 to 10.",
        # The original reads the first pair only: reversed, it scores 0, and the second does not stand in for it
        "reversed first": "From 40 to 10, or from 05 to 23.",
        "no numbers": "I cannot tell.",
        "one digit": "From 5 to 23.",
        "well formed": "It happens from 05 to 23, then from 30 to 40.",
    }
    queries = [GroundingQuery("v1", query, 0.5, 2.3, 10.0) for query in answers]

    def generate_answers(model, processor, conversations, features, **kwargs):
        return [answers[conversation[0]["content"][-1]["text"]] for conversation in conversations]

    monkeypatch.setattr(evaluation_runs, "generate_answers", generate_answers)
    # The answers are given: of the processor, only its frame count (to read the indices) is used
    processor = SimpleNamespace(num_frames=100)
    results = evaluate_grounding(
        None, processor, queries, tmp_path / "results.jsonl", lambda video_id: (torch.zeros(100, FEATURE_DIM), None),
        question="{query}", batch_size=3,
    )  # fmt: skip
    records = {record["query"]: record for record in read_jsonl_records(results)}
    assert {query: record["answer"] for query, record in records.items()} == answers
    assert [records[query]["timestamp"] for query in answers] == [None, None, None, None, pytest.approx([0.5, 2.3])]
    scores = score_grounding(read_grounding_predictions(results), queries)
    assert (scores["n"], scores["unparsed"], scores["missing"]) == (5, 4, 0)
    assert scores["r1@0.7"] == pytest.approx(20.0) and scores["miou"] == pytest.approx(20.0)
