"""Tiny, randomly initialised stand-ins for Vicuna, its tokenizer, CLIP and the audio encoders (Whisper, CLAP, BEATs),
and for the other backbones (Qwen3 and its byte-level BPE tokenizer), built locally without network.

They exercise the real loading code (`from_pretrained` on a folder) in the tests and in `make demo`: the tokenizer
is a real SentencePiece LLaMA tokenizer trained on a small corpus (or a real `Qwen2Tokenizer`, byte-level BPE trained
with `tokenizers`), the encoder a real `CLIPVisionModelWithProjection`, the model a real `VTimeLlamaForCausalLM` (or
the backbone's VTimeLLM class).
"""

import json
import re
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    ClapConfig,
    ClapFeatureExtractor,
    ClapModel,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    LlamaTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Tokenizer,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperModel,
)

from .model import BACKBONES, VIDEO_TOKEN, VICUNA_V1_CHAT_TEMPLATE, VTimeLlamaForCausalLM
from .chat_formats import LLAMA3_CHAT_TEMPLATE, QWEN3_CHAT_TEMPLATE
from .model.audio_processing_vtime import BeatsAudioEncoder
from .model.beats_vtime import BeatsModel
from .model.video_processing_vtime import CLIP_MEAN, CLIP_STD, preprocess_frames, read_frame_preprocessing

_BASE_CORPUS = [
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    "USER: When does it happen? ASSISTANT: From 05 to 23.",
    "From 00 to 99, between 10 and 20, 0123456789.",
]


def build_tiny_tokenizer(
    output_dir: str | Path, corpus: Iterable[str] = (), vocab_size: int = 512
) -> LlamaTokenizer:
    """
    Trains a SentencePiece BPE model shaped like LLaMA's (byte fallback, split digits, identity normalisation,
    BOS 1, EOS 2, UNK 0), saves it as a LLaMA tokenizer with the `<video>` token and returns it loaded back.

    `vocab_size` is an upper bound: a small corpus yields fewer pieces.
    """
    import sentencepiece

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        corpus_file = Path(scratch) / "corpus.txt"
        corpus_file.write_text("\n".join([*_BASE_CORPUS, *corpus]), encoding="utf-8")
        sentencepiece.SentencePieceTrainer.train(
            input=str(corpus_file),
            model_prefix=str(output_dir / "tokenizer"),
            vocab_size=vocab_size,
            hard_vocab_limit=False,
            model_type="bpe",
            byte_fallback=True,
            split_digits=True,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=True,
            character_coverage=1.0,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
            seed_sentencepiece_size=10_000,
            num_threads=1,
            minloglevel=2,
        )
    tokenizer = LlamaTokenizer.from_pretrained(output_dir, legacy=True, add_bos_token=True, add_eos_token=False)
    # As the original: Vicuna has no pad token and pads with unk
    tokenizer.pad_token = tokenizer.unk_token
    tokenizer.add_special_tokens({"additional_special_tokens": [VIDEO_TOKEN]})
    tokenizer.chat_template = VICUNA_V1_CHAT_TEMPLATE
    tokenizer.save_pretrained(output_dir)
    return LlamaTokenizer.from_pretrained(output_dir)


# Qwen's special tokens, and the thinking markers, which are added tokens but not special ones
QWEN_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
QWEN_THINKING_TOKENS = ("<think>", "</think>")
LLAMA3_SPECIAL_TOKENS = ("<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>")
# Llama 3's pre-tokenizer splits numbers in runs of up to three digits, Qwen's into single digits
LLAMA3_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _train_byte_level_bpe(corpus: Iterable[str], vocab_size: int, pattern: str, first_token: str):
    """A byte-level BPE trained with `tokenizers` on the base corpus and `corpus`, its pre-tokenizer the GPT-style
    split `pattern` then bytes mapped to characters, `first_token` its id 0."""
    import tokenizers

    bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.Sequence([
        tokenizers.pre_tokenizers.Split(tokenizers.Regex(pattern), behavior="isolated"),
        tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])  # fmt: skip
    bpe.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[first_token],
        show_progress=False,
    )
    bpe.train_from_iterator([*_BASE_CORPUS, *corpus], trainer)
    return bpe


def build_tiny_qwen_tokenizer(output_dir: str | Path, corpus: Iterable[str] = (), vocab_size: int = 512):
    """
    Trains a byte-level BPE shaped like Qwen3's (its pre-tokenizer: GPT-style splits with one digit per piece, bytes
    mapped to characters; no BOS; `<|endoftext|>` pads, `<|im_end|>` ends a turn, `<think>` and `</think>` added),
    saves it as a `Qwen2Tokenizer` (Qwen3's tokenizer class) with the `<video>` token and Qwen3's chat template with
    the placeholder, and returns it loaded back.
    """
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    trained = json.loads(_train_byte_level_bpe(corpus, vocab_size, PRETOKENIZE_REGEX, QWEN_SPECIAL_TOKENS[0])
                         .to_str())["model"]  # fmt: skip
    tokenizer = Qwen2Tokenizer(
        vocab=trained["vocab"],
        merges=[tuple(merge) for merge in trained["merges"]],
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=[*QWEN_SPECIAL_TOKENS[1:], VIDEO_TOKEN],
    )
    tokenizer.add_tokens(list(QWEN_THINKING_TOKENS))
    tokenizer.chat_template = QWEN3_CHAT_TEMPLATE
    tokenizer.save_pretrained(output_dir)
    return AutoTokenizer.from_pretrained(output_dir)


def build_tiny_llama3_tokenizer(output_dir: str | Path, corpus: Iterable[str] = (), vocab_size: int = 512):
    """
    Trains a byte-level BPE shaped like Llama 3's (digits in runs of up to three, `<|begin_of_text|>` added in front
    of every text by the post-processor, `<|eot_id|>` ends a turn, no unk and no pad token), saves it as a fast
    tokenizer with the `<video>` token and the Llama 3 chat template with the placeholder, and returns it loaded back.
    """
    import tokenizers

    bpe = _train_byte_level_bpe(corpus, vocab_size, LLAMA3_PRETOKENIZE_REGEX, LLAMA3_SPECIAL_TOKENS[0])
    bpe.add_special_tokens([*LLAMA3_SPECIAL_TOKENS[1:], VIDEO_TOKEN])
    bos = LLAMA3_SPECIAL_TOKENS[0]
    bpe.post_processor = tokenizers.processors.TemplateProcessing(
        single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, bpe.token_to_id(bos))]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token=bos, eos_token="<|eot_id|>",
        additional_special_tokens=[*LLAMA3_SPECIAL_TOKENS[2:], VIDEO_TOKEN],
    )  # fmt: skip
    tokenizer.chat_template = LLAMA3_CHAT_TEMPLATE
    tokenizer.save_pretrained(output_dir)
    return AutoTokenizer.from_pretrained(output_dir)


def build_tiny_frame_encoder(
    output_dir: str | Path,
    embedding_size: int = 32,
    image_size: int = 32,
    seed: int = 0,
    initializer_factor: float = 5.0,
) -> CLIPVisionModelWithProjection:
    """
    A random `CLIPVisionModelWithProjection` (2 layers) saved with its `preprocessor_config.json`.

    With CLIP's default initialisation a random encoder maps every frame to nearly the same embedding (frames of one
    synthetic video differ by about 15% of the embedding's norm); a larger `initializer_factor` keeps about 50%, so
    that what happens in a video shows in its features, as it does with a trained encoder.
    """
    torch.manual_seed(seed)
    config = CLIPVisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=8,
        projection_dim=embedding_size,
        initializer_factor=initializer_factor,
    )
    encoder = CLIPVisionModelWithProjection(config).eval()
    output_dir = Path(output_dir)
    encoder.save_pretrained(output_dir)
    preprocessor = {
        "crop_size": {"height": image_size, "width": image_size},
        "size": {"shortest_edge": image_size},
        "image_mean": list(CLIP_MEAN),
        "image_std": list(CLIP_STD),
        "image_processor_type": "CLIPImageProcessor",
    }
    (output_dir / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
    return encoder


def pretrain_tiny_frame_encoder(
    encoder_dir: str | Path,
    images: Sequence[np.ndarray],
    captions: Sequence[str],
    steps: int = 400,
    batch_size: int = 64,
    learning_rate: float = 2e-3,
    seed: int = 0,
) -> list[float]:
    """
    Pre-trains the encoder saved in `encoder_dir` on image-caption pairs, as CLIP was pre-trained, then saves it
    back and returns the losses. The objective is the bag of caption words: a linear head on the image embedding
    predicts which words the caption holds (the head is then dropped).

    Without it, a random encoder keeps what a frame shows only loosely: on the synthetic videos of `make demo`, a
    linear probe reads the number of shapes on screen from 85% of frames and their colours from 76%; after 400
    steps on the demo's 2000 stills, 97% and 96%.

    Args:
        encoder_dir: a folder written by [`build_tiny_frame_encoder`].
        images: uint8 RGB `(height, width, 3)` arrays, of any sizes; preprocessed as the encoder's processor does.
        captions: one caption per image; an empty caption means no word applies.
    """
    if len(images) != len(captions) or not images:
        raise ValueError(f"Expected as many captions as images, at least one: got {len(images)} and {len(captions)}.")
    torch.manual_seed(seed)
    encoder_dir = Path(encoder_dir)
    encoder = CLIPVisionModelWithProjection.from_pretrained(encoder_dir)
    preprocessing = read_frame_preprocessing(str(encoder_dir))
    pixels = torch.cat([
        preprocess_frames(np.array(image)[None], preprocessing["frame_size"], preprocessing["image_mean"],
                          preprocessing["image_std"])
        for image in images
    ])  # fmt: skip
    caption_words = [set(re.findall(r"[a-z]+", caption.lower())) for caption in captions]
    vocabulary = sorted(set().union(*caption_words))
    targets = torch.zeros(len(captions), len(vocabulary))
    for row, words in enumerate(caption_words):
        targets[row, [vocabulary.index(word) for word in words]] = 1.0
    head = torch.nn.Linear(encoder.config.projection_dim, len(vocabulary))
    losses = _train_with_head(
        encoder, head, lambda batch: encoder(pixel_values=batch).image_embeds, pixels, targets,
        torch.nn.functional.binary_cross_entropy_with_logits, steps, batch_size, learning_rate, seed,
    )  # fmt: skip
    encoder.eval().save_pretrained(encoder_dir)
    return losses


def _train_with_head(encoder, head, embed, inputs, targets, loss_function, steps, batch_size, learning_rate, seed):
    """Trains `encoder` and a linear `head` on random batches: `loss_function(head(embed(inputs)), targets)`;
    returns the losses."""
    optimizer = torch.optim.AdamW([*encoder.parameters(), *head.parameters()], lr=learning_rate, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    encoder.train()
    losses = []
    for _ in range(steps):
        batch = torch.randint(len(inputs), (batch_size,), generator=generator)
        loss = loss_function(head(embed(inputs[batch])), targets[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


TINY_LLAMA = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
)


def build_tiny_whisper(output_dir: str | Path, seed: int = 0) -> WhisperModel:
    """A random `WhisperModel` (width 16, one layer each side) with whisper-large-v2's feature extractor settings (80
    mel bins, 30 s at 16 kHz -> 1500 encoder frames)."""
    torch.manual_seed(seed)
    config = WhisperConfig(d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                           decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, vocab_size=64,
                           max_target_positions=16, num_mel_bins=80, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                           decoder_start_token_id=1)  # fmt: skip
    model = WhisperModel(config).eval()
    model.save_pretrained(output_dir)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(output_dir)
    return model


def build_tiny_clap(output_dir: str | Path, seed: int = 0) -> ClapModel:
    """A random fused `ClapModel` (HTSAT of two stages, projection to 12) with laion/clap-htsat-fused's feature
    extractor settings (48 kHz, 10 s, 64 mel bins from 50 Hz to 14 kHz, fusion)."""
    torch.manual_seed(seed)
    config = ClapConfig(
        text_config={"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
                     "vocab_size": 64, "max_position_embeddings": 40},
        audio_config={"hidden_size": 16, "patch_embeds_hidden_size": 8, "depths": [1, 1],
                      "num_attention_heads": [2, 2], "window_size": 8, "enable_fusion": True,
                      "projection_hidden_size": 16},
        projection_dim=12,
    )  # fmt: skip
    model = ClapModel(config).eval()
    model.save_pretrained(output_dir)
    ClapFeatureExtractor(frequency_min=50, frequency_max=14000).save_pretrained(output_dir)
    return model


TINY_BEATS_CONFIG = {
    "input_patch_size": 16, "embed_dim": 8, "conv_bias": False, "encoder_layers": 2, "encoder_embed_dim": 16,
    "encoder_ffn_embed_dim": 32, "encoder_attention_heads": 2, "activation_fn": "gelu", "layer_norm_first": False,
    "deep_norm": True, "conv_pos": 8, "conv_pos_groups": 2, "relative_position_embedding": True, "num_buckets": 320,
    "max_distance": 800, "gru_rel_pos": True,
    # Training-time fields an official cfg also holds
    "dropout": 0.1, "attention_dropout": 0.1, "encoder_layerdrop": 0.05, "finetuned_model": False,
}  # fmt: skip


def build_tiny_beats_checkpoint(path: str | Path, seed: int = 0, predictor: bool = False) -> Path:
    """
    A random BEATs checkpoint in the official layout (`torch.save({"cfg", "model"})`, as `BEATs_iter3_plus_AS20K.pt`):
    the position-bias table saved under every layer (the original shares one module), the weight-normed
    convolution as `weight_g` / `weight_v`, values away from the initialisation; with `predictor`, a fine-tuned
    checkpoint's classifier too.
    """
    torch.manual_seed(seed)
    config = TINY_BEATS_CONFIG
    state = {key: value + 0.3 * torch.randn_like(value) for key, value in BeatsModel(config).state_dict().items()}
    if predictor:
        state["predictor.weight"] = torch.randn(527, config["encoder_embed_dim"])
        state["predictor.bias"] = torch.randn(527)
    return _save_beats_checkpoint(path, config, state)


def _save_beats_checkpoint(path: str | Path, config: dict, state: dict) -> Path:
    """`state` (a `BeatsModel`'s, which holds the shared position-bias table once) in the official layout."""
    state = dict(state)
    table = state["encoder.layers.0.self_attn.relative_attention_bias.weight"]
    for index in range(1, config["encoder_layers"]):
        state[f"encoder.layers.{index}.self_attn.relative_attention_bias.weight"] = table.clone()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"cfg": dict(config), "model": state}, path)
    return path


def pretrain_tiny_beats(
    path: str | Path,
    waveforms: Sequence[np.ndarray],
    labels: Sequence[str],
    steps: int = 100,
    batch_size: int = 16,
    learning_rate: float = 3e-3,
    seed: int = 0,
) -> list[float]:
    """
    Trains the BEATs checkpoint at `path` (from [`build_tiny_beats_checkpoint`]) to label clips of one window
    each, as `BEATs_iter3_plus_AS20K.pt` was fine-tuned on AudioSet: a linear head on the mean of the patch states,
    which is LongVALE's audio row. Saves the backbone back in the official layout (the head is dropped) and
    returns the losses.

    Without it, a random tiny BEATs hardly tells the synthetic sounds from silence: the rows of a beep, a hum and a
    hiss lie about 1, 0.6 and 2.7 from the silent row (whose norm is 4.3), too close for a tiny LLM to learn where a
    sound plays within a CPU demo's budget; after 100 steps on the four labels, about 8 to 9.

    Args:
        path: the checkpoint file, overwritten.
        waveforms: mono float clips at 16 kHz of one BEATs window each (5.12 s, 81,920 samples).
        labels: one per clip (`"silence"`, `"beep"`, ...).
    """
    if len(waveforms) != len(labels) or not waveforms:
        raise ValueError(f"Expected one label per clip, at least one clip: got {len(waveforms)} and {len(labels)}.")
    torch.manual_seed(seed)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    model = BeatsModel.from_checkpoint(path)
    encoder = BeatsAudioEncoder(str(path), tail="pad", model=model)
    windows = []
    for index, waveform in enumerate(waveforms):
        clip_windows = encoder.fbank_windows(waveform)
        if len(clip_windows) != 1:
            raise ValueError(f"Clip {index} makes {len(clip_windows)} BEATs windows, not one: give 5.12 s clips.")
        windows.append(clip_windows[0])
    windows = torch.stack(windows)
    classes = sorted(set(labels))
    targets = torch.tensor([classes.index(label) for label in labels])
    head = torch.nn.Linear(model.config["encoder_embed_dim"], len(classes))
    losses = _train_with_head(model, head, lambda batch: model(batch).mean(dim=1), windows, targets,
                              torch.nn.functional.cross_entropy, steps, batch_size, learning_rate, seed)  # fmt: skip
    _save_beats_checkpoint(path, checkpoint["cfg"], model.state_dict())
    return losses


def _tiny_decoder_settings(tokenizer, overrides: dict) -> dict:
    """The tiny decoder's settings, sized to `tokenizer`, with its head width (Qwen3's default is 128) set by the
    width and the heads."""
    settings = {**TINY_LLAMA, **overrides}
    settings.setdefault("head_dim", settings["hidden_size"] // settings["num_attention_heads"])
    return dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id, **settings)  # fmt: skip


def build_tiny_llama(
    output_dir: str | Path, tokenizer, seed: int = 0, model_type: str = "llama", **llama_overrides
) -> PreTrainedModel:
    """
    A random plain decoder (a `LlamaForCausalLM`, or of another `model_type` of [`BACKBONES`]: `qwen3`, ...) saved
    with `tokenizer`: a stand-in for Vicuna (or the backbone's LLM) that the recipes load by path.
    """
    torch.manual_seed(seed)
    config = AutoConfig.for_model(model_type, **_tiny_decoder_settings(tokenizer, llama_overrides))
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return model


def pretrain_tiny_llama(
    model_dir: str | Path,
    texts: Iterable[str],
    steps: int = 300,
    batch_size: int = 16,
    block_size: int = 128,
    learning_rate: float = 3e-3,
    seed: int = 0,
) -> list[float]:
    """
    Language-model pre-training of a tiny base on plain text, packed into blocks, all weights trained; saves the
    model back and returns the losses.

    A randomly initialised base cannot serve the stages: they freeze its LM head and final norm and train only the
    projector and LoRA, and a random head spreads its logits almost uniformly whatever the hidden states. A short
    pre-training gives the head and the embeddings the role a real base's have.
    """
    torch.manual_seed(seed)
    model_dir = Path(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    ids = [token for text in texts for token in tokenizer(text).input_ids + [tokenizer.eos_token_id]]
    blocks = torch.tensor(ids[: len(ids) // block_size * block_size]).view(-1, block_size)
    if len(blocks) < batch_size:
        raise ValueError(f"Pre-training needs at least {batch_size * block_size} tokens of text, got {len(ids)}.")
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, learning_rate, total_steps=steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    losses = []
    for _ in range(steps):
        batch = blocks[torch.randint(len(blocks), (batch_size,), generator=generator)]
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    model.save_pretrained(model_dir)
    return losses


def build_tiny_vtime_model(
    tokenizer, mm_hidden_size: int = 32, num_frames: int = 100, seed: int = 0, model_type: str = "llama",
    **llama_overrides,
) -> VTimeLlamaForCausalLM:
    """A random `VTimeLlamaForCausalLM` (or the VTimeLLM class of another decoder `model_type` of [`BACKBONES`]; 2
    layers, hidden 64 unless overridden) sized to `tokenizer`."""
    torch.manual_seed(seed)
    config_class, model_class = BACKBONES[model_type]
    config = config_class(
        mm_hidden_size=mm_hidden_size,
        num_frames=num_frames,
        video_token_id=tokenizer.convert_tokens_to_ids(VIDEO_TOKEN),
        **_tiny_decoder_settings(tokenizer, llama_overrides),
    )
    return model_class(config).eval()
