"""`vtimellm-hf extract-features --streams`: LongVALE's three folders (video, BEATs audio, Whisper speech) and
AVicuna's two (video, CLAP audio), each feature equal to its stream encoder's, resumable, failures recorded, a video
without an audio track recorded without a file."""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vtimellm_hf.data.extract import FAILURES_FILE, SETTINGS_FILE, add_subcommand, extract_features
from vtimellm_hf.model.audio_processing_vtime import AudioTrack, build_stream_encoder


@pytest.fixture(scope="module")
def videos(tmp_path_factory, write_media):
    folder = tmp_path_factory.mktemp("videos")
    write_media(folder / "talk.mp4", 6.2)
    write_media(folder / "music.mp4", 11.5, rate=44100, layout="mono")
    write_media(folder / "silent.mp4", 3.0, audio=False)
    (folder / "broken.mp4").write_bytes(b"\x00 this is no video " * 50)
    return folder


def run(argv: list) -> int:
    parser = argparse.ArgumentParser()
    add_subcommand(parser.add_subparsers())
    args = parser.parse_args(["extract-features", *map(str, argv)])
    return args.run(args)


def records(folder) -> dict[str, dict]:
    return {record["id"]: record for record in map(json.loads, (folder / SETTINGS_FILE).read_text().splitlines())}


def test_longvale_streams_in_three_folders(
    videos, frame_encoder_path, beats_checkpoint, whisper_path, tmp_path, track_reads
):
    output = tmp_path / "features"
    report = extract_features(
        videos, output, clip=frame_encoder_path, workers=0, device="cpu", streams="video,audio,speech",
        audio_encoders={"audio": str(beats_checkpoint), "speech": str(whisper_path)},
    )  # fmt: skip
    # BEATs and Whisper read the track alike (moviepy's reading at 16 kHz): each file is decoded once, the
    # broken one too (its failure is recorded in both streams below)
    names = sorted(Path(path).name for path, _, _ in track_reads)
    assert names == ["broken.mp4", "music.mp4", "silent.mp4", "talk.mp4"]
    assert {(rate, reader) for _, rate, reader in track_reads} == {(16000, "moviepy")}
    assert set(report.streams) == {"video", "audio", "speech"} and not report.ok
    assert sorted(path.stem for path in (output / "video_features").glob("*.npy")) == ["music", "silent", "talk"]
    for stream, kind, path in (("audio", "beats", beats_checkpoint), ("speech", "whisper", whisper_path)):
        folder = output / f"{stream}_features"
        # The broken file fails in every stream; the silent video is recorded without a file, not failed
        assert sorted(path.stem for path in folder.glob("*.npy")) == ["music", "talk"]
        assert [json.loads(line)["id"] for line in (folder / FAILURES_FILE).read_text().splitlines()] == ["broken"]
        assert report.streams[stream].without_audio == 1 and report.streams[stream].extracted == 2
        encoder = build_stream_encoder(kind, str(path))
        for name in ("music", "talk"):
            stored = np.load(folder / f"{name}.npy")
            assert stored.dtype == np.float16
            expected = encoder.encode_file(videos / f"{name}.mp4").numpy().astype(np.float16)
            np.testing.assert_array_equal(stored, expected)
        saved = records(folder)
        assert saved["silent"]["rows"] == 0 and saved["talk"]["rows"] == len(np.load(folder / "talk.npy"))
        settings = {key: value for key, value in encoder.to_dict().items() if key != "batch_size"}
        assert saved["talk"]["encoder"] == settings
    # LongVALE's rows: 6.2 s -> 619 fbank frames -> (619 + 107) // 512 = 1 BEATs window; 1 Whisper chunk -> 5 rows
    assert np.load(output / "audio_features" / "talk.npy").shape == (1, 16)
    assert np.load(output / "speech_features" / "talk.npy").shape == (5, 16)

    # A rerun does nothing again but retry the failure, and reads no track again (the silent video included)
    again = extract_features(
        videos, output, clip=frame_encoder_path, workers=0, device="cpu", streams=["video", "audio", "speech"],
        audio_encoders={"audio": str(beats_checkpoint), "speech": str(whisper_path)},
    )  # fmt: skip
    assert again.extracted == 0 and [report.skipped for report in again.streams.values()] == [3, 3, 3]
    assert all(len(report.failures) == 1 for report in again.streams.values())
    # Another reading remakes the audio streams' features; streams that read differently decode the track each
    track = AudioTrack(videos / "talk.mp4")
    beats = build_stream_encoder("beats", str(beats_checkpoint), reader="ffmpeg")
    np.testing.assert_array_equal(track.encode(beats), beats.encode_file(videos / "talk.mp4"))
    track.encode(build_stream_encoder("whisper", str(whisper_path)))
    assert [(rate, reader) for path, rate, reader in track_reads if path == str(videos / "talk.mp4")][-3:] == [
        (16000, "ffmpeg"), (16000, "ffmpeg"), (16000, "moviepy")]  # fmt: skip
    changed = extract_features(
        videos, output, clip=frame_encoder_path, workers=0, device="cpu", streams="audio", audio_reader="ffmpeg",
        audio_encoders={"audio": str(beats_checkpoint)},
    )  # fmt: skip
    assert changed.streams["audio"].extracted == 2 and records(output / "audio_features")["talk"]["encoder"][
        "reader"] == "ffmpeg"  # fmt: skip


def test_avicuna_streams_through_the_command(videos, frame_encoder_path, clap_path, tmp_path, capsys):
    output = tmp_path / "avicuna"
    argv = [videos, output, "--clip", frame_encoder_path, "--workers", "0", "--device", "cpu", "--streams",
            "video,clap", "--clap-audio", clap_path]  # fmt: skip
    assert run(argv) == 1
    stderr = capsys.readouterr().err
    assert "clap: " in stderr and "1 video(s) without an audio track" in stderr
    folder = output / "audio_features"
    encoder = build_stream_encoder("clap", str(clap_path))
    # 6.2 s -> one 10 s window; 11.5 s -> padded to 20 s -> 3 windows
    for name, rows in (("talk", 1), ("music", 3)):
        stored = np.load(folder / f"{name}.npy")
        assert stored.shape == (rows, 12)
        np.testing.assert_array_equal(stored, encoder.encode_file(videos / f"{name}.mp4").numpy().astype(np.float16))
    assert records(folder)["talk"]["encoder"]["kind"] == "clap"


def test_unusable_stream_options_are_refused(videos, frame_encoder_path, beats_checkpoint, tmp_path, capsys):
    output = tmp_path / "out"
    base = [videos, output, "--clip", frame_encoder_path, "--workers", "0", "--device", "cpu"]
    assert run([*base, "--streams", "video,audio,clap", "--beats", beats_checkpoint]) == 2
    assert "one audio stream" in capsys.readouterr().err
    assert run([*base, "--streams", "audio"]) == 2
    assert "BEATs encoder needs its checkpoint" in capsys.readouterr().err
    assert run([*base, "--streams", "video,subtitles"]) == 2
    assert "streams must name distinct streams among video, audio, speech, clap" in capsys.readouterr().err
    assert not output.exists() or not any(output.rglob("*.npy"))


@pytest.mark.slow
def test_two_processes_write_the_stream_files_of_one(videos, frame_encoder_path, beats_checkpoint, whisper_path,
                                                     tmp_path, one_torch_thread):  # fmt: skip
    options = ["--clip", frame_encoder_path, "--workers", "0", "--device", "cpu", "--streams", "video,audio,speech",
               "--beats", beats_checkpoint, "--whisper", whisper_path]  # fmt: skip
    assert run([videos, tmp_path / "one", *options]) == 1
    repo_root = Path(__file__).resolve().parents[1]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo_root), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "vtimellm_hf",
               "extract-features", videos, tmp_path / "two", *options]  # fmt: skip
    job = subprocess.run([*map(str, command)], capture_output=True, text=True, env=environment, timeout=600)
    # The broken video fails the job once both processes have finished and the main one merged their records
    assert job.returncode != 0 and job.stderr.count("extract-features: ") == 1, job.stderr[-3000:]
    for stream in ("video", "audio", "speech"):
        one, two = tmp_path / "one" / f"{stream}_features", tmp_path / "two" / f"{stream}_features"
        assert sorted(path.name for path in two.iterdir()) == sorted(path.name for path in one.iterdir())
        for path in one.iterdir():
            assert (two / path.name).read_bytes() == path.read_bytes(), f"{stream}: {path.name}"
