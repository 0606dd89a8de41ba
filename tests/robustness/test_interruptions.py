"""A run killed with SIGKILL and started again ends where an uninterrupted run ends, and loses nothing it finished.

Feature extraction and training have their kill tests beside their other tests:
`tests/test_extract.py::test_killed_run_leaves_complete_files_and_resumes` and
`tests/test_training.py::test_resume_after_a_kill_ends_with_the_same_weights`. This file kills an evaluation.
"""

import json
import os
import signal
import subprocess
import sys
import time

from vtimellm_hf.evaluation_runs import keyed, read_jsonl_records

from .conftest import write_features, write_queries

VIDEO_IDS = ["v0", "v1", "v2", "v3"]


def complete_lines(path) -> int:
    return path.read_bytes().count(b"\n") if path.is_file() else 0


def test_killed_evaluation_resumes_to_the_answers_and_scores_of_an_uninterrupted_run(tmp_path, checkpoint, run_cli):
    features = write_features(tmp_path / "features", VIDEO_IDS)
    queries = write_queries(tmp_path / "queries.jsonl", VIDEO_IDS, per_video=4)
    total = 4 * len(VIDEO_IDS)
    options = ["--model", checkpoint, "--annotations", queries, "--features", features, "--batch-size", 1,
               "--max-new-tokens", 4]  # fmt: skip
    killed = tmp_path / "killed.jsonl"

    # `python -m vtimellm_hf.cli` is `vtimellm-hf`; its own session, so that SIGKILL reaches the whole group
    command = [sys.executable, "-m", "vtimellm_hf.cli", "evaluate", "grounding", *map(str, options), "--out", killed]
    stderr = tmp_path / "killed.stderr"
    with stderr.open("w") as log:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            while process.poll() is None and complete_lines(killed) == 0 and time.monotonic() < deadline:
                time.sleep(0.005)
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
        finally:
            process.wait()
    assert process.returncode == -signal.SIGKILL, f"ended before it could be killed:\n{stderr.read_text()[-2000:]}"
    answered_before = len(read_jsonl_records(killed))
    assert 0 < answered_before < total
    kept = killed.read_text(encoding="utf-8")

    status, _, err = run_cli("evaluate", "grounding", *options, "--out", killed)
    assert status == 0 and f"{total} queries answered in {killed} ({answered_before} by an earlier run)" in err
    assert killed.read_text(encoding="utf-8").startswith(kept)

    straight = tmp_path / "straight.jsonl"
    status, _, _ = run_cli("evaluate", "grounding", *options, "--out", straight)
    assert status == 0
    resumed_records, straight_records = read_jsonl_records(killed), read_jsonl_records(straight)
    assert len(resumed_records) == total
    assert dict(keyed(resumed_records)) == dict(keyed(straight_records))

    scores = []
    for results in (killed, straight):
        status, out, _ = run_cli("score", "grounding", "--predictions", results, "--annotations", queries)
        assert status == 0
        scores.append(json.loads(out.strip().splitlines()[-1]))
    assert scores[0] == scores[1] and scores[0]["n"] == total and scores[0]["missing"] == 0
