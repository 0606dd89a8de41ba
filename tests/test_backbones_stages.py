"""A tiny Qwen3 through the quick demo (the three stages' recipes, the evaluation) and `vtimellm-hf ground`; the
attention and kernel choices of a recipe; the GPU benchmark's Qwen3 case at tiny sizes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoProcessor

from vtimellm_hf.inference import grounding_question, user_turn
from vtimellm_hf.chat_formats import QWEN3_CHAT_TEMPLATE
from vtimellm_hf.cli import NO_ANSWER
from vtimellm_hf.training.stages import VTimeModelArguments, apply_liger_kernels

from test_backbones import run_remote_script

REPO_ROOT = Path(__file__).resolve().parents[1]
RECIPES = REPO_ROOT / "recipes"
ENVIRONMENT = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def qwen_demo(tmp_path_factory):
    """`python -m vtimellm_hf.demo --quick --backbone qwen3`: the demo's data, a tiny Qwen3 base with its BPE
    tokenizer, the three stages through the recipes with Qwen3's chat format, the evaluation."""
    output = tmp_path_factory.mktemp("qwen-demo") / "demo"
    result = subprocess.run([sys.executable, "-m", "vtimellm_hf.demo", "--quick", "--backbone", "qwen3",
                             "--output", str(output)],
                            capture_output=True, text=True, timeout=900, env=ENVIRONMENT)  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    return output


@pytest.mark.slow
def test_quick_demo_on_qwen3_leaves_a_folder_that_loads_as_remote_code_without_the_package(qwen_demo, tmp_path):
    metrics = json.loads((qwen_demo / "metrics.json").read_text())
    assert all(0.0 <= metrics[key] <= 1.0 for key in ("miou", "r1@0.5", "control_miou"))
    final = qwen_demo / "stage3"
    config = json.loads((final / "config.json").read_text())
    assert config["model_type"] == "vtime_qwen3" and config["architectures"] == ["VTimeQwen3ForCausalLM"]
    assert (final / "chat_template.jinja").read_text() == QWEN3_CHAT_TEMPLATE

    features = torch.from_numpy(np.load(sorted((qwen_demo / "features").glob("*.npy"))[0])).float()[None]
    remote = run_remote_script(final, features, tmp_path)
    assert not remote["vtimellm_hf_loaded"] and remote["classes"][1] == "VTimeQwen3ForCausalLM"
    model = AutoModelForCausalLM.from_pretrained(final).eval()
    processor = AutoProcessor.from_pretrained(final)
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "When does it happen?"}]}],
        add_generation_prompt=True,
    )  # fmt: skip
    local = processor(text=prompt, video_features=features, return_tensors="pt")
    assert remote["input_ids"] == local["input_ids"].tolist()
    with torch.no_grad():
        torch.testing.assert_close(torch.tensor(remote["logits"]), model(**local).logits[0, -1], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_ground_answers_with_the_qwen3_demo_model_as_generate_does(qwen_demo):
    video = sorted((qwen_demo / "data").rglob("*.mp4"))[0]
    result = subprocess.run([sys.executable, "-m", "vtimellm_hf", "ground", str(video), "a red circle appears",
                             "--model", str(qwen_demo / "stage3"), "--verbose", "--max-new-tokens", "8"],
                            capture_output=True, text=True, env=ENVIRONMENT, timeout=600)  # fmt: skip
    # A few steps a stage need not teach a moment: NO_ANSWER (the answer names none) is an untrained model's answer
    assert result.returncode in (0, NO_ANSWER), result.stderr[-3000:]
    answer = result.stdout.splitlines()[0].removeprefix("answer: ")

    # The same greedy answer from the folder loaded as remote code and a plain `generate`
    model = AutoModelForCausalLM.from_pretrained(qwen_demo / "stage3", trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(qwen_demo / "stage3", trust_remote_code=True)
    features, _ = processor.encode_video(video)
    prompt = processor.apply_chat_template([user_turn(grounding_question("a red circle appears"))],
                                           add_generation_prompt=True)  # fmt: skip
    inputs = processor(text=prompt, video_features=features[None], return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert answer == processor.decode(generated[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def test_a_kernel_asked_for_and_absent_is_refused_in_one_line(tmp_path):
    from transformers.utils import is_flash_attn_2_available, is_liger_kernel_available

    if not is_flash_attn_2_available():
        with pytest.raises(ValueError, match=r"flash_attention_2.*vtimellm-hf\[flash-attn\].*or use 'sdpa'"):
            VTimeModelArguments(model_name_or_path="m", attn_implementation="flash_attention_2")
    assert VTimeModelArguments(model_name_or_path="m", attn_implementation="sdpa").attn_implementation == "sdpa"
    with pytest.raises(ValueError, match="Unknown chat_format 'chatml'"):
        VTimeModelArguments(model_name_or_path="m", chat_format="chatml")
    if not is_liger_kernel_available():
        from vtimellm_hf.training.stages import stage_main

        with pytest.raises(ValueError, match=r"use_liger_kernel: liger-kernel is not installed"):
            stage_main(1, ["--config", str(RECIPES / "configs/tiny/stage1.yaml"), "--use_liger_kernel", "true",
                           "--output_dir", str(tmp_path)])  # fmt: skip


def test_liger_kernels_are_applied_by_the_decoder_type(monkeypatch):
    """Liger knows `qwen3`, not `vtime_qwen3`: the decoder's patch is called on the model, its fused loss off."""
    import types

    from vtimellm_hf.tiny_models import build_tiny_vtime_model

    calls = []
    liger = types.ModuleType("liger_kernel.transformers")
    liger.apply_liger_kernel_to_qwen3 = lambda **kwargs: calls.append(("qwen3", kwargs))
    liger.apply_liger_kernel_to_llama = lambda **kwargs: calls.append(("llama", kwargs))
    package = types.ModuleType("liger_kernel")
    package.transformers = liger
    monkeypatch.setitem(sys.modules, "liger_kernel", package)
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", liger)

    class Tokenizer:
        bos_token_id, eos_token_id, pad_token_id = None, 1, 0

        def __len__(self):
            return 16

        def convert_tokens_to_ids(self, token):
            return 15

    model = build_tiny_vtime_model(Tokenizer(), model_type="qwen3")
    apply_liger_kernels(model, {"rms_norm": True, "fused_linear_cross_entropy": True})
    assert calls == [("qwen3", {"model": model, "rms_norm": True, "fused_linear_cross_entropy": False})]


@pytest.mark.slow
def test_gpu_benchmark_has_a_qwen3_case_with_grouped_key_value_heads(tmp_path):
    """`run_gpu.py --smoke --cases train_qwen3`: the case's path at tiny sizes (hidden 64, 2 layers, 4 query and 2
    key-value heads of width 16, MLP 128, vocab 2048, LoRA r 64); its FLOPs count the narrower k and v projections."""
    result = subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "run_gpu.py"), "--smoke", "--cases",
                             "train_qwen3", "--out-dir", str(tmp_path)],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    entries = {entry["name"]: entry for entry in json.loads((tmp_path / "results_gpu.json").read_text())}
    assert list(entries) == ["train_qwen3", "padding_waste_qwen3"]
    assert entries["train_qwen3"]["model"].startswith("Qwen3 2 layers, hidden 64")
    hidden, layers, mlp, vocab, rank, kv_width = 64, 2, 128, 2048, 64, 2 * 16
    projections = [(hidden, hidden), (hidden, kv_width), (hidden, kv_width), (hidden, hidden), (hidden, mlp),
                   (hidden, mlp), (mlp, hidden)]  # fmt: skip
    frozen = layers * sum(inputs * outputs for inputs, outputs in projections) + hidden * vocab
    lora = layers * sum(rank * (inputs + outputs) for inputs, outputs in projections)
    per_token = entries["train_qwen3"]["flops_per_token"]
    assert 4 * frozen + 6 * lora < per_token < 4 * frozen + 6 * lora + 12 * layers * hidden * 2048


@pytest.mark.parametrize("recipe", sorted((RECIPES / "configs").glob("qwen*/stage*.yaml")),
                         ids=lambda path: f"{path.parent.name}/{path.stem}")  # fmt: skip
def test_backbone_recipes_are_the_paper_settings_of_vicuna_7b_on_their_llm(recipe, tmp_path):
    """Every argument equals vicuna-7b's recipe of the same stage but the LLM, its chat format, the attention kernel
    and the paths; the global batch of 128 holds on one to eight GPUs."""
    import yaml
    from trl import TrlParser

    from vtimellm_hf.training.stages import VTimeDataArguments, fit_global_batch
    from vtimellm_hf.training.trainer import VTimeTrainingArguments

    ours = yaml.safe_load(recipe.read_text())
    vicuna = yaml.safe_load((RECIPES / "configs" / "vicuna-7b" / recipe.name).read_text())
    backbone = recipe.parent.name
    assert ours.pop("chat_format") == ("qwen2.5" if backbone.startswith("qwen2.5") else "qwen3")
    assert ours.pop("attn_implementation") == "sdpa"
    assert ours.pop("model_name_or_path").lower().startswith(f"qwen/{backbone}")
    assert vicuna.pop("model_name_or_path") == "lmsys/vicuna-7b-v1.5"
    assert ours.pop("output_dir") == f"runs/{backbone}/{recipe.stem}"
    for name in ("stage1_projector", "stage2_adapter"):
        if name in vicuna:
            assert ours.pop(name) == vicuna.pop(name).replace("vicuna-7b", backbone)
    vicuna.pop("output_dir")
    assert ours == vicuna

    parser = TrlParser((VTimeModelArguments, VTimeDataArguments, VTimeTrainingArguments))
    *_, training_args = parser.parse_args_and_config(["--config", str(recipe), "--use_cpu", "true",
                                                      "--output_dir", str(tmp_path)])  # fmt: skip
    for world_size in (1, 2, 4, 8):
        fit_global_batch(training_args, world_size)
        assert training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps * world_size == 128
