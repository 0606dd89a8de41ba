"""Fixtures of the tests of the bridges to other tools (lmms-eval, the web demo): the real Charades video and its
queries, and a tiny model trained to answer each of them with its own moment.

The model is blind to the video (its projector gives zeros), so that its answers depend on the question alone and
every way of asking it (lmms-eval's batches, `vtimellm-hf evaluate grounding`, the web page) gets the same ones.
"""

import pytest
import torch

from vtimellm_hf import VTimeProcessor
from vtimellm_hf.inference import CAPTIONING_QUESTION, grounding_question, user_turn
from vtimellm_hf.tiny_models import build_tiny_vtime_model

# The queries of 3MSZA.mp4 (31 s), the first lines of charades_sta_test.txt, all with the moment 24.3 - 30.4 s
VIDEO_ID = "3MSZA"
QUERIES = [
    "person turn a light on.",
    "person flipped the light switch near the door.",
    "person turn the light switch on.",
    "person is playing with the switch for the light.",
]
# One answer per query, so that the IoUs differ: 0.98, 0.41, 0 and 0.50 at 31 s (grounding convention s / 100 x d)
ANSWERS = ["From 78 to 98.", "From 70 to 90.", "From 10 to 40.", "From 60 to 99."]
CAPTIONING_ANSWER = "From 00 to 49, a person opens the door. From 50 to 99, a person turns a light on."


@pytest.fixture(scope="session")
def charades_video(real_data):
    return real_data / "videos" / f"{VIDEO_ID}.mp4"


@pytest.fixture(scope="session")
def answering_checkpoint(tmp_path_factory, tokenizer, frame_encoder_path):
    """A saved tiny model trained to answer each query of `QUERIES` with its `ANSWERS` and to caption any video
    with `CAPTIONING_ANSWER`, whatever the video."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models train faster on one thread than on two contended ones
    model = build_tiny_vtime_model(tokenizer)
    model.model.mm_projector.weight.data.zero_()
    model.model.mm_projector.bias.data.zero_()
    model.model.mm_projector.requires_grad_(False)
    processor = VTimeProcessor(tokenizer=tokenizer, frame_encoder_name_or_path=str(frame_encoder_path), frame_size=32)
    dialogues = [(grounding_question(query), answer) for query, answer in zip(QUERIES, ANSWERS, strict=True)]
    dialogues.append((CAPTIONING_QUESTION, CAPTIONING_ANSWER))
    features = torch.zeros(processor.num_frames, model.config.mm_hidden_size)
    rows = []
    for question, answer in dialogues:
        prompt = processor.apply_chat_template([user_turn(question)], add_generation_prompt=True)
        prompt_ids = processor(text=prompt, video_features=[features])["input_ids"][0]
        ids = processor(text=f"{prompt} {answer}</s>", video_features=[features])["input_ids"][0]
        assert ids[: len(prompt_ids)] == prompt_ids, "the answer must extend the prompt's tokens"
        rows.append((ids, [-100] * len(prompt_ids) + ids[len(prompt_ids) :]))
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.tensor([ids + [tokenizer.pad_token_id] * (width - len(ids)) for ids, _ in rows])
    labels = torch.tensor([labels + [-100] * (width - len(labels)) for _, labels in rows])
    attention_mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows])
    video_features = features.expand(len(rows), -1, -1)
    optimizer = torch.optim.Adam([parameter for parameter in model.parameters() if parameter.requires_grad], lr=1e-2)
    model.train()
    for _ in range(60):
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, video_features=video_features)
        optimizer.zero_grad()
        loss.loss.backward()
        optimizer.step()
    torch.set_num_threads(threads)
    folder = tmp_path_factory.mktemp("answering") / "checkpoint"
    model.eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
