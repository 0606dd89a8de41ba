"""Conversion of the original release, model cards and pushes, on tiny models, without network.

The original release is rebuilt in its own layout: a Vicuna-shaped base, `mm_projector.bin`, and two PEFT LoRA
folders with `adapter_model.bin` (original key names, made with `get_peft_model` on a VTime model with `<video>`
added, as the original adapters were) and `adapter_config.json` as an old PEFT wrote it. The converted model must
match a reference computed by hand: the base LLaMA with `W + B @ A * alpha / r` merged for each stage and the
projected frames written into the input embeddings.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from huggingface_hub import ModelCard
from transformers import LlamaForCausalLM, LlamaTokenizer

from vtimellm_hf import conversion, hub, model_card
from vtimellm_hf.checkpoints import load_model, load_model_and_processor, load_tokenizer, read_stage_adapter
from vtimellm_hf.conversion import build_hub_folder
from vtimellm_hf.data.synthetic import encode_mp4
from vtimellm_hf.hub import (
    FolderNotLoadableError,
    HubConnectionError,
    HubRequestError,
    LoadCheck,
    NoTokenError,
    OfflineModeError,
    push_folder,
)
from vtimellm_hf.model import VIDEO_TOKEN, VTimeLlamaForCausalLM
from vtimellm_hf.tiny_models import build_tiny_llama
from vtimellm_hf.training.stages import VTimeModelArguments

LLAMA_LINEAR_LAYERS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
STAGES = {  # r, alpha, target modules (stage 3 on a subset, so that targeting is checked, not assumed)
    2: (4, 8, LLAMA_LINEAR_LAYERS),
    3: (2, 6, ["q_proj", "v_proj", "down_proj"]),
}
MM_HIDDEN = 32
REPO_ID = "tiny-org/vtimellm-tiny"

HIDE_PACKAGE = textwrap.dedent(
    """
    import importlib.abc, sys

    class HidePackage(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "vtimellm_hf" or name.startswith("vtimellm_hf."):
                raise ImportError(f"{name} is hidden in this test")

    sys.meta_path.insert(0, HidePackage())
    """
)


def _legacy_adapter(folder, base, stage, seed):
    """A stage's LoRA folder as the original release has it: adapter_model.bin with PEFT's original key names."""
    from peft import LoraConfig, get_peft_model

    r, alpha, targets = STAGES[stage]
    vtime = load_model(str(base), load_tokenizer(str(base)), mm_hidden_size=MM_HIDDEN)
    peft_model = get_peft_model(vtime, LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, task_type="CAUSAL_LM"))
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, parameter in peft_model.named_parameters():
        if ".lora_" in name:
            # Random A and B: PEFT starts B at zero, and a merge of zeros would prove nothing
            tensor = 0.05 * torch.randn(parameter.shape, generator=generator)
            state[name.replace(".default", "")] = tensor
    folder.mkdir(parents=True)
    torch.save(state, folder / "adapter_model.bin")
    config = {  # as PEFT 0.4 (the original's) wrote it, fields newer PEFT no longer knows included
        "base_model_name_or_path": "./checkpoints/vicuna-7b-v1.5", "bias": "none", "enable_lora": None,
        "fan_in_fan_out": False, "inference_mode": True, "lora_alpha": alpha, "lora_dropout": 0.05,
        "merge_weights": False, "modules_to_save": None, "peft_type": "LORA", "r": r, "target_modules": targets,
        "task_type": "CAUSAL_LM",
    }  # fmt: skip
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return state


@pytest.fixture(scope="module")
def release(tmp_path_factory, tiny_dir, tokenizer):
    """Two Vicuna-shaped bases (tokenizer with and without `<video>`), a projector and two legacy LoRA folders."""
    root = tmp_path_factory.mktemp("release")
    build_tiny_llama(root / "base_with_video", tokenizer)
    # The same SentencePiece model, loaded on its own: the LLaMA vocabulary without <video>
    (root / "sentencepiece").mkdir()
    shutil.copy(tiny_dir / "tokenizer" / "tokenizer.model", root / "sentencepiece")
    plain = LlamaTokenizer.from_pretrained(root / "sentencepiece", legacy=True, add_bos_token=True, add_eos_token=False)
    plain.pad_token = plain.unk_token
    assert len(plain) == len(tokenizer) - 1
    assert plain.convert_tokens_to_ids(VIDEO_TOKEN) == plain.unk_token_id
    build_tiny_llama(root / "base_without_video", plain)

    generator = torch.Generator().manual_seed(1)
    projector = {"weight": 0.1 * torch.randn(64, MM_HIDDEN, generator=generator),
                 "bias": 0.1 * torch.randn(64, generator=generator)}  # fmt: skip
    torch.save({f"model.mm_projector.{name}": tensor for name, tensor in projector.items()}, root / "mm_projector.bin")
    lora2 = _legacy_adapter(root / "stage2", root / "base_with_video", 2, seed=2)
    lora3 = _legacy_adapter(root / "stage3", root / "base_with_video", 3, seed=3)
    # Stage 2's non_lora_trainables.bin holds a projector (LLaVA's spelling): it replaces stage 1's, as in the original
    stage2_projector = {"weight": 0.1 * torch.randn(64, MM_HIDDEN, generator=generator),
                        "bias": 0.1 * torch.randn(64, generator=generator)}  # fmt: skip
    torch.save({f"base_model.model.model.mm_projector.{name}": tensor for name, tensor in stage2_projector.items()},
               root / "stage2" / "non_lora_trainables.bin")  # fmt: skip
    return {"root": root, "projector": stage2_projector, "loras": [(lora2, 2), (lora3, 3)]}


def reference_logits(base, projector, loras, input_ids, features, video_token_id):
    """The converted model's logits by hand: plain LLaMA, LoRA merged as W + B @ A * alpha / r, frames spliced."""
    llama = LlamaForCausalLM.from_pretrained(base, dtype=torch.float32)
    state = {name: tensor.clone() for name, tensor in llama.state_dict().items()}
    for lora, stage in loras:
        r, alpha, _ = STAGES[stage]
        for key, lora_a in lora.items():
            if ".lora_A." in key:
                module = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
                state[f"{module}.weight"] += lora[key.replace(".lora_A.", ".lora_B.")] @ lora_a * (alpha / r)
    llama.load_state_dict(state)
    ids = torch.tensor([input_ids])
    is_video = ids == video_token_id
    # The id of <video> may lie past the base vocabulary: its rows are replaced anyway
    embeddings = llama.get_input_embeddings()(ids.masked_fill(is_video, 0))
    embeddings[is_video] = features[0] @ projector["weight"].T + projector["bias"]
    with torch.no_grad():
        return llama(inputs_embeds=embeddings).logits[0], llama.config.vocab_size


@pytest.fixture(scope="module")
def merged(release, tmp_path_factory, frame_encoder_path):
    """The release converted from the base whose tokenizer lacks `<video>`, merged; every torch.load call recorded."""
    root = release["root"]
    calls = []
    original_load = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return original_load(*args, **kwargs)

    torch.load = recording_load
    try:
        result = build_hub_folder(
            str(root / "base_without_video"), root / "mm_projector.bin", root / "stage2", root / "stage3",
            tmp_path_factory.mktemp("converted") / "merged", frame_encoder=str(frame_encoder_path),
            dtype="float32", repo_id=REPO_ID,
        )  # fmt: skip
    finally:
        torch.load = original_load
    return result, calls


def test_peft_reads_adapter_bins_with_weights_only():
    """
    What PEFT 0.21 does with a legacy `adapter_model.bin`: `load_peft_weights` reads it through
    `peft.utils.save_and_load.torch_load`, whose `weights_only` defaults to True, and calls `torch.load` nowhere
    else. The conversion does not rely on it: it reads pickles itself with weights_only=True and hands PEFT
    safetensors only.
    """
    import inspect

    from peft.utils import save_and_load

    assert inspect.signature(save_and_load.torch_load).parameters["weights_only"].default is True
    source = inspect.getsource(save_and_load.load_peft_weights)
    assert "torch_load(filename" in source and "torch.load(" not in source


def test_merged_conversion_matches_the_reference(release, merged):
    result, load_calls = merged
    folder = result.folder
    assert load_calls and all(weights_only is True for weights_only in load_calls), load_calls

    config = json.loads((folder / "config.json").read_text())
    for auto_class in ("AutoModel", "AutoModelForCausalLM", "AutoModelForImageTextToText", "AutoModelForMultimodalLM"):
        assert config["auto_map"][auto_class] == "modeling_vtime_llama.VTimeLlamaForCausalLM", auto_class
    for name in ("model.safetensors", "configuration_vtime_llama.py", "modeling_vtime_llama.py", "processing_vtime.py",
                 "processor_config.json", "chat_template.jinja", "README.md", "vtimellm_conversion.json"):  # fmt: skip
        assert (folder / name).is_file(), name
    assert not list(folder.glob("**/*.bin")) and not (folder / model_card.ADAPTER_SUBFOLDER).exists()
    generation = json.loads((folder / "generation_config.json").read_text())
    assert (generation["do_sample"], generation["temperature"], generation["max_new_tokens"]) == (True, 0.05, 1024)

    # The tokenizer gained <video> as a special token and the embeddings a row
    base_vocab = json.loads((release["root"] / "base_without_video" / "config.json").read_text())["vocab_size"]
    tokenizer = LlamaTokenizer.from_pretrained(folder)
    assert VIDEO_TOKEN in tokenizer.all_special_tokens
    assert config["vocab_size"] == base_vocab + 1 == config["video_token_id"] + 1
    assert any("added to the tokenizer" in note for note in result.notes)
    assert any("non_lora_trainables.bin: replaces model.mm_projector.bias, model.mm_projector.weight" in note
               for note in result.notes)  # fmt: skip

    check = result.load_check
    assert check.ok, check.error
    assert all(name.startswith("transformers_modules.") for name in check.classes.values()), check.classes
    reference, vocab = reference_logits(
        release["root"] / "base_without_video", release["projector"], release["loras"], check.input_ids,
        check.video_features, config["video_token_id"],
    )  # fmt: skip
    assert vocab == base_vocab
    # The resized row of <video> is new: compare the base vocabulary
    torch.testing.assert_close(check.logits[:base_vocab], reference[-1], rtol=1e-5, atol=1e-5)
    model = VTimeLlamaForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([check.input_ids]), video_features=check.video_features).logits[0]
    torch.testing.assert_close(logits[:, :base_vocab], reference, rtol=1e-5, atol=1e-5)
    # The merges matter: without them the logits differ
    unmerged, _ = reference_logits(release["root"] / "base_without_video", release["projector"], [], check.input_ids,
                                   check.video_features, config["video_token_id"])  # fmt: skip
    assert (unmerged[-1] - reference[-1]).abs().max() > 1e-2


def test_unmerged_conversion_from_the_cli_matches_the_reference(release, tmp_path, frame_encoder_path):
    from peft import PeftModel

    root = release["root"]
    parser = argparse.ArgumentParser()
    conversion.add_subcommand(parser.add_subparsers())
    args = parser.parse_args([
        "convert-original", "--base", str(root / "base_with_video"), "--stage1", str(root / "mm_projector.bin"),
        "--stage2", str(root / "stage2"), "--stage3", str(root / "stage3"), "--clip", str(frame_encoder_path),
        "--out", str(tmp_path / "unmerged"), "--no-merge", "--dtype", "float32", "--skip-load-check",
        "--base-model", "lmsys/vicuna-7b-v1.5",
    ])  # fmt: skip
    assert args.run(args) == 0
    folder = tmp_path / "unmerged"
    adapter = folder / model_card.ADAPTER_SUBFOLDER
    assert (adapter / "adapter_model.safetensors").is_file() and not list(folder.glob("**/*.bin"))
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] is None
    card = (folder / "README.md").read_text()
    assert f'subfolder="{model_card.ADAPTER_SUBFOLDER}"' in card
    # The base was a local folder: the card's metadata names the Hub id given for it
    assert "\nbase_model: lmsys/vicuna-7b-v1.5\n" in card.split("\n---\n")[0]
    assert model_card.render_model_card(folder).data.base_model == "lmsys/vicuna-7b-v1.5"

    check = hub.check_remote_loading(folder)
    assert check.ok, check.error
    video_token_id = json.loads((folder / "config.json").read_text())["video_token_id"]
    reference, _ = reference_logits(root / "base_with_video", release["projector"], release["loras"],
                                    check.input_ids, check.video_features, video_token_id)  # fmt: skip
    torch.testing.assert_close(check.logits, reference[-1], rtol=1e-5, atol=1e-5)
    model = PeftModel.from_pretrained(VTimeLlamaForCausalLM.from_pretrained(folder), str(folder),
                                      subfolder=model_card.ADAPTER_SUBFOLDER)  # fmt: skip
    # What `ground`, `caption`, `chat` and `evaluate` load: the adapter merged in, not the stage-2 model alone
    merged, _ = load_model_and_processor(str(folder), device="cpu", dtype="float32")
    for candidate in (model, merged):
        with torch.no_grad():
            inputs = torch.tensor([check.input_ids])
            logits = candidate(input_ids=inputs, video_features=check.video_features).logits[0]
        torch.testing.assert_close(logits, reference, rtol=1e-5, atol=1e-5)


def test_adapter_reading_names_problems_and_places_whole_tensors(release, tmp_path, tokenizer, model):
    from peft import LoraConfig, get_peft_model

    from vtimellm_hf.tiny_models import build_tiny_vtime_model

    # As the recipes save a stage: safetensors, and PEFT adds the embeddings and LM head of a resized vocabulary
    trained = get_peft_model(build_tiny_vtime_model(tokenizer), LoraConfig(r=2, target_modules=["q_proj"]))
    trained.save_pretrained(tmp_path / "recipe", save_embedding_layers=True)
    adapter = read_stage_adapter(tmp_path / "recipe", model)
    assert set(adapter.full_weights) == {"model.embed_tokens.weight", "lm_head.weight"}
    assert len(adapter.lora_state) == 4

    root = release["root"]
    with pytest.raises(ValueError, match=r"missing LoRA tensors .*model\.layers\.1\.mlp\.down_proj\.lora_B"):
        broken = _copy_adapter(root / "stage3", tmp_path / "missing")
        state = torch.load(broken / "adapter_model.bin", weights_only=True)
        del state["base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"]
        torch.save(state, broken / "adapter_model.bin")
        read_stage_adapter(broken, model)
    with pytest.raises(ValueError, match=r"unexpected tensors .*model\.layers\.0\.bogus"):
        broken = _copy_adapter(root / "stage3", tmp_path / "unexpected")
        state = torch.load(broken / "adapter_model.bin", weights_only=True)
        state["base_model.model.model.layers.0.bogus.lora_A.weight"] = torch.zeros(2, 64)
        torch.save(state, broken / "adapter_model.bin")
        read_stage_adapter(broken, model)
    with pytest.raises(ValueError, match="Refusing to load .*non_lora_trainables.bin"):
        broken = _copy_adapter(root / "stage3", tmp_path / "pickle")
        torch.save({"projector": argparse.Namespace(weight=torch.zeros(1))}, broken / "non_lora_trainables.bin")
        read_stage_adapter(broken, model)
    # A projector spelled without any prefix is placed too; a tensor no parameter matches is named
    adapter_dir = _copy_adapter(root / "stage3", tmp_path / "spelling")
    torch.save({"mm_projector.weight": torch.ones(64, MM_HIDDEN)}, adapter_dir / "non_lora_trainables.bin")
    assert set(read_stage_adapter(adapter_dir, model).full_weights) == {"model.mm_projector.weight"}
    torch.save({"mm_projector.weight": torch.ones(3, 3)}, adapter_dir / "non_lora_trainables.bin")
    with pytest.raises(ValueError, match=r"match no parameter .*mm_projector\.weight \(3, 3\)"):
        read_stage_adapter(adapter_dir, model)


def _copy_adapter(source, target):
    shutil.copytree(source, target)
    (target / "non_lora_trainables.bin").unlink(missing_ok=True)
    return target


def test_model_card_metadata_results_and_recipe(merged, tmp_path):
    folder = tmp_path / "card"
    shutil.copytree(merged[0].folder, folder)
    results = {
        "charades_sta": {"r1@0.3": 51.0, "r1@0.5": 27.5, "r1@0.7": 11.4, "miou": 31.2, "n": 3720},
        "activitynet_captioning": {"soda_c": 5.8, "cider": 27.6, "meteor": 6.8},
        "synthetic": {"task": "grounding", "dataset_name": "Synthetic moments", "dataset_type": "synthetic",
                      "split": "val", "miou": 42.0},
    }  # fmt: skip
    (tmp_path / "results.json").write_text(json.dumps(results))
    parser = argparse.ArgumentParser()
    model_card.add_subcommand(parser.add_subparsers())
    args = parser.parse_args(["model-card", str(folder), "--results", str(tmp_path / "results.json"),
                              "--repo-id", REPO_ID, "--base-model", "lmsys/vicuna-7b-v1.5"])  # fmt: skip
    assert args.run(args) == 0

    card = ModelCard((folder / "README.md").read_text(), ignore_metadata_errors=False)
    data = card.data
    assert (data.license, data.base_model, data.pipeline_tag, data.library_name) == (
        "llama2", "lmsys/vicuna-7b-v1.5", "image-text-to-text", "transformers")
    assert "vtimellm" in data.tags and data.datasets == model_card.ORIGINAL_DATASETS
    scores = {(result.dataset_name, result.metric_type): result.metric_value for result in data.eval_results}
    assert scores[("Charades-STA", "r1@0.3")] == 51.0 and scores[("ActivityNet Captions", "soda_c")] == 5.8
    assert scores[("Synthetic moments", "miou")] == 42.0 and len(scores) == 8
    text = card.text
    assert "Converted with `vtimellm-hf convert-original`" in text and "| 2 | InternVid" in text
    assert "start = s / 100 * d" in text and "(e + 1) * d / 100" in text and "## Limitations" in text
    # The results stay with the folder: a card written again keeps them
    model_card.write_model_card(folder, repo_id=REPO_ID)
    assert len(ModelCard.load(folder / "README.md", ignore_metadata_errors=False).data.eval_results) == 8

    with pytest.raises(ValueError, match="unknown metric 'r1@0.9'"):
        model_card.read_results({"charades_sta": {"r1@0.9": 1.0}})
    with pytest.raises(ValueError, match="'mine' is not one of .* must give task, dataset_name"):
        model_card.read_results({"mine": {"miou": 1.0}})

    # A folder trained by the recipes: the record of each stage, carried from stage to stage
    (folder / model_card.CONVERSION_RECORD_FILE).unlink()
    (folder / model_card.RESULTS_FILE).unlink()
    unknown = model_card.render_model_card(folder, repo_id=REPO_ID)
    assert "training recipe of this checkpoint is unknown" in unknown.text and unknown.data.eval_results is None
    previous = None
    for stage in (1, 2, 3):
        stage_dir = folder if stage == 3 else tmp_path / f"stage{stage}"
        model_args = VTimeModelArguments(
            model_name_or_path="lmsys/vicuna-7b-v1.5",
            stage1_projector=str(tmp_path / "stage1"),
            stage2_adapter=str(tmp_path / "stage2"),
            lora_r=64,
            lora_alpha=128,
        )
        data_args = argparse.Namespace(train_files=[f"data/stage{stage}.json"])
        training_args = argparse.Namespace(num_train_epochs=2, max_steps=-1, learning_rate=1e-4, bf16=True,
                                           per_device_train_batch_size=8, gradient_accumulation_steps=4,
                                           world_size=4, max_length=2048)  # fmt: skip
        previous = model_card.save_training_record(stage_dir, stage, model_args, data_args, training_args)
    assert [entry["stage"] for entry in json.loads(previous.read_text())["stages"]] == [1, 2, 3]
    trained = model_card.render_model_card(folder, repo_id=REPO_ID)
    row = "| 3 | stage3.json | stage-2 LoRA merged, then a new LoRA | 2 | 0.0001 | 128 | r 64, alpha 128, dropout 0.05"
    assert row in trained.text
    assert trained.data.base_model == "lmsys/vicuna-7b-v1.5"


def test_card_usage_code_runs_as_written(merged, tmp_path):
    folder = merged[0].folder
    text = (folder / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.DOTALL)
    assert len(blocks) == 1 and f'"{REPO_ID}"' in blocks[0]
    # A random tiny model seldom samples </s>: 1024 new tokens (the original's cap, kept in the card) would take
    # ~20 s on CPU, so this copy of the folder caps generation lower; the card's code runs unchanged
    local = tmp_path / "model"
    shutil.copytree(folder, local)
    generation = json.loads((local / "generation_config.json").read_text())
    (local / "generation_config.json").write_text(json.dumps({**generation, "max_new_tokens": 24}))
    code = blocks[0].replace(f'"{REPO_ID}"', repr(str(local)))
    frames = torch.randint(0, 256, (24, 64, 64, 3), generator=torch.Generator().manual_seed(0)).numpy().astype("uint8")
    encode_mp4(tmp_path / "video.mp4", frames, fps=8)
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run([sys.executable, "-c", HIDE_PACKAGE + code], env=environment, cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("]"), result.stdout  # the parsed moments, a list


@pytest.fixture
def no_hub(monkeypatch):
    """Every Hub call of HfApi fails the test: nothing may reach the network."""
    from huggingface_hub import HfApi

    def refuse(*args, **kwargs):
        raise AssertionError("a Hub call was made")

    for name in ("create_repo", "create_branch", "upload_folder", "create_commit", "whoami"):
        monkeypatch.setattr(HfApi, name, refuse)


def publishable_copy(folder, destination):
    """A copy of a converted folder that names its frame encoder by Hub id (the tiny one is a local folder, which
    `push` refuses); the load check does not load the encoder."""
    shutil.copytree(folder, destination)
    settings = json.loads((destination / "processor_config.json").read_text())
    settings["frame_encoder_name_or_path"] = "openai/clip-vit-large-patch14"
    (destination / "processor_config.json").write_text(json.dumps(settings))
    return destination


def test_push_dry_run_and_refusal_of_a_broken_folder(merged, tmp_path, no_hub, capsys):
    folder = publishable_copy(merged[0].folder, tmp_path / "push")
    (folder / "training_args.bin").write_bytes(b"not for the Hub")
    (folder / "README.md").unlink()
    parser = argparse.ArgumentParser()
    hub.add_subcommand(parser.add_subparsers())
    args = parser.parse_args(["push", str(folder), REPO_ID, "--dry-run"])
    assert args.run(args) == 0
    output = capsys.readouterr().out
    assert "loads with trust_remote_code=True" in output and "would upload" in output
    listed = dict(re.findall(r"^  (\S+)\s+(\d[\d.]* k?M?B)$", output, re.MULTILINE))
    for name in ("model.safetensors", "config.json", "modeling_vtime_llama.py", "processor_config.json", "README.md"):
        assert name in listed, (name, output)
    assert "training_args.bin" not in listed and not (folder / "README.md").exists()

    (folder / "modeling_vtime_llama.py").unlink()
    with pytest.raises(FolderNotLoadableError, match="Refusing to push .*model failed.*modeling_vtime_llama"):
        push_folder(folder, REPO_ID, dry_run=True)


def test_push_without_token_or_network(merged, tmp_path, monkeypatch, no_hub):
    from huggingface_hub import constants

    folder = merged[0].folder
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert constants.is_offline_mode()
    with pytest.raises(NoTokenError, match="No Hugging Face token found: set HF_TOKEN"):
        push_folder(folder, REPO_ID)

    monkeypatch.setenv("HF_TOKEN", "hf_test")
    with pytest.raises(OfflineModeError, match="HF_HUB_OFFLINE is set"):
        push_folder(folder, REPO_ID)


def test_push_uploads_and_names_network_failures(merged, tmp_path, monkeypatch):
    import httpx2
    from huggingface_hub import CommitInfo, HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError

    folder = publishable_copy(merged[0].folder, tmp_path / "push")
    (folder / "training_args.bin").write_bytes(b"not for the Hub")
    (folder / "README.md").unlink()
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    monkeypatch.setattr(constants, "is_offline_mode", lambda: False)
    # The load check itself is tested above; here the network calls are
    monkeypatch.setattr(hub, "check_remote_loading", lambda folder: LoadCheck(True, classes={"model": "M"}))
    calls = []

    def recorder(name):
        def record(self, repo_id=None, **kwargs):
            calls.append((name, repo_id or kwargs["repo_id"], kwargs))
            return CommitInfo(f"{constants.ENDPOINT}/{REPO_ID}/commit/1", "", "", "1")

        return record

    for name in ("create_repo", "create_branch", "upload_folder"):
        monkeypatch.setattr(HfApi, name, recorder(name))
    result = push_folder(folder, REPO_ID, private=True, revision="v1")
    assert [call[0] for call in calls] == ["create_repo", "create_branch", "upload_folder"]
    assert calls[0][2]["private"] is True and calls[1][2]["branch"] == "v1"
    upload = calls[2][2]
    assert upload["revision"] == "v1" and upload["folder_path"] == str(folder)
    assert "config.json" in upload["allow_patterns"] and "training_args.bin" not in upload["allow_patterns"]
    assert result.card_written and f'"{REPO_ID}"' in (folder / "README.md").read_text()
    assert result.commit_url.endswith("/commit/1")
    with pytest.raises(ValueError, match="pull request is opened against the default branch"):
        push_folder(folder, REPO_ID, revision="v1", create_pr=True)

    def unreachable(self, repo_id, **kwargs):
        raise httpx2.ConnectError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(HfApi, "create_repo", unreachable)
    with pytest.raises(HubConnectionError, match="Could not reach the Hub .*no network connection"):
        push_folder(folder, REPO_ID)

    def rejected(self, repo_id, **kwargs):
        request = httpx2.Request("POST", f"{constants.ENDPOINT}/api/repos/create")
        raise HfHubHTTPError("401 Unauthorized", response=httpx2.Response(401, request=request))

    monkeypatch.setattr(HfApi, "create_repo", rejected)
    with pytest.raises(HubRequestError, match="rejected the token"):
        push_folder(folder, REPO_ID)


def test_load_check_names_a_folder_it_cannot_load_without_starting_a_process(tmp_path, monkeypatch):
    monkeypatch.setattr(hub.subprocess, "run", lambda *args, **kwargs: pytest.fail("no process for these folders"))
    (tmp_path / "adapter_config.json").write_text("{}")
    assert hub.check_remote_loading(tmp_path).stage == "layout"
    config = tmp_path / "config.json"
    config.write_text('{"model_type": "vtime_llama",\n "mm_hidden_size": }')
    check = hub.check_remote_loading(tmp_path)
    assert (check.ok, check.stage) == (False, "config")
    assert check.error.startswith(f"{config}, line 2, column 20: invalid JSON")
    config.write_text('{"model_type": "llama"}')
    assert "is not a VTimeLLM config (no mm_hidden_size)" in hub.check_remote_loading(tmp_path).error
    config.write_text("[1, 2]")
    assert hub.check_remote_loading(tmp_path).stage == "config"
