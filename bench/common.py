"""What the benchmark scripts share to run at other sizes, dtypes and devices than their CPU defaults (`run_gpu.py`).

Imported by the scripts as a sibling module: `python bench/bench_*.py` puts `bench/` first on the import path.
"""

import contextlib
import gc

import torch

from vtimellm_hf.checkpoints import DTYPES
from vtimellm_hf.tiny_models import build_tiny_vtime_model

__all__ = ["DTYPES", "build_vtime_model", "created_on", "peak_gpu_mib", "release_memory", "synchronize"]


@contextlib.contextmanager
def created_on(device: str, dtype: str):
    """Tensors created inside are on `device` in `dtype` (floating point ones): a 7B model is initialised on the GPU
    in bfloat16, rather than in float32 on the CPU (27 GB and minutes of random draws) then copied."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(DTYPES[dtype])
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def build_vtime_model(tokenizer, device: str = "cpu", dtype: str = "float32", vocab_size: int | None = None,
                      **model_kwargs):  # fmt: skip
    """
    `build_tiny_vtime_model(tokenizer, **model_kwargs)` created on `device` in `dtype`. With `vocab_size`, its
    embedding and LM head get that many rows (LLaMA's 32000 for a 7B-shaped model): the tiny tokenizer has about a
    thousand tokens, and the LM head's size is part of what a step costs. The extra rows are never looked up.
    """
    with created_on(device, dtype):
        model = build_tiny_vtime_model(tokenizer, **model_kwargs)
        if vocab_size is not None:
            if vocab_size < len(tokenizer):
                raise ValueError(f"vocab_size {vocab_size} is below the tokenizer's {len(tokenizer)} tokens.")
            # mean_resizing would draw the new rows from the old ones' covariance, a (hidden x hidden) fit
            model.resize_token_embeddings(vocab_size, mean_resizing=False)
    return model


def release_memory(device: str) -> None:
    """Frees what dropped models left on an accelerator: a trainer holds its model in reference cycles, so without
    a collection each freshly built 7B model would stack on the previous ones."""
    if torch.device(device).type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()


def synchronize(device: str) -> None:
    """Waits for the kernels queued on `device`, so that a timer stopped next counts them."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def peak_gpu_mib(device: str) -> float | None:
    """Peak memory torch allocated on `device` in this process, in MiB; None off CUDA."""
    if torch.device(device).type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated() / 2**20, 1)
