"""The stages through their recipes: what each saves, projector files, resume after a kill, two processes, LoRA with
activation checkpointing."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vtimellm_hf.training.stages import (
    PROJECTOR_FILE,
    VTimeModelArguments,
    load_model,
    load_projector,
    load_tokenizer,
    save_projector,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
RECIPES = REPO_ROOT / "recipes"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Synthetic data, a tiny pre-trained base, a tiny CLIP and features, as the demo builds them (small)."""
    from vtimellm_hf.demo import build_inputs

    root = tmp_path_factory.mktemp("training")
    build_inputs(root, num_videos=12, num_val_videos=2, seed=0, num_stills=12, llm_steps=5, encoder_steps=5)
    return root


def recipe_command(stage: int, workspace: Path, output_dir: Path, *extra: str, launcher=(sys.executable,)) -> list[str]:
    command = [*launcher, str(RECIPES / f"stage{stage}.py"), "--config", str(RECIPES / "configs/tiny" / f"stage{stage}.yaml"),
               "--model_name_or_path", str(workspace / "base"), "--frame_encoder_name_or_path", str(workspace / "clip"),
               "--feature_dir", str(workspace / "features"), "--train_files", str(workspace / "data" / f"stage{stage}.json"),
               "--output_dir", str(output_dir), "--stage1_projector", str(workspace / "stage1")]
    if stage == 3:
        command += ["--stage2_adapter", str(workspace / "stage2")]
    return [*command, *extra]


def run_recipe(stage, workspace, output_dir, *extra, launcher=(sys.executable,)):
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(recipe_command(stage, workspace, output_dir, *extra, launcher=launcher),
                            capture_output=True, text=True, env=environment, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def logged_losses(output_dir: Path) -> list[float]:
    """Training losses logged by the Trainer, from the last checkpoint's or the final trainer state."""
    states = sorted(output_dir.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    history = json.loads(states[-1].read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


@pytest.mark.slow
def test_three_stages_leave_what_the_next_needs(workspace):
    run_recipe(1, workspace, workspace / "stage1", "--max_steps", "2")
    projector = load_file(str(workspace / "stage1" / PROJECTOR_FILE))
    assert set(projector) == {"model.mm_projector.weight", "model.mm_projector.bias"}

    run_recipe(2, workspace, workspace / "stage2", "--max_steps", "2")
    adapter = json.loads((workspace / "stage2" / "adapter_config.json").read_text())
    assert adapter["r"] == 64 and adapter["lora_alpha"] == 128
    assert set(adapter["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    adapter_weights = load_file(str(workspace / "stage2" / "adapter_model.safetensors"))
    assert not any("mm_projector" in key for key in adapter_weights), "the projector stays frozen in stage 2"

    run_recipe(3, workspace, workspace / "stage3", "--max_steps", "2")
    assert (workspace / "stage3" / "model.safetensors").is_file()
    assert (workspace / "stage3" / "modeling_vtime_llama.py").is_file()
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(workspace / "stage3", trust_remote_code=True)
    torch.testing.assert_close(merged.model.mm_projector.weight, projector["model.mm_projector.weight"])

    run_recipe(3, workspace, workspace / "stage3-adapter", "--max_steps", "2", "--merge_final_adapter", "false")
    assert (workspace / "stage3-adapter" / "adapter_config.json").is_file()
    record = json.loads((workspace / "stage3-adapter" / "vtimellm_stages.json").read_text())
    assert record["stage2_adapter"] == str(workspace / "stage2")


def test_projector_files_in_both_key_spellings_and_refused_pickles(tmp_path, tokenizer, model):
    save_projector(model, tmp_path)
    saved = load_file(str(tmp_path / PROJECTOR_FILE))
    original = {"weight": model.model.mm_projector.weight.detach().clone(), "bias": model.model.mm_projector.bias.detach().clone()}
    for prefix in ("model.mm_projector.", "mm_projector."):
        torch.save({prefix + name: tensor for name, tensor in original.items()}, tmp_path / "mm_projector.bin")
        with torch.no_grad():
            model.model.mm_projector.weight.zero_()
        load_projector(model, tmp_path / "mm_projector.bin")
        torch.testing.assert_close(model.model.mm_projector.weight, saved["model.mm_projector.weight"])

    class RunsCode:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    torch.save({"model.mm_projector.weight": RunsCode()}, tmp_path / "evil.bin")
    with pytest.raises(ValueError, match="Refusing to load .*evil.bin"):
        load_projector(model, tmp_path / "evil.bin")
    assert not (tmp_path / "pwned").exists()
    torch.save({"model.mm_projector.weight": original["weight"]}, tmp_path / "partial.bin")
    with pytest.raises(ValueError, match=r"projector tensors missing: \['bias'\]"):
        load_projector(model, tmp_path / "partial.bin")
    with pytest.raises(FileNotFoundError, match="No stage-1 projector"):
        load_projector(model, tmp_path / "nowhere")


def test_base_llama_becomes_vtime_model_with_video_token(workspace):
    arguments = VTimeModelArguments(model_name_or_path=str(workspace / "base"), mm_hidden_size=32)
    tokenizer = load_tokenizer(arguments)
    model = load_model(arguments, tokenizer)
    assert model.config.model_type == "vtime_llama"
    assert model.config.video_token_id == tokenizer.convert_tokens_to_ids("<video>")
    assert model.get_input_embeddings().num_embeddings >= len(tokenizer)
    assert model.model.mm_projector.in_features == 32


@pytest.mark.slow
def test_resume_after_a_kill_ends_with_the_same_weights(workspace, tmp_path):
    """A run killed after its first checkpoint and resumed ends where an uninterrupted run ends."""
    settings = ["--max_steps", "6", "--save_strategy", "steps", "--save_steps", "2", "--logging_steps", "1",
                "--lora_dropout", "0", "--train_sampling_strategy", "random", "--learning_rate", "1e-3"]
    run_recipe(2, workspace, tmp_path / "straight", *settings)

    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    killed = subprocess.Popen(recipe_command(2, workspace, tmp_path / "killed", *settings, "--save_steps", "2"),
                              env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = tmp_path / "killed" / "checkpoint-2"
    deadline = time.time() + 300
    while not (checkpoint / "trainer_state.json").is_file() and killed.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert (checkpoint / "trainer_state.json").is_file()

    run_recipe(2, workspace, tmp_path / "killed", *settings, "--resume_from_checkpoint", str(checkpoint))
    straight = load_file(str(tmp_path / "straight" / "adapter_model.safetensors"))
    resumed = load_file(str(tmp_path / "killed" / "adapter_model.safetensors"))
    assert straight.keys() == resumed.keys()
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_two_processes_follow_the_loss_curve_of_one_at_the_same_global_batch(workspace, tmp_path):
    """DDP on CPU (gloo) with torchrun: `accelerate launch --cpu` would start a single process."""
    settings = ["--max_steps", "4", "--logging_steps", "1", "--lora_dropout", "0", "--train_sampling_strategy",
                "sequential", "--save_strategy", "steps", "--save_steps", "4"]
    run_recipe(2, workspace, tmp_path / "one", *settings, "--per_device_train_batch_size", "8")
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533")
    run_recipe(2, workspace, tmp_path / "two", *settings, "--per_device_train_batch_size", "4", launcher=torchrun)
    one, two = logged_losses(tmp_path / "one"), logged_losses(tmp_path / "two")
    assert len(one) == len(two) == 4
    assert one == pytest.approx(two, rel=1e-3)


def test_lora_with_activation_checkpointing_gives_the_same_gradients(tokenizer):
    from peft import LoraConfig, get_peft_model

    from vtimellm_hf.tiny_models import build_tiny_vtime_model

    video_id = tokenizer.convert_tokens_to_ids("<video>")
    input_ids = torch.tensor([tokenizer("USER:").input_ids + [video_id] * 100
                              + tokenizer("From 05 to 23.", add_special_tokens=False).input_ids])
    labels = input_ids.masked_fill(input_ids == video_id, -100)
    features = torch.randn(1, 100, 32, generator=torch.Generator().manual_seed(0))
    gradients = []
    for checkpointing in (False, True):
        peft_model = get_peft_model(
            build_tiny_vtime_model(tokenizer),
            LoraConfig(r=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0, task_type="CAUSAL_LM"),
        )
        if checkpointing:
            peft_model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})
            # Frozen embeddings: without this, reentrant checkpointing sees no input that needs a gradient
            peft_model.enable_input_require_grads()
        peft_model.train()
        peft_model(input_ids=input_ids, video_features=features, labels=labels).loss.backward()
        gradients.append({name: p.grad for name, p in peft_model.named_parameters() if p.requires_grad})
    plain, checkpointed = gradients
    assert any(grad.abs().sum() > 0 for name, grad in plain.items() if "lora_B" in name)
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-4, atol=1e-6)
