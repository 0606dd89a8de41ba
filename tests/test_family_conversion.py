"""`convert-original --format longvale|avicuna`: tiny releases written in each original's layout, converted, loaded
with `trust_remote_code=True` where `vtimellm_hf` cannot be imported, and their logits compared with a computation
by hand: the plain LLaMA base, each stage's LoRA merged in order as `W + B @ A * alpha / r`, each stream projected
with its released projector, the rows written in the order the originals document."""

import argparse
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from huggingface_hub import ModelCard
from transformers import LlamaForCausalLM

from test_hub import HIDE_PACKAGE
from vtimellm_hf import conversion
from vtimellm_hf.conversion import build_hub_folder
from vtimellm_hf.tiny_models import build_tiny_llama

VIDEO, AUDIO, SPEECH, CLAP = 32, 16, 24, 12
HIDDEN = 64
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LORAS = {"longvale2": (4, 8, TARGETS), "longvale3": (2, 6, ["q_proj", "v_proj", "down_proj"]),
         "avicuna3": (4, 8, TARGETS), "avicuna4": (2, 4, ["k_proj", "o_proj", "up_proj"])}  # fmt: skip

# Runs where importing vtimellm_hf fails: the converted folder with its own code, every feature kind through its
# processor
REMOTE_SCRIPT = HIDE_PACKAGE + textwrap.dedent(
    """
    import json
    import torch
    from transformers import AutoModelForCausalLM, AutoProcessor

    folder, cases_file, output_file = sys.argv[1:4]
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "When does it happen?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    results = {"modules": [type(model).__module__, type(processor).__module__],
               "leaked": any(name.startswith("vtimellm_hf") for name in sys.modules), "cases": {}}
    for name, features in torch.load(cases_file).items():
        inputs = processor(text=prompt, return_tensors="pt", **{key: [value] for key, value in features.items()})
        with torch.no_grad():
            logits = model(**inputs).logits[0]
        results["cases"][name] = {"input_ids": inputs["input_ids"][0].tolist(), "logits": logits.tolist()}
    json.dump(results, open(output_file, "w"))
    """
)


def random(shape, generator, scale=0.1):
    return scale * torch.randn(shape, generator=generator)


def projector(width, generator):
    return {"weight": random((HIDDEN, width), generator), "bias": random((HIDDEN,), generator)}


def write_lora(folder, base, stage, generator, non_lora=None):
    """A stage folder as peft 0.4 saved it: adapter_model.bin with PEFT's original names, its config, and the
    original's non_lora_trainables.bin (and config.json, as the releases have them)."""
    r, alpha, targets = LORAS[stage]
    llama = LlamaForCausalLM.from_pretrained(base)
    lora = {}
    for name, module in llama.named_modules():
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets:
            lora[f"base_model.model.{name}.lora_A.weight"] = random((r, module.in_features), generator, 0.05)
            lora[f"base_model.model.{name}.lora_B.weight"] = random((module.out_features, r), generator, 0.05)
    folder.mkdir(parents=True)
    torch.save(lora, folder / "adapter_model.bin")
    config = {"base_model_name_or_path": "./checkpoints/vicuna-7b-v1.5", "bias": "none", "enable_lora": None,
              "fan_in_fan_out": False, "inference_mode": True, "lora_alpha": alpha, "lora_dropout": 0.05,
              "merge_weights": False, "modules_to_save": None, "peft_type": "LORA", "r": r, "target_modules": targets,
              "task_type": "CAUSAL_LM"}  # fmt: skip
    (folder / "adapter_config.json").write_text(json.dumps(config))
    (folder / "config.json").write_text(json.dumps({"model_type": "LongVALE-LLM" if "longvale" in stage
                                                    else "llava", "hidden_size": HIDDEN}))  # fmt: skip
    torch.save(non_lora or {}, folder / "non_lora_trainables.bin")
    return lora, stage


@pytest.fixture(scope="module")
def releases(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("family_release")
    base = root / "vicuna"
    build_tiny_llama(base, tokenizer)
    generator = torch.Generator().manual_seed(7)
    video = projector(VIDEO, generator)
    torch.save({f"model.mm_projector.{key}": value for key, value in video.items()}, root / "mm_projector.bin")

    # LongVALE: stage 2 brings the audio projectors with its LoRA, stage 3 replaces them
    longvale = {"projectors": {}, "loras": []}
    for stage in (2, 3):
        audio, speech = projector(AUDIO, generator), projector(SPEECH, generator)
        non_lora = {f"base_model.model.model.{name}.{key}": value
                    for name, weights in (("audio_mm_projector", audio), ("asr_mm_projector", speech))
                    for key, value in weights.items()}  # fmt: skip
        longvale["loras"].append(write_lora(root / f"longvale_stage{stage}", base, f"longvale{stage}", generator,
                                            non_lora))  # fmt: skip
        longvale["projectors"] = {"video": video, "audio": audio, "speech": speech}

    # AVicuna: its stage-1 script saved every key containing "mm_projector", an untrained mm_projector_a included;
    # its stage-2 file may hold the frozen mm_projector too: only exact prefixes are read
    audio = projector(CLAP, generator)
    torch.save({**{f"model.mm_projector.{key}": value for key, value in video.items()},
                **{f"model.mm_projector_a.{key}": value for key, value in projector(CLAP, generator).items()}},
               root / "avicuna_mm_projector.bin")  # fmt: skip
    torch.save({**{f"model.mm_projector_a.{key}": value for key, value in audio.items()},
                **{f"model.mm_projector.{key}": value for key, value in projector(VIDEO, generator).items()}},
               root / "mm_projector_a.bin")  # fmt: skip
    avicuna = {"projectors": {"video": video, "audio": audio},
               "loras": [write_lora(root / f"avicuna_stage{stage}", base, f"avicuna{stage}", generator)
                         for stage in (3, 4)]}  # fmt: skip
    return {"root": root, "base": base, "longvale": longvale, "avicuna": avicuna}


def reference_logits(base, loras, input_ids, video_token_id, ordered_rows):
    """The plain base, LoRAs merged in order, the rows written over the placeholders."""
    llama = LlamaForCausalLM.from_pretrained(base, dtype=torch.float32)
    state = {name: tensor.clone() for name, tensor in llama.state_dict().items()}
    for lora, stage in loras:
        r, alpha, _ = LORAS[stage]
        for key, lora_a in lora.items():
            if ".lora_A." in key:
                module = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
                state[f"{module}.weight"] += lora[key.replace(".lora_A.", ".lora_B.")] @ lora_a * (alpha / r)
    llama.load_state_dict(state)
    ids = torch.tensor([input_ids])
    embeddings = llama.get_input_embeddings()(ids)
    embeddings[ids == video_token_id] = ordered_rows
    with torch.no_grad():
        return llama(inputs_embeds=embeddings).logits[0]


def project(weights, rows):
    return rows @ weights["weight"].T + weights["bias"]


def in_pattern(video_rows, audio_rows, pattern):
    """Rows in the order of a pattern string ("A" audio, "V" video), each stream in its own order."""
    video, audio = iter(video_rows), iter(audio_rows)
    return torch.stack([next(audio) if slot == "A" else next(video) for slot in pattern])


def run_remote(folder, cases, tmp_path):
    torch.save(cases, tmp_path / "cases.pt")
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_SCRIPT, str(folder), str(tmp_path / "cases.pt"), str(tmp_path / "out.json")],
        env=environment, cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    remote = json.loads((tmp_path / "out.json").read_text())
    assert not remote["leaked"] and all(module.startswith("transformers_modules.") for module in remote["modules"])
    return remote["cases"]


def test_longvale_release_converts_and_matches_the_reference(releases, tmp_path):
    root, release = releases["root"], releases["longvale"]
    load_calls, original_load = [], torch.load

    def recording_load(*args, **kwargs):
        load_calls.append(kwargs.get("weights_only"))
        return original_load(*args, **kwargs)

    torch.load = recording_load
    try:
        result = build_hub_folder(
            str(releases["base"]), root / "mm_projector.bin", root / "longvale_stage2", root / "longvale_stage3",
            tmp_path / "longvale", release_format="longvale", audio_encoder="BEATs_iter3_plus_AS20K.pt",
            dtype="float32", repo_id="tiny-org/longvale-tiny",
        )  # fmt: skip
    finally:
        torch.load = original_load
    # Projector files, adapters and non_lora_trainables.bin: every pickle read with weights_only
    assert len(load_calls) >= 5 and all(weights_only is True for weights_only in load_calls), load_calls
    assert result.load_check.ok, result.load_check.error
    config = json.loads((result.folder / "config.json").read_text())
    assert config["stream_layout"] == "concat"
    assert [(s["name"], s["projector"], s["hidden_size"]) for s in config["feature_streams"]] == [
        ("video", "mm_projector", VIDEO), ("audio", "audio_mm_projector", AUDIO), ("speech", "asr_mm_projector", SPEECH)
    ]  # fmt: skip
    processor_config = json.loads((result.folder / "processor_config.json").read_text())
    assert processor_config["stream_encoders"] == {
        "audio": {"kind": "beats", "name_or_path": "BEATs_iter3_plus_AS20K.pt"},
        "speech": {"kind": "whisper", "name_or_path": "openai/whisper-large-v2"},
    }
    assert processor_config["max_positions"] == config["max_position_embeddings"]
    card_text = (result.folder / "README.md").read_text()
    card = ModelCard(card_text, ignore_metadata_errors=False)
    assert card.data.datasets == ["ttgeng233/LongVALE"] and card.data.license == "llama2"
    assert {"longvale", "audio-visual"} <= set(card.data.tags)
    for line in ("| audio | `audio_mm_projector` | 16 | `BEATs_iter3_plus_AS20K.pt` |",
                 "| speech | `asr_mm_projector` | 24 | `openai/whisper-large-v2` |",
                 "--format longvale` from the original LongVALE-LLM release", "arXiv:2411.19772",
                 "audio_features=[audio], speech_features=[speech]"):  # fmt: skip
        assert line in card_text, line

    generator = torch.Generator().manual_seed(11)
    streams = {"video_features": torch.randn(20, VIDEO, generator=generator),
               "audio_features": torch.randn(7, AUDIO, generator=generator),
               "speech_features": torch.randn(5, SPEECH, generator=generator)}  # fmt: skip
    cases = {"video": ["video_features"], "video+audio": ["video_features", "audio_features"],
             "video+speech": ["video_features", "speech_features"], "all": list(streams)}  # fmt: skip
    remote = run_remote(result.folder, {name: {key: streams[key] for key in keys} for name, keys in cases.items()},
                        tmp_path)  # fmt: skip
    projectors = release["projectors"]
    for name, keys in cases.items():
        # LongVALE's order: video rows, then audio, then speech
        ordered = torch.cat([project(projectors[key.removesuffix("_features")], streams[key])
                             for key in ("video_features", "audio_features", "speech_features") if key in keys])
        reference = reference_logits(releases["base"], release["loras"], remote[name]["input_ids"],
                                     config["video_token_id"], ordered)  # fmt: skip
        assert remote[name]["input_ids"].count(config["video_token_id"]) == len(ordered)
        torch.testing.assert_close(torch.tensor(remote[name]["logits"]), reference, rtol=1e-5, atol=1e-5)
    # Stage 3's audio projectors replaced stage 2's, and the merges matter
    unmerged = reference_logits(releases["base"], [], remote["all"]["input_ids"], config["video_token_id"],
                                torch.cat([project(projectors[key.removesuffix("_features")], value)
                                           for key, value in streams.items()]))  # fmt: skip
    assert (unmerged[-1] - torch.tensor(remote["all"]["logits"][-1])).abs().max() > 1e-2


def test_avicuna_release_converts_from_the_cli_and_matches_the_reference(releases, tmp_path):
    root, release = releases["root"], releases["avicuna"]
    parser = argparse.ArgumentParser()
    conversion.add_subcommand(parser.add_subparsers())
    args = parser.parse_args([
        "convert-original", "--format", "avicuna", "--base", str(releases["base"]),
        "--stage1", str(root / "avicuna_mm_projector.bin"), "--stage2", str(root / "mm_projector_a.bin"),
        "--stage3", str(root / "avicuna_stage3"), "--stage4", str(root / "avicuna_stage4"),
        "--out", str(tmp_path / "avicuna"), "--dtype", "float32",
    ])  # fmt: skip
    assert args.run(args) == 0
    folder = tmp_path / "avicuna"
    config = json.loads((folder / "config.json").read_text())
    assert config["stream_layout"] == "interleave"
    processor_config = json.loads((folder / "processor_config.json").read_text())
    assert (processor_config["num_frames"], processor_config["audio_rows"]) == (100, 25)
    assert processor_config["stream_encoders"] == {"audio": {"kind": "clap", "name_or_path": "laion/clap-htsat-fused"}}
    card_text = (folder / "README.md").read_text()
    assert ModelCard(card_text, ignore_metadata_errors=False).data.tags[-2:] == ["avicuna", "audio-visual"]
    for line in ("| video | `mm_projector` | 32 | `openai/clip-vit-large-patch14` | 75 frames |",
                 "| audio | `mm_projector_a` | 12 | `laion/clap-htsat-fused` | 25: 10 s windows", "arXiv:2403.16276",
                 "the stage-1 video projector, the stage-2 audio projector, the stage-3 and stage-4 LoRA adapters"):
        assert line in card_text, line

    generator = torch.Generator().manual_seed(12)
    patterns = {  # the originals' documented orders
        "ratio 0.25": (75, 25, "AVVV" * 25),
        "ratio 0.10": (90, 10, "A" + "VVVVVVVVA" * 9 + "V" * 18),
        "video only": (100, 0, "V" * 100),
    }
    cases = {}
    for name, (video_rows, audio_rows, _) in patterns.items():
        cases[name] = {"video_features": torch.randn(video_rows, VIDEO, generator=generator)}
        if audio_rows:
            cases[name]["audio_features"] = torch.randn(audio_rows, CLAP, generator=generator)
    remote = run_remote(folder, cases, tmp_path)
    projectors = release["projectors"]
    for name, (_, audio_rows, pattern) in patterns.items():
        video = project(projectors["video"], cases[name]["video_features"])
        audio = project(projectors["audio"], cases[name]["audio_features"]) if audio_rows else None
        ordered = in_pattern(video, audio if audio is not None else [], pattern)
        reference = reference_logits(releases["base"], release["loras"], remote[name]["input_ids"],
                                     config["video_token_id"], ordered)  # fmt: skip
        torch.testing.assert_close(torch.tensor(remote[name]["logits"]), reference, rtol=1e-5, atol=1e-5)


def test_inconsistent_releases_are_refused_by_name(releases, tmp_path):
    root, base = releases["root"], str(releases["base"])
    with pytest.raises(ValueError, match="--stage4 is AVicuna's last LoRA folder"):
        build_hub_folder(base, root / "mm_projector.bin", root / "longvale_stage2", root / "longvale_stage3",
                         tmp_path / "x", release_format="longvale", stage4=root / "avicuna_stage4")  # fmt: skip
    with pytest.raises(ValueError, match="--stage4 is AVicuna's last LoRA folder"):
        build_hub_folder(base, root / "mm_projector.bin", root / "mm_projector_a.bin", root / "avicuna_stage3",
                         tmp_path / "x", release_format="avicuna")  # fmt: skip
    # AVicuna's stage folders hold no audio projectors: not LongVALE's stage 2
    with pytest.raises(ValueError, match=r"non_lora_trainables.bin: no model.audio_mm_projector.weight .* is it "
                                         r"LongVALE's stage 2\?"):  # fmt: skip
        build_hub_folder(base, root / "mm_projector.bin", root / "avicuna_stage3", root / "avicuna_stage4",
                         tmp_path / "x", release_format="longvale")  # fmt: skip
    with pytest.raises(FileNotFoundError, match="No mm_projector_a projector at"):
        build_hub_folder(base, root / "mm_projector.bin", root / "avicuna_stage3", root / "avicuna_stage4",
                         tmp_path / "x", release_format="avicuna", stage4=root / "avicuna_stage4")  # fmt: skip
    assert not (tmp_path / "x").exists()


def test_avicuna_stage_four_kept_apart_is_merged_where_the_package_loads_it(releases, tmp_path):
    from vtimellm_hf.checkpoints import ADAPTER_SUBFOLDER, load_model_and_processor

    root, release = releases["root"], releases["avicuna"]
    result = build_hub_folder(
        str(releases["base"]), root / "avicuna_mm_projector.bin", root / "mm_projector_a.bin",
        root / "avicuna_stage3", tmp_path / "avicuna", release_format="avicuna", stage4=root / "avicuna_stage4",
        merge=False, dtype="float32", check=False,
    )  # fmt: skip
    assert (result.folder / ADAPTER_SUBFOLDER / "adapter_model.safetensors").is_file()
    assert "the last stage's adapter kept apart in `stage3_adapter/`" in (result.folder / "README.md").read_text()
    model, processor = load_model_and_processor(str(result.folder), device="cpu", dtype="float32")
    generator = torch.Generator().manual_seed(13)
    video, audio = torch.randn(75, VIDEO, generator=generator), torch.randn(25, CLAP, generator=generator)
    prompt = processor.apply_chat_template([{"role": "user", "content": "<video>\nWhen?"}], add_generation_prompt=True)
    inputs = processor(text=prompt, video_features=[video], audio_features=[audio], return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits[0]
    projectors = release["projectors"]
    ordered = in_pattern(project(projectors["video"], video), project(projectors["audio"], audio), "AVVV" * 25)
    reference = reference_logits(releases["base"], release["loras"], inputs["input_ids"][0].tolist(),
                                 model.config.video_token_id, ordered)  # fmt: skip
    torch.testing.assert_close(logits, reference, rtol=1e-5, atol=1e-5)
    # Without stage 4 the logits differ: the adapter kept apart is not left out
    stage3_only = reference_logits(releases["base"], release["loras"][:1], inputs["input_ids"][0].tolist(),
                                   model.config.video_token_id, ordered)  # fmt: skip
    assert (stage3_only[-1] - logits[-1]).abs().max() > 1e-3
