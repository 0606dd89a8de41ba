"""The lmms-eval plugin (`lmms-eval --model vtimellm`): what it asks and replies, that it imports without lmms-eval,
and, where lmms-eval is installed (`make test` installs it), a real `lmms-eval` run over the Charades-STA queries
of the real video whose scores, computed by lmms-eval's own Charades-STA code, equal those of
`vtimellm-hf evaluate grounding` + `score grounding --exact-iou` on the same model and queries.

Where the two scorers' conventions differ (the test of lmms-eval's metric code below shows each):
* `score grounding` rounds each IoU to 2 decimals by default, as VTimeLLM's script and paper; lmms-eval scores
  the exact IoU (`--exact-iou` here).
* lmms-eval reads any two numbers of a reply as seconds, and swaps a reversed pair; the raw answer "From 05 to
  23." would be read as 5 - 23 s, hence the plugin's replies in seconds, and VTimeLLM's reading scores a reversed
  first pair 0, hence the plugin's reply without a number for it.
* `score grounding` clips a prediction to [0, duration] when the reference knows the duration; lmms-eval does
  not clip. The plugin's moments lie within [0, 0.99 x duration], so this never applies to its replies.
"""

import configparser
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vtimellm_hf import cli, parse_grounding_answer
from vtimellm_hf.data.raw_annotations import GroundingQuery
from vtimellm_hf.checkpoints import load_model_and_processor
from vtimellm_hf.integrations.lmms_eval import (
    GROUNDING_LAYOUTS,
    answer_requests,
    grounding_reply,
    read_request,
)
from vtimellm_hf.metrics import score_grounding

from .conftest import ANSWERS, QUERIES, VIDEO_ID

REPO_ROOT = Path(__file__).resolve().parents[2]
CHARADES_SETTINGS = {"max_new_tokens": 50, "temperature": 0, "top_p": 1.0, "num_beams": 1, "do_sample": False}


def test_the_plugin_imports_without_lmms_eval():
    # `None` in sys.modules makes `import lmms_eval` fail, as where it is not installed
    code = (
        "import sys; sys.modules['lmms_eval'] = None\n"
        "import vtimellm_hf.integrations.lmms_eval as plugin\n"
        "try:\n    plugin.manifest()\nexcept ImportError:\n    print('manifest needs lmms-eval')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "manifest needs lmms-eval"


def test_the_entry_point_names_the_manifest():
    config = configparser.ConfigParser()
    config.read(REPO_ROOT / "setup.cfg")
    entry_points = config["options.entry_points"]["lmms_eval.models"].split()
    assert entry_points == ["vtimellm", "=", "vtimellm_hf.integrations.lmms_eval:manifest"]
    module, name = entry_points[2].split(":")
    assert callable(getattr(importlib.import_module(module), name))


@pytest.mark.parametrize(("query_field", "moment_field"), GROUNDING_LAYOUTS)
def test_a_grounding_document_is_asked_its_query(query_field, moment_field):
    doc = {query_field: "person turn a light on.", moment_field: [24.3, 30.4], "video": "v.mp4"}
    request = read_request("Please find ... Now: person turn a light on.. Please", CHARADES_SETTINGS, ["v.mp4"], doc)
    assert request.query == "person turn a light on."
    # lmms-eval's greedy settings: temperature and top_p only matter when sampling
    assert dict(request.generation) == {"do_sample": False, "max_new_tokens": 50, "num_beams": 1}
    assert request.until == ()


def test_other_documents_are_asked_the_tasks_text():
    settings = {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "until": "\n\n"}
    request = read_request("What happens?", settings, ["v.mp4"], {"question": "What happens?"})
    assert request.query is None and request.text == "What happens?"
    assert dict(request.generation) == {"do_sample": True, "temperature": 0.7, "top_p": 0.9}
    assert request.until == ("\n\n",)


@pytest.mark.parametrize("visuals", [[], ["a.mp4", "b.mp4"], [object()]])
def test_a_request_must_show_one_video_by_its_path(visuals):
    with pytest.raises(ValueError, match="VTimeLLM answers about one video given by its path; this request shows"):
        read_request("q", {}, visuals, {})


def test_grounding_replies_give_the_exact_seconds_of_the_grounding_convention():
    # 31 s: index 70 is 70 / 100 x 31 = 21.7 and 90 is 27.900000000000002 in floating point, written as such
    assert grounding_reply("From 70 to 90.", 31.0) == "The event happens in 21.7 - 27.900000000000002 seconds."
    for answer in ANSWERS:
        start, end = (int(answer[5:7]), int(answer[11:13]))
        numbers = grounding_reply(answer, 31.0).removeprefix("The event happens in ").removesuffix(" seconds.")
        assert [float(number) for number in numbers.split(" - ")] == [start / 100 * 31.0, end / 100 * 31.0]
    # No moment, or a reversed first pair (VTimeLLM's reading scores it 0): no number lmms-eval could read
    for answer in ["I cannot tell.", "From 40 to 10.", ""]:
        assert not any(character.isdigit() for character in grounding_reply(answer, 31.0))


def test_answers_come_back_in_request_order_and_a_broken_video_loses_only_its_own(
    answering_checkpoint, charades_video, tmp_path, caplog
):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    model, processor = load_model_and_processor(str(answering_checkpoint), device="cpu")
    docs = [{"caption": query, "timestamp": [24.3, 30.4]} for query in QUERIES]
    videos = [charades_video, broken, charades_video, charades_video]
    requests = [
        read_request("", CHARADES_SETTINGS, [str(video)], doc) for video, doc in zip(videos, docs, strict=True)
    ]
    batches = []
    replies = answer_requests(model, processor, requests, batch_size=2, progress=batches.append)
    expected = [grounding_reply(answer, 31.0) for answer in ANSWERS]
    assert replies == [expected[0], "", expected[2], expected[3]]
    assert batches == [2, 2] and "broken.mp4" in caplog.text
    missing = read_request("", CHARADES_SETTINGS, [str(tmp_path / "missing.mp4")], docs[0])
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        answer_requests(model, processor, [missing])


@pytest.fixture
def lmms_eval_scoring():
    """lmms-eval's Charades-STA and TimeLens scoring modules. Importing lmms-eval sets Pillow's
    `LOAD_TRUNCATED_IMAGES` for the whole process (`lmms_eval/api/task.py`); the flag is put back afterwards, or
    this package's tests of truncated images would decode them."""
    from PIL import ImageFile

    flag = ImageFile.LOAD_TRUNCATED_IMAGES
    charades = pytest.importorskip("lmms_eval.tasks.charades_sta.utils", reason="lmms-eval is not installed")
    yield charades, importlib.import_module("lmms_eval.tasks.timelens.utils")
    ImageFile.LOAD_TRUNCATED_IMAGES = flag


def test_lmms_evals_charades_metric_and_score_grounding_agree_where_their_conventions_do(lmms_eval_scoring):
    charades, timelens = lmms_eval_scoring
    # (answer, reference start, end, video duration): IoU 0.977, 0.414, 0 and 0.5045 at 31 s, no moment, a
    # reversed first pair, and 7 / 10.05 = 0.6965 (0.70 once rounded) at 100 s
    cases = [
        ("From 78 to 98.", 24.3, 30.4, 31.0),
        ("From 70 to 90.", 24.3, 30.4, 31.0),
        ("From 10 to 40.", 24.3, 30.4, 31.0),
        ("From 60 to 99.", 24.3, 30.4, 31.0),
        ("I cannot tell.", 24.3, 30.4, 31.0),
        ("From 40 to 10.", 24.3, 30.4, 31.0),
        ("From 00 to 07.", 0.0, 10.05, 100.0),
    ]
    replies, predictions, references = {}, [], []
    for number, (answer, start, end, duration) in enumerate(cases):
        query = f"query {number}"
        replies[f"{VIDEO_ID}.mp4>>>{query}>>>{[start, end]}"] = grounding_reply(answer, duration)
        moment = parse_grounding_answer(answer, duration)  # what `evaluate grounding` writes
        predictions.append({"video_id": VIDEO_ID, "query": query, "timestamp": moment})
        references.append(GroundingQuery(VIDEO_ID, query, start, end, duration))
    theirs = charades._temporal_grounding_compute_metrics([replies])
    exact = score_grounding(predictions, references, iou_decimals=None)
    assert [theirs["IOU@3"], theirs["IOU@5"], theirs["IOU@7"]] == [exact["r1@0.3"], exact["r1@0.5"], exact["r1@0.7"]]
    assert theirs["mIOU"] == pytest.approx(exact["miou"], rel=1e-12)  # two IoU formulas, equal up to the last bit
    assert exact["unparsed"] == 2 and exact["r1@0.7"] == pytest.approx(100 / 7)
    rounded = score_grounding(predictions, references)
    assert rounded["r1@0.7"] == pytest.approx(200 / 7)  # 0.6965 counts at 0.7 once rounded to 0.70
    # lmms-eval reads a reversed pair in order, and a raw frame-index answer as seconds
    assert charades.extract_time("The event happens in 30.4 - 24.3 seconds.") == [[24.3, 30.4]]
    assert charades.extract_time("From 05 to 23.") == [[5.0, 23.0]]
    # The TimeLens tasks read the same replies
    assert timelens.extract_time(grounding_reply("From 70 to 90.", 31.0)) == [(0.7 * 31.0, 0.9 * 31.0)]
    assert timelens.extract_time(grounding_reply("From 40 to 10.", 31.0)) == []


@pytest.mark.slow
def test_lmms_eval_runs_vtimellm_on_the_real_charades_queries(answering_checkpoint, charades_video, tmp_path):
    pytest.importorskip("lmms_eval", reason="lmms-eval is not installed (`make test` installs it)")
    queries = tmp_path / "queries.jsonl"
    references = (charades_video.parents[1] / "charades_sta_test.txt").read_text().splitlines()[: len(QUERIES)]
    assert [line.split("##")[1] for line in references] == QUERIES
    queries.write_text(
        "".join(json.dumps({"video": str(charades_video), "caption": query, "timestamp": [24.3, 30.4]}) + "\n"
                for query in QUERIES)
    )  # fmt: skip
    task = write_local_charades_task(tmp_path / "task", queries)
    environment = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    command = [
        str(Path(sys.executable).with_name("lmms-eval")), "--model", "vtimellm",
        "--model_args", f"pretrained={answering_checkpoint}", "--tasks", "vtimellm_charades_3msza",
        "--include_path", str(task), "--batch_size", "4", "--device", "cpu", "--log_samples",
        "--output_path", str(tmp_path / "out"), "--verbosity", "WARNING",
    ]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads(next((tmp_path / "out").rglob("*_results.json")).read_text())["results"]
    theirs = {name.split(",")[0]: value for name, value in results["vtimellm_charades_3msza"].items()}
    samples = [json.loads(line) for line in next((tmp_path / "out").rglob("*_samples_*.jsonl")).open()]
    # The replies: each query's trained answer, in seconds of the 31 s video
    replies = {sample["doc_id"]: sample["filtered_resps"] for sample in samples}
    assert [replies[number] for number in range(len(QUERIES))] == [grounding_reply(answer, 31.0) for answer in ANSWERS]

    # The same model and queries through this package's own evaluation
    annotations = tmp_path / "charades_sta_3msza.txt"
    annotations.write_text("\n".join(references) + "\n")
    predictions = tmp_path / "results.jsonl"
    evaluate = ["evaluate", "grounding", "--model", answering_checkpoint, "--annotations", annotations,
                "--videos", charades_video.parent, "--out", predictions, "--device", "cpu"]  # fmt: skip
    assert cli.main([str(argument) for argument in evaluate]) == 0
    ours = score_grounding_command(predictions, annotations)
    assert ours["n"] == len(QUERIES) and ours["unparsed"] == 0
    # IoUs 0.977, 0.414, 0 and 0.5045 (conftest.ANSWERS)
    assert [theirs[f"charades_sta_IOU@{tenths}"] for tenths in (3, 5, 7)] == [75.0, 50.0, 25.0]
    assert [ours["r1@0.3"], ours["r1@0.5"], ours["r1@0.7"]] == [75.0, 50.0, 25.0]
    assert theirs["charades_sta_mIOU"] == pytest.approx(ours["miou"], rel=1e-12)


def score_grounding_command(predictions: Path, annotations: Path) -> dict:
    """`vtimellm-hf score grounding --exact-iou`: its JSON line of scores."""
    run = subprocess.run(
        [sys.executable, "-m", "vtimellm_hf.cli", "score", "grounding", "--predictions", str(predictions),
         "--annotations", str(annotations), "--exact-iou"],
        capture_output=True, text=True, cwd=REPO_ROOT,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


def write_local_charades_task(folder: Path, queries: Path) -> Path:
    """An lmms-eval task (`--include_path folder`) over `queries`, scored by lmms-eval's own Charades-STA code:
    `temporal_grounding_charades` with its documents read from a local file and its videos given by path."""
    folder.mkdir()
    metrics = "".join(
        f"  - metric: charades_sta_{name}\n    aggregation: !function utils.temporal_grounding_aggregate_{suffix}\n"
        "    higher_is_better: true\n"
        for name, suffix in [("IOU@3", "iou3"), ("IOU@5", "iou5"), ("IOU@7", "iou7"), ("mIOU", "miou")]
    )
    settings = "".join(f"  {name}: {json.dumps(value)}\n" for name, value in CHARADES_SETTINGS.items())
    (folder / "vtimellm_charades_3msza.yaml").write_text(
        "task: vtimellm_charades_3msza\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {queries}\n"
        "test_split: test\n"
        "output_type: generate_until\n"
        f"generation_kwargs:\n{settings}"
        "doc_to_visual: !function utils.doc_to_visual\n"
        "doc_to_text: !function utils.temporal_grounding_doc_to_text\n"
        "doc_to_target: !function utils.temporal_grounding_doc_to_answer\n"
        "process_results: !function utils.temporal_grounding_process_results_generation\n"
        f"metric_list:\n{metrics}"
    )
    (folder / "utils.py").write_text(
        "from lmms_eval.tasks.charades_sta.utils import (  # noqa: F401\n"
        "    temporal_grounding_aggregate_iou3, temporal_grounding_aggregate_iou5, temporal_grounding_aggregate_iou7,\n"
        "    temporal_grounding_aggregate_miou, temporal_grounding_doc_to_answer, temporal_grounding_doc_to_text,\n"
        "    temporal_grounding_process_results_generation,\n"
        ")\n\n\n"
        "def doc_to_visual(doc):\n"
        "    return [doc['video']]\n"
    )
    return folder
