"""The pieces of a job of several processes that need no launcher: shares, record files, merges, errors.

Jobs launched with `torchrun` and `accelerate launch` are tested end to end in `robustness/test_processes.py`.
"""

import json
from types import SimpleNamespace

import pytest
import torch

from vtimellm_hf import distributed, evaluation_runs
from vtimellm_hf.distributed import Gathered, ProcessFailedError, Processes, job_status, process_files
from vtimellm_hf.evaluation_runs import evaluate_captioning, evaluate_grounding


@pytest.fixture
def environment(monkeypatch):
    """Sets the launcher's variables for `current_processes`, whose answer is cached per process."""

    def set_variables(**variables):
        for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
            monkeypatch.delenv(name, raising=False)
        for name, value in variables.items():
            monkeypatch.setenv(name, value)
        distributed.current_processes.cache_clear()

    yield set_variables
    distributed.current_processes.cache_clear()


def test_shares_are_disjoint_interleaved_and_cover_the_work():
    items = list(range(11))
    shares = [Processes(rank, 3).share(items) for rank in range(3)]
    assert shares == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8]]
    assert Processes(5, 8).share(items[:3]) == []  # more processes than work: some have none


def test_record_files_are_named_by_rank_and_found_in_rank_order(tmp_path):
    out = tmp_path / "results.jsonl"
    assert Processes().record_file(out) == out  # one process writes the file itself
    assert Processes(10, 12).record_file(out) == tmp_path / "results.rank10.jsonl"
    for name in ("results.rank10.jsonl", "results.rank2.jsonl", "results.rankx.jsonl", "other.rank1.jsonl",
                 "results.rank3.json"):  # fmt: skip
        (tmp_path / name).write_text("")
    assert process_files(out) == [tmp_path / "results.rank2.jsonl", tmp_path / "results.rank10.jsonl"]
    assert process_files(tmp_path / "absent" / "results.jsonl") == []


def test_the_launchers_variables_are_read_and_checked(environment):
    environment()
    assert distributed.current_processes() == Processes()
    environment(WORLD_SIZE="1", RANK="0", LOCAL_RANK="0")
    assert distributed.current_processes().world_size == 1
    for variables, message in [
        ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not an integer"),
        ({"WORLD_SIZE": "2", "LOCAL_RANK": "0"}, "WORLD_SIZE is set but RANK is not"),
        ({"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0"}, "RANK=2 is not within WORLD_SIZE=2"),
    ]:
        environment(**variables)
        with pytest.raises(ValueError, match=message):
            distributed.current_processes()


def test_devices_of_the_processes():
    assert Processes().device(None) == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert Processes(1, 2, 1, 2).device("cpu") == torch.device("cpu")
    if torch.cuda.device_count() < 2:
        with pytest.raises(ValueError, match="LOCAL_RANK=5, but this machine has"):
            Processes(5, 8, 5, 8).device("cuda")


def test_errors_of_a_step_are_raised_once_every_process_has_finished(capsys):
    # One process: the error itself, after the step; the values of the others are kept
    gathered = Processes().run_on_each(lambda: 1 / 0)
    assert gathered.errors == [(0, "ZeroDivisionError: division by zero")]
    with pytest.raises(ZeroDivisionError):
        Processes().raise_errors(gathered)
    assert Processes().run_on_each(lambda: 7).values == [7]
    # Several: every process raises one error naming each failed process
    gathered = Gathered([3, None, None], [(1, "ValueError: bad video"), (2, "OSError: disk full")])
    with pytest.raises(ProcessFailedError, match="^process 1 of 3: ValueError: bad video; process 2 of 3: OSError"):
        Processes(0, 3).raise_errors(gathered)
    Processes(0, 3).raise_errors(Gathered([1, 2, 3]))

    # A command's status: its own; the error of a step raised (for `cli.reports_errors` to print), once
    assert job_status(lambda processes: 1) == 1
    with pytest.raises(IndexError):
        job_status(lambda processes: Processes().raise_errors(Processes().run_on_each(lambda: [][1])))
    # The old name prints it, with a warning
    with pytest.warns(FutureWarning, match="distributed.command_status moved to vtimellm_hf.distributed.job_status"):
        status = distributed.command_status(
            "cmd", lambda processes: Processes().raise_errors(Processes().run_on_each(lambda: [][1])), (IndexError,)
        )
    assert status == 2 and "cmd: error: list index out of range" in capsys.readouterr().err


def fake_answers(monkeypatch, asked: list):
    """`evaluation_runs.generate_answers` answering "From 10 to 20." and recording the questions."""

    def generate_answers(model, processor, conversations, features, **kwargs):
        asked.extend(conversation[-1]["content"][-1]["text"] for conversation in conversations)
        return ["From 10 to 20."] * len(conversations)

    monkeypatch.setattr(evaluation_runs, "generate_answers", generate_answers)


def write_lines(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records))


def test_grounding_merges_the_files_a_killed_job_left_each_answer_once(tmp_path, monkeypatch):
    queries = [{"video_id": video, "query": query, "duration": 10.0}
               for video, query in [("v0", "a"), ("v1", "c"), ("v0", "a"), ("v0", "b")]]  # fmt: skip
    out = tmp_path / "results.jsonl"

    def record(video, query, answer, occurrence=None):
        extra = {} if occurrence is None else {"occurrence": occurrence}
        return {"video_id": video, "query": query, "timestamp": [1.0, 2.0], "answer": answer, "duration": 10.0,
                **extra}  # fmt: skip

    # A merge killed after it wrote the results and before it removed the processes' files: the first answer to
    # (v0, a) is in both; the second is only in the file of process 3
    write_lines(out, [record("v0", "a", "first")])
    write_lines(tmp_path / "results.rank0.jsonl", [record("v0", "a", "first", 0), record("v1", "c", "c", 0)])
    write_lines(tmp_path / "results.rank3.jsonl", [record("v0", "a", "second", 1)])
    asked = []
    fake_answers(monkeypatch, asked)
    processor = SimpleNamespace(num_frames=100)
    evaluate_grounding(None, processor, queries, out, lambda video: (torch.zeros(100, 8), None), question="{query}")
    assert asked == ["b"]
    # Grouped by video in the order of their first query, as one process answers them
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["video_id"], r["query"], r["answer"]) for r in records] == [
        ("v0", "a", "first"), ("v0", "a", "second"), ("v0", "b", "From 10 to 20."), ("v1", "c", "c")
    ]  # fmt: skip
    assert not process_files(out)

    write_lines(tmp_path / "results.rank1.jsonl", [record("v9", "z", "z", "first")])
    with pytest.raises(ValueError, match=r"results.rank1.jsonl, record 1: 'occurrence' must be a count"):
        evaluate_grounding(None, processor, queries, out, lambda video: (torch.zeros(100, 8), None))


def test_captioning_merges_the_files_a_killed_job_left_each_video_once(tmp_path, monkeypatch):
    videos = [{"video_id": video, "duration": 10.0} for video in ("v_a", "v_b", "v_c")]
    out = tmp_path / "preds.json"
    answer = {"duration": 10.0, "answer": "From 00 to 49, x.", "events": []}
    write_lines(tmp_path / "preds.answers.jsonl", [{"video_id": "v_b", **answer}])
    write_lines(tmp_path / "preds.answers.rank1.jsonl", [{"video_id": "v_b", **answer}, {"video_id": "v_a", **answer}])
    asked = []
    fake_answers(monkeypatch, asked)
    evaluate_captioning(None, SimpleNamespace(num_frames=100), videos, out, lambda video: (torch.zeros(100, 8), None))
    assert len(asked) == 1  # v_c
    lines = [json.loads(line)["video_id"] for line in (tmp_path / "preds.answers.jsonl").read_text().splitlines()]
    assert lines == ["v_a", "v_b", "v_c"] and list(json.loads(out.read_text())["results"]) == lines
    assert not process_files(tmp_path / "preds.answers.jsonl")


def test_python_dash_m_is_the_command_line():
    import subprocess
    import sys

    from vtimellm_hf import __version__

    # What `torchrun -m vtimellm_hf` and `accelerate launch -m vtimellm_hf` start in each process
    result = subprocess.run([sys.executable, "-m", "vtimellm_hf", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == f"vtimellm-hf {__version__}"
