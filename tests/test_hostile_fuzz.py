"""The command line's file inputs fuzzed: annotations, queries, predictions and features that are close to valid,
where the edge cases are, given to `evaluate`, `score`, `convert` and `consolidate-features`.

Whatever the files hold, a command ends with a status its `--help` documents (0, or 2 with one `COMMAND: error:`
line), never a traceback; it writes only into its output folder, and leaves there no hidden temporary, lock or
partial file, and, when it fails, no empty file. The tiny model is loaded once: loading is not what is fuzzed.
Few examples by default (`HOSTILE_FUZZ_EXAMPLES`, 12): set it higher to search longer.
"""

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vtimellm_hf import VTimeProcessor, cli, evaluation
from vtimellm_hf.tiny_models import build_tiny_vtime_model

FUZZ_SETTINGS = settings(
    max_examples=int(os.environ.get("HOSTILE_FUZZ_EXAMPLES", 12)),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
VIDEO_IDS = ["v0", "v1"]

_TEXT = st.text(max_size=5) | st.sampled_from(
    ["", "\ud800", "<video>", "</s>USER:", "v0", "v_x", "../v0", "/etc/passwd", "a\x00b", "{query}", "é" * 3]
)
_NUMBER = st.integers(-3, 10**20) | st.floats() | st.sampled_from([0, 0.5, 1.5, 4, -1, 1e308, "3", None, True])
_VALUE = _TEXT | _NUMBER | st.lists(_NUMBER, max_size=3) | st.dictionaries(_TEXT, _NUMBER, max_size=2)
_QUERY = {"video_id": "v0", "query": "a person opens a door", "start": 0.5, "end": 1.5, "duration": 4.0}
_PREDICTION = {"video_id": "v0", "query": "a person opens a door", "timestamp": [0.4, 1.2], "answer": "From 10 to 30.",
               "duration": 4.0}  # fmt: skip
_VIDEO = {"duration": 10.0, "timestamps": [[0.0, 1.0], [2.0, 5.0]], "sentences": ["a man sits.", "he stands."]}
_DROP = object()
_JUNK_BYTES = st.sampled_from([b"", b"\xff\xfe", b"\x00", b"\n{", b"]", b"\xef\xbb\xbf", b'{"a": 1, "a": 2}\n'])


def near(valid: dict) -> st.SearchStrategy[dict]:
    """`valid` with each field kept, removed or replaced by junk."""
    fields = {key: st.sampled_from([value, value, _DROP]) | _VALUE for key, value in valid.items()}
    return st.fixed_dictionaries(fields).map(lambda record: {key: value for key, value in record.items()
                                                             if value is not _DROP})  # fmt: skip


@st.composite
def record_file(draw, valid: dict, ids=VIDEO_IDS) -> bytes:
    """JSON lines or a JSON list of near-valid records (their ids drawn from `ids`), maybe with junk bytes."""
    records = draw(st.lists(near(valid), min_size=0, max_size=4))
    for record in records:
        if "video_id" in record and draw(st.booleans()):
            record["video_id"] = draw(st.sampled_from(ids))
    if draw(st.booleans()):
        text = "".join(json.dumps(record) + "\n" for record in records)
    else:
        text = json.dumps(records)
    return text.encode("utf-8") + draw(_JUNK_BYTES)


@st.composite
def activitynet_file(draw) -> bytes:
    videos = {draw(st.sampled_from(["v_x", "v_y", "", "\ud800"])): draw(near(_VIDEO) | _VALUE)
              for _ in range(draw(st.integers(0, 3)))}  # fmt: skip
    return json.dumps(videos).encode("utf-8") + draw(_JUNK_BYTES)


@st.composite
def feature_file(draw) -> bytes:
    """The bytes of a `.npy` feature: valid, of another shape or dtype, not finite, cut short, or not one at all."""
    kind = draw(st.sampled_from(["valid", "shape", "dtype", "nan", "truncated", "bytes", "huge"]))
    shape = {"shape": (99, 32), "dtype": (100,)}.get(kind, (100, 32))
    array = np.random.default_rng(draw(st.integers(0, 3))).standard_normal(shape)
    array = array.astype(np.int64 if kind == "dtype" else np.float16)
    if kind == "nan":
        array[draw(st.integers(0, 99)), 0] = np.nan
    buffer = io.BytesIO()
    if kind == "huge":
        np.lib.format.write_array_header_1_0(buffer, {"descr": "<f2", "fortran_order": False, "shape": (10**12, 32)})
    elif kind != "bytes":
        np.save(buffer, array)
    data = buffer.getvalue()
    if kind == "truncated":
        data = data[: draw(st.integers(0, len(data) - 1))]
    return data + (draw(st.binary(max_size=16)) if kind == "bytes" else b"")


@pytest.fixture(scope="module")
def loaded(tokenizer, frame_encoder_path):
    model = build_tiny_vtime_model(tokenizer).eval()
    return model, VTimeProcessor(tokenizer=tokenizer, frame_encoder_name_or_path=str(frame_encoder_path), frame_size=32)


@pytest.fixture
def cached_model(monkeypatch, loaded):
    monkeypatch.setattr(evaluation, "load_model_and_processor", lambda *args, **kwargs: loaded)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def run_in_folders(inputs: dict[str, bytes], argv_of) -> tuple[int, str, Path, dict, dict]:
    """Writes `inputs` into `IN/`, runs `argv_of(IN, OUT)`, and returns the status, stderr, OUT, and every file of the
    folder (path -> bytes) before and after."""
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        given_files, out = root / "in", root / "out"
        out.mkdir()
        for name, data in inputs.items():
            (given_files / name).parent.mkdir(parents=True, exist_ok=True)
            (given_files / name).write_bytes(data)
        before = {path: path.read_bytes() for path in root.rglob("*") if path.is_file()}
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                status = cli.main([str(arg) for arg in argv_of(given_files, out)])
            except SystemExit as exit:  # argparse's refusals
                status = exit.code
        after = {path: path.read_bytes() for path in root.rglob("*") if path.is_file()}
        return status, stderr.getvalue(), out, before, after


def check_outcome(command: str, status: int, stderr: str, out: Path, before: dict, after: dict) -> None:
    statuses = {**cli.EXIT_STATUSES, **cli.COMMAND_EXIT_STATUSES.get(command.split()[0], {})}
    assert status in statuses, (status, stderr)
    assert "Traceback" not in stderr
    if status == 2:
        errors = [line for line in stderr.splitlines() if line.startswith(f"{command}: error: ")]
        assert len(errors) == 1, stderr
    # Nothing changed outside the output folder
    assert {path: data for path, data in after.items() if out not in path.parents} == before
    left = [path for path in after if out in path.parents]
    assert not [path for path in left if path.name.startswith(".")], left
    if status:  # a failed command leaves no empty file (an empty input may convert to an empty output)
        assert not [path for path in left if not after[path]], left


@FUZZ_SETTINGS
@given(queries=record_file(_QUERY), features=st.lists(feature_file(), min_size=2, max_size=2))
def test_evaluate_grounding_on_fuzzed_queries_and_features(cached_model, queries, features):
    inputs = {"queries.jsonl": queries, **{f"features/{video_id}.npy": data for video_id, data in zip(VIDEO_IDS,
                                                                                                       features)}}
    outcome = run_in_folders(inputs, lambda given_files, out: [
        "evaluate", "grounding", "--model", "tiny", "--annotations", given_files / "queries.jsonl", "--features",
        given_files / "features", "--out", out / "results.jsonl", "--max-new-tokens", "1"])  # fmt: skip
    check_outcome("evaluate grounding", *outcome)


@FUZZ_SETTINGS
@given(predictions=record_file(_PREDICTION), references=record_file(_QUERY))
def test_score_grounding_on_fuzzed_predictions_and_references(predictions, references):
    inputs = {"predictions.jsonl": predictions, "references.jsonl": references}
    outcome = run_in_folders(inputs, lambda given_files, out: [
        "score", "grounding", "--predictions", given_files / "predictions.jsonl", "--annotations",
        given_files / "references.jsonl"])  # fmt: skip
    check_outcome("score grounding", *outcome)


@FUZZ_SETTINGS
@given(annotations=activitynet_file(), task=st.sampled_from(["dialogues", "grounding", "captioning"]))
def test_convert_on_fuzzed_annotations(annotations, task):
    outcome = run_in_folders({"anet.json": annotations}, lambda given_files, out: [
        "convert", "activitynet", given_files / "anet.json", out / "converted.json", "--task", task])  # fmt: skip
    check_outcome("convert", *outcome)


@FUZZ_SETTINGS
@given(features=st.lists(feature_file(), min_size=1, max_size=3), suffix=st.sampled_from([".safetensors", ""]))
def test_consolidate_on_fuzzed_features(features, suffix):
    inputs = {f"features/v{index}.npy": data for index, data in enumerate(features)}
    outcome = run_in_folders(inputs, lambda given_files, out: [
        "consolidate-features", given_files / "features", out / f"store{suffix}"])  # fmt: skip
    check_outcome("consolidate-features", *outcome)
