"""Inference and evaluation end to end through the command line, on tiny models built here.

Two checkpoints: the random tiny model of the fixtures (its answers are noise: what batching must not change) and
the same model trained for a few seconds to answer every grounding question "From 05 to 23." and every captioning
question with two fixed events, whatever the video (what the timestamps, plots and scores are checked on).
"""

import io
import json

import numpy as np
import pytest
import torch

from vtimellm_hf import VTimeProcessor, cli, evaluation_runs, inference
from vtimellm_hf.data.synthetic import encode_mp4
from vtimellm_hf.evaluation import read_grounding_annotations
from vtimellm_hf.evaluation_runs import read_jsonl_records
from vtimellm_hf.inference import CAPTIONING_QUESTION, GROUNDING_QUESTION, generate_answers, user_turn
from vtimellm_hf.metrics import captioning as captioning_metrics
from vtimellm_hf.tiny_models import build_tiny_vtime_model
from vtimellm_hf.training.collator import VTimeDataCollator

GROUNDING_ANSWER = "From 05 to 23."
CAPTIONING_ANSWER = "From 00 to 49, a red circle appears. From 50 to 99, a woman counts money."
QUERIES = ["a man opens the door", "person turn a light on", "the woman counts money", "two people shake hands"]
# Asked in the chat tests: trained too, the tiny model does not carry its answer over to unseen queries reliably
CHAT_QUERIES = ["a dog", "a light"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# Tiny models run faster on one thread than on two contended ones, and the answers do not depend on it
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def run(monkeypatch, capsys):
    """`run(*argv) -> (status, stdout, stderr)` through `vtimellm_hf.cli.main` with this module's commands."""
    modules = [
        name for name in ("vtimellm_hf.inference", "vtimellm_hf.evaluation") if name not in cli.SUBCOMMAND_MODULES
    ]
    monkeypatch.setattr(cli, "SUBCOMMAND_MODULES", [*cli.SUBCOMMAND_MODULES, *modules])

    def run_cli(*argv):
        capsys.readouterr()
        status = cli.main([str(arg) for arg in argv])
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    return run_cli


@pytest.fixture
def random_checkpoint(tmp_path, model, processor):
    folder = tmp_path / "random"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def trained_checkpoint(one_torch_thread, tmp_path_factory, tokenizer, frame_encoder_path):
    """The tiny model trained to give fixed, parseable answers whatever the video."""
    model = build_tiny_vtime_model(tokenizer)
    # Blind to the video (its projector gives zeros), so that real and generated videos get the trained answers
    model.model.mm_projector.weight.data.zero_()
    model.model.mm_projector.bias.data.zero_()
    model.model.mm_projector.requires_grad_(False)
    processor = VTimeProcessor(tokenizer=tokenizer, frame_encoder_name_or_path=str(frame_encoder_path), frame_size=32)
    dialogues = [(GROUNDING_QUESTION.format(query=query), GROUNDING_ANSWER) for query in QUERIES + CHAT_QUERIES]
    dialogues.append((CAPTIONING_QUESTION, CAPTIONING_ANSWER))
    collator = VTimeDataCollator(processor, feature_store=None)
    encoded = [
        collator.encode({"messages": [{"role": "user", "content": f"<video>\n{question}"},
                                      {"role": "assistant", "content": answer}]})
        for question, answer in dialogues
    ]  # fmt: skip
    width = max(len(sample["input_ids"]) for sample in encoded)
    input_ids = torch.full((len(encoded), width), tokenizer.pad_token_id)
    labels = torch.full((len(encoded), width), -100)
    attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, sample in enumerate(encoded):
        length = len(sample["input_ids"])
        input_ids[row, :length] = torch.tensor(sample["input_ids"])
        labels[row, :length] = torch.tensor(sample["labels"])
        attention_mask[row, :length] = 1
    optimizer = torch.optim.Adam([parameter for parameter in model.parameters() if parameter.requires_grad], lr=1e-2)
    steps = 70
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 1e-2, total_steps=steps)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        features = torch.randn(len(encoded), 100, model.config.mm_hidden_size, generator=generator)
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, video_features=features).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    folder = tmp_path_factory.mktemp("trained") / "checkpoint"
    model.eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory):
    """Two generated videos of 4 s (40 frames at 10 fps): `clip0.mp4`, `clip1.mp4`."""
    folder = tmp_path_factory.mktemp("videos")
    rng = np.random.default_rng(0)
    for index in range(2):
        frames = np.repeat(rng.integers(0, 256, (40, 1, 1, 3), dtype=np.uint8), 48, axis=1).repeat(64, axis=2)
        encode_mp4(folder / f"clip{index}.mp4", frames, fps=10)
    return folder


def write_features(folder, video_ids, size=32, seed=0):
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    for video_id in video_ids:
        np.save(folder / f"{video_id}.npy", rng.standard_normal((100, size)).astype(np.float16))
    return folder


def write_lines(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def last_json(stdout):
    return json.loads(stdout.strip().splitlines()[-1])


def by_key(records):
    return dict(evaluation_runs.keyed(records))


def spy(monkeypatch, name, record, owner=inference):
    """Replaces `owner.<name>` (a function of `inference` by default) by a wrapper that calls `record(*args)` before it."""
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        record(*args)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)


# Generation


def test_batched_answers_equal_one_at_a_time(model, processor):
    generator = torch.Generator().manual_seed(0)
    videos = [torch.randn(100, model.config.mm_hidden_size, generator=generator) for _ in range(3)]
    # Several questions per video, of different lengths, in a batch that mixes videos
    conversations = [[user_turn(GROUNDING_QUESTION.format(query=query))] for query in QUERIES * 2]
    features = [videos[index % 3] for index in range(len(conversations))]
    alone = generate_answers(model, processor, conversations, features, batch_size=1, max_new_tokens=12)
    assert generate_answers(model, processor, conversations, features, batch_size=5, max_new_tokens=12) == alone
    assert len(set(alone)) > 1, "the random model should say different things about different prompts"


def test_shared_video_prompts_run_once_per_video_and_answer_the_same(model, processor, monkeypatch):
    prefixes = []
    spy(monkeypatch, "_prefix_cache", lambda model, prefix_ids, videos, video_of_row: prefixes.append(len(videos)))
    generator = torch.Generator().manual_seed(1)
    videos = [torch.randn(100, model.config.mm_hidden_size, generator=generator) for _ in range(2)]
    conversations = [[user_turn(GROUNDING_QUESTION.format(query=query))] for query in QUERIES * 2]
    features = [videos[index // 4] for index in range(len(conversations))]
    alone = generate_answers(model, processor, conversations, features, batch_size=1, max_new_tokens=12)
    assert prefixes == []  # one row per batch: nothing is shared
    shared = generate_answers(model, processor, conversations, features, batch_size=6, max_new_tokens=12)
    assert shared == alone
    # Batches [4 + 2 rows of 2 videos], [2 rows of 1 video]: the prompt start ran for 2 and then 1 video
    assert prefixes == [2, 1]


def test_read_jsonl_records_keeps_finished_work(tmp_path):
    results = tmp_path / "results.jsonl"
    results.write_text('{"video_id": "a", "query": "q"}\n{"video_id": "b", "query": "q"}\n{"video_id": "c", "qu')
    assert [record["video_id"] for record in read_jsonl_records(results, ("video_id", "query"))] == ["a", "b"]
    assert results.read_text().endswith('"b", "query": "q"}\n')
    results.write_text('{"video_id": "a", "query": "q"}\nnot json\n{"video_id": "b", "query": "q"}\n')
    with pytest.raises(ValueError, match=r"results.jsonl, line 2: not a JSON record"):
        read_jsonl_records(results)
    results.write_text('{"video_id": "a", "query": "q"}')
    assert len(read_jsonl_records(results)) == 1 and results.read_text().endswith("}\n")


# ground, caption, chat


def test_ground_caption_and_plots_on_a_generated_video(run, trained_checkpoint, video_dir, tmp_path):
    video = video_dir / "clip0.mp4"
    status, out, _ = run("ground", video, "a man opens the door", "--model", trained_checkpoint, "--verbose",
                         "--plot", tmp_path / "ground.png")  # fmt: skip
    assert status == 0
    # 4 s video: frames 05 and 23 of 100 are 0.20 s and 0.92 s (grounding convention)
    assert out.splitlines() == [f"answer: {GROUNDING_ANSWER}", "0.20 s - 0.92 s"]
    assert (tmp_path / "ground.png").read_bytes().startswith(PNG_MAGIC)

    status, out, _ = run("ground", video, "a man opens the door", "--model", trained_checkpoint, "--window", 1, 3)
    assert (status, out.strip()) == (0, "1.10 s - 1.46 s")  # inside the 2 s window that starts at 1 s

    status, out, _ = run("caption", video, "--model", trained_checkpoint, "--plot", tmp_path / "caption.png")
    assert status == 0
    # Captioning convention: the end index counts its whole frame, (49 + 1) / 100 of 4 s
    assert out.splitlines() == [
        "   0.00 s -    2.00 s  a red circle appears",
        "   2.00 s -    4.00 s  a woman counts money",
    ]
    assert (tmp_path / "caption.png").read_bytes().startswith(PNG_MAGIC)


def test_ground_says_when_the_answer_names_no_moment(run, random_checkpoint, video_dir):
    status, out, err = run("ground", video_dir / "clip0.mp4", "a dog", "--model", random_checkpoint,
                           "--max-new-tokens", 4)  # fmt: skip
    assert status == 3 and out.startswith("answer: ") and "names no moment" in err
    status, _, err = run("ground", video_dir / "clip0.mp4", "a dog", "--model", random_checkpoint, "--temperature", 0.5)
    assert status == 2 and "add --do-sample" in err


def test_a_grounding_question_without_query_is_refused_by_every_command(capsys):
    parser = cli.build_parser()
    commands = (["ground", "video.mp4", "a dog"], ["evaluate", "grounding", "--annotations", "a.jsonl", "--videos", "v",
                                                    "--out", "o.jsonl"])  # fmt: skip
    for command in commands:
        assert parser.parse_args([*command, "--model", "m"]).question == GROUNDING_QUESTION
        with pytest.raises(SystemExit):
            parser.parse_args([*command, "--model", "m", "--question", "When does it happen?"])
        assert "argument --question: must hold {query}, got 'When does it happen?'" in capsys.readouterr().err
    # The captioning question is a question, not a template
    args = parser.parse_args(["caption", "video.mp4", "--model", "m", "--question", "What happens?"])
    assert args.question == "What happens?"


def test_chat_keeps_the_conversation(run, trained_checkpoint, video_dir, monkeypatch):
    asked = []
    spy(
        monkeypatch,
        "generate_answers",
        lambda model, processor, conversations, features: asked.append(conversations[0][:]),
    )
    monkeypatch.setattr("sys.stdin", io.StringIO(
        f"{GROUNDING_QUESTION.format(query='a dog')}\n\nAnd when does the man open the door?\nexit\nnever read\n"
    ))  # fmt: skip
    status, out, _ = run("chat", video_dir / "clip1.mp4", "--model", trained_checkpoint, "--max-new-tokens", 12)
    assert status == 0
    assert out.splitlines()[0] == f"{GROUNDING_ANSWER}  [0.2-0.9 s]"
    # The second question is asked with the first exchange before it; only the first turn carries the video
    first, second = asked
    assert len(first) == 1 and [turn["role"] for turn in second] == ["user", "assistant", "user"]
    assert second[1]["content"][0]["text"] == GROUNDING_ANSWER
    assert [block["type"] for block in second[2]["content"]] == ["text"]


def test_commands_on_a_real_video(run, trained_checkpoint, real_data, monkeypatch):
    from vtimellm_hf.model import get_video_duration

    video = real_data / "videos" / "3MSZA.mp4"
    if not video.is_file():
        pytest.skip(f"{video} not found")
    duration = get_video_duration(video)
    status, out, _ = run("ground", video, "person turn a light on", "--model", trained_checkpoint)
    assert (status, out.strip()) == (0, f"{0.05 * duration:.2f} s - {0.23 * duration:.2f} s")
    status, out, _ = run("caption", video, "--model", trained_checkpoint)
    assert status == 0 and out.splitlines()[1].endswith(f"{duration:7.2f} s  a woman counts money")
    monkeypatch.setattr("sys.stdin", io.StringIO(GROUNDING_QUESTION.format(query="a light") + "\n"))
    status, out, _ = run("chat", video, "--model", trained_checkpoint, "--max-new-tokens", 12)
    assert status == 0 and out.startswith(GROUNDING_ANSWER)


# evaluate and score


def test_evaluate_grounding_batches_resumes_and_scores(run, random_checkpoint, tmp_path, monkeypatch):
    features = write_features(tmp_path / "features", ["v0", "v1", "v2"])
    queries = [
        {"video_id": f"v{index % 3}", "query": query, "start": 1.0, "end": 4.0, "duration": 10.0 + index}
        for index, query in enumerate(QUERIES * 2)
    ]
    queries.append(dict(queries[0]))  # a repeated (video, query) pair is its own query
    annotations = write_lines(tmp_path / "queries.jsonl", queries)
    common = ["--model", random_checkpoint, "--annotations", annotations, "--features", features, "--max-new-tokens", 8]

    status, _, err = run("evaluate", "grounding", *common, "--out", tmp_path / "alone.jsonl", "--batch-size", 1)
    assert status == 0 and f"{len(queries)} queries answered" in err
    alone = read_jsonl_records(tmp_path / "alone.jsonl")
    assert len(alone) == len(queries)
    unparsed = sum(record["timestamp"] is None for record in alone)
    assert f"{unparsed} answer(s) name no moment" in err

    status, _, err = run("evaluate", "grounding", *common, "--out", tmp_path / "batched.jsonl", "--batch-size", 4)
    assert status == 0 and "INFO" not in err
    assert by_key(read_jsonl_records(tmp_path / "batched.jsonl")) == by_key(alone)

    # A killed run: half of the answers, and a last line cut short
    resumed = tmp_path / "resumed.jsonl"
    lines = (tmp_path / "alone.jsonl").read_text().splitlines(keepends=True)
    half = len(lines) // 2
    resumed.write_text("".join(lines[:half]) + lines[half][:25])
    asked = []
    spy(monkeypatch, "generate_answers", lambda model, processor, conversations, features: asked.append(len(features)),
        owner=evaluation_runs)
    # -v: the package's progress messages, which a run without it does not show
    status, _, err = run("-v", "evaluate", "grounding", *common, "--out", resumed, "--batch-size", 4)
    assert status == 0 and f"({half} by an earlier run)" in err
    assert f"INFO vtimellm_hf.evaluation_runs: {resumed}: {half} queries already answered" in err
    assert sum(asked) == len(queries) - half
    assert resumed.read_text().startswith("".join(lines[:half]))
    assert by_key(read_jsonl_records(resumed)) == by_key(alone)

    status, out, _ = run("score", "grounding", "--predictions", resumed, "--annotations", annotations)
    scores = last_json(out)
    assert status == 0 and {"r1@0.3", "r1@0.5", "r1@0.7", "miou", "n", "unparsed"} <= scores.keys()
    assert (scores["n"], scores["unparsed"]) == (len(queries), unparsed)


def test_evaluate_grounding_with_videos_and_charades_annotations(
    run, trained_checkpoint, video_dir, tmp_path, monkeypatch
):
    # Charades-STA lines have no duration: --videos gives it, each video decoded and encoded once
    annotations = tmp_path / "charades.txt"
    annotations.write_text(
        "clip0 0.2 0.92##A man opens the door.\nclip0 0.0 4.0##person turn a light on.\n"
        "clip1 2.0 3.0##two people shake hands.\nclip0 0.2 0.92##the woman counts money.\n"
    )
    encoded, asked = [], []
    spy(monkeypatch, "encode_video", lambda processor, path: encoded.append(path.name), owner=VTimeProcessor)
    spy(monkeypatch, "generate_answers", lambda model, processor, conversations, features: asked.extend(
        conversation[-1]["content"][-1]["text"] for conversation in conversations
    ), owner=evaluation_runs)  # fmt: skip
    results = tmp_path / "results.jsonl"
    status, _, err = run("evaluate", "grounding", "--model", trained_checkpoint, "--annotations", annotations,
                         "--videos", video_dir, "--out", results)  # fmt: skip
    assert status == 0, err
    assert sorted(encoded) == ["clip0.mp4", "clip1.mp4"]
    # The query as the original evaluation asks it: lower-cased, without the sentence's full stop
    assert sorted(asked) == sorted(GROUNDING_QUESTION.format(query=query) for query in QUERIES)
    records = read_jsonl_records(results)
    assert len(records) == 4 and all(record["timestamp"] == pytest.approx([0.2, 0.92]) for record in records)

    status, out, _ = run("score", "grounding", "--predictions", results, "--annotations", annotations)
    scores = last_json(out)
    # Exact on the two queries whose truth is 0.20-0.92 s; IoU 0.72 / 4 with 0-4 s; nothing with 2-3 s
    assert (scores["n"], scores["unparsed"]) == (4, 0)
    assert scores["r1@0.7"] == pytest.approx(50.0) and scores["r1@0.3"] == pytest.approx(50.0)
    assert scores["miou"] == pytest.approx(100 * (2 + 0.72 / 4) / 4)

    # With precomputed features, the durations must come from somewhere
    features = write_features(tmp_path / "features", ["clip0", "clip1"])
    common = ["--model", trained_checkpoint, "--annotations", annotations, "--features", features]
    status, _, err = run("evaluate", "grounding", *common, "--out", tmp_path / "x.jsonl")
    assert status == 2 and "--durations" in err and "--videos" in err and "no duration" in err
    durations = tmp_path / "durations.json"
    durations.write_text('{"clip0": 4.0, "clip1": 4.0}')
    status, _, err = run("evaluate", "grounding", *common, "--durations", durations, "--out", tmp_path / "x.jsonl")
    assert status == 0, err
    records = read_jsonl_records(tmp_path / "x.jsonl")
    assert len(records) == 4 and all(record["timestamp"] == pytest.approx([0.2, 0.92]) for record in records)


def test_captioning_replies_are_read_as_the_original_evaluation_reads_them():
    # The original's question asks for JSON; repeats of a caption over touching moments are one event
    assert CAPTIONING_QUESTION.startswith(" Could you please describe the events")
    assert '"timestamps"' in CAPTIONING_QUESTION
    answer = (
        '[{"event": "a man talks", "timestamps": "from 00 to 10"}, {"event": "a man talks", "timestamps": "from 11 '
        'to 20"}, {"event": "a man talks.", "timestamps": "from 40 to 50"}, {"event": "he leaves", "timestamps": '
        '"from 51 to 99"}]'
    )
    assert inference.merge_repeated_events([(0, 10, "a man talks"), (11, 20, "a man talks"), (22, 30, "a man talks"),
                                            (30, 40, "a man walks")]) == [
        (0, 20, "a man talks"), (22, 30, "a man talks"), (30, 40, "a man walks")
    ]  # fmt: skip
    # Duration 50 s: start s / 2, end (e + 1) / 2 seconds
    assert inference.caption_events(answer, 50.0) == [
        (0.0, 10.5, "a man talks"), (20.0, 25.5, "a man talks"), (25.5, 50.0, "he leaves")
    ]


def test_evaluate_captioning_resumes_and_scores(run, trained_checkpoint, tmp_path, monkeypatch):
    durations = {"v_a": 10.0, "v_b": 20.0, "v_c": 30.0}
    references = {
        video_id: {"duration": duration, "timestamps": [[0, duration / 2], [duration / 2, duration]],
                   "sentences": ["A red circle appears.", "A woman counts money."]}
        for video_id, duration in durations.items()
    }  # fmt: skip
    annotations = tmp_path / "anet.json"
    annotations.write_text(json.dumps(references))
    # ActivityNet features are often stored without the v_ prefix
    features = write_features(tmp_path / "features", ["a", "b", "c"])
    out = tmp_path / "predictions.json"
    common = ["--model", trained_checkpoint, "--annotations", annotations, "--features", features, "--out", out,
              "--batch-size", 2, "--max-new-tokens", 40]  # fmt: skip
    status, _, err = run("evaluate", "captioning", *common)
    assert status == 0, err
    results = json.loads(out.read_text())["results"]
    assert list(results) == ["v_a", "v_b", "v_c"]
    for video_id, duration in durations.items():
        assert results[video_id] == [
            {"sentence": "a red circle appears", "timestamp": [0.0, duration / 2]},
            {"sentence": "a woman counts money", "timestamp": [duration / 2, duration]},
        ]

    answers = tmp_path / "predictions.answers.jsonl"
    first = answers.read_text().splitlines(keepends=True)[0]
    answers.write_text(first + '{"video_id": "v_b", "dur')
    out.unlink()
    asked = []
    spy(monkeypatch, "generate_answers", lambda model, processor, conversations, features: asked.append(len(features)),
        owner=evaluation_runs)
    status, _, err = run("evaluate", "captioning", *common)
    assert status == 0 and sum(asked) == 2 and "0 answer(s) name no event" in err
    assert json.loads(out.read_text())["results"] == results

    # The COCO scorers (Java) are tested with the metrics; here, exact matching of lower-cased sentences
    def exact_match(references, hypotheses):
        scores = {key: float(hypotheses[key] in references[key]) for key in references}
        return sum(scores.values()) / len(scores), scores

    monkeypatch.setattr(
        captioning_metrics, "ptb_tokenize", lambda sentences: [s.lower().strip(" .") for s in sentences]
    )
    monkeypatch.setattr(captioning_metrics, "CocoMeteor", lambda: exact_match)
    monkeypatch.setattr(captioning_metrics, "CocoCider", lambda: exact_match)
    status, stdout, err = run("score", "captioning", "--predictions", out, "--references", annotations)
    assert status == 0, err
    # SODA_c's tIoU divides by union + 1e-8, as the reference evaluator does: a perfect match is 1 - 1e-8
    assert last_json(stdout) == pytest.approx({"soda_c": 100.0, "cider": 100.0, "meteor": 100.0, "n": 3, "missing": 0})
    status, stdout, _ = run("score", "captioning", "--predictions", out, "--references", annotations, "--limit", 2)
    assert status == 2  # v_c is predicted but not among the two videos scored


def test_real_charades_queries_of_one_video(run, trained_checkpoint, real_data, tmp_path):
    charades = real_data / "charades_sta_test.txt"
    if not (charades.is_file() and (real_data / "videos" / "3MSZA.mp4").is_file()):
        pytest.skip("Charades-STA test file or video 3MSZA not found")
    queries = read_grounding_annotations(charades)
    assert len(queries) == 3720 and all(query.duration is None for query in queries)
    results = tmp_path / "charades.jsonl"
    selection = ["--video-ids", "3MSZA", "--limit", 2]
    status, _, err = run("evaluate", "grounding", "--model", trained_checkpoint, "--annotations", charades,
                         "--videos", real_data / "videos", "--out", results, *selection)  # fmt: skip
    assert status == 0, err
    records = read_jsonl_records(results)
    assert [record["video_id"] for record in records] == ["3MSZA", "3MSZA"]
    status, out, _ = run("score", "grounding", "--predictions", results, "--annotations", charades, *selection)
    assert status == 0 and last_json(out)["n"] == 2
    status, _, err = run(
        "score", "grounding", "--predictions", results, "--annotations", charades, "--video-ids", "nope"
    )
    assert status == 2 and "no video nope" in err
