"""The stages through their recipes: what each saves, projector files, resume after a kill, two processes, LoRA with
activation checkpointing."""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from vtimellm_hf.checkpoints import PROJECTOR_FILE, load_model, load_projector, load_tokenizer, save_projector
from vtimellm_hf.training.stages import (
    VTimeDataArguments,
    VTimeModelArguments,
    fit_global_batch,
    resume_checkpoint,
    save_stage,
    setup_model,
)
from vtimellm_hf.training.trainer import VTimeTrainingArguments

REPO_ROOT = Path(__file__).resolve().parents[1]
RECIPES = REPO_ROOT / "recipes"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Synthetic data, a tiny pre-trained base, a tiny CLIP and features, as the demo builds them (small)."""
    from vtimellm_hf.demo_steps import build_inputs

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
    tokenizer = load_tokenizer(str(workspace / "base"))
    model = load_model(str(workspace / "base"), tokenizer, mm_hidden_size=32)
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


class InMemoryFeatures:
    def __init__(self, features: dict):
        self.features = features

    def load(self, feature_id):
        return self.features[feature_id]


def caption_records(count: int):
    """Stage-1 records whose captions have 2 to 10 words, and their image features."""
    words = "a red circle on grey as the man cracks an egg".split()
    generator = np.random.default_rng(0)
    records = [{"id": str(index), "video_id": f"image{index}", "messages": [
        {"role": "user", "content": "<video>\nDescribe the image."},
        {"role": "assistant", "content": " ".join(words[: 2 + index * 5 % 9])}]} for index in range(count)]  # fmt: skip
    features = {record["video_id"]: generator.standard_normal(32).astype(np.float32) for record in records}
    return records, InMemoryFeatures(features)


def projector_trainer(processor, tokenizer, output_dir, records, store, **settings):
    """A stage-1 `VTimeSFTTrainer` in this process: the tiny model's projector trains on `records`."""
    from datasets import Dataset

    from vtimellm_hf.tiny_models import build_tiny_vtime_model
    from vtimellm_hf.training import VTimeDataCollator, add_lengths
    from vtimellm_hf.training.trainer import VTimeSFTTrainer

    model = build_tiny_vtime_model(tokenizer)
    model.requires_grad_(False)
    model.model.mm_projector.requires_grad_(True)
    collator = VTimeDataCollator(processor, store, max_length=512, template="plain", num_rows=1)
    args = VTimeTrainingArguments(**{
        "output_dir": str(output_dir), "use_cpu": True, "bf16": False, "report_to": "none", "disable_tqdm": True,
        "activation_checkpointing": False, "learning_rate": 1e-2, "logging_steps": 1, "save_strategy": "no",
        "per_device_train_batch_size": 4, "seed": 0, "dataset_kwargs": {"skip_prepare_dataset": True},
        "remove_unused_columns": False, **settings})  # fmt: skip
    dataset = Dataset.from_list(records)
    if args.train_sampling_strategy in ("group_by_length", "batch_rebalance"):
        dataset = add_lengths(dataset, collator, column=args.length_column_name)
    trainer = VTimeSFTTrainer(model=model, args=args, train_dataset=dataset, data_collator=collator,
                              processing_class=processor)
    return trainer, collator


def test_resume_in_the_second_epoch_trains_on_the_batches_of_an_uninterrupted_run(processor, tokenizer, tmp_path):
    """Length-grouped batches: the resumed run draws the second epoch's order again, not the first one's."""
    records, store = caption_records(16)
    settings = {"num_train_epochs": 2, "train_sampling_strategy": "group_by_length", "save_strategy": "steps",
                "save_steps": 6}
    straight, _ = projector_trainer(processor, tokenizer, tmp_path / "straight", records, store, **settings)
    straight.train()
    resumed, _ = projector_trainer(processor, tokenizer, tmp_path / "resumed", records, store, **settings)
    resumed.train(resume_from_checkpoint=str(tmp_path / "straight" / "checkpoint-6"))  # 4 steps an epoch
    expected = straight.model.model.mm_projector.state_dict()
    for name, weight in resumed.model.model.mm_projector.state_dict().items():
        torch.testing.assert_close(weight, expected[name], rtol=0, atol=0)


def test_padding_waste_is_logged_with_dataloader_workers(processor, tokenizer, tmp_path):
    records, store = caption_records(8)
    trainer, collator = projector_trainer(processor, tokenizer, tmp_path, records, store, max_steps=2,
                                          train_sampling_strategy="sequential", dataloader_num_workers=2)
    trainer.train()
    expected = []
    for start in (0, 4):
        mask = collator(records[start : start + 4])["attention_mask"]
        expected.append(round(1 - mask.sum().item() / mask.numel(), 4))
    assert min(expected) > 0
    assert [entry.get("padding_waste") for entry in trainer.state.log_history if "loss" in entry] == expected


def test_batch_rebalance_reads_the_lengths_of_the_configured_column(processor, tokenizer, tmp_path):
    records, store = caption_records(8)
    trainer, _ = projector_trainer(processor, tokenizer, tmp_path, records, store, max_steps=1,
                                   train_sampling_strategy="batch_rebalance", length_column_name="n_tokens")
    assert "n_tokens" in trainer.train_dataset.column_names
    trainer.train()


def test_global_batch_sets_the_accumulation_or_refuses(tmp_path):
    args = VTimeTrainingArguments(output_dir=str(tmp_path), use_cpu=True, per_device_train_batch_size=32,
                                  global_batch_size=128)
    fit_global_batch(args, world_size=2)
    assert args.gradient_accumulation_steps == 2
    with pytest.raises(ValueError, match=r"global_batch_size=128 is not a multiple of the per-device batch 32 x 8"):
        fit_global_batch(args, world_size=8)
    args.global_batch_size, args.gradient_accumulation_steps = None, 3
    fit_global_batch(args, world_size=8)
    assert args.gradient_accumulation_steps == 3


@pytest.mark.parametrize("recipe", sorted((RECIPES / "configs").glob("vicuna-*/stage*.yaml")),
                         ids=lambda path: f"{path.parent.name}/{path.stem}")
def test_recipes_keep_the_global_batch_of_the_paper_on_one_to_eight_gpus(recipe, tmp_path):
    from trl import TrlParser

    parser = TrlParser((VTimeModelArguments, VTimeDataArguments, VTimeTrainingArguments))
    *_, args = parser.parse_args_and_config(["--config", str(recipe), "--use_cpu", "true",
                                             "--output_dir", str(tmp_path)])
    for world_size in (1, 2, 4, 8):
        fit_global_batch(args, world_size)
        assert args.per_device_train_batch_size * args.gradient_accumulation_steps * world_size == 128


def test_later_stages_refuse_a_base_without_a_trained_projector(tokenizer, tmp_path):
    from vtimellm_hf.tiny_models import build_tiny_llama, build_tiny_vtime_model

    build_tiny_llama(tmp_path / "llama", tokenizer)
    with pytest.raises(ValueError, match="llama holds no trained projector: set stage1_projector"):
        setup_model(2, VTimeModelArguments(model_name_or_path=str(tmp_path / "llama"), mm_hidden_size=32), tokenizer)

    vtime = build_tiny_vtime_model(tokenizer)
    vtime.save_pretrained(tmp_path / "vtime")
    arguments = VTimeModelArguments(model_name_or_path=str(tmp_path / "vtime"), mm_hidden_size=32,
                                    tokenizer_name_or_path=str(tmp_path / "llama"))
    model, _ = setup_model(2, arguments, tokenizer)
    torch.testing.assert_close(model.model.mm_projector.weight, vtime.model.mm_projector.weight)

    weights = load_file(str(tmp_path / "vtime" / "model.safetensors"))
    save_file({key: value for key, value in weights.items() if "mm_projector" not in key},
              str(tmp_path / "vtime" / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="vtime holds no trained projector"):
        setup_model(2, arguments, tokenizer)


def test_stage_one_trains_a_float32_projector_under_a_bfloat16_llm(tokenizer, tmp_path):
    from vtimellm_hf.tiny_models import build_tiny_llama

    build_tiny_llama(tmp_path / "llama", tokenizer)
    arguments = VTimeModelArguments(model_name_or_path=str(tmp_path / "llama"), mm_hidden_size=32, dtype="bfloat16")
    model, peft_config = setup_model(1, arguments, tokenizer)
    assert peft_config is None
    assert model.model.mm_projector.weight.dtype == torch.float32
    assert model.get_input_embeddings().weight.dtype == torch.bfloat16
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert trainable == {"model.mm_projector.weight", "model.mm_projector.bias"}

    video = tokenizer.convert_tokens_to_ids("<video>")
    caption = tokenizer("a red circle", add_special_tokens=False).input_ids
    input_ids = torch.tensor([[tokenizer.bos_token_id, video, *caption]])
    labels = input_ids.clone()
    labels[0, :2] = -100
    model.train()
    model(input_ids=input_ids, video_features=torch.randn(1, 1, 32), labels=labels).loss.backward()
    gradient = model.model.mm_projector.weight.grad
    assert gradient.dtype == torch.float32 and torch.isfinite(gradient).all() and gradient.abs().sum() > 0


def test_only_the_main_process_writes_what_a_stage_leaves(tmp_path, model, processor):
    waits, saves = [], []

    class OtherProcessTrainer:
        accelerator = SimpleNamespace(wait_for_everyone=lambda: waits.append(True))

        def __init__(self, model):
            self.model = model

        def is_world_process_zero(self):
            return False

        def save_model(self, output_dir):
            saves.append(output_dir)  # the Trainer's own save: every process calls it, the main one writes

    for stage in (1, 2, 3):
        save_stage(stage, OtherProcessTrainer(model), processor, VTimeModelArguments(), tmp_path / f"stage{stage}")
    assert not list(tmp_path.iterdir())
    assert saves == [str(tmp_path / "stage2")] and len(waits) == 3


def test_a_projector_with_empty_tensors_is_refused_not_written(tmp_path, model):
    # What each process holds under ZeRO-3 outside a gather
    model.model.mm_projector.weight = torch.nn.Parameter(torch.empty(0))
    with pytest.raises(ValueError, match=r"projector tensors \['model.mm_projector.weight'\] are empty"):
        save_projector(model, tmp_path)
    assert not (tmp_path / PROJECTOR_FILE).exists()


def test_projector_is_gathered_under_zero3(tmp_path, model, monkeypatch):
    from vtimellm_hf import checkpoints

    projector = model.model.mm_projector
    whole = {name: parameter.detach().clone() for name, parameter in projector.named_parameters()}
    modifier_ranks = []

    class GatheredParameters:
        """DeepSpeed's context: the whole tensors inside, each process's slice (here none) outside."""

        def __init__(self, parameters, modifier_rank=None):
            self.parameters, self.modifier_rank = parameters, modifier_rank

        def __enter__(self):
            modifier_ranks.append(self.modifier_rank)
            for name, parameter in zip(whole, self.parameters):
                parameter.data = whole[name].clone()

        def __exit__(self, *exception):
            for parameter in self.parameters:
                parameter.data = torch.empty(0)

    fake_deepspeed = SimpleNamespace(zero=SimpleNamespace(GatheredParameters=GatheredParameters))
    monkeypatch.setitem(sys.modules, "deepspeed", fake_deepspeed)
    monkeypatch.setattr(checkpoints, "is_deepspeed_zero3_enabled", lambda: True)
    for parameter in projector.parameters():
        parameter.data = torch.empty(0)
    save_projector(model, tmp_path)
    torch.testing.assert_close(load_file(str(tmp_path / PROJECTOR_FILE))["model.mm_projector.weight"], whole["weight"])
    load_projector(model, tmp_path)
    assert modifier_ranks == [None, 0]


def test_resume_true_is_the_last_checkpoint_and_starting_over_them_warns(tmp_path, caplog):
    args = VTimeTrainingArguments(output_dir=str(tmp_path), use_cpu=True, resume_from_checkpoint="true")
    with pytest.raises(ValueError, match=r"resume_from_checkpoint=true, but .* holds no checkpoint-\* folder"):
        resume_checkpoint(args)
    for step in (2, 10):
        (tmp_path / f"checkpoint-{step}").mkdir()
    assert resume_checkpoint(args) == str(tmp_path / "checkpoint-10")
    args.resume_from_checkpoint = None
    with caplog.at_level(logging.WARNING, logger="vtimellm_hf.training.stages"):
        assert resume_checkpoint(args) is None
    assert "checkpoint-10), and this run starts over without them" in caplog.text


@pytest.mark.slow
def test_stage_one_recipe_with_global_batch_rebalanced_batches_workers_and_bf16(workspace, tmp_path):
    run_recipe(1, workspace, tmp_path, "--max_steps", "2", "--logging_steps", "1", "--dtype", "bfloat16",
               "--train_sampling_strategy", "batch_rebalance", "--length_column_name", "n_tokens",
               "--dataloader_num_workers", "2", "--per_device_train_batch_size", "4", "--global_batch_size", "8",
               "--save_strategy", "steps", "--save_steps", "2")
    history = json.loads((tmp_path / "checkpoint-2" / "trainer_state.json").read_text())["log_history"]
    assert all(0 <= entry["padding_waste"] < 1 for entry in history if "loss" in entry)
    record = json.loads((tmp_path / "vtimellm_training.json").read_text())["stages"][-1]["training"]
    assert record["gradient_accumulation_steps"] == 2
    assert load_file(str(tmp_path / PROJECTOR_FILE))["model.mm_projector.weight"].dtype == torch.float32


# The stage table, checked against the paper: what each stage starts from, trains and leaves

LLM_LINEAR_LAYERS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
                     "mlp.up_proj", "mlp.down_proj")  # fmt: skip
LLAMA_LAYER_NAMES = [module.split(".")[1] for module in LLM_LINEAR_LAYERS]


@pytest.fixture
def stage_inputs(tokenizer, tmp_path):
    """A plain LLaMA base, a stage-1 projector file and a stage-2 LoRA adapter saved by PEFT with random A and B."""
    from peft import LoraConfig, get_peft_model

    from vtimellm_hf.tiny_models import build_tiny_llama, build_tiny_vtime_model

    base = build_tiny_llama(tmp_path / "llama", tokenizer)
    generator = torch.Generator().manual_seed(1)
    projector = {"weight": torch.randn(64, 32, generator=generator), "bias": torch.randn(64, generator=generator)}
    (tmp_path / "stage1").mkdir()
    save_file({f"model.mm_projector.{name}": tensor for name, tensor in projector.items()},
              str(tmp_path / "stage1" / PROJECTOR_FILE))  # fmt: skip
    stage2 = get_peft_model(build_tiny_vtime_model(tokenizer),
                            LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], lora_dropout=0.0))  # fmt: skip
    with torch.no_grad():
        for name, parameter in stage2.named_parameters():
            if ".lora_" in name:
                parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
    stage2.save_pretrained(tmp_path / "stage2")
    lora = {name: parameter.detach().clone() for name, parameter in stage2.named_parameters() if ".lora_" in name}
    arguments = VTimeModelArguments(model_name_or_path=str(tmp_path / "llama"), mm_hidden_size=32,
                                    stage1_projector=str(tmp_path / "stage1"), stage2_adapter=str(tmp_path / "stage2"))
    return SimpleNamespace(base=base, projector=projector, lora=lora, arguments=arguments)


def trainable_after_setup(stage, arguments, tokenizer):
    from peft import get_peft_model

    model, peft_config = setup_model(stage, arguments, tokenizer)
    trained = model if peft_config is None else get_peft_model(model, peft_config)
    return trained, {name for name, parameter in trained.named_parameters() if parameter.requires_grad}


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_each_stage_trains_what_the_paper_says(stage, stage_inputs, tokenizer):
    """Stage 1: the projector alone. Stages 2 and 3: a new LoRA (r 64, alpha 128 as set) on every linear layer of the
    LLM, the projector frozen; stage 3 over the LLM with the stage-2 LoRA merged (W + B @ A * alpha / r)."""
    arguments = stage_inputs.arguments
    arguments.lora_r, arguments.lora_alpha = 64, 128
    model, trainable = trainable_after_setup(stage, arguments, tokenizer)
    if stage == 1:
        assert trainable == {"model.mm_projector.weight", "model.mm_projector.bias"}
        return
    layers = stage_inputs.base.config.num_hidden_layers
    assert trainable == {f"base_model.model.model.layers.{layer}.{module}.lora_{part}.default.weight"
                         for layer in range(layers) for module in LLM_LINEAR_LAYERS for part in "AB"}  # fmt: skip
    assert model.peft_config["default"].r == 64 and model.peft_config["default"].lora_alpha == 128
    inner = model.base_model.model
    torch.testing.assert_close(inner.model.mm_projector.weight, stage_inputs.projector["weight"])
    base_q = stage_inputs.base.model.layers[0].self_attn.q_proj.weight
    merged_q = inner.model.layers[0].self_attn.q_proj.base_layer.weight
    if stage == 2:
        torch.testing.assert_close(merged_q, base_q)
    else:
        prefix = "base_model.model.model.layers.0.self_attn.q_proj"
        lora_a, lora_b = (stage_inputs.lora[f"{prefix}.lora_{part}.default.weight"] for part in "AB")
        torch.testing.assert_close(merged_q, base_q + lora_b @ lora_a * 8 / 4)
        assert not torch.allclose(merged_q, base_q)


class MainProcessTrainer:
    """What `save_stage` uses of a Trainer, in the main process: the model and the Trainer's own save."""

    accelerator = SimpleNamespace(wait_for_everyone=lambda: None)

    def __init__(self, model):
        self.model = model

    def is_world_process_zero(self):
        return True

    def save_model(self, output_dir):
        self.model.save_pretrained(output_dir)


@pytest.mark.parametrize(("stage", "merge"), [(1, True), (2, True), (3, True), (3, False)])
def test_each_stage_leaves_what_the_paper_says(stage, merge, stage_inputs, tokenizer, processor, tmp_path):
    """Stage 1 the projector alone, stage 2 a LoRA adapter without the projector, stage 3 one model folder that loads
    (or its adapter and the stages it sits on)."""
    from peft import get_peft_model

    stage_inputs.arguments.merge_final_adapter = merge
    model, peft_config = setup_model(stage, stage_inputs.arguments, tokenizer)
    if peft_config is not None:
        model = get_peft_model(model, peft_config)
    output = tmp_path / "output"
    save_stage(stage, MainProcessTrainer(model), processor, stage_inputs.arguments, output)
    files = {path.name for path in output.iterdir()}
    processor_files = {"processor_config.json", "tokenizer_config.json"}
    adapter_files = {"adapter_config.json", "adapter_model.safetensors"}
    model_files = {"config.json", "generation_config.json", "model.safetensors", "modeling_vtime_llama.py"}
    if stage == 1:
        assert files == {PROJECTOR_FILE}
        saved = load_file(str(output / PROJECTOR_FILE))
        torch.testing.assert_close(saved["model.mm_projector.weight"], model.model.mm_projector.weight)
    elif stage == 2 or not merge:
        assert adapter_files | processor_files <= files and not files & model_files
        assert not any("mm_projector" in key for key in load_file(str(output / "adapter_model.safetensors")))
        assert ("vtimellm_stages.json" in files) == (stage == 3)
    else:
        assert model_files | processor_files <= files and not files & adapter_files
        assert json.loads((output / "generation_config.json").read_text())["temperature"] == 0.05


def test_model_arguments_reuse_trl_and_refuse_what_the_stages_cannot_do(tmp_path):
    """`VTimeModelArguments` is TRL's `ModelConfig` (trl 1.16: `lora_r`, `lora_alpha`, `lora_dropout`,
    `lora_target_modules`, read by `get_peft_config`, which returns None unless `use_peft`): the stages set `use_peft`
    themselves, so it is no argument; `all-linear` would wrap the projector and one name stays a list."""
    from trl import ModelConfig, TrlParser

    from vtimellm_hf.training.stages import lora_config

    assert issubclass(VTimeModelArguments, ModelConfig)
    arguments = VTimeModelArguments(model_name_or_path="base", lora_r=8, lora_alpha=16, lora_dropout=0.1,
                                    lora_target_modules=["q_proj"])  # fmt: skip
    config = lora_config(arguments)
    assert (config.r, config.lora_alpha, config.lora_dropout, config.target_modules) == (8, 16, 0.1, {"q_proj"})
    assert VTimeModelArguments().lora_target_modules == LLAMA_LAYER_NAMES
    with pytest.raises(ValueError, match="'all-linear' would also wrap mm_projector"):
        VTimeModelArguments(lora_target_modules=["all-linear"])
    with pytest.raises(ValueError, match="load_in_4bit"):
        VTimeModelArguments(load_in_4bit=True)
    (tmp_path / "recipe.yaml").write_text("model_name_or_path: base\nuse_peft: true\n")
    parser = TrlParser((VTimeModelArguments, VTimeDataArguments, VTimeTrainingArguments))
    with pytest.raises(ValueError, match="use_peft"):
        parser.parse_args_and_config(["--config", str(tmp_path / "recipe.yaml"), "--output_dir", str(tmp_path),
                                      "--use_cpu", "true"])


def test_stage_three_without_its_adapter_and_a_push_of_what_is_not_a_model_are_refused(tmp_path):
    from vtimellm_hf.training.stages import run_stage

    def training_args(**settings):
        return VTimeTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", **settings)

    with pytest.raises(ValueError, match="Stage 3 starts from the stage-2 adapter: set stage2_adapter"):
        run_stage(3, VTimeModelArguments(model_name_or_path="base"), VTimeDataArguments(), training_args())
    with pytest.raises(ValueError, match="Stage 2 leaves its adapter, not a model"):
        run_stage(2, VTimeModelArguments(model_name_or_path="base"), VTimeDataArguments(),
                  training_args(push_to_hub=True, hub_model_id="org/name"))  # fmt: skip
    with pytest.raises(ValueError, match="VTimeLLM has stages 1, 2, 3, not 4"):
        run_stage(4, VTimeModelArguments(model_name_or_path="base"), VTimeDataArguments(), training_args())


def test_old_names_still_work_and_say_where_they_moved(stage_inputs, tokenizer):
    from vtimellm_hf import checkpoints, conversion, hub, inference, model_card
    from vtimellm_hf.training import stages

    moved = {
        (hub, "build_hub_folder"): conversion.build_hub_folder,
        (hub, "ConversionResult"): conversion.ConversionResult,
        (hub, "read_stage_adapter"): checkpoints.read_stage_adapter,
        (hub, "read_state_dict"): checkpoints.read_state_dict,
        (hub, "StageAdapter"): checkpoints.StageAdapter,
        (hub, "original_generation_config"): checkpoints.original_generation_config,
        (hub, "ORIGINAL_GENERATION_SETTINGS"): checkpoints.ORIGINAL_GENERATION_SETTINGS,
        (stages, "load_projector"): checkpoints.load_projector,
        (stages, "save_projector"): checkpoints.save_projector,
        (stages, "merge_adapter"): checkpoints.merge_adapter,
        (stages, "gathered"): checkpoints.gathered,
        (stages, "PROJECTOR_FILE"): checkpoints.PROJECTOR_FILE,
    }
    for (module, name), new in moved.items():
        with pytest.warns(FutureWarning, match=rf"{module.__name__}\.{name} moved to vtimellm_hf\.\w+\.{name}"):
            assert getattr(module, name) is new
    # Names the old module still uses itself are plain imports there
    assert inference.load_model_and_processor is checkpoints.load_model_and_processor
    assert model_card.ADAPTER_SUBFOLDER == checkpoints.ADAPTER_SUBFOLDER == "stage3_adapter"
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        hub.no_such_name  # noqa: B018

    arguments = stage_inputs.arguments
    with pytest.warns(FutureWarning, match=r"stages\.load_tokenizer\(model_args\) moved"):
        old_tokenizer = stages.load_tokenizer(arguments)
    with pytest.warns(FutureWarning, match=r"stages\.load_model\(model_args, \.\.\.\) moved"):
        old_model = stages.load_model(arguments, old_tokenizer)
    new_tokenizer = checkpoints.load_tokenizer(arguments.model_name_or_path)
    new_model = checkpoints.load_model(arguments.model_name_or_path, new_tokenizer, mm_hidden_size=32)
    assert old_tokenizer.get_vocab() == tokenizer.get_vocab()
    torch.testing.assert_close(old_model.model.embed_tokens.weight, new_model.model.embed_tokens.weight)
