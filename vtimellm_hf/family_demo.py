"""`python -m vtimellm_hf.demo --family longvale`: the LongVALE recipe end to end on a CPU, on videos that sound.

The synthetic videos of `make demo` with an audio track (`SyntheticMomentsConfig.sounds_per_video`: a beep, a low
hum or a hiss that starts and stops at known times, marked by no shape) -> the tiny tokenizer, LLaMA and CLIP of
`make demo`, a tiny BEATs briefly pre-trained to tell the sounds from silence, and a tiny random Whisper ->
features: the frames as VTimeLLM's, the audio and speech streams through `extract-features --streams audio,speech`
-> VTimeLLM's stage 1 (its projector, reused frozen), LongVALE's boundary perception (stage 2) and instruction
tuning (stage 3) through `recipes/family_stage.py` with `recipes/configs/tiny-longvale-demo/` -> grounding of
every held-out event, sounds and shapes, and of the sounds again with the audio and speech streams removed (a model
that finds them by ear must fail that control) -> `metrics.json`.

    python -m vtimellm_hf.demo --family longvale --output runs/family-demo

Every video lasts `DURATION` seconds: an audio row is 5.12 s of sound whatever the video's length (LongVALE's BEATs
windows and Whisper pooling), so on videos of one length a row's place gives its time, as a frame row's does.
"""

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from .demo_steps import (
    DEMO_QUESTION, FULL_SIZES, QUICK_SIZES, RECIPES, build_inputs, run_command, run_recipe, run_stage,
)

logger = logging.getLogger("vtimellm_hf.demo")

# Seconds of every video (see the module's docstring): 20 BEATs rows of 5.12 s, each 5 hundredths of the video
DURATION = 100
# The videos: one or two shapes and one sound each; one length; `make demo`'s smallest frames, and one frame a
# second (each of the 100 frame rows is one frame); sounds short enough (10-30% of the video) that a model that
# cannot hear them finds them badly (the best fixed span scores 0.26). Stage 2: one round of the converter's
# dialogues and three one-turn grounding questions a video, a sound as often as a shape: in the dialogues alone a
# sound's times are a few of some 30 answer tokens, and the tiny model learnt to hear in about half the runs only
SYNTHETIC = dict(
    events_per_video=(1, 2), sounds_per_video=(1, 1), sound_span_range=(0.1, 0.3),
    duration_range=(DURATION, DURATION), fps_choices=(1,), frame_sizes=((64, 64),),
    stage2_dialogues_per_video=1, stage2_grounding_per_video=3,
)  # fmt: skip
# The tiny BEATs' pre-training (`pretrain_tiny_beats`): clips of one window (5.12 s at 16 kHz), of each label, and steps
BEATS_SAMPLING_RATE, BEATS_CLIP_SAMPLES = 16000, 81920
BEATS_CLIPS_PER_LABEL = 64
BEATS_STEPS = 100
RECIPE_DIR = RECIPES / "configs" / "tiny-longvale-demo"
# The command line's defaults with --family (the videos are five times as long as `make demo`'s: fewer of them)
FAMILY_DEFAULTS = {"num_videos": 560, "num_val_videos": 60, "output": Path("runs/family-demo")}


def sound_clips(clips_per_label: int, seed: int) -> tuple[list[np.ndarray], list[str]]:
    """Clips of one BEATs window (5.12 s at 16 kHz) of silence and of each sound of the synthetic videos, with their
    labels; a third of the sounds start partway through, as in a window where a sound starts."""
    from .data.synthetic.rendering import sound_waveform
    from .data.synthetic.scenes import SOUNDS, SyntheticSound

    rng = np.random.default_rng(seed)
    length = BEATS_CLIP_SAMPLES
    clips, labels = [], []
    for label in ("silence", *SOUNDS):
        for _ in range(clips_per_label):
            clip = np.zeros(length, np.float32)
            if label != "silence":
                onset = int(rng.integers(length // 2)) if rng.random() < 1 / 3 else 0
                sound = SyntheticSound(label, 0, 100, 0.0, length / BEATS_SAMPLING_RATE, seed=int(rng.integers(2**31)))
                clip[onset:] = sound_waveform(sound, length - onset, BEATS_SAMPLING_RATE)
            clips.append(clip)
            labels.append(label)
    return clips, labels


def build_audio_features(output: Path, video_dir: Path, seed: int, beats_steps: int) -> dict:
    """A tiny BEATs briefly pre-trained to tell the synthetic sounds from silence, a tiny random Whisper, and the
    audio and speech features of every video through `extract-features`, one process a core (up to 8);
    `{"encoders": {stream: path}, "audio": folder, "speech": folder}`. The track is read by ffmpeg: LongVALE's
    moviepy reading ("moviepy", the extraction's default for these streams) fills about a quarter of every 3.1 s
    with the audio of 4.5 s later (see `audio_decoding_vtime`), so sounds would be heard where none plays."""
    from .data.audio_extract import stream_folder
    from .tiny_models import build_tiny_beats_checkpoint, build_tiny_whisper, pretrain_tiny_beats

    encoders = {"audio": output / "beats" / "beats.pt", "speech": output / "whisper"}
    build_tiny_beats_checkpoint(encoders["audio"], seed=seed)
    losses = pretrain_tiny_beats(encoders["audio"], *sound_clips(BEATS_CLIPS_PER_LABEL, seed), steps=beats_steps,
                                 seed=seed)  # fmt: skip
    logger.info("tiny BEATs pre-trained for %d steps: loss %.3f -> %.3f", len(losses), losses[0], losses[-1])
    build_tiny_whisper(encoders["speech"], seed=seed)
    # As a user shares the extraction among processes (`torchrun`, one a core): each reads and encodes its share
    processes = min(8, os.cpu_count() or 1)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               "-m", "vtimellm_hf", "extract-features", str(video_dir), str(output / "streams"),
               "--streams", "audio,speech", "--beats", str(encoders["audio"]), "--whisper", str(encoders["speech"]),
               "--audio-reader", "ffmpeg", "--device", "cpu"]  # fmt: skip
    run_command(f"audio and speech features ({processes} processes)", command, env={"OMP_NUM_THREADS": "1"})
    return {"encoders": encoders, **{name: stream_folder(output / "streams", name) for name in encoders}}


def run_family_stage(stage: int, output: Path, audio: dict, extra: list[str]) -> None:
    """LongVALE's stage through `recipes/family_stage.py`, with the demo's paths."""
    arguments = {
        "model_name_or_path": output / "base",
        "frame_encoder_name_or_path": output / "clip",
        "audio_encoder_name_or_path": audio["encoders"]["audio"],
        "speech_encoder_name_or_path": audio["encoders"]["speech"],
        "stage1_projector": output / "stage1",
        "feature_dir": output / "features",
        "audio_feature_dir": audio["audio"],
        "speech_feature_dir": audio["speech"],
        "train_files": output / "data" / f"stage{stage}.json",
        "output_dir": output / f"longvale-stage{stage}",
    }
    if stage == 3:
        arguments["stage2_adapter"] = output / "longvale-stage2"
    run_recipe(f"longvale stage {stage}", RECIPES / "family_stage.py", RECIPE_DIR / f"stage{stage}.yaml", arguments,
               extra)  # fmt: skip


def ground(model, processor, videos, answers_file: Path, load_streams) -> dict[tuple[str, str], str]:
    """Every event of `videos` grounded with the training data's question: `{(video_id, sentence): answer}`."""
    from .family_evaluation import LONGVALE_QUESTIONS, evaluate_longvale
    from .files import read_json_records

    answers_file.unlink(missing_ok=True)
    questions = {**LONGVALE_QUESTIONS, "grounding": DEMO_QUESTION}
    evaluate_longvale(model, processor, videos, answers_file, load_streams, tasks=("grounding",), batch_size=16,
                      questions=questions, max_new_tokens=16)  # fmt: skip
    by_id = {video.video_id: video for video in videos}
    return {(record["video_id"], by_id[record["video_id"]].events[record["sentence_id"]].sentence): record["answer"]
            for _, record in read_json_records(answers_file)}  # fmt: skip


def scores(references, answers: dict[tuple[str, str], str]) -> dict:
    """mIoU and R1@0.3/0.5/0.7 (fractions) of `answers` on `references` (`GroundingQuery`s)."""
    from .metrics import score_grounding
    from .model import parse_grounding_answer

    predictions = []
    for reference in references:
        answer = answers[(reference.video_id, reference.query)]
        moment = parse_grounding_answer(answer, reference.duration, 100)
        predictions.append({"video_id": reference.video_id, "query": reference.query,
                            "timestamp": None if moment is None else list(moment)})  # fmt: skip
    scored = score_grounding(predictions, references)
    return {key: scored[key] / 100 for key in ("miou", "r1@0.3", "r1@0.5", "r1@0.7")}


def evaluate_family(output: Path, audio: dict, sound_sentences: set[str]) -> dict:
    """Grounds every held-out event with every stream, then the sounds without the audio and speech streams."""
    from .checkpoints import load_model_and_processor
    from .data.features import open_feature_store
    from .data.raw_annotations import Video, grounding_queries, read_activitynet_captions
    from .family_evaluation import longvale_stream_loader
    from .metrics import score_grounding
    from .metrics.grounding_report import best_fixed_span, fixed_span_predictions

    model, processor = load_model_and_processor(str(output / "longvale-stage3"), device="cpu", dtype="float32")
    videos = read_activitynet_captions(output / "data" / "dense_captioning_val.json")
    video_store = open_feature_store(output / "features")
    hearing = longvale_stream_loader(
        video_store, open_feature_store(audio["audio"]), open_feature_store(audio["speech"])
    )
    answers = ground(model, processor, videos, output / "grounding_answers.jsonl", hearing)
    sound_videos = [Video(video.video_id, video.duration, tuple(event for event in video.events
                                                                 if event.sentence in sound_sentences))
                    for video in videos]  # fmt: skip
    deaf = longvale_stream_loader(video_store)
    deaf_answers = ground(model, processor, sound_videos, output / "no_audio_control_answers.jsonl", deaf)

    references = grounding_queries(videos)
    sounds = [reference for reference in references if reference.query in sound_sentences]
    shapes = [reference for reference in references if reference.query not in sound_sentences]
    fixed_span = fixed_span_predictions(sounds, best_fixed_span(sounds))
    heard = scores(sounds, answers)
    metrics = {
        **scores(references, answers),
        "n": len(references),
        "sound_only_miou": heard["miou"],
        "sound_only_r1@0.5": heard["r1@0.5"],
        "n_sound_only": len(sounds),
        "no_audio_control_miou": scores(sounds, deaf_answers)["miou"],
        "sound_only_fixed_span_miou": score_grounding(fixed_span, sounds)["miou"] / 100,
        "shape_miou": scores(shapes, answers)["miou"],
        "n_shape": len(shapes),
    }
    (output / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def run_family_demo(args: argparse.Namespace) -> int:
    started = time.time()
    output = args.output.resolve()
    derived = ("data", "base", "clip", "features", "beats", "whisper", "streams", "stage1", "longvale-stage2",
               "longvale-stage3")  # fmt: skip
    for name in derived:
        shutil.rmtree(output / name, ignore_errors=True)
    num_videos, num_val = (16, 4) if args.quick else (args.num_videos, args.num_val_videos)
    sizes = QUICK_SIZES if args.quick else FULL_SIZES
    dataset = build_inputs(output, num_videos, num_val, args.seed, **sizes, synthetic=SYNTHETIC)["dataset"]
    audio = build_audio_features(output, dataset.video_dir, args.seed, 3 if args.quick else BEATS_STEPS)
    extra = ["--max_steps", "3"] if args.quick else []
    run_stage(1, output, extra)
    for stage in (2, 3):
        run_family_stage(stage, output, audio, extra)
    sound_sentences = {sound.sentence for video in dataset.videos for sound in video.sounds}
    metrics = evaluate_family(output, audio, sound_sentences)
    logger.info("finished in %.0f s", time.time() - started)
    print(json.dumps(metrics, indent=2))
    print(f"metrics: {output / 'metrics.json'}\nmodel: {output / 'longvale-stage3'}")
    return 0
