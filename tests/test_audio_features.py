"""The audio stream encoders of LongVALE (BEATs audio, Whisper speech) and AVicuna (CLAP audio), each step against an
independent computation: Kaldi fbank against kaldi-native-fbank and a float64 computation from Kaldi's definition,
BEATs against a per-head computation from the checkpoint's tensors, Whisper and CLAP against transformers' models
called the plain way, windows and row fitting against the originals' rules written out. Tiny random encoders, built
here (no weights are downloaded)."""

import functools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import ClapFeatureExtractor, ClapModel, WhisperFeatureExtractor, WhisperModel
from transformers.testing_utils import CaptureLogger
from transformers.utils import logging

from vtimellm_hf.model import audio_processing_vtime
from vtimellm_hf.model.audio_processing_vtime import (
    BeatsAudioEncoder,
    ClapAudioEncoder,
    WhisperSpeechEncoder,
    build_stream_encoder,
    clap_windows,
    fit_rows,
    fit_video_rows,
)
from vtimellm_hf.model.beats_vtime import FBANK_MEAN, FBANK_STD, BeatsModel, kaldi_fbank
from vtimellm_hf.tiny_models import TINY_BEATS_CONFIG, build_tiny_beats_checkpoint

def noise(seconds: float, rate: int, seed: int = 0, scale: float = 0.1) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * rate)) * scale).astype(np.float32)


# Kaldi fbank


def fbank_from_kaldi_definition(waveform: np.ndarray, bins: int = 128, rate: int = 16000) -> np.ndarray:
    """Kaldi's fbank (25 ms / 10 ms, snip edges, DC removed, pre-emphasis 0.97, Povey window, 512-point power
    spectrum, mel triangles 20 Hz..Nyquist on 1127 ln(1 + f / 700), Nyquist bin left out, log), float64, loops."""
    waveform = waveform.astype(np.float64)
    frames = np.stack([waveform[start : start + 400] for start in range(0, len(waveform) - 399, 160)])
    frames = frames - frames.mean(axis=1, keepdims=True)
    frames = frames - 0.97 * np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 399)) ** 0.85
    power = np.abs(np.fft.rfft(frames * window, 512)) ** 2
    return np.log(np.maximum(power @ kaldi_banks(bins, rate).T, np.finfo(np.float32).eps))


@functools.cache
def kaldi_banks(bins: int, rate: int) -> np.ndarray:
    def mel(frequency):
        return 1127.0 * math.log(1.0 + frequency / 700.0)

    low, high = mel(20.0), mel(rate / 2)
    step = (high - low) / (bins + 1)
    banks = np.zeros((bins, 257))
    for index in range(bins):
        left, center, right = low + index * step, low + (index + 1) * step, low + (index + 2) * step
        for fft_bin in range(256):
            point = mel(fft_bin * rate / 512)
            if left < point < right:
                banks[index, fft_bin] = (point - left) / (center - left) if point <= center else (right - point) / (
                    right - center)  # fmt: skip
    return banks


@pytest.fixture(scope="module")
def waveforms() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    times = np.arange(16000 * 2) / 16000
    return {
        "noise": (rng.standard_normal(16000 * 3) * 3000).astype(np.float32),
        "tone": (12000 * np.sin(2 * np.pi * 440 * times) + 30 * rng.standard_normal(len(times))).astype(np.float32),
        "odd length": (rng.standard_normal(16000 + 391) * 500).astype(np.float32),
    }


def test_kaldi_fbank_equals_kaldi_native_fbank(waveforms):
    knf = pytest.importorskip("kaldi_native_fbank")
    # kaldi-native-fbank, like Kaldi, refuses 128 bins at 16 kHz (some low triangles hold no FFT bin, which
    # torchaudio leaves at log(eps)); its defaults are Kaldi's, compared at 80 bins
    for name, waveform in waveforms.items():
        options = knf.FbankOptions()
        options.frame_opts.dither = 0.0
        options.mel_opts.num_bins = 80
        online = knf.OnlineFbank(options)
        online.accept_waveform(16000, waveform.tolist())
        online.input_finished()
        expected = np.stack([online.get_frame(index) for index in range(online.num_frames_ready)])
        ours = kaldi_fbank(torch.from_numpy(waveform), num_mel_bins=80).numpy()
        assert ours.shape == expected.shape == (1 + (len(waveform) - 400) // 160, 80), name
        np.testing.assert_allclose(ours, expected, atol=1e-3, err_msg=name)


def test_kaldi_fbank_at_128_bins_equals_the_kaldi_definition(waveforms):
    for name, waveform in waveforms.items():
        ours = kaldi_fbank(torch.from_numpy(waveform)).numpy()
        np.testing.assert_allclose(ours, fbank_from_kaldi_definition(waveform), atol=2e-3, err_msg=name)
    assert kaldi_fbank(torch.zeros(399)).shape == (0, 128)


# BEATs


def t5_bucket(offset: int, num_buckets: int = 320, max_distance: int = 800) -> int:
    half = num_buckets // 2
    exact = half // 2
    bucket = half if offset > 0 else 0
    distance = abs(offset)
    if distance < exact:
        return bucket + distance
    logarithmic = exact + int(math.log(distance / exact) / math.log(max_distance / exact) * (half - exact))
    return bucket + min(logarithmic, half - 1)


@functools.cache
def t5_buckets(count: int) -> torch.Tensor:
    return torch.tensor([[t5_bucket(key - query) for key in range(count)] for query in range(count)])


def beats_reference(state: dict, config: dict, fbank: torch.Tensor) -> torch.Tensor:
    """BEATs' forward from the checkpoint's tensors, one head at a time (the paper's description and the released
    layout): patches -> LayerNorm -> projection -> + GELU(weight-normed grouped conv) -> LayerNorm -> post-LN layers
    with DeepNorm residuals and a T5 position bias, gated per query by sigmoid(grep_linear(q)) and grep_a."""
    state = {key: value.double() for key, value in state.items()}
    size = config["input_patch_size"]
    patches = F.conv2d(fbank.double()[:, None], state["patch_embedding.weight"], stride=size)
    hidden = patches.reshape(len(fbank), patches.shape[1], -1).transpose(1, 2)
    hidden = F.layer_norm(hidden, hidden.shape[-1:], state["layer_norm.weight"], state["layer_norm.bias"])
    hidden = hidden @ state["post_extract_proj.weight"].T + state["post_extract_proj.bias"]
    direction, length = state["encoder.pos_conv.0.weight_v"], state["encoder.pos_conv.0.weight_g"]
    weight = length * direction / direction.pow(2).sum(dim=(0, 1), keepdim=True).sqrt()
    convolved = F.conv1d(hidden.transpose(1, 2), weight, state["encoder.pos_conv.0.bias"],
                         padding=config["conv_pos"] // 2, groups=config["conv_pos_groups"])  # fmt: skip
    hidden = hidden + F.gelu(convolved[..., : hidden.shape[1]]).transpose(1, 2)
    normalized = hidden.shape[-1:]
    hidden = F.layer_norm(hidden, normalized, state["encoder.layer_norm.weight"], state["encoder.layer_norm.bias"])
    count, heads = hidden.shape[1], config["encoder_attention_heads"]
    table = state["encoder.layers.0.self_attn.relative_attention_bias.weight"]
    bias = table[t5_buckets(count)]
    alpha = (2 * config["encoder_layers"]) ** 0.25
    for layer in range(config["encoder_layers"]):
        prefix = f"encoder.layers.{layer}."

        def linear(name, inputs):
            return inputs @ state[prefix + name + ".weight"].T + state[prefix + name + ".bias"]

        query, key, value = (linear(f"self_attn.{name}_proj", hidden) for name in "qkv")
        head_outputs = []
        for head in range(heads):
            head_width = query.shape[-1] // heads
            q, k, v = (tensor[..., head * head_width : (head + 1) * head_width] for tensor in (query, key, value))
            gate_inputs = linear("self_attn.grep_linear", q)
            gate_a = torch.sigmoid(gate_inputs[..., :4].sum(-1))
            gate_b = torch.sigmoid(gate_inputs[..., 4:].sum(-1))
            gate = gate_a * (gate_b * state[prefix + "self_attn.grep_a"][0, head, 0, 0] - 1.0) + 2.0
            scores = q @ k.transpose(1, 2) / math.sqrt(head_width) + gate[..., None] * bias[..., head]
            head_outputs.append(torch.softmax(scores, dim=-1) @ v)
        attended = linear("self_attn.out_proj", torch.cat(head_outputs, dim=-1))
        hidden = F.layer_norm(hidden * alpha + attended, normalized, state[prefix + "self_attn_layer_norm.weight"],
                              state[prefix + "self_attn_layer_norm.bias"])  # fmt: skip
        feed_forward = linear("fc2", F.gelu(linear("fc1", hidden)))
        hidden = F.layer_norm(hidden * alpha + feed_forward, normalized, state[prefix + "final_layer_norm.weight"],
                              state[prefix + "final_layer_norm.bias"])  # fmt: skip
    return hidden.float()


def test_beats_forward_equals_the_reference_computation(beats_checkpoint):
    model = BeatsModel.from_checkpoint(beats_checkpoint)
    state = torch.load(beats_checkpoint, weights_only=True)["model"]
    fbank = torch.randn(2, 512, 128)
    with torch.no_grad():
        ours = model(fbank)
    assert ours.shape == (2, 256, 16)
    torch.testing.assert_close(ours, beats_reference(state, TINY_BEATS_CONFIG, fbank), atol=2e-5, rtol=1e-4)


def test_beats_checkpoints_load_strictly_or_fail_naming_the_file(tmp_path, beats_checkpoint):
    # A fine-tuned checkpoint's classifier is left out
    fine_tuned = BeatsModel.from_checkpoint(build_tiny_beats_checkpoint(tmp_path / "ft.pt", predictor=True))
    assert not any(name.startswith("predictor") for name in fine_tuned.state_dict())
    checkpoint = torch.load(beats_checkpoint, weights_only=True)
    checkpoint["model"]["encoder.layers.1.self_attn.relative_attention_bias.weight"] += 1.0
    torch.save(checkpoint, tmp_path / "bad_copy.pt")
    with pytest.raises(ValueError, match="bad_copy.pt: layer 1's position-bias table differs"):
        BeatsModel.from_checkpoint(tmp_path / "bad_copy.pt")
    checkpoint = torch.load(beats_checkpoint, weights_only=True)
    del checkpoint["model"]["encoder.layers.1.fc1.weight"]
    torch.save(checkpoint, tmp_path / "short.pt")
    expected = r"short.pt does not match the BEATs backbone: missing \['encoder.layers.1.fc1"
    with pytest.raises(ValueError, match=expected):
        BeatsModel.from_checkpoint(tmp_path / "short.pt")
    torch.save({"cfg": {**TINY_BEATS_CONFIG, "deep_norm": False}, "model": {}}, tmp_path / "other.pt")
    expected = r"other.pt: This BEATs builds the iter3 architecture .* got \{'deep_norm': False\}"
    with pytest.raises(ValueError, match=expected):
        BeatsModel.from_checkpoint(tmp_path / "other.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pt is not a BEATs checkpoint"):
        BeatsModel.from_checkpoint(tmp_path / "garbage.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        BeatsModel.from_checkpoint(tmp_path / "missing.pt")


class CreatesFile:
    """Unpickled, it creates `path`: a stand-in for a payload that runs code."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


def test_beats_checkpoints_are_read_without_unpickling_code(tmp_path):
    marker = tmp_path / "ran"
    payload = {"cfg": TINY_BEATS_CONFIG, "model": {"patch_embedding.weight": CreatesFile(marker)}}
    torch.save(payload, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="evil.pt is not a BEATs checkpoint"):
        BeatsModel.from_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def expected_beats_windows(frames: int, tail: str) -> int:
    """LongVALE pads the fbank by its remainder (`frames % 512` zero frames), not up to a whole window."""
    if tail == "longvale":
        return (frames + frames % 512) // 512
    return -(-frames // 512)


@pytest.mark.parametrize("seconds", [2.0, 2.6, 7.7, 13.0])
@pytest.mark.parametrize("tail", ["longvale", "pad"])
def test_beats_encoder_windows_and_features(beats_checkpoint, seconds, tail):
    encoder = BeatsAudioEncoder(str(beats_checkpoint), batch_size=2, tail=tail)
    waveform = noise(seconds, 16000)
    frames = 1 + (len(waveform) - 400) // 160
    windows = encoder.fbank_windows(waveform)
    count = expected_beats_windows(frames, tail)
    assert windows.shape == (count, 512, 128)
    fbank = torch.from_numpy(fbank_from_kaldi_definition(waveform * 32768.0)).float()
    normalised = F.pad((fbank - FBANK_MEAN) / (2 * FBANK_STD), (0, 0, 0, count * 512 - frames))[: count * 512]
    torch.testing.assert_close(windows, normalised.view(count, 512, 128), atol=1e-3, rtol=0)
    features = encoder.encode_waveform(waveform)
    assert features.shape == (count, 16)
    if count:
        state = torch.load(beats_checkpoint, weights_only=True)["model"]
        expected = beats_reference(state, TINY_BEATS_CONFIG, windows).mean(dim=1)
        torch.testing.assert_close(features, expected, atol=2e-5, rtol=1e-4)


def test_beats_encoder_finds_its_checkpoint_in_a_folder(beats_checkpoint):
    encoder = build_stream_encoder("beats", str(beats_checkpoint.parent))
    assert encoder.feature_size == 16
    assert encoder.stream == "audio" and encoder.sampling_rate == 16000


# Whisper


@pytest.mark.parametrize("seconds", [1.0, 30.0, 30.5, 65.0])
def test_whisper_speech_rows_are_the_encoder_frames_of_30_s_chunks_pooled_by_256(whisper_path, seconds):
    encoder = WhisperSpeechEncoder(str(whisper_path), batch_size=2)
    waveform = noise(seconds, 16000)
    chunks = max(1, math.ceil(len(waveform) / 480000))
    features = encoder.encode_waveform(waveform)
    # LongVALE's N_s = floor(1500 * ceil(duration / 30) / 256), the windows over padding included
    assert features.shape == (1500 * chunks // 256, 16)
    # The plain way: the whole model's encoder on each chunk's log-mel, frames concatenated, windows averaged
    model = WhisperModel.from_pretrained(whisper_path).eval()
    extractor = WhisperFeatureExtractor.from_pretrained(whisper_path)
    with torch.no_grad():
        frames = torch.cat([
            model.encoder(extractor(waveform[index * 480000 : (index + 1) * 480000], sampling_rate=16000,
                                    return_tensors="pt").input_features).last_hidden_state[0]
            for index in range(chunks)
        ])  # fmt: skip
    expected = torch.stack([frames[row * 256 : (row + 1) * 256].mean(dim=0) for row in range(len(features))])
    torch.testing.assert_close(features, expected, atol=1e-5, rtol=1e-5)


def test_whisper_encoder_takes_a_loaded_model(whisper_path):
    model = WhisperModel.from_pretrained(whisper_path)
    encoder = WhisperSpeechEncoder(str(whisper_path), model=model.get_encoder())
    assert encoder.feature_size == 16
    assert encoder.encode_waveform(noise(6.0, 16000)).shape == (5, 16)


# CLAP


@pytest.mark.parametrize(
    ("seconds", "starts", "length"),
    [(0.5, [], 0), (1.0, [], 0), (1.5, [0], 10), (10.0, [0], 10), (10.5, [0], 10), (12.0, [0, 4, 8], 20),
     (25.0, [0, 4, 8, 12, 16, 20], 30), (40.0, [0, 4, 8, 12, 16, 20, 24, 28], 40)],
)  # fmt: skip
def test_clap_windows_follow_avicunas_tail_rule(seconds, starts, length):
    rate = 1000  # the rule in seconds, at a small rate
    waveform = np.linspace(-1.5, 1.5, int(seconds * rate), dtype=np.float32)
    windows = clap_windows(waveform, rate)
    assert windows.shape == (len(starts), 10 * rate)
    # AVicuna: a remainder (of the length, past its whole 10 s) of at most 1 s dropped, a longer one zero-padded
    padded = np.zeros(length * rate, dtype=np.float32)
    padded[: min(len(waveform), length * rate)] = waveform[: length * rate]
    for window, start in zip(windows, starts):
        segment = padded[start * rate : (start + 10) * rate]
        # The int16 round trip: clip, * 32767 truncated toward zero, / 32767
        expected = np.trunc(np.clip(segment, -1, 1) * np.float32(32767)) / 32767
        np.testing.assert_array_equal(window, expected.astype(np.float32))


def test_clap_audio_embeddings_equal_get_audio_features_of_each_window(clap_path):
    encoder = ClapAudioEncoder(str(clap_path), batch_size=4)
    waveform = noise(12.0, 48000)
    random_state = np.random.get_state()
    features = encoder.encode_waveform(waveform)
    assert features.shape == (3, 12)
    # No random draw: transformers' feature extractor marks one window "longer" at random; that mark is not used,
    # and numpy's random state is as it was
    assert all(np.array_equal(a, b) for a, b in zip(random_state[1:3], np.random.get_state()[1:3]))
    model = ClapModel.from_pretrained(clap_path).eval()
    extractor = ClapFeatureExtractor.from_pretrained(clap_path)
    expected = []
    with torch.no_grad():
        for window in clap_windows(waveform, 48000):
            mel = extractor(window, sampling_rate=48000, return_tensors="pt").input_features
            # Each window lasts exactly 10 s: none is longer, as laion_clap's inference has it
            embedded = model.get_audio_features(input_features=mel, is_longer=torch.tensor([[False]])).pooler_output
            expected.append(embedded[0])
        # The fusion branch, which the random mark would run on one window, gives another embedding
        marked_longer = model.get_audio_features(input_features=mel, is_longer=torch.tensor([[True]])).pooler_output
        assert not torch.allclose(marked_longer[0], embedded[0])
    torch.testing.assert_close(features, torch.stack(expected), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(features.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(ClapAudioEncoder(str(clap_path), batch_size=1).encode_waveform(waveform), features)


def test_clap_encoder_of_too_short_audio_gives_none_and_a_log_line(clap_path, tmp_path, write_media):
    encoder = ClapAudioEncoder(str(clap_path))
    assert encoder.encode_waveform(noise(0.9, 48000)).shape == (0, 12)
    short = write_media(tmp_path / "short.wav", 0.8, layout="mono", video=False, codec="pcm_s16le")
    with CaptureLogger(logging.get_logger(audio_processing_vtime.__name__)) as captured:
        assert encoder.encode_file(short) is None
    assert f"{short}: its 0.80 s of audio give no audio row (ClapAudioEncoder): treated as no audio" in captured.out
    long = write_media(tmp_path / "long.wav", 12.5, layout="mono", video=False, codec="pcm_s16le")
    assert encoder.encode_file(long).shape == (3, 12)


# Files, settings, row fitting


def test_encoders_read_files_as_their_originals_and_give_none_without_an_audio_track(
    real_data, whisper_path, beats_checkpoint, tmp_path, write_media
):
    video = real_data / "videos" / "3MSZA.mp4"
    # 31.07 s read by moviepy: 497120 samples, 3105 fbank frames -> (3105 + 33) // 512 = 6 BEATs windows;
    # 2 Whisper chunks -> floor(3000 / 256) = 11 speech rows
    assert build_stream_encoder("beats", str(beats_checkpoint)).encode_file(video).shape == (6, 16)
    assert build_stream_encoder("whisper", str(whisper_path)).encode_file(video).shape == (11, 16)
    assert build_stream_encoder("whisper", str(whisper_path)).encode_file(video, window=(0.0, 10.0)).shape == (5, 16)
    silent = write_media(tmp_path / "silent.mp4", 1.0, audio=False)
    assert build_stream_encoder("beats", str(beats_checkpoint)).encode_file(silent) is None


def test_settings_round_trip_and_bad_settings_are_refused(beats_checkpoint, whisper_path, clap_path):
    for encoder in (
        build_stream_encoder("beats", str(beats_checkpoint), tail="pad", batch_size=3),
        build_stream_encoder("whisper", str(whisper_path), reader="ffmpeg"),
        build_stream_encoder("clap", str(clap_path)),
    ):
        settings = encoder.to_dict()
        rebuilt = build_stream_encoder(settings.pop("kind"), settings.pop("name_or_path"), **settings)
        assert rebuilt.to_dict() == encoder.to_dict() and type(rebuilt) is type(encoder)
    assert build_stream_encoder("whisper").name_or_path == "openai/whisper-large-v2"
    assert build_stream_encoder("clap").to_dict()["reader"] == "librosa"
    assert build_stream_encoder("whisper").to_dict()["reader"] == "moviepy"
    with pytest.raises(ValueError, match="BEATs encoder needs its checkpoint: the path of BEATs_iter3_plus_AS20K.pt"):
        build_stream_encoder("beats")
    with pytest.raises(ValueError, match="kind must be one of 'whisper', 'beats', 'clap', got 'wav2vec'"):
        build_stream_encoder("wav2vec", "x")
    with pytest.raises(ValueError, match="tail must be one of"):
        build_stream_encoder("beats", str(beats_checkpoint), tail="ceil")
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        build_stream_encoder("whisper", batch_size=0)
    with pytest.raises(ValueError, match="reader must be one of"):
        build_stream_encoder("clap", reader="sox")
    with pytest.raises(ValueError, match=r"A waveform must be mono samples \(samples,\)"):
        build_stream_encoder("whisper", str(whisper_path)).encode_waveform(np.zeros((2, 100), np.float32))


def avicuna_audio_rows(features: torch.Tensor, rows: int) -> torch.Tensor:
    """AVicuna's dataset, written out: row i repeated `rows // N + (1 if i < rows % N else 0)` times, in order."""
    count = len(features)
    if count == rows:
        return features
    factor, remainder = rows // count, rows % count
    return torch.cat([features[index][None].repeat(factor + (1 if index < remainder else 0), 1)
                      for index in range(count)])  # fmt: skip


@pytest.mark.parametrize("count", [1, 3, 7, 10, 25, 26, 40])
@pytest.mark.parametrize("rows", [10, 25])
def test_fit_rows_repeats_or_keeps_the_first_rows_as_avicuna(count, rows):
    features = torch.randn(count, 4)
    torch.testing.assert_close(fit_rows(features, rows), avicuna_audio_rows(features, rows))
    assert fit_rows(features, rows).shape == (rows, 4)


def test_fit_rows_of_a_video_without_audio_are_zero_rows():
    torch.testing.assert_close(fit_rows(None, 25, feature_size=512), torch.zeros(25, 512))
    with pytest.raises(ValueError, match="needs feature_size"):
        fit_rows(None, 25)
    with pytest.raises(ValueError, match="No audio rows to fit to 25"):
        fit_rows(torch.zeros(0, 512), 25)


@pytest.mark.parametrize("count", [30, 75, 90, 100, 130])
@pytest.mark.parametrize("rows", [75, 90])
def test_fit_video_rows_sample_floor_j_l_over_n_or_pad_with_zeros(count, rows):
    features = torch.randn(count, 6)
    if count >= rows:
        expected = torch.stack([features[(index * count) // rows] for index in range(rows)])
    else:
        expected = torch.cat([features, torch.zeros(rows - count, 6)])
    torch.testing.assert_close(fit_video_rows(features, rows), expected)
