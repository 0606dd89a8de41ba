"""The tiny stand-ins: the frame encoder's pre-training makes what a frame shows readable from its embedding, the
tiny BEATs' pre-training sets the synthetic sounds' audio rows apart from silence."""

import numpy as np
import pytest
import torch
from transformers import CLIPVisionModelWithProjection

from vtimellm_hf.data.synthetic import COLOURS, EMPTY_STILL_CAPTION, SyntheticMomentsConfig, generate_synthetic_moments
from vtimellm_hf.demo_steps import stills
from vtimellm_hf.family_demo import sound_clips
from vtimellm_hf.model import preprocess_frames
from vtimellm_hf.model.audio_processing_vtime import BeatsAudioEncoder
from vtimellm_hf.tiny_models import (
    TINY_BEATS_CONFIG,
    build_tiny_beats_checkpoint,
    build_tiny_frame_encoder,
    pretrain_tiny_beats,
    pretrain_tiny_frame_encoder,
)


def read_stills(root, num_images, seed):
    return stills(generate_synthetic_moments(
        root, num_videos=2, num_val_videos=1, seed=seed, config=SyntheticMomentsConfig(num_images=num_images)
    ))  # fmt: skip


def colour_accuracy(encoder_dir, train, test) -> float:
    """Accuracy of a linear read-out (ridge regression) of the colour of one-shape stills, fitted on the embeddings
    of `train` and scored on the unseen stills of `test`."""
    encoder = CLIPVisionModelWithProjection.from_pretrained(encoder_dir).eval()
    colours = list(COLOURS)

    def embed(images, captions):
        single = [(image, caption.split()[1]) for image, caption in zip(images, captions)
                  if caption != EMPTY_STILL_CAPTION and " and " not in caption]  # fmt: skip
        pixels = torch.cat([preprocess_frames(image[None], encoder.config.image_size) for image, _ in single])
        with torch.no_grad():
            embeddings = encoder(pixel_values=pixels).image_embeds
        embeddings = torch.cat([embeddings, torch.ones(len(single), 1)], 1).double()
        return embeddings, torch.tensor([colours.index(colour) for _, colour in single])

    train_embeddings, train_labels = embed(*train)
    targets = torch.nn.functional.one_hot(train_labels, len(colours)).double()
    gram = train_embeddings.T @ train_embeddings + 1e-3 * torch.eye(train_embeddings.shape[1], dtype=torch.double)
    weights = torch.linalg.solve(gram, train_embeddings.T @ targets)
    test_embeddings, test_labels = embed(*test)
    return float(((test_embeddings @ weights).argmax(1) == test_labels).double().mean())


def test_pretraining_makes_colours_readable(tmp_path):
    train, test = read_stills(tmp_path / "train", 400, seed=0), read_stills(tmp_path / "test", 120, seed=1)
    build_tiny_frame_encoder(tmp_path / "clip", initializer_factor=1.0)
    before = colour_accuracy(tmp_path / "clip", train, test)
    losses = pretrain_tiny_frame_encoder(tmp_path / "clip", *train, steps=150, batch_size=32)
    after = colour_accuracy(tmp_path / "clip", train, test)
    # Measured: 0.89 before, 1.0 after (shapes, harder at 32 px, go from 0.33 to about 0.5)
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10]), losses
    assert after >= 0.98 and after > before + 0.05, (before, after)
    # Saved back in place, next to the preprocessing settings the processor reads
    assert (tmp_path / "clip" / "preprocessor_config.json").is_file()


def test_pretraining_needs_a_caption_per_image(tmp_path):
    build_tiny_frame_encoder(tmp_path / "clip")
    with pytest.raises(ValueError, match="as many captions as images.*2 and 1"):
        pretrain_tiny_frame_encoder(tmp_path / "clip", [np.zeros((32, 32, 3), np.uint8)] * 2, ["a red circle"])


def distances_from_silence(checkpoint) -> dict[str, float]:
    """How far each sound's mean audio row (LongVALE's extraction of unseen clips) lies from the silent row."""
    encoder = BeatsAudioEncoder(str(checkpoint), tail="pad")
    clips, labels = sound_clips(4, seed=1)
    rows = {}
    for clip, label in zip(clips, labels):
        rows.setdefault(label, []).append(encoder.encode_waveform(clip)[0])
    means = {label: torch.stack(label_rows).mean(0) for label, label_rows in rows.items()}
    return {label: float((row - means["silence"]).norm()) for label, row in means.items() if label != "silence"}


def test_beats_pretraining_sets_the_sounds_apart(tmp_path):
    checkpoint = build_tiny_beats_checkpoint(tmp_path / "beats.pt")
    before = distances_from_silence(checkpoint)
    losses = pretrain_tiny_beats(checkpoint, *sound_clips(64, seed=0), steps=100)
    after = distances_from_silence(checkpoint)
    # Measured: beep / hum / hiss 1.0 / 0.6 / 2.9 before, 7.8 / 8.3 / 7.8 after (the silent row's norm is 4.3, 4.9)
    assert max(before.values()) < 4 and min(after.values()) > 6, (before, after)
    assert np.mean(losses[-10:]) < 0.1 * np.mean(losses[:10]), losses
    # Saved back in the official layout: the configuration kept, the shared position-bias table under every layer
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["cfg"] == TINY_BEATS_CONFIG
    tables = [saved["model"][f"encoder.layers.{index}.self_attn.relative_attention_bias.weight"] for index in range(2)]
    assert torch.equal(*tables)


def test_beats_pretraining_needs_clips_of_one_window(tmp_path):
    checkpoint = build_tiny_beats_checkpoint(tmp_path / "beats.pt")
    with pytest.raises(ValueError, match="Clip 1 makes 2 BEATs windows"):
        pretrain_tiny_beats(checkpoint, [np.zeros(81920, np.float32), np.zeros(163840, np.float32)], ["a", "b"])
    with pytest.raises(ValueError, match="one label per clip.*1 and 2"):
        pretrain_tiny_beats(checkpoint, [np.zeros(81920, np.float32)], ["a", "b"])
