"""A saved folder loads with `trust_remote_code=True` where `vtimellm_hf` cannot be imported, and behaves the same."""

import json
import os
import subprocess
import sys
import textwrap

import torch

# Runs in a fresh interpreter in which importing vtimellm_hf fails, as on a machine that only has transformers
REMOTE_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class HidePackage(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "vtimellm_hf" or name.startswith("vtimellm_hf."):
                raise ImportError(f"{name} is hidden in this test")

    sys.meta_path.insert(0, HidePackage())
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoProcessor

    folder, inputs_file, output_file = sys.argv[1:4]
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    model = AutoModel.from_pretrained(folder, trust_remote_code=True, dtype="auto")
    causal_lm = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    inputs = torch.load(inputs_file)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "When does it happen?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    processed = processor(text=prompt, video_features=inputs["video_features"], return_tensors="pt")
    with torch.no_grad():
        logits = model(**processed).logits
    generated = model.generate(**processed, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    json.dump({
        "classes": [type(config).__module__, type(model).__name__, type(model).__module__,
                    type(causal_lm).__name__, type(processor).__name__, type(processor).__module__],
        "vtimellm_hf_loaded": any(name.startswith("vtimellm_hf") for name in sys.modules),
        "video_processor": [type(processor.video_processor).__module__, processor.video_processor.to_dict()],
        "chat_templates": processor.chat_template,
        "plain_prompt": processor.apply_chat_template(
            [{"role": "user", "content": "<video>"}, {"role": "assistant", "content": "a caption"}],
            chat_template="plain",
        ),
        "input_ids": processed["input_ids"].tolist(),
        "logits": logits[0, -1].tolist(),
        "generated": generated.tolist(),
    }, open(output_file, "w"))
    """
)


def test_saved_folder_loads_as_remote_code_without_the_package(tmp_path, tokenizer, model, processor):
    folder = tmp_path / "checkpoint"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_vtime_llama.VTimeLlamaConfig",
        "AutoModel": "modeling_vtime_llama.VTimeLlamaForCausalLM",
        "AutoModelForCausalLM": "modeling_vtime_llama.VTimeLlamaForCausalLM",
        "AutoModelForImageTextToText": "modeling_vtime_llama.VTimeLlamaForCausalLM",
        "AutoModelForMultimodalLM": "modeling_vtime_llama.VTimeLlamaForCausalLM",
    }
    processor_config = json.loads((folder / "processor_config.json").read_text())
    assert processor_config["auto_map"] == {"AutoProcessor": "processing_vtime.VTimeProcessor"}
    # The files `auto_map` names, and the siblings they import relatively, which transformers copies with them
    # (the processor makes LongVALE's and AVicuna's audio and speech rows: the audio files travel too)
    code_files = ["audio_decoding_vtime.py", "audio_processing_vtime.py", "beats_vtime.py", "chat_templates_vtime.py",
                  "configuration_vtime_llama.py", "feature_inputs_vtime.py", "modeling_vtime_llama.py",
                  "processing_vtime.py", "timestamps_vtime.py", "video_decoding_vtime.py",
                  "video_processing_vtime.py"]  # fmt: skip
    assert sorted(path.name for path in folder.glob("*.py")) == code_files

    features = torch.randn(1, 100, model.config.mm_hidden_size, generator=torch.Generator().manual_seed(3))
    torch.save({"video_features": features}, tmp_path / "inputs.pt")
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_SCRIPT, str(folder), str(tmp_path / "inputs.pt"), str(tmp_path / "out.json")],
        env=environment,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    remote = json.loads((tmp_path / "out.json").read_text())

    config_module, model_class, model_module, causal_lm_class, processor_class, processor_module = remote["classes"]
    assert not remote["vtimellm_hf_loaded"]
    assert config_module.startswith("transformers_modules.")
    assert model_module.startswith("transformers_modules.") and processor_module.startswith("transformers_modules.")
    assert model_class == causal_lm_class == "VTimeLlamaForCausalLM"
    assert processor_class == "VTimeProcessor"
    video_processor_module, video_settings = remote["video_processor"]
    assert video_processor_module.startswith("transformers_modules.")
    assert video_settings == processor.video_processor.to_dict()
    assert remote["chat_templates"] == processor.chat_template
    assert remote["plain_prompt"] == "<video>a caption\n"

    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "When does it happen?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    local = processor(text=prompt, video_features=features, return_tensors="pt")
    assert remote["input_ids"] == local["input_ids"].tolist()
    with torch.no_grad():
        local_logits = model(**local).logits[0, -1]
    torch.testing.assert_close(torch.tensor(remote["logits"]), local_logits, rtol=1e-5, atol=1e-5)
    local_generated = model.generate(**local, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert remote["generated"] == local_generated.tolist()
