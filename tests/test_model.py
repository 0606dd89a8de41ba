"""VTimeLlamaForCausalLM: the splice, its errors, training through TRL's path, generation, save and load."""

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM

from vtimellm_hf import VTimeLlamaForCausalLM


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
