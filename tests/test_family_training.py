"""The family's stages through their tiny recipes, end to end on CPU: LongVALE 2 -> 3 and AVicuna 1 -> 2 -> 3 -> 4 each
leave what the next reads, train what their row of FAMILY_STAGES says and keep frozen what it loads."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from vtimellm_hf.data.features import write_feature
from vtimellm_hf.training.family_stages import FAMILY_STAGES, family_stage_main

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def dialogue(record_id, source, token="<video>", timed=True):
    answer = "From <s0> to <e0>." if timed else "A dog barks twice."
    record = {"id": record_id, "source": source,
              "conversations": [{"from": "human", "value": f"{token}\nWhen does the dog bark?"},
                                {"from": "gpt", "value": answer}]}  # fmt: skip
    if timed:
        record["meta"] = {"duration": 40.0, "token": {"<s0>": 4.0, "<e0>": 12.0}}
    return record


def features(folder: Path, arrays: dict) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    for feature_id, array in arrays.items():
        write_feature(folder / f"{feature_id}.npy", array.astype(np.float16))
    return str(folder)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tokenizer, frame_encoder_path):
    from vtimellm_hf.tiny_models import build_tiny_llama

    root = tmp_path_factory.mktemp("family")
    rng = np.random.default_rng(0)
    build_tiny_llama(root / "base", tokenizer)
    (root / "clip").symlink_to(frame_encoder_path)
    (root / "vtimellm-stage1").mkdir()
    save_file({"model.mm_projector.weight": torch.randn(64, 32), "model.mm_projector.bias": torch.randn(64)},
              str(root / "vtimellm-stage1" / "mm_projector.safetensors"))  # fmt: skip
    videos = {f"v{i}": rng.standard_normal((100, 32)) for i in range(8)}
    images = {f"img{i}": rng.standard_normal(32) for i in range(8)}
    features(root / "video", {**videos, **images, "sub0": rng.standard_normal((20, 32))})
    features(root / "audio", {f"v{i}": rng.standard_normal((3 + i, 16)) for i in range(6)})  # BEATs stand-in
    features(root / "speech", {f"v{i}": rng.standard_normal((2 + i, 24)) for i in range(4)})  # Whisper stand-in
    clap = {**{f"v{i}": rng.standard_normal((4, 16)) for i in range(4)},
            **{f"clip{i}": rng.standard_normal((2 + i % 3, 16)) for i in range(8)},
            "sub0": rng.standard_normal((2, 16))}
    features(root / "clap", clap)
    data = root / "data"
    data.mkdir()
    (data / "longvale.json").write_text(json.dumps([dialogue(f"v{i}", "longvale") for i in range(8)]))
    (data / "avicuna-stage1.json").write_text(json.dumps([dialogue(f"img{i}", "lcs", "<image>", False)
                                                          for i in range(8)]))  # fmt: skip
    (data / "avicuna-stage2.json").write_text(json.dumps([dialogue(f"clip{i}", "audiocaps", "<audio>", False)
                                                          for i in range(8)]))  # fmt: skip
    pu_valor = dialogue("pu0", "pseudo-valor")
    pu_valor["meta"].update(sub_videos=["sub0", "sub_missing"], scale=[6.0, 4.0])
    av_records = [dialogue(f"v{i}", "unav100" if i < 4 else "anet") for i in range(8)] + [pu_valor]
    for stage in (3, 4):
        (data / f"avicuna-stage{stage}.json").write_text(json.dumps(av_records))
    return root


def run(workspace: Path, model: str, stage: int) -> Path:
    """The tiny recipe of the stage, with the workspace's paths for those of the YAML and two steps."""
    config = RECIPES / "configs" / f"tiny-{model}" / f"stage{stage}.yaml"
    text = config.read_text().replace("runs/tiny-family/", f"{workspace}/")
    local = workspace / f"{model}-stage{stage}.yaml"
    local.write_text(text)
    return family_stage_main(["--config", str(local), "--max_steps", "2"])


def test_every_row_names_a_stage_of_the_papers():
    assert sorted(FAMILY_STAGES) == [("avicuna", 1), ("avicuna", 2), ("avicuna", 3), ("avicuna", 4),
                                     ("longvale", 2), ("longvale", 3)]  # fmt: skip
    assert {key: row.leaves for key, row in FAMILY_STAGES.items()} == {
        ("avicuna", 1): "projectors", ("avicuna", 2): "projectors", ("avicuna", 3): "adapter",
        ("avicuna", 4): "model", ("longvale", 2): "adapter", ("longvale", 3): "model"}  # fmt: skip


@pytest.mark.slow
def test_longvale_stages_two_and_three(workspace):
    from transformers import AutoModelForCausalLM

    stage2 = run(workspace, "longvale", 2)
    non_lora = torch.load(stage2 / "non_lora_trainables.bin", weights_only=True)
    assert sorted(non_lora) == [f"base_model.model.model.{name}.{part}" for name in ("asr_mm_projector",
                                "audio_mm_projector") for part in ("bias", "weight")]  # fmt: skip
    adapter = load_file(str(stage2 / "adapter_model.safetensors"))
    saved = {key: value for key, value in adapter.items() if "audio_mm_projector" in key}
    assert saved, "the audio projectors are saved with the adapter"
    for key, value in saved.items():
        torch.testing.assert_close(value, non_lora[key.replace("modules_to_save.default.", "")])
    assert json.loads((stage2 / "adapter_config.json").read_text())["r"] == 8

    stage3 = run(workspace, "longvale", 3)
    model = AutoModelForCausalLM.from_pretrained(stage3, trust_remote_code=True)
    assert model.config.stream_layout == "concat"
    assert [stream.name for stream in model.config.streams] == ["video", "audio", "speech"]
    vtimellm = load_file(str(workspace / "vtimellm-stage1" / "mm_projector.safetensors"))
    torch.testing.assert_close(model.model.mm_projector.weight, vtimellm["model.mm_projector.weight"])  # frozen
    # Stage 3 trains the audio projectors again: they moved from stage 2's
    assert not torch.equal(model.model.audio_mm_projector.weight,
                           non_lora["base_model.model.model.audio_mm_projector.weight"])  # fmt: skip


@pytest.mark.slow
def test_avicuna_stages_one_to_four(workspace):
    from transformers import AutoModelForCausalLM

    stage1 = run(workspace, "avicuna", 1)
    assert set(load_file(str(stage1 / "mm_projector.safetensors"))) == {"model.mm_projector.weight",
                                                                       "model.mm_projector.bias"}  # fmt: skip
    stage2 = run(workspace, "avicuna", 2)
    audio = load_file(str(stage2 / "mm_projector_a.safetensors"))
    assert set(audio) == {"model.mm_projector_a.weight", "model.mm_projector_a.bias"}
    assert not (stage2 / "mm_projector.safetensors").exists()
    stage3 = run(workspace, "avicuna", 3)
    assert torch.load(stage3 / "non_lora_trainables.bin", weights_only=True) == {}  # as AVicuna's release
    assert not any("mm_projector" in key for key in load_file(str(stage3 / "adapter_model.safetensors")))
    stage4 = run(workspace, "avicuna", 4)
    model = AutoModelForCausalLM.from_pretrained(stage4, trust_remote_code=True)
    assert model.config.stream_layout == "interleave"
    video = load_file(str(stage1 / "mm_projector.safetensors"))
    torch.testing.assert_close(model.model.mm_projector.weight, video["model.mm_projector.weight"])
    torch.testing.assert_close(model.model.mm_projector_a.weight, audio["model.mm_projector_a.weight"])


@pytest.mark.parametrize("recipe", sorted((RECIPES / "configs").glob("[la][ov]*/stage*.yaml")),
                         ids=lambda path: f"{path.parent.name}/{path.stem}")  # fmt: skip
def test_recipes_name_a_stage_and_keep_the_global_batch_of_the_papers(recipe, tmp_path):
    from trl import TrlParser

    from vtimellm_hf.training.family_stages import FamilyDataArguments, FamilyModelArguments, family_stage
    from vtimellm_hf.training.stages import fit_global_batch
    from vtimellm_hf.training.trainer import VTimeTrainingArguments

    parser = TrlParser((FamilyModelArguments, FamilyDataArguments, VTimeTrainingArguments))
    model_args, data_args, args = parser.parse_args_and_config(["--config", str(recipe), "--use_cpu", "true",
                                                                "--output_dir", str(tmp_path)])  # fmt: skip
    spec = family_stage(model_args)
    assert (spec.model, spec.number) == (recipe.parent.name, int(recipe.stem.removeprefix("stage")))
    assert args.learning_rate == (1e-3 if spec.model == "avicuna" and spec.number < 3 else 1e-4)
    assert args.max_length == 2048
    if spec.trains_lora:
        assert (model_args.lora_r, model_args.lora_alpha, model_args.lora_dropout) == (64, 128, 0.05)
    if spec.model == "avicuna" and spec.number >= 3:
        assert data_args.av_ratio == 0.25
    for world_size in (1, 2, 4, 8):
        fit_global_batch(args, world_size)
        assert args.per_device_train_batch_size * args.gradient_accumulation_steps * world_size == 128


def test_a_family_stage_on_another_chat_format_is_refused():
    from vtimellm_hf.training.family_stages import FamilyModelArguments, check_family_arguments, family_stage

    model_args = FamilyModelArguments(model_name_or_path="base", family="longvale", stage=2, chat_format="qwen3")
    with pytest.raises(ValueError, match=r"chat_format: 'qwen3': LongVALE and AVicuna are Vicuna v1.5 models"):
        check_family_arguments(family_stage(model_args), model_args)
