"""`bench/run_gpu.py`: its `--smoke` run (the GPU variants' path on the CPU at tiny sizes) and its refusal without
a GPU."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
RUN_GPU = REPO_ROOT / "bench" / "run_gpu.py"
# The smoke run's LLaMA (run_gpu.TINY_LLAMA): hidden 64, 2 layers, MLP 128, vocab 2048, LoRA r 64 on its 7 linear
# layers per decoder layer
HIDDEN, LAYERS, MLP, VOCAB, RANK = 64, 2, 128, 2048, 64
FROZEN = LAYERS * (4 * HIDDEN * HIDDEN + 3 * HIDDEN * MLP) + HIDDEN * VOCAB
LORA = LAYERS * RANK * (4 * 2 * HIDDEN + 3 * (HIDDEN + MLP))


def repository_outputs() -> dict:
    return {path: path.read_bytes() for path in (REPO_ROOT / "BENCHMARKS.md", REPO_ROOT / "bench" / "results.json")}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("bench_gpu")
    before = repository_outputs()
    result = subprocess.run(
        [sys.executable, str(RUN_GPU), "--smoke", "--out-dir", str(out_dir)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return out_dir, before


def test_smoke_run_writes_well_formed_entries(smoke_run):
    out_dir, _ = smoke_run
    entries = json.loads((out_dir / "results_gpu.json").read_text(encoding="utf-8"))
    by_name = {entry["name"]: entry for entry in entries}
    assert list(by_name) == ["extract", "train", "padding_waste", "evaluate"]
    for entry in entries:
        assert {"name", "ours", "baseline", "ratio", "target", "unit", "device"} <= set(entry)
        assert entry["device"] == "cpu (smoke run)"
        assert entry.get("check", "ok") == "ok"
    for name in ("extract", "train", "evaluate"):
        assert by_name[name]["ours"] > 0 and by_name[name]["baseline"] > 0 and by_name[name]["ratio"] > 0
    assert by_name["extract"]["dtype"] == by_name["train"]["dtype"] == by_name["evaluate"]["dtype"] == "bfloat16"
    assert 0 <= by_name["evaluate"]["identical_answers"] <= 1
    train = by_name["train"]
    assert train["activation_checkpointing"] is True
    # No peak is known for a CPU: the MFU is null there, a share of the peak on a GPU
    for mfu in (train["mfu"], train["baseline_mfu"]):
        assert mfu is None or 0 < mfu < 1
    assert all(value > 0 for value in train["model_tflops_per_s"].values())
    # 4 N + 6 N_lora per token, plus the attention's 12 x layers x hidden x s for records of s <= 2048 tokens
    assert 4 * FROZEN + 6 * LORA < train["flops_per_token"] < 4 * FROZEN + 6 * LORA + 12 * LAYERS * HIDDEN * 2048


def test_smoke_run_writes_its_section_into_its_folder_only(smoke_run):
    out_dir, before = smoke_run
    section = (out_dir / "BENCHMARKS.md").read_text(encoding="utf-8")
    assert "## GPU variants" in section and "cpu (smoke run)" in section
    assert all(f"| {case} |" in section for case in ("extract", "train", "evaluate"))
    assert repository_outputs() == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_refuses_without_a_gpu(tmp_path):
    result = subprocess.run(
        [sys.executable, str(RUN_GPU), "--out-dir", str(tmp_path)], cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert "no CUDA GPU" in result.stderr and "--smoke" in result.stderr
    assert not any(tmp_path.iterdir())


def test_gpu_section_is_a_placeholder_until_measured_then_kept(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO_ROOT / "bench"))
    import run_all
    import run_gpu

    markdown = tmp_path / "BENCHMARKS.md"
    entry = {"name": "evaluate", "ours": 2.0, "baseline": 1.0, "ratio": 2.0, "target": 4.0, "unit": "queries/s"}
    run = {"evaluate": {"peak_rss_mib": 100.0, "seconds": 3.0, "error": None}}
    info = {
        "command": "python bench/run_all.py", "date": "2026-01-01 00:00 UTC", "threads": 1, "load_before": "0",
        "load_after": "0", "machine": {"platform": "Linux", "cpu": "cpu", "cores": 2, "torch": torch.__version__},
    }  # fmt: skip
    run_all.write_markdown(markdown, [entry], run, info)
    assert "## GPU variants" in markdown.read_text() and "Not measured yet" in markdown.read_text()

    measured = f"{run_all.GPU_SECTION_START}\n## GPU variants\n\n| evaluate | 9.0 |\n{run_all.GPU_SECTION_END}"
    run_gpu.refresh_markdown(markdown, measured)
    run_all.write_markdown(markdown, [entry], run, info)
    text = markdown.read_text()
    assert "Not measured yet" not in text and text.count("## GPU variants") == 1 and "| evaluate | 9.0 |" in text
    assert text.index("| evaluate | 2.0 |") < text.index("| evaluate | 9.0 |")
