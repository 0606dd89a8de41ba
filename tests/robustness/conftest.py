"""Fixtures of the robustness tests: a saved tiny checkpoint, feature files, the command line, peak memory.

The tiny tokenizer, frame encoder and model come from `tests/conftest.py`; see `RELIABILITY.md` for what each test
of this folder checks.
"""

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from vtimellm_hf import VTimeProcessor, cli
from vtimellm_hf.tiny_models import build_tiny_vtime_model

FEATURE_DIM = 32  # projection size of the tiny frame encoder, `mm_hidden_size` of the tiny model


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory, tokenizer, frame_encoder_path) -> Path:
    """A saved random tiny VTimeLLM folder (model, processor and their code), loadable with `trust_remote_code`."""
    folder = tmp_path_factory.mktemp("robustness") / "checkpoint"
    build_tiny_vtime_model(tokenizer).save_pretrained(folder)
    processor = VTimeProcessor(tokenizer=tokenizer, frame_encoder_name_or_path=str(frame_encoder_path), frame_size=32)
    processor.save_pretrained(folder)
    return folder


def write_features(folder: Path, video_ids, seed: int = 0) -> Path:
    """`{folder}/{id}.npy`: random float16 `(100, FEATURE_DIM)` features, one file per id."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for video_id in video_ids:
        np.save(folder / f"{video_id}.npy", rng.standard_normal((100, FEATURE_DIM)).astype(np.float16))
    return folder


def write_queries(path: Path, video_ids, per_video: int, duration: float = 10.0) -> Path:
    """A `.jsonl` of grounding queries (what `vtimellm-hf evaluate grounding` reads), `per_video` per video."""
    lines = [
        json.dumps({"video_id": video_id, "query": f"event {number} of {video_id}", "start": 1.0, "end": 4.0,
                    "duration": duration})
        for number in range(per_video)
        for video_id in video_ids
    ]  # fmt: skip
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture
def run_cli(capsys):
    """`run_cli(*argv) -> (status, stdout, stderr)` of `vtimellm-hf argv...`, run in this process."""

    def run(*argv):
        capsys.readouterr()
        status = cli.main([str(arg) for arg in argv])
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    return run


def ffmpeg(*arguments: str) -> None:
    """Runs the ffmpeg binary of imageio-ffmpeg (quiet, one thread), failing the test on an error."""
    import imageio_ffmpeg

    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", *arguments]
    subprocess.run(command, check=True, capture_output=True)


class PeakMemory:
    """
    Peak resident memory of this process over a block, in MiB above the resident memory at its start.

    Linux only: writing 5 to `/proc/self/clear_refs` resets the peak (`VmHWM`) that `/proc/self/status` reports.
    """

    def __enter__(self):
        Path("/proc/self/clear_refs").write_text("5")
        self._start = self._read("VmRSS")
        return self

    def __exit__(self, *exc_info):
        self.mib = self._read("VmHWM") - self._start

    @staticmethod
    def _read(field: str) -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"/proc/self/status has no {field}")


@pytest.fixture(scope="session")
def peak_memory():
    """The [`PeakMemory`] class, or a skip where the kernel cannot reset the peak."""
    try:
        with PeakMemory():
            pass
    except OSError as error:
        pytest.skip(f"peak memory cannot be measured here: {error}")
    return PeakMemory
