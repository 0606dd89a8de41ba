"""Shared fixtures: a tiny tokenizer, frame encoder and model built locally (never the network), and the real
test data of `../shared/data` when it is there."""

import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
TOKENIZER_CORPUS = [
    "When does the man crack the egg? He cracks it from 12 to 47.",
    "Describe the events and when they happen. From 05 to 23, a red circle appears.",
    "A person opens the door. A woman counts money. Two people shake hands.",
]


def find_test_data() -> Path:
    """The real annotation files and videos, or a skip saying where they were looked for."""
    path = Path(os.environ.get("VTIMELLM_TEST_DATA", REPO_ROOT.parent / "shared" / "data"))
    if not path.is_dir():
        pytest.skip(f"real test data not found at {path} (set VTIMELLM_TEST_DATA to its folder)")
    return path


@pytest.fixture(scope="session")
def real_data() -> Path:
    return find_test_data()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one thread for a module: tiny models run faster on one thread than on two contended ones, and
    processes started by `torchrun` run one each (OMP_NUM_THREADS=1), so their results compare bit for bit."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="session")
def tokenizer(tiny_dir):
    from vtimellm_hf.tiny_models import build_tiny_tokenizer

    return build_tiny_tokenizer(tiny_dir / "tokenizer", TOKENIZER_CORPUS)


@pytest.fixture(scope="session")
def frame_encoder_path(tiny_dir) -> Path:
    from vtimellm_hf.tiny_models import build_tiny_frame_encoder

    path = tiny_dir / "clip"
    build_tiny_frame_encoder(path)
    return path


@pytest.fixture
def processor(tokenizer, frame_encoder_path):
    from vtimellm_hf import VTimeProcessor

    return VTimeProcessor(tokenizer=tokenizer, frame_encoder_name_or_path=str(frame_encoder_path), frame_size=32)


@pytest.fixture
def model(tokenizer):
    from vtimellm_hf.tiny_models import build_tiny_vtime_model

    return build_tiny_vtime_model(tokenizer)


@pytest.fixture(scope="session")
def whisper_path(tiny_dir) -> Path:
    from vtimellm_hf.tiny_models import build_tiny_whisper

    build_tiny_whisper(tiny_dir / "whisper")
    return tiny_dir / "whisper"


@pytest.fixture(scope="session")
def clap_path(tiny_dir) -> Path:
    from vtimellm_hf.tiny_models import build_tiny_clap

    build_tiny_clap(tiny_dir / "clap")
    return tiny_dir / "clap"


@pytest.fixture(scope="session")
def beats_checkpoint(tiny_dir) -> Path:
    from vtimellm_hf.tiny_models import build_tiny_beats_checkpoint

    return build_tiny_beats_checkpoint(tiny_dir / "beats" / "BEATs_iter3_plus_AS20K.pt")


def write_media(path: Path, seconds: float, rate: int = 48000, layout: str = "stereo", video: bool = True,
                audio: bool = True, codec: str = "aac") -> Path:  # fmt: skip
    """A file of `seconds` of tones and noise (each channel its own) at `rate`, with a small mpeg4 video if `video`,
    written with PyAV."""
    import av

    rng = np.random.default_rng(len(path.name))
    with av.open(str(path), "w") as container:
        if video:
            video_stream = container.add_stream("mpeg4", rate=10)
            video_stream.width, video_stream.height, video_stream.pix_fmt = 32, 32, "yuv420p"
        if audio:
            audio_stream = container.add_stream(codec, rate=rate, layout=layout)
            channels = len(audio_stream.codec_context.layout.channels)
            times = np.arange(int(seconds * rate)) / rate
            # Tones up to 15 kHz (above 8 kHz they fold into the band when a reader drops samples) and noise
            signal = np.stack([0.3 * np.sin(2 * np.pi * (440 + 3000 * index) * times)
                               + 0.2 * np.sin(2 * np.pi * 15000 * times) + 0.05 * rng.standard_normal(len(times))
                               for index in range(channels)]).astype(np.float32)  # fmt: skip
            sample_format = "fltp" if codec == "aac" else "s16"
            frame_size = audio_stream.codec_context.frame_size or 1024
            for start in range(0, signal.shape[1], frame_size):
                block = signal[:, start : start + frame_size]
                data = block if sample_format == "fltp" else (block.T.reshape(1, -1) * 32767).astype(np.int16)
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format=sample_format, layout=layout)
                frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
                container.mux(audio_stream.encode(frame))
            container.mux(audio_stream.encode(None))
        if video:
            for index in range(int(seconds * 10)):
                image = np.full((32, 32, 3), index * 7 % 256, dtype=np.uint8)
                container.mux(video_stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
            container.mux(video_stream.encode(None))
    return path


@pytest.fixture(scope="session", name="write_media")
def write_media_fixture():
    """[`write_media`]: a video or audio file written with PyAV."""
    return write_media


@pytest.fixture
def track_reads(monkeypatch) -> list[tuple[str, int, str]]:
    """`(path, sampling_rate, reader)` of every audio track the stream encoders decode while the test runs."""
    from vtimellm_hf.model import audio_processing_vtime

    reads = []
    load_audio = audio_processing_vtime.load_audio

    def counted(path, sampling_rate, window=None, reader="ffmpeg"):
        reads.append((str(path), sampling_rate, reader))
        return load_audio(path, sampling_rate, window, reader=reader)

    monkeypatch.setattr(audio_processing_vtime, "load_audio", counted)
    return reads
