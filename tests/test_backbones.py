"""The VTimeLLM recipe on other decoder LLMs (Qwen3, Qwen2/2.5, Mistral): the classes, their saved folders loaded as
remote code, each backbone's chat template and its token ids."""

import json
import os
import subprocess
import sys

import pytest
import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM

from vtimellm_hf import BACKBONES, VIDEO_TOKEN, VTimeProcessor
from vtimellm_hf.model.modeling_vtime_llama import GENERATING_AUTO_CLASSES
from vtimellm_hf.chat_formats import (
    LLAMA3_CHAT_TEMPLATE,
    MISTRAL_CHAT_TEMPLATE,
    QWEN2_5_CHAT_TEMPLATE,
    QWEN3_CHAT_TEMPLATE,
    chat_template_of,
)
from vtimellm_hf.tiny_models import build_tiny_llama3_tokenizer, build_tiny_qwen_tokenizer, build_tiny_vtime_model

from conftest import TOKENIZER_CORPUS
from test_remote_code import REMOTE_SCRIPT

OTHER_BACKBONES = ["qwen3", "qwen2", "mistral"]
# The question REMOTE_SCRIPT asks
QUESTION = "When does it happen?"
ANSWER = "He cracks it from 12 to 47."


@pytest.fixture(scope="module")
def qwen_tokenizer(tmp_path_factory):
    return build_tiny_qwen_tokenizer(tmp_path_factory.mktemp("qwen") / "tokenizer", TOKENIZER_CORPUS)


@pytest.fixture(scope="module")
def llama3_tokenizer(tmp_path_factory):
    return build_tiny_llama3_tokenizer(tmp_path_factory.mktemp("llama3") / "tokenizer", TOKENIZER_CORPUS)


@pytest.fixture
def qwen_processor(qwen_tokenizer, frame_encoder_path):
    return VTimeProcessor(tokenizer=qwen_tokenizer, chat_template=QWEN3_CHAT_TEMPLATE,
                          frame_encoder_name_or_path=str(frame_encoder_path), frame_size=32)  # fmt: skip


def video_messages(answer: str | None = None) -> list[dict]:
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": QUESTION}]}]
    return messages + ([{"role": "assistant", "content": answer}] if answer else [])


def run_remote_script(folder, video_features: torch.Tensor, tmp_path) -> dict:
    """What test_remote_code's REMOTE_SCRIPT reports of `folder`, loaded in a process where vtimellm_hf is hidden."""
    torch.save({"video_features": video_features}, tmp_path / "inputs.pt")
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_SCRIPT, str(folder), str(tmp_path / "inputs.pt"), str(tmp_path / "out.json")],
        env=environment, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((tmp_path / "out.json").read_text())


def training_ids(processor, rows: int) -> tuple[list[int], list[int]]:
    """The ids of the question-and-answer dialogue as the collator makes them, and the mask of the trained ones."""
    encoded = processor.apply_chat_template(
        video_messages(ANSWER), tokenize=True, return_dict=True, return_assistant_tokens_mask=True,
        processor_kwargs={"video_features": [torch.zeros(rows, 32)]},
    )  # fmt: skip
    return encoded["input_ids"][0], encoded["assistant_masks"][0]


@pytest.mark.parametrize("model_type", OTHER_BACKBONES)
def test_splice_equals_the_plain_decoder_fed_projected_rows(model_type, qwen_tokenizer):
    """The backbone's logits equal those of the decoder's own class, with the same weights loaded by name, fed the
    embeddings with each placeholder replaced by the projector applied by hand."""
    model = build_tiny_vtime_model(qwen_tokenizer, mm_hidden_size=8, model_type=model_type)
    config_class, model_class = BACKBONES[model_type]
    assert type(model) is model_class and model.config.model_type == f"vtime_{model_type}"
    plain_config = AutoConfig.for_model(model_type, **{key: value for key, value in model.config.to_dict().items()
                                                       if key not in ("model_type", "architectures")})  # fmt: skip
    plain = AutoModelForCausalLM.from_config(plain_config).eval()
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    assert missing == [] and sorted(unexpected) == ["model.mm_projector.bias", "model.mm_projector.weight"]

    video_id = model.config.video_token_id
    input_ids = torch.tensor([[5, video_id, video_id, video_id, 7, 9], [6, 8, video_id, video_id, video_id, 4]])
    features = torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(0))
    weight, bias = model.model.mm_projector.weight, model.model.mm_projector.bias
    embeddings = plain.get_input_embeddings()(input_ids).detach().clone()
    for sample, start in ((0, 1), (1, 2)):
        embeddings[sample, start : start + 3] = features[sample] @ weight.T + bias
    with torch.no_grad():
        spliced = model(input_ids=input_ids, video_features=features).logits
        expected = plain(inputs_embeds=embeddings).logits
    torch.testing.assert_close(spliced, expected)


@pytest.mark.parametrize("model_type", OTHER_BACKBONES)
def test_every_generating_auto_class_builds_each_backbone(model_type, qwen_tokenizer, tmp_path):
    model = build_tiny_vtime_model(qwen_tokenizer, model_type=model_type)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config_class, model_class = BACKBONES[model_type]
    reference = f"modeling_vtime_backbones.{model_class.__name__}"
    assert config["auto_map"] == {"AutoConfig": f"configuration_vtime_backbones.{config_class.__name__}",
                                  **dict.fromkeys(GENERATING_AUTO_CLASSES, reference)}  # fmt: skip
    for auto_class in GENERATING_AUTO_CLASSES:
        loaded = getattr(transformers, auto_class).from_pretrained(tmp_path)
        assert type(loaded) is model_class, auto_class
        torch.testing.assert_close(loaded.model.mm_projector.weight, model.model.mm_projector.weight)


def test_qwen3_folder_loads_as_remote_code_without_the_package(tmp_path, qwen_tokenizer, qwen_processor):
    model = build_tiny_vtime_model(qwen_tokenizer, model_type="qwen3")
    folder = tmp_path / "checkpoint"
    model.save_pretrained(folder)
    qwen_processor.save_pretrained(folder)
    # The backbone's files and the family files they import relatively, copied by transformers with them
    code_files = {path.name for path in folder.glob("*.py")}
    assert {"configuration_vtime_backbones.py", "modeling_vtime_backbones.py", "configuration_vtime_llama.py",
            "modeling_vtime_llama.py", "processing_vtime.py"} <= code_files  # fmt: skip
    assert "chat_formats.py" not in code_files

    features = torch.randn(1, 100, model.config.mm_hidden_size, generator=torch.Generator().manual_seed(3))
    remote = run_remote_script(folder, features, tmp_path)

    config_module, model_class, model_module, causal_lm_class, processor_class, processor_module = remote["classes"]
    assert not remote["vtimellm_hf_loaded"]
    assert config_module.startswith("transformers_modules.") and model_module.startswith("transformers_modules.")
    assert model_class == causal_lm_class == "VTimeQwen3ForCausalLM"
    assert processor_class == "VTimeProcessor" and processor_module.startswith("transformers_modules.")
    assert remote["chat_templates"]["default"] == QWEN3_CHAT_TEMPLATE

    prompt = qwen_processor.apply_chat_template(video_messages(), add_generation_prompt=True)
    local = qwen_processor(text=prompt, video_features=features, return_tensors="pt")
    assert remote["input_ids"] == local["input_ids"].tolist()
    with torch.no_grad():
        local_logits = model(**local).logits[0, -1]
    torch.testing.assert_close(torch.tensor(remote["logits"]), local_logits, rtol=1e-5, atol=1e-5)
    assert remote["generated"] == model.generate(**local, max_new_tokens=5, min_new_tokens=5, do_sample=False).tolist()


def test_qwen3_template_writes_chatml_with_an_empty_thinking_block_before_every_answer(qwen_processor):
    messages = video_messages(ANSWER) + [{"role": "user", "content": "And then?"}]
    prompt = qwen_processor.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt == (
        f"<|im_start|>user\n<video>\n{QUESTION}<|im_end|>\n"
        f"<|im_start|>assistant\n<think>\n\n</think>\n\n{ANSWER}<|im_end|>\n"
        "<|im_start|>user\nAnd then?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    system = [{"role": "system", "content": "Be brief."}]
    assert qwen_processor.apply_chat_template(system + video_messages()).startswith(
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n<video>\n"
    )


def test_qwen2_5_template_has_its_default_system_message(qwen_tokenizer, frame_encoder_path):
    processor = VTimeProcessor(tokenizer=qwen_tokenizer, chat_template=chat_template_of("qwen2.5"),
                               frame_encoder_name_or_path=str(frame_encoder_path))  # fmt: skip
    assert processor.apply_chat_template(video_messages(ANSWER)) == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\n<video>\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n{ANSWER}<|im_end|>\n"
    )
    system = [{"role": "system", "content": "Be brief."}]
    with_system = processor.apply_chat_template(system + video_messages())
    assert with_system.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user")


def test_llama3_and_mistral_templates_write_their_formats(processor):
    processor.chat_template = {**processor.chat_template, "default": LLAMA3_CHAT_TEMPLATE}
    assert processor.apply_chat_template(video_messages(ANSWER), add_generation_prompt=False) == (
        f"<|start_header_id|>user<|end_header_id|>\n\n<video>\n{QUESTION}<|eot_id|>"
        f"<|start_header_id|>assistant<|end_header_id|>\n\n{ANSWER}<|eot_id|>"
    )
    processor.chat_template = {**processor.chat_template, "default": MISTRAL_CHAT_TEMPLATE}
    system = [{"role": "system", "content": "Be brief."}]
    assert processor.apply_chat_template(system + video_messages(ANSWER)) == (
        f"[INST] Be brief.\n\n<video>\n{QUESTION}[/INST] {ANSWER}</s>"
    )
    with pytest.raises(ValueError, match="chat_format 'qwen4'.*vicuna_v1, qwen3, qwen2.5, llama3, mistral"):
        chat_template_of("qwen4")


@pytest.mark.parametrize("chat_format", ["qwen3", "qwen2.5", "llama3"])
def test_byte_level_bpe_ids_are_the_whole_prompt_tokenized_with_the_placeholder_expanded(
    chat_format, qwen_tokenizer, llama3_tokenizer, frame_encoder_path
):
    """A byte-level BPE (Qwen, Llama 3) has no space marker to lose: the processor's ids are the tokenizer's on the
    whole prompt (Llama 3's BOS in front), the one `<video>` id repeated once per row, and the text on each side of
    the placeholder keeps the ids it has alone."""
    tokenizer = llama3_tokenizer if chat_format == "llama3" else qwen_tokenizer
    processor = VTimeProcessor(tokenizer=tokenizer, chat_template=chat_template_of(chat_format),
                               frame_encoder_name_or_path=str(frame_encoder_path))  # fmt: skip
    prompt = processor.apply_chat_template(video_messages(), add_generation_prompt=True)
    ids = processor(text=prompt, video_features=torch.zeros(4, 32))["input_ids"][0]

    video_id = tokenizer.convert_tokens_to_ids(VIDEO_TOKEN)
    whole = tokenizer(prompt)["input_ids"]
    assert whole.count(video_id) == 1
    at = whole.index(video_id)
    assert ids == whole[:at] + [video_id] * 4 + whole[at + 1 :]
    before, after = prompt.split(VIDEO_TOKEN)
    start, end = (tokenizer(text, add_special_tokens=False)["input_ids"] for text in (before, after))
    assert ids == tokenizer("")["input_ids"] + start + [video_id] * 4 + end
    # The question keeps the ids it has in a text without the placeholder
    question = tokenizer(f"\n{QUESTION}", add_special_tokens=False)["input_ids"]
    assert ids[at + 4 : at + 4 + len(question)] == question


def test_llama3_training_ids_mark_the_answer_and_its_end_of_turn_only(llama3_tokenizer, frame_encoder_path, tmp_path):
    processor = VTimeProcessor(tokenizer=llama3_tokenizer, chat_template=LLAMA3_CHAT_TEMPLATE,
                               frame_encoder_name_or_path=str(frame_encoder_path))  # fmt: skip
    ids, mask = training_ids(processor, rows=3)
    trained = [token for token, marked in zip(ids, mask) if marked]
    assert trained == llama3_tokenizer(ANSWER + "<|eot_id|>", add_special_tokens=False)["input_ids"]
    assert ids[0] == llama3_tokenizer.bos_token_id and not mask[0]
    # Llama 3 has neither pad nor unk token: the stages pad with its end of turn
    from vtimellm_hf.checkpoints import load_tokenizer

    llama3_tokenizer.save_pretrained(tmp_path)
    assert load_tokenizer(str(tmp_path), chat_template=LLAMA3_CHAT_TEMPLATE).pad_token == "<|eot_id|>"


def test_qwen3_training_ids_mark_the_answer_and_its_end_of_turn_only(qwen_tokenizer, qwen_processor):
    ids, mask = training_ids(qwen_processor, rows=3)
    trained = [token for token, marked in zip(ids, mask) if marked]
    assert trained == qwen_tokenizer(ANSWER + "<|im_end|>")["input_ids"]
    # Two-digit frame indices, one digit a token as Qwen's pre-tokenizer splits numbers
    assert qwen_tokenizer.convert_ids_to_tokens(trained)[-5:] == ["Ġ", "4", "7", ".", "<|im_end|>"]
    prompt = qwen_processor.apply_chat_template(video_messages(), add_generation_prompt=True)
    expected_prompt = qwen_processor(text=prompt, video_features=torch.zeros(3, 32))["input_ids"][0]
    assert ids[: len(expected_prompt)] == expected_prompt and not any(mask[: len(expected_prompt)])
    assert ids[len(expected_prompt) :] == trained + qwen_tokenizer("\n")["input_ids"]


def test_a_base_of_a_decoder_without_a_vtimellm_class_is_refused_naming_those_there_are(qwen_tokenizer, tmp_path):
    from vtimellm_hf.checkpoints import load_model

    AutoConfig.for_model("gpt2", n_layer=1, n_embd=16, n_head=2).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"is a 'gpt2' model; VTimeLLM is built on the decoders llama, qwen3, qwen2, "
                                         r"mistral \(Llama 3 is 'llama', Qwen2.5 'qwen2'\)"):  # fmt: skip
        load_model(str(tmp_path), qwen_tokenizer)


def test_a_qwen3_base_becomes_its_vtimellm_class_with_its_weights(qwen_tokenizer, tmp_path):
    from vtimellm_hf.checkpoints import load_model, load_tokenizer
    from vtimellm_hf.tiny_models import build_tiny_llama

    base = build_tiny_llama(tmp_path, qwen_tokenizer, model_type="qwen3")
    tokenizer = load_tokenizer(str(tmp_path), chat_template=QWEN3_CHAT_TEMPLATE)
    assert tokenizer.chat_template == QWEN3_CHAT_TEMPLATE and tokenizer.pad_token == "<|endoftext|>"
    model = load_model(str(tmp_path), tokenizer, mm_hidden_size=8)
    assert type(model).__name__ == "VTimeQwen3ForCausalLM"
    assert model.config.video_token_id == tokenizer.convert_tokens_to_ids(VIDEO_TOKEN)
    for name, tensor in base.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor, msg=name)


def test_mistral_template_on_a_sentencepiece_tokenizer_trains_the_answer_and_its_eos(tokenizer, frame_encoder_path):
    """Mistral's tokenizer is a SentencePiece LLaMA-style one (the tiny Vicuna tokenizer stands in): the answer after
    `[/INST] ` is trained with its `</s>`, tokenized as it is alone."""
    processor = VTimeProcessor(tokenizer=tokenizer, chat_template=MISTRAL_CHAT_TEMPLATE,
                               frame_encoder_name_or_path=str(frame_encoder_path))  # fmt: skip
    ids, mask = training_ids(processor, rows=2)
    answer = tokenizer(ANSWER + "</s>", add_special_tokens=False)["input_ids"]
    assert [token for token, marked in zip(ids, mask) if marked] == answer == ids[-len(answer) :]
    assert ids[0] == tokenizer.bos_token_id
