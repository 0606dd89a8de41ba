"""Shared fixtures: a tiny tokenizer, frame encoder and model built locally (never the network), and the real
test data of `../shared/data` when it is there."""

import os
from pathlib import Path

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
