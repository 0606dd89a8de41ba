"""VTimeLlamaForCausalLM: the splice, its errors, training through TRL's path, generation, save and load; the
configuration's checks and the names the package exports."""

import inspect
import json
import re
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM, LlamaForCausalLM

from vtimellm_hf import VTimeLlamaConfig, VTimeLlamaForCausalLM


def video_batch(tokenizer, model, texts, rows=100, seed=0, padding_side="left"):
    """Token ids with `rows` placeholders per sample at the `<video>` position, and random features."""
    video_id = model.config.video_token_id
    sequences = []
    for text in texts:
        before, after = text.split("<video>")
        ids = tokenizer(before).input_ids + [video_id] * rows + tokenizer(after, add_special_tokens=False).input_ids
        sequences.append(ids)
    padded = tokenizer.pad({"input_ids": sequences}, padding_side=padding_side, return_tensors="pt")
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(len(texts), rows, model.config.mm_hidden_size, generator=generator)
    return padded["input_ids"], padded["attention_mask"], features


def test_forward_splices_projected_rows_at_the_placeholders(tokenizer, model):
    input_ids, attention_mask, features = video_batch(tokenizer, model, ["USER: <video>\nWhen? ASSISTANT:"])
    embeddings = model.get_input_embeddings()(input_ids)
    placeholder = input_ids == model.config.video_token_id
    embeddings[placeholder] = model.model.mm_projector(features[0])
    expected = model(inputs_embeds=embeddings, attention_mask=attention_mask).logits
    logits = model(input_ids=input_ids, attention_mask=attention_mask, video_features=features).logits
    torch.testing.assert_close(logits, expected)
    # The frames change the answer: other features, other logits
    other = model(input_ids=input_ids, attention_mask=attention_mask, video_features=features.flip(1)).logits
    assert not torch.allclose(other[:, -1], logits[:, -1])


def test_placeholders_found_from_inputs_embeds(tokenizer, model):
    input_ids, attention_mask, features = video_batch(tokenizer, model, ["<video>\nWhen?"])
    from_ids = model(input_ids=input_ids, video_features=features).logits
    from_embeds = model(inputs_embeds=model.get_input_embeddings()(input_ids), video_features=features).logits
    torch.testing.assert_close(from_embeds, from_ids)


def test_mismatch_between_placeholders_and_rows_names_both(tokenizer, model):
    input_ids, attention_mask, features = video_batch(tokenizer, model, ["<video>\nWhen?"], rows=100)
    with pytest.raises(ValueError, match=r"sample 0: 100 placeholder tokens .* but 99 feature rows"):
        model(input_ids=input_ids, attention_mask=attention_mask, video_features=features[:, :99])
    with pytest.raises(ValueError, match=r"holds 2 videos but the batch has 1 samples"):
        model(input_ids=input_ids, video_features=torch.cat([features, features]))
    # One video without its batch dimension is not read as 100 videos of one row
    with pytest.raises(ValueError, match=r"shape \(batch, rows, mm_hidden_size\).* shape \(100, 32\)"):
        model(input_ids=input_ids, video_features=features[0])


def test_llama_arguments_keep_their_positions(tokenizer, model):
    """`video_features` comes after Llama's arguments: a call written for Llama means the same here."""
    llama_arguments = list(inspect.signature(LlamaForCausalLM.forward).parameters)[1:-1]  # no self, no **kwargs
    arguments = list(inspect.signature(model.forward).parameters)
    assert arguments[: len(llama_arguments)] == llama_arguments
    assert arguments[len(llama_arguments)] == "video_features"
    input_ids = tokenizer(["USER: hello ASSISTANT:"], return_tensors="pt").input_ids
    position_ids = torch.arange(input_ids.shape[1])[None] + 3
    expected = model(input_ids=input_ids, position_ids=position_ids).logits
    torch.testing.assert_close(model(input_ids, None, position_ids).logits, expected)


@pytest.mark.parametrize("name", ["cache", "past_key_values"])
def test_cache_continues_like_a_full_recompute(tokenizer, model, name):
    input_ids, attention_mask, features = video_batch(tokenizer, model, ["USER: <video>\nWhen? ASSISTANT:"])
    next_token = torch.tensor([[7]])
    expected = model(input_ids=torch.cat([input_ids, next_token], 1), video_features=features).logits[:, -1]
    cache = model(input_ids=input_ids, video_features=features, use_cache=True).cache
    with pytest.warns(FutureWarning) if name == "past_key_values" else nullcontext():
        step = model(input_ids=next_token, **{name: cache}).logits[:, -1]
    torch.testing.assert_close(step, expected)


def test_cached_step_may_feed_the_placeholder_id(tokenizer, model):
    """A sampled token can be the placeholder id; the prompt, checked at prefill, already holds its frames."""
    input_ids, attention_mask, features = video_batch(tokenizer, model, ["USER: <video>\nWhen? ASSISTANT:"])
    cache = model(input_ids=input_ids, video_features=features, use_cache=True).cache
    placeholder = torch.tensor([[model.config.video_token_id]])
    assert torch.isfinite(model(input_ids=placeholder, cache=cache).logits).all()


def test_bf16_model_with_float32_projector(tokenizer, model):
    """Stage 1 may keep the projector in float32 while the LLM runs in bfloat16."""
    model.to(torch.bfloat16)
    model.model.mm_projector.float()
    input_ids, attention_mask, features = video_batch(tokenizer, model, ["USER: <video>\nWhen? ASSISTANT: 05 to 23."])
    embeddings = model.get_input_embeddings()(input_ids)
    embeddings[input_ids == model.config.video_token_id] = model.model.mm_projector(features[0]).bfloat16()
    expected = model(inputs_embeds=embeddings, attention_mask=attention_mask).logits
    output = model(input_ids=input_ids, attention_mask=attention_mask, video_features=features, labels=input_ids)
    assert output.logits.dtype == torch.bfloat16
    torch.testing.assert_close(output.logits, expected)
    output.loss.backward()
    assert model.model.mm_projector.weight.grad.dtype == torch.float32
    assert model.model.mm_projector.weight.grad.abs().sum() > 0


def test_training_step_reaches_projector_and_llm(tokenizer, model):
    model.train()
    input_ids, attention_mask, features = video_batch(
        tokenizer, model, ["USER: <video>\nWhen? ASSISTANT: From 05 to 23.", "USER: <video>\nWhat? ASSISTANT: A dog."]
    )
    labels = input_ids.masked_fill((input_ids == model.config.video_token_id) | (attention_mask == 0), -100)
    loss = model(input_ids=input_ids, attention_mask=attention_mask, video_features=features, labels=labels).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert model.model.mm_projector.weight.grad.abs().sum() > 0
    assert model.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0


def test_trl_fused_lm_head_goes_through_the_splice(tokenizer, model):
    """TRL's SFTTrainer replaces forward with a fused LM head that calls the inner model: the loss must match."""
    from trl.trainer.utils import add_fused_lm_head

    input_ids, attention_mask, features = video_batch(tokenizer, model, ["USER: <video>\nWhen? ASSISTANT: 05 to 23."])
    labels = input_ids.masked_fill(input_ids == model.config.video_token_id, -100)
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, video_features=features, labels=labels)
    expected = model(**inputs).loss
    add_fused_lm_head(model)
    fused = model(**inputs, fused_lm_head=True).loss
    torch.testing.assert_close(fused, expected, rtol=1e-4, atol=1e-5)
    shuffled = model(**{**inputs, "video_features": features.flip(1)}, fused_lm_head=True).loss
    assert not torch.isclose(shuffled, fused)


def greedy(model, **inputs):
    return model.generate(**inputs, max_new_tokens=6, do_sample=False, min_new_tokens=6)


def test_generate_with_cache_splices_once(tokenizer, model):
    input_ids, attention_mask, features = video_batch(tokenizer, model, ["USER: <video>\nWhen? ASSISTANT:"])
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, video_features=features)
    cached = greedy(model, **inputs)
    # Without a cache every step runs the whole sequence again, placeholders included: the reference
    uncached = greedy(model, **inputs, use_cache=False)
    assert torch.equal(cached, uncached)
    assert cached.shape[1] == input_ids.shape[1] + 6


def test_batched_generation_with_left_padding_matches_one_by_one(tokenizer, model):
    texts = ["USER: <video>\nWhen does it happen? ASSISTANT:", "USER: <video>\nWhen? ASSISTANT:"]
    input_ids, attention_mask, features = video_batch(tokenizer, model, texts)
    assert attention_mask[1, 0] == 0  # the short prompt is padded on the left
    batched = greedy(model, input_ids=input_ids, attention_mask=attention_mask, video_features=features)
    for index, text in enumerate(texts):
        ids, mask, _ = video_batch(tokenizer, model, [text])
        single = greedy(model, input_ids=ids, attention_mask=mask, video_features=features[index : index + 1])
        assert batched[index, input_ids.shape[1] :].tolist() == single[0, ids.shape[1] :].tolist()


def test_prefill_of_generate_runs_the_lm_head_on_the_last_position_only(tokenizer, model):
    input_ids, attention_mask, features = video_batch(tokenizer, model, ["USER: <video>\nWhen? ASSISTANT:"])
    positions = []
    hook = model.lm_head.register_forward_hook(lambda module, args, output: positions.append(args[0].shape[1]))
    try:
        greedy(model, input_ids=input_ids, attention_mask=attention_mask, video_features=features)
    finally:
        hook.remove()
    assert positions == [1] * 6


def test_generate_from_inputs_embeds(tokenizer, model):
    """As LLaVA: the placeholders are found among the embeddings, the frames spliced there at prefill."""
    texts = ["USER: <video>\nWhen does it happen? ASSISTANT:", "USER: <video>\nWhen? ASSISTANT:"]
    input_ids, attention_mask, features = video_batch(tokenizer, model, texts)
    expected = greedy(model, input_ids=input_ids, attention_mask=attention_mask, video_features=features)
    embeddings = model.get_input_embeddings()(input_ids)
    output = greedy(model, inputs_embeds=embeddings, attention_mask=attention_mask, video_features=features)
    assert torch.equal(output, expected[:, input_ids.shape[1] :])


def test_decode_step_compiles_without_graph_breaks(tokenizer, model):
    """The checks read tensors back to the host; a decode step must not pay for them under torch.compile."""
    import torch._dynamo

    torch._dynamo.reset()
    try:
        explanation = torch._dynamo.explain(model)(input_ids=torch.tensor([[5]]), use_cache=False)
    finally:
        torch._dynamo.reset()
    assert explanation.graph_break_count == 0, explanation.break_reasons


def test_generate_without_video(tokenizer, model):
    inputs = tokenizer(["USER: hello ASSISTANT:"], return_tensors="pt")
    output = greedy(model, **inputs)
    assert output.shape == (1, inputs["input_ids"].shape[1] + 6)


def test_save_and_load_round_trip_through_auto_classes(tmp_path, tokenizer, model):
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    input_ids, attention_mask, features = video_batch(tokenizer, model, ["<video>\nWhen?"])
    expected = model(input_ids=input_ids, video_features=features).logits
    for auto_class in (AutoModel, AutoModelForCausalLM):
        loaded = auto_class.from_pretrained(tmp_path)
        assert type(loaded) is VTimeLlamaForCausalLM
        torch.testing.assert_close(loaded(input_ids=input_ids, video_features=features).logits, expected)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("mm_hidden_size", "x", "TypeError: Field 'mm_hidden_size' expected int, got str"),
        ("mm_hidden_size", -768, "ValueError: Value must be a positive integer, got -768"),
        ("num_frames", 0, "ValueError: Value must be a positive integer, got 0"),
        ("num_frames", 1.5, "TypeError: Field 'num_frames' expected int, got float"),
        ("video_token_id", -1, "ValueError: Value must be a positive integer, got -1"),
        ("hidden_size", "x", "TypeError: Field 'hidden_size' expected int, got str"),
    ],
)
def test_config_checks_its_fields_as_llama_does(tmp_path, field, value, message):
    """
    transformers 5 validates `LlamaConfig` with huggingface_hub's strict dataclasses (`@strict`): a type check per
    annotated field and validators given with the field, on construction, on assignment and on loading, in an error
    that names the field. `VTimeLlamaConfig` is `@strict` too, so its own fields are checked the same way.
    """
    from huggingface_hub.errors import StrictDataclassFieldValidationError

    expected = rf"Validation error for field '{field}':\s+{re.escape(message)}"
    with pytest.raises(StrictDataclassFieldValidationError, match=expected):
        VTimeLlamaConfig(**{field: value})
    config = VTimeLlamaConfig()
    with pytest.raises(StrictDataclassFieldValidationError, match=expected):
        setattr(config, field, value)
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**saved, field: value}))
    with pytest.raises(StrictDataclassFieldValidationError, match=expected):
        VTimeLlamaConfig.from_pretrained(tmp_path)


def test_all_lists_every_documented_name():
    import vtimellm_hf
    from vtimellm_hf.model import (
        chat_templates_vtime,
        configuration_vtime_llama,
        modeling_vtime_llama,
        processing_vtime,
        timestamps_vtime,
        video_decoding_vtime,
        video_processing_vtime,
    )

    exported = set(vtimellm_hf.__all__)
    assert exported == set(vtimellm_hf.model.__all__)
    for module in (chat_templates_vtime, configuration_vtime_llama, modeling_vtime_llama, processing_vtime,
                   timestamps_vtime, video_decoding_vtime, video_processing_vtime):  # fmt: skip
        assert set(module.__all__) <= exported, module.__name__
        assert all(hasattr(module, name) for name in module.__all__), module.__name__
    # The names of the package that the README imports from it or writes in backticks (`name(...)` or `name`)
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    named = re.findall(r"`(\w+)[(`]", readme)
    for names in re.findall(r"from vtimellm_hf import ([\w, ]+)", readme):
        named += [name.strip() for name in names.split(",")]
    documented = {name for name in named
                  if hasattr(vtimellm_hf, name) and not inspect.ismodule(getattr(vtimellm_hf, name))}  # fmt: skip
    assert {"parse_event_indices", "parse_grounding_answer", "get_video_duration", "VTimeProcessor"} <= documented
    assert documented <= exported, documented - exported
