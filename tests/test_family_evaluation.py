"""LongVALE's evaluation: its exact prompts, batched answers equal to one-at-a-time ones, resuming, skipped videos,
and the scores of hand-made answers."""

import json
import shutil

import pytest
import torch

from vtimellm_hf import longvale_streams
from vtimellm_hf.data.raw_annotations import Event, Video
from vtimellm_hf.family_evaluation import LONGVALE_QUESTIONS, evaluate_longvale, longvale_queries, score_longvale
from vtimellm_hf.tiny_models import build_tiny_vtime_model

VIDEOS = [
    Video("a", 100.0, (Event(10.0, 30.0, "A dog barks."), Event(50.0, 80.0, "A man sings loudly"))),
    Video("b", 50.0, (Event(0.0, 25.0, "Rain falls."),)),
    Video("gone", 20.0, (Event(0.0, 5.0, "Nothing."),)),
]


def rows(count, width, seed):
    return torch.randn(count, width, generator=torch.Generator().manual_seed(seed))


STREAMS = {
    "a": {"video": rows(100, 32, 0), "audio": rows(7, 16, 1), "speech": rows(5, 24, 2)},
    "b": {"video": rows(100, 32, 3), "audio": None, "speech": rows(3, 24, 4)},
}


def test_questions_are_longvales_word_for_word(processor):
    queries = longvale_queries(VIDEOS[:1])
    assert [(query["task"], query["sentence_id"]) for query in queries] == [
        ("captioning", None), ("grounding", 0), ("grounding", 1), ("seg_captioning", 0), ("seg_captioning", 1)]
    grounding, segment = queries[1]["question"], queries[3]["question"]
    assert grounding == ("At which time interval can we find a dog barks taking place in the video? Give the "
                         "timestamps in the fromat: From xx to xx.")  # fmt: skip
    assert segment == (" Can you describe what occurred from 10 to 30 in the video? Please give the event "
                       "description directly.")  # fmt: skip
    # The first question of each task (reversed: the first one written last)
    prompts = {query["task"]: processor.apply_chat_template([{"role": "user", "content": [
        {"type": "video"}, {"type": "text", "text": query["question"]}]}], add_generation_prompt=True)
        for query in reversed(queries)}  # fmt: skip
    # The space after "<video>\n" in both captioning prompts, none in grounding's
    assert "USER: <video>\n Could you please detail the events" in prompts["captioning"]
    assert prompts["captioning"].endswith(LONGVALE_QUESTIONS["captioning"] + " ASSISTANT:")
    assert "USER: <video>\nAt which time interval" in prompts["grounding"]
    assert "USER: <video>\n Can you describe what occurred from 10 to 30" in prompts["seg_captioning"]


@pytest.fixture(scope="module")
def longvale_model(tokenizer):
    return build_tiny_vtime_model(tokenizer, feature_streams=longvale_streams(32, 16, 24), stream_layout="concat")


def test_batched_resumable_answers(longvale_model, processor, tmp_path, caplog):
    one_by_one = evaluate_longvale(longvale_model, processor, VIDEOS, tmp_path / "one.jsonl", STREAMS.get,
                                   batch_size=1, max_new_tokens=6)  # fmt: skip
    records = [json.loads(line) for line in one_by_one.read_text().splitlines()]
    assert [(r["task"], r["video_id"], r["sentence_id"]) for r in records] == [
        ("captioning", "a", None), ("grounding", "a", 0), ("grounding", "a", 1), ("seg_captioning", "a", 0),
        ("seg_captioning", "a", 1), ("captioning", "b", None), ("grounding", "b", 0), ("seg_captioning", "b", 0)]
    assert "have no video features and were skipped" in caplog.text and "gone" in caplog.text
    batched = evaluate_longvale(longvale_model, processor, VIDEOS, tmp_path / "batched.jsonl", STREAMS.get,
                                batch_size=4, max_new_tokens=6)  # fmt: skip
    # Left padding with positions from each prompt's start: a prompt's answer does not depend on its batch
    assert [json.loads(line) for line in batched.read_text().splitlines()] == records

    # A killed run: two answers lost, a third cut mid-line; the rerun asks those three again, and nothing else
    lines = batched.read_text().splitlines(keepends=True)
    batched.write_text("".join(lines[:5]) + lines[5][:20])
    asked = []

    def counting(video_id):
        asked.append(video_id)
        return STREAMS.get(video_id)

    evaluate_longvale(longvale_model, processor, VIDEOS, batched, counting, batch_size=4, max_new_tokens=6)
    assert [json.loads(line) for line in batched.read_text().splitlines()] == records
    assert asked == ["b", "gone"]


def test_scores_of_hand_made_answers(tmp_path):
    answers = [
        {"task": "grounding", "video_id": "a", "sentence_id": 0, "answer": "From 10 to 30."},   # IoU 1
        {"task": "grounding", "video_id": "a", "sentence_id": 1, "answer": "From 50 to 65."},   # 15 / 30
        {"task": "grounding", "video_id": "b", "sentence_id": 0, "answer": "I cannot tell."},   # unparsed: 0
    ]
    path = tmp_path / "answers.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in answers))
    scores = score_longvale(path, VIDEOS)
    assert scores["grounding"]["miou"] == pytest.approx(100 * 1.5 / 3)
    assert scores["grounding"]["r1@0.5"] == pytest.approx(100 * 2 / 3)
    assert scores["grounding"]["r1@0.7"] == pytest.approx(100 / 3)
    assert scores["grounding"]["unparsed"] == 1


@pytest.mark.skipif(shutil.which("java") is None, reason="METEOR and the PTB tokenizer run on Java")
def test_segment_captioning_pairs_by_event(tmp_path):
    pytest.importorskip("pycocoevalcap")
    answers = [{"task": "seg_captioning", "video_id": "a", "sentence_id": 0, "answer": "A dog barks."},
               {"task": "seg_captioning", "video_id": "a", "sentence_id": 1, "answer": "A man sings loudly."}]
    path = tmp_path / "answers.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in answers))
    scores = score_longvale(path, VIDEOS)["seg_captioning"]
    assert scores["n"] == 2 and scores["bleu4"] == pytest.approx(100, abs=1e-3)
    assert scores["rouge_l"] == pytest.approx(100)
    swapped = [{**answers[0], "answer": answers[1]["answer"]}, {**answers[1], "answer": answers[0]["answer"]}]
    path.write_text("".join(json.dumps(record) + "\n" for record in swapped))
    assert score_longvale(path, VIDEOS)["seg_captioning"]["rouge_l"] < 50
    path.write_text(json.dumps(answers[0]) + "\n")
    with pytest.raises(ValueError, match=r"1 reference\(s\) without a prediction, for instance \('a', 1\)"):
        score_longvale(path, VIDEOS)


def test_stream_loader_reads_three_folders(tmp_path):
    from vtimellm_hf.data.features import NpyFeatureStore, write_feature
    from vtimellm_hf.family_evaluation import longvale_stream_loader

    folders = {name: tmp_path / name for name in ("video", "audio", "speech")}
    for folder in folders.values():
        folder.mkdir()
    write_feature(folders["video"] / "a.npy", STREAMS["a"]["video"].numpy().astype("float16"))
    write_feature(folders["speech"] / "a.npy", STREAMS["a"]["speech"].numpy().astype("float16"))
    load = longvale_stream_loader(*(NpyFeatureStore(folder) for folder in folders.values()))
    streams = load("a")
    assert streams["audio"] is None and streams["speech"].shape == (5, 24) and streams["video"].dtype == torch.float32
    assert load("b") is None


@pytest.mark.skipif(shutil.which("java") is None, reason="METEOR and the PTB tokenizer run on Java")
def test_dense_captioning_merges_neighbours_then_converts_indices(tmp_path):
    pytest.importorskip("pycocoevalcap")
    from vtimellm_hf.metrics.captioning import score_captioning

    # Two near-identical neighbours (one index apart) are one event; LongVALE's seconds: start * d / 100,
    # (end + 1) * d / 100, with d = 100 s for video a
    answer = "From 10 to 20, a dog barks.\nFrom 21 to 29, a dog barks.\nFrom 50 to 79, a man sings loudly."
    path = tmp_path / "answers.jsonl"
    path.write_text(json.dumps({"task": "captioning", "video_id": "a", "sentence_id": None, "answer": answer}) + "\n")
    by_hand = {"results": {"a": [{"sentence": "a dog barks.", "timestamp": [10.0, 30.0]},
                                 {"sentence": "a man sings loudly.", "timestamp": [50.0, 80.0]}]}}  # fmt: skip
    scores = score_longvale(path, VIDEOS)["captioning"]
    assert scores == pytest.approx(score_captioning(by_hand, VIDEOS[:1]))
    assert scores["soda_c"] > 50  # the merged events match the references


def test_evaluate_and_score_longvale_from_the_command_line(longvale_model, processor, tmp_path, capsys):
    from vtimellm_hf import cli
    from vtimellm_hf.checkpoints import save_model_folder
    from vtimellm_hf.data.features import write_feature

    save_model_folder(longvale_model, processor, tmp_path / "model")
    annotations = tmp_path / "longvale.json"
    annotations.write_text(json.dumps({video.video_id: {"duration": video.duration, "timestamps": [
        [event.start, event.end] for event in video.events], "sentences": [event.sentence for event in video.events]}
        for video in VIDEOS}))  # fmt: skip
    for name in ("video", "audio", "speech"):
        (tmp_path / name).mkdir()
        for video_id, streams in STREAMS.items():
            if streams[name] is not None:
                write_feature(tmp_path / name / f"{video_id}.npy", streams[name].numpy().astype("float16"))
    out = tmp_path / "answers.jsonl"
    status = cli.main(["evaluate", "longvale", "--model", str(tmp_path / "model"), "--annotations", str(annotations),
                       "--features", str(tmp_path / "video"), "--audio-features", str(tmp_path / "audio"),
                       "--speech-features", str(tmp_path / "speech"), "--out", str(out), "--tasks", "grounding",
                       "--max-new-tokens", "4", "--device", "cpu"])  # fmt: skip
    assert status == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["video_id"], r["sentence_id"]) for r in records] == [("a", 0), ("a", 1), ("b", 0)]
    capsys.readouterr()
    assert cli.main(["score", "longvale", "--answers", str(out), "--annotations", str(annotations)]) == 0
    scores = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert set(scores) == {"grounding"} and scores["grounding"]["n"] == 3
