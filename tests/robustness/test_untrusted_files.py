"""Files from elsewhere: pickles that would run code are refused, and the code that travels to the Hub with a
checkpoint makes no network call and runs no dynamic code.

`tests/test_training.py::test_projector_files_in_both_key_spellings_and_refused_pickles` refuses a code-running
`mm_projector.bin` through `load_projector`; here the same goes through `checkpoints.read_state_dict`, every path that
reads a projector, and the feature store.
"""

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import vtimellm_hf
from vtimellm_hf.data.features import NpyFeatureStore, consolidate_features
from vtimellm_hf.data.synthetic import encode_mp4
from vtimellm_hf import checkpoints
from vtimellm_hf.checkpoints import read_state_dict

PACKAGE_ROOT = Path(vtimellm_hf.__file__).parent
# Every file of the model folder travels: the three that `auto_map` names and the siblings they import
HUB_CODE_FILES = tuple(sorted(path.name for path in (PACKAGE_ROOT / "model").glob("*.py") if path.stem != "__init__"))
THIRD_PARTY_IMPORTS = {"torch", "numpy", "transformers", "decord", "av", "soxr"}
# Video and audio decoders and resamplers, which a checkpoint's code imports only when it decodes a file
LAZY_IMPORTS = {"decord", "av", "soxr"}
# The audio streams' files travel with a checkpoint whose processor reads audio (it imports them)
AUDIO_CODE_FILES = {"audio_decoding_vtime.py", "audio_processing_vtime.py", "beats_vtime.py"}
# The other decoders' files travel with a checkpoint of one of them (its auto_map names them), not with a LLaMA one
BACKBONE_CODE_FILES = {"configuration_vtime_backbones.py", "modeling_vtime_backbones.py"}
# Modules that reach the network or run code that is not in the file
FORBIDDEN_IMPORTS = {
    "socket", "ssl", "urllib", "urllib3", "http", "requests", "httpx", "aiohttp", "huggingface_hub",
    "subprocess", "ctypes", "pickle", "marshal", "importlib",
}  # fmt: skip
# Parts of those modules that reach nothing: the dataclass validation transformers' own configurations import
ALLOWED_SUBMODULES = {"huggingface_hub.dataclasses"}
DYNAMIC_CODE_BUILTINS = {"eval", "exec", "compile", "__import__"}
# The keyword, and its value, without which a load would unpickle arbitrary objects
SAFE_LOAD_ARGUMENTS = {("torch", "load"): ("weights_only", True), ("np", "load"): ("allow_pickle", False)}


class CreatesFile:
    """Unpickled, it creates `path`: the stand-in for a payload that runs code."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


# Pickles


def test_the_payload_runs_when_unpickled_without_weights_only(tmp_path):
    """The check that the refusals below are meaningful: loaded as a plain pickle, the payload does run."""
    marker = tmp_path / "ran"
    torch.save({"model.mm_projector.weight": CreatesFile(marker)}, tmp_path / "evil.bin")
    torch.load(tmp_path / "evil.bin", weights_only=False)
    assert marker.exists()


def test_read_state_dict_refuses_a_pickle_that_runs_code(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"model.mm_projector.weight": CreatesFile(marker)}, tmp_path / "evil.bin")
    with pytest.raises(ValueError, match=r"Refusing to load .*evil\.bin: it is not a plain tensor checkpoint"):
        read_state_dict(tmp_path / "evil.bin")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"weight": torch.zeros(2), "step": 3}, "does not hold a flat state dict of tensors"),
        ([torch.zeros(2)], "does not hold a flat state dict of tensors"),
        (b"PK\x03\x04 a zip archive cut short", "Refusing to load .*: it is not a plain tensor checkpoint"),
    ],
)
def test_read_state_dict_refuses_what_is_not_a_flat_state_dict(tmp_path, content, message):
    path = tmp_path / "checkpoint.bin"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(ValueError, match=message):
        read_state_dict(path)


def test_legacy_checkpoints_are_read_with_weights_only(tmp_path, model, monkeypatch):
    calls = []
    original_load = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return original_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    state = {name: tensor.detach().clone() for name, tensor in model.model.mm_projector.state_dict().items()}
    torch.save({f"model.mm_projector.{name}": tensor for name, tensor in state.items()}, tmp_path / "mm_projector.bin")
    read_state_dict(tmp_path / "mm_projector.bin")
    checkpoints.load_projector(model, tmp_path / "mm_projector.bin")
    assert calls == [True, True]


def projector_readers(tokenizer, model, tmp_path):
    """Every path that reads a stage-1 projector, each given a file or folder: loading it into a model, a stage's
    set-up (`stage1_projector`), and the conversion of a release (`convert-original --stage1`, stopped by the missing
    stage-2 adapter once the projector is read)."""
    from vtimellm_hf.conversion import build_hub_folder
    from vtimellm_hf.tiny_models import build_tiny_llama
    from vtimellm_hf.training.stages import VTimeModelArguments, setup_model

    build_tiny_llama(tmp_path / "llama", tokenizer)

    def stage_two(source):
        arguments = VTimeModelArguments(model_name_or_path=str(tmp_path / "llama"), mm_hidden_size=32,
                                        stage1_projector=str(source))  # fmt: skip
        return setup_model(2, arguments, tokenizer)[0]

    def conversion(source):
        with pytest.raises(FileNotFoundError, match="no-stage2 is not a PEFT adapter folder"):
            build_hub_folder(str(tmp_path / "llama"), source, tmp_path / "no-stage2", tmp_path / "no-stage3",
                             tmp_path / "converted", check=False)  # fmt: skip

    return {"load_projector": lambda source: checkpoints.load_projector(model, source), "setup_model": stage_two,
            "build_hub_folder": conversion}  # fmt: skip


def test_every_projector_reader_refuses_a_pickle_that_runs_code_and_finds_the_same_file(tokenizer, model, tmp_path):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil"
    evil.mkdir()
    torch.save({"model.mm_projector.weight": CreatesFile(marker), "model.mm_projector.bias": torch.zeros(64)},
               evil / "mm_projector.bin")  # fmt: skip
    readers = projector_readers(tokenizer, model, tmp_path)
    for name, read in readers.items():
        for source in (evil, evil / "mm_projector.bin"):
            with pytest.raises(ValueError, match=r"Refusing to load .*evil/mm_projector\.bin: it is not a plain"):
                read(source)
        assert not marker.exists(), name

    # A folder with both files: ours is read, by every reader, and the pickle never opened
    weights = {"weight": torch.full((64, 32), 0.5), "bias": torch.full((64,), -1.0)}
    save_file({f"model.mm_projector.{key}": value for key, value in weights.items()},
              str(evil / "mm_projector.safetensors"))  # fmt: skip
    readers["load_projector"](evil)
    torch.testing.assert_close(model.model.mm_projector.weight, weights["weight"])
    torch.testing.assert_close(readers["setup_model"](evil).model.mm_projector.bias, weights["bias"])
    readers["build_hub_folder"](evil)
    assert checkpoints.projector_file(evil) == evil / "mm_projector.safetensors" and not marker.exists()


def test_stage_three_refuses_a_stage_two_adapter_pickle_that_runs_code(tokenizer, model, tmp_path):
    """Stage 3 reads the stage-2 adapter through `checkpoints.read_stage_adapter`, as `convert-original` does."""
    from peft import LoraConfig, get_peft_model

    from vtimellm_hf.tiny_models import build_tiny_llama
    from vtimellm_hf.training.stages import VTimeModelArguments, setup_model

    marker = tmp_path / "ran"
    build_tiny_llama(tmp_path / "llama", tokenizer)
    checkpoints.save_projector(model, tmp_path / "stage1")
    get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(tmp_path / "stage2")
    (tmp_path / "stage2" / "adapter_model.safetensors").unlink()
    torch.save({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": CreatesFile(marker)},
               tmp_path / "stage2" / "adapter_model.bin")  # fmt: skip
    arguments = VTimeModelArguments(model_name_or_path=str(tmp_path / "llama"), mm_hidden_size=32,
                                    stage1_projector=str(tmp_path / "stage1"), stage2_adapter=str(tmp_path / "stage2"))
    with pytest.raises(ValueError, match=r"Refusing to load .*stage2/adapter_model\.bin: it is not a plain"):
        setup_model(3, arguments, tokenizer)
    assert not marker.exists()


def test_every_load_of_the_package_refuses_pickled_code():
    """`torch.load` only with `weights_only=True`, `np.load` only with `allow_pickle=False`, in every module."""
    calls = []
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name)):  # fmt: skip
                continue
            required = SAFE_LOAD_ARGUMENTS.get((node.func.value.id, node.func.attr))
            if required is not None:
                keyword, value = required
                given = {item.arg: item.value for item in node.keywords}.get(keyword)
                safe = isinstance(given, ast.Constant) and given.value is value
                calls.append((f"{path.relative_to(PACKAGE_ROOT)}:{node.lineno}", safe))
    assert calls, "no torch.load or np.load call found: the check looks in the wrong place"
    assert [where for where, safe in calls if not safe] == []


def test_feature_file_holding_a_pickle_is_refused(tmp_path):
    marker = tmp_path / "ran"
    folder = tmp_path / "features"
    folder.mkdir()
    np.save(folder / "evil.npy", np.array([CreatesFile(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"evil\.npy: cannot read feature 'evil' \(Object arrays cannot be loaded"):
        NpyFeatureStore(folder).load("evil")
    with pytest.raises(ValueError, match=r"evil\.npy: .*feature 'evil'"):
        consolidate_features(folder, tmp_path / "features.safetensors")
    assert not marker.exists() and not (tmp_path / "features.safetensors").exists()


def test_consolidation_names_a_pickled_feature_by_its_dtype(tmp_path):
    folder = tmp_path / "features"
    folder.mkdir()
    np.save(folder / "evil.npy", np.array([CreatesFile(tmp_path / "ran")], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError) as error:
        consolidate_features(folder, tmp_path / "features.safetensors")
    assert str(error.value).startswith(f"{folder / 'evil.npy'}: feature 'evil' has dtype object, expected float16 or "
                                       "float32; it holds pickled Python objects")  # fmt: skip
    assert "truncated" not in str(error.value)
    assert not (tmp_path / "ran").exists() and not (tmp_path / "features.safetensors").exists()


# The code that travels to the Hub


def module_imports(tree: ast.Module):
    """`(module, level, at_top_level)` of every import of a module's syntax tree."""
    top_level = set(map(id, tree.body))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, 0, id(node) in top_level
        elif isinstance(node, ast.ImportFrom):
            yield node.module or "", node.level, id(node) in top_level


@pytest.mark.parametrize("name", HUB_CODE_FILES)
def test_hub_code_imports_only_torch_numpy_transformers_video_decoders_and_the_standard_library(checkpoint, name):
    travelling = checkpoint / name
    reads_audio = any(".audio_processing_vtime" in path.read_text(encoding="utf-8") for path in checkpoint.glob("*.py"))
    other_decoder = "_vtime_backbones." in (checkpoint / "config.json").read_text(encoding="utf-8")
    if (name in AUDIO_CODE_FILES and not reads_audio) or (name in BACKBONE_CODE_FILES and not other_decoder):
        # Not imported by this checkpoint's code, so not saved with it: its imports are checked where it lives
        travelling = PACKAGE_ROOT / "model" / name
    assert travelling.read_bytes() == (PACKAGE_ROOT / "model" / name).read_bytes()
    tree = ast.parse(travelling.read_text(encoding="utf-8"))
    siblings = {Path(file).stem for file in HUB_CODE_FILES}
    for module, level, at_top_level in module_imports(tree):
        root = module.split(".")[0]
        if level:
            assert level == 1 and module in siblings, f"{name}: relative import of {module!r}"
            continue
        if module in ALLOWED_SUBMODULES:
            continue
        assert root not in FORBIDDEN_IMPORTS, f"{name} imports {module}"
        assert root in THIRD_PARTY_IMPORTS or root in sys.stdlib_module_names, f"{name} imports {module}"
        if root in LAZY_IMPORTS:
            assert not at_top_level, f"{name} imports {root} when loaded, not when decoding"


@pytest.mark.parametrize("name", HUB_CODE_FILES)
def test_hub_code_runs_no_dynamic_code(name):
    tree = ast.parse((PACKAGE_ROOT / "model" / name).read_text(encoding="utf-8"))
    dynamic = [
        f"{name}:{node.lineno}: {node.func.id}()"
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in DYNAMIC_CODE_BUILTINS
    ]
    builtins_used = [f"{name}:{node.lineno}" for node in ast.walk(tree) if isinstance(node, ast.Name)
                     and node.id in ("builtins", "__builtins__")]  # fmt: skip
    assert dynamic == [] and builtins_used == []


# Runs where vtimellm_hf cannot be imported and every socket fails, as a Hub user offline with only transformers
OFFLINE_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, json, socket, sys

    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(repr(args)[:200])
        raise OSError("network access is refused in this test")

    class RefusedSocket(socket.socket):
        def __init__(self, *args, **kwargs):
            refuse(*args)

    socket.socket = RefusedSocket
    socket.create_connection = socket.getaddrinfo = refuse

    class HidePackage(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "vtimellm_hf" or name.startswith("vtimellm_hf."):
                raise ImportError(f"{name} is hidden in this test")

    sys.meta_path.insert(0, HidePackage())
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoProcessor

    folder, video, output_file = sys.argv[1:4]
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "When does it happen?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    # The whole path of a video: decoding (decord), preprocessing, the frame encoder, the splice, generation
    inputs = processor(text=prompt, videos=[video], return_tensors="pt")
    generated = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    processor.parse_moments(processor.batch_decode(generated)[0], 10.0)
    json.dump({
        "attempts": attempts,
        "modules": [type(item).__module__ for item in (config, model, processor)],
        "vtimellm_hf_loaded": any(name.startswith("vtimellm_hf") for name in sys.modules),
        "video_features": list(inputs["video_features"].shape),
    }, open(output_file, "w"))
    """
)


def test_checkpoint_loads_and_answers_about_a_video_with_every_socket_refused(checkpoint, tmp_path):
    video = tmp_path / "clip.mp4"
    encode_mp4(video, np.random.default_rng(0).integers(0, 256, (20, 64, 96, 3), dtype=np.uint8), fps=10)
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run(
        [sys.executable, "-c", OFFLINE_SCRIPT, str(checkpoint), str(video), str(tmp_path / "report.json")],
        env=environment,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["attempts"] == [] and not report["vtimellm_hf_loaded"]
    assert all(module.startswith("transformers_modules.") for module in report["modules"]), report["modules"]
    assert report["video_features"] == [1, 100, 32]
