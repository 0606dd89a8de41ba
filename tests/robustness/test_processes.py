"""Extraction and evaluation by several processes end where one process ends.

The jobs are started as users start them, `torchrun --nproc_per_node N` and `accelerate launch --multi_gpu`, on the
CPU (the processes meet in a gloo group). Most run `process_probe.py`, which logs the work each process does, so that
the tests see every video and query done exactly once. They check that the files equal those of one process, that
a bad video in one process's share costs the others nothing, and that a process killed mid-run loses nothing it
wrote: a rerun with another number of processes finishes the rest, to the files of an uninterrupted run.

Every launch starts its processes anew (torch, transformers and a tiny model in each): marked slow.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from vtimellm_hf import evaluation_runs
from vtimellm_hf.data.extract import extract_features
from vtimellm_hf.data.features import read_npy_header
from vtimellm_hf.data.synthetic import encode_mp4
from vtimellm_hf.evaluation_runs import read_jsonl_records

from .conftest import write_features, write_queries

# The launched processes run one thread each (torchrun sets OMP_NUM_THREADS=1); so does the one-process run here
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

REPO_ROOT = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).with_name("process_probe.py")
VIDEOS = [f"clip{index}" for index in range(8)]
# Sorted after clip0: the second input, in the share of the second process
BAD_VIDEO = "clip0-bad"
EXTRACTION = ["--workers", "0", "--num-frames", "20", "--batch-size", "16"]


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory) -> Path:
    """Tiny videos of 20 frames, and one that is not a video."""
    folder = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(0)
    for name in VIDEOS:
        frames = np.repeat(rng.integers(0, 256, (20, 1, 1, 3), dtype=np.uint8), 48, axis=1).repeat(64, axis=2)
        encode_mp4(folder / f"{name}.mp4", frames, fps=10)
    (folder / f"{BAD_VIDEO}.mp4").write_text("not a video\n")
    return folder


def launch(processes: int, log: Path, *argv, delay: float = 0.0, launcher: str = "torchrun") -> subprocess.Popen:
    """`process_probe.py LOG DELAY ARGV...` (or `-m vtimellm_hf ARGV...` when `log` is None) on `processes`
    processes of `torchrun` or `accelerate launch`, in a session of its own."""
    if launcher == "torchrun":
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes)]
    else:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1",
                   "--num_processes", str(processes)]  # fmt: skip
    command += ["-m", "vtimellm_hf"] if log is None else [str(PROBE), str(log), str(delay)]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        [*command, *map(str, argv)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment,
        start_new_session=True,
    )  # fmt: skip


def finish(process: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise
    return process.returncode, stderr


def logged(log: Path, kind: str) -> list[tuple[str, str]]:
    """`(rank, value)` of the lines of `kind` in a probe log."""
    lines = log.read_text(encoding="utf-8").splitlines() if log.is_file() else []
    return [(rank, value) for rank, found, value in (line.split(" ", 2) for line in lines) if found == kind]


def kill_second_process_once(process: subprocess.Popen, log: Path, kind: str, count: int = 1) -> None:
    """SIGKILLs the process of rank 1 once it has logged `count` lines of `kind`; the launcher then ends the
    others."""
    deadline = time.monotonic() + 300
    while len([rank for rank, _ in logged(log, kind) if rank == "1"]) < count:
        assert process.poll() is None and time.monotonic() < deadline, f"no {kind} of rank 1 before the job ended"
        time.sleep(0.05)
    (pid,) = [int(value) for rank, value in logged(log, "pid") if rank == "1"]
    os.kill(pid, signal.SIGKILL)
    status, stderr = finish(process)
    assert status != 0, stderr[-3000:]


def folder_files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_extraction_by_two_processes_writes_the_files_of_one(media_dir, frame_encoder_path, tmp_path):
    alone = extract_features(
        media_dir, tmp_path / "alone", clip=str(frame_encoder_path), workers=0, num_frames=20, batch_size=16,
        progress=False,
    )  # fmt: skip
    assert [failure.feature_id for failure in alone.failures] == [BAD_VIDEO] and alone.extracted == len(VIDEOS)

    log = tmp_path / "probe.log"
    job = launch(2, log, "extract-features", media_dir, tmp_path / "two", "--clip", frame_encoder_path, *EXTRACTION)
    status, stderr = finish(job)
    # The bad video fails the job once every process has finished and the main one has merged their records
    assert status != 0
    assert stderr.count("extract-features: ") == 1, stderr[-3000:]
    assert f"{len(VIDEOS)} extracted, 0 already done, 1 failed of {len(VIDEOS) + 1}" in stderr
    assert folder_files(tmp_path / "two") == folder_files(tmp_path / "alone")
    written = logged(log, "feature")
    assert sorted(feature_id for _, feature_id in written) == VIDEOS  # each once
    # The process whose share held the bad video wrote the rest of its share, and so did the other
    assert {rank for rank, _ in written} == {"0", "1"}
    assert json.loads((tmp_path / "two" / "failures.jsonl").read_text())["id"] == BAD_VIDEO


def test_evaluations_by_two_processes_write_the_answers_of_one(checkpoint, tmp_path, run_cli):
    video_ids = [f"v_{index}" for index in range(5)]
    features = write_features(tmp_path / "features", video_ids)
    queries = write_queries(tmp_path / "queries.jsonl", video_ids, per_video=3)
    model = ["--model", checkpoint, "--features", features, "--max-new-tokens", 6, "--batch-size", 2]
    status, _, err = run_cli("evaluate", "grounding", *model, "--annotations", queries, "--out", tmp_path / "one.jsonl")
    assert status == 0, err

    log = tmp_path / "probe.log"
    job = launch(2, log, "evaluate", "grounding", *model, "--annotations", queries, "--out", tmp_path / "two.jsonl")
    status, stderr = finish(job)
    assert status == 0, stderr[-3000:]
    assert (tmp_path / "two.jsonl").read_bytes() == (tmp_path / "one.jsonl").read_bytes()
    asked = logged(log, "ask")
    expected = [f"During which frames can we see {json.loads(line)['query']}?" for line in queries.open()]
    assert sorted(question for _, question in asked) == sorted(expected)  # each once
    assert {rank for rank, _ in asked} == {"0", "1"}
    assert sorted(path.name for path in tmp_path.iterdir() if path.suffix == ".jsonl") == [
        "one.jsonl", "queries.jsonl", "two.jsonl"
    ]  # the processes' own files are merged and gone

    references = {
        video_id: {"duration": 10.0 + index, "timestamps": [[0, 5]], "sentences": ["A red circle appears."]}
        for index, video_id in enumerate(video_ids)
    }
    annotations = tmp_path / "anet.json"
    annotations.write_text(json.dumps(references))
    for name, processes in (("one", 1), ("two", 2)):
        argv = ["evaluate", "captioning", *model, "--annotations", annotations, "--out", tmp_path / name / "preds.json"]
        if processes == 1:
            status, _, err = run_cli(*argv)
        else:
            status, err = finish(launch(processes, None, *argv, launcher="accelerate"))
        assert status == 0, err[-3000:]
    assert folder_files(tmp_path / "two") == folder_files(tmp_path / "one")
    assert list(json.loads((tmp_path / "two" / "preds.json").read_text())["results"]) == video_ids


def test_killed_extraction_process_loses_nothing_and_another_count_finishes(
    media_dir, frame_encoder_path, tmp_path
):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for copy in range(2):
        for name in VIDEOS:
            (inputs / f"{name}-{copy}.mp4").write_bytes((media_dir / f"{name}.mp4").read_bytes())
    ids = sorted(path.stem for path in inputs.iterdir())
    output = tmp_path / "out"
    options = ["--clip", frame_encoder_path, *EXTRACTION]
    log = tmp_path / "killed.log"
    kill_second_process_once(launch(2, log, "extract-features", inputs, output, *options, delay=1.0), log, "feature")
    kept = {path.stem: path.read_bytes() for path in output.glob("*.npy")}
    assert 0 < len(kept) < len(ids)
    assert all(read_npy_header(output / f"{feature_id}.npy").complete for feature_id in kept)
    assert sorted(path.name for path in output.glob("extraction.rank*.jsonl")) == [
        "extraction.rank0.jsonl", "extraction.rank1.jsonl"
    ]  # fmt: skip

    log = tmp_path / "rerun.log"
    status, stderr = finish(launch(3, log, "extract-features", inputs, output, *options))
    assert status == 0, stderr[-3000:]
    assert f"{len(ids) - len(kept)} extracted, {len(kept)} already done" in stderr
    assert sorted(feature_id for _, feature_id in logged(log, "feature")) == sorted(set(ids) - set(kept))
    assert all((output / f"{feature_id}.npy").read_bytes() == data for feature_id, data in kept.items())

    extract_features(
        inputs, tmp_path / "straight", clip=str(frame_encoder_path), workers=0, num_frames=20, batch_size=16,
        progress=False,
    )  # fmt: skip
    assert folder_files(output) == folder_files(tmp_path / "straight")  # no record file nor temporary is left


def test_killed_evaluation_process_loses_nothing_and_one_process_finishes(
    checkpoint, tmp_path, run_cli, monkeypatch
):
    video_ids = [f"v{index}" for index in range(6)]
    features = write_features(tmp_path / "features", video_ids)
    queries = write_queries(tmp_path / "queries.jsonl", video_ids, per_video=2)
    total = 2 * len(video_ids)
    argv = ["evaluate", "grounding", "--model", checkpoint, "--features", features, "--annotations", queries,
            "--max-new-tokens", 4, "--batch-size", 1]  # fmt: skip
    results = tmp_path / "results.jsonl"
    log = tmp_path / "killed.log"
    # The probe logs a question before its answer is written: the second question of rank 1 follows the first answer
    kill_second_process_once(launch(2, log, *argv, "--out", results, delay=1.0), log, "ask", count=2)
    answered = [record for path in tmp_path.glob("results.rank*.jsonl") for record in read_jsonl_records(path)]
    assert 0 < len(answered) < total and not results.exists()

    asked = []
    original = evaluation_runs.generate_answers

    def counting(model, processor, conversations, features, **kwargs):
        asked.extend(conversation[-1]["content"][-1]["text"] for conversation in conversations)
        return original(model, processor, conversations, features, **kwargs)

    monkeypatch.setattr(evaluation_runs, "generate_answers", counting)
    status, _, err = run_cli(*argv, "--out", results)
    assert status == 0 and f"{total} queries answered in {results} ({len(answered)} by an earlier run)" in err
    assert len(asked) == total - len(answered)
    assert not {f"During which frames can we see {record['query']}?" for record in answered} & set(asked)
    assert not list(tmp_path.glob("results.rank*"))

    status, _, _ = run_cli(*argv, "--out", tmp_path / "straight.jsonl")
    assert status == 0
    assert results.read_bytes() == (tmp_path / "straight.jsonl").read_bytes()


def test_error_in_one_process_stops_no_other_and_the_rerun_answers_the_rest(checkpoint, tmp_path, run_cli):
    video_ids = ["v0", "v1", "v2", "v3"]
    # v1, the first video of the second process's share, has no features
    features = write_features(tmp_path / "features", ["v0", "v2", "v3"])
    queries = write_queries(tmp_path / "queries.jsonl", video_ids, per_video=2)
    argv = ["evaluate", "grounding", "--model", checkpoint, "--features", features, "--annotations", queries,
            "--max-new-tokens", 4]  # fmt: skip
    results = tmp_path / "results.jsonl"
    status, stderr = finish(launch(2, None, *argv, "--out", results), timeout=300)
    assert status != 0
    assert stderr.count("evaluate grounding: error: ") == 1, stderr[-3000:]
    assert f"error: process 1 of 2: FeatureNotFoundError: No feature 'v1' in {features}" in stderr
    # The first process answered its whole share, merged into the results; the second stopped at v1
    assert sorted({record["video_id"] for record in read_jsonl_records(results)}) == ["v0", "v2"]
    assert not list(tmp_path.glob("results.rank*"))

    write_features(tmp_path / "features", ["v1"], seed=1)
    status, _, err = run_cli(*argv, "--out", results)
    assert status == 0 and f"8 queries answered in {results} (4 by an earlier run)" in err
    status, _, _ = run_cli(*argv, "--out", tmp_path / "straight.jsonl")
    assert status == 0
    assert results.read_bytes() == (tmp_path / "straight.jsonl").read_bytes()
