"""BEATs, the audio encoder of LongVALE-LLM, and the Kaldi filter banks it reads.

Microsoft's BEATs ("Audio Pre-Training with Acoustic Tokenizers", Chen et al., 2022) has no transformers class, and the
maintained packages that load its checkpoints (speechbrain, espnet) need torchaudio, whose wheels are built for one
torch release each. This file holds what LongVALE's extraction runs of it, written from the paper and the released
checkpoint's layout: [`kaldi_fbank`] (torchaudio's `compliance.kaldi.fbank` with its defaults) and
[`BeatsModel`], which loads an official checkpoint file such as `BEATs_iter3_plus_AS20K.pt` (`{"cfg", "model"}`)
with its own parameter names ([`BeatsModel.from_checkpoint`]).

This file travels to the Hub with a checkpoint that reads BEATs audio (`trust_remote_code=True`): it imports only
torch and numpy.
"""

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# LongVALE's BEATs input: fbank normalised as `(fbank - mean) / (2 * std)` (the statistics BEATs was trained with)
FBANK_MEAN = 15.41663
FBANK_STD = 6.55582

# The architecture of the iter3 checkpoints (the only one this file builds): post-LayerNorm layers with DeepNorm
# residuals, gated relative position bias shared by the layers, a convolutional position embedding
SUPPORTED_ARCHITECTURE = {
    "deep_norm": True,
    "layer_norm_first": False,
    "relative_position_embedding": True,
    "gru_rel_pos": True,
    "activation_fn": "gelu",
}
ARCHITECTURE_FIELDS = (
    "input_patch_size",
    "embed_dim",
    "conv_bias",
    "encoder_layers",
    "encoder_embed_dim",
    "encoder_ffn_embed_dim",
    "encoder_attention_heads",
    "conv_pos",
    "conv_pos_groups",
    "num_buckets",
    "max_distance",
    *SUPPORTED_ARCHITECTURE,
)


def kaldi_fbank(waveform: torch.Tensor, num_mel_bins: int = 128, sample_frequency: float = 16000.0) -> torch.Tensor:
    """
    Kaldi's log mel filter banks of one waveform, as torchaudio's `compliance.kaldi.fbank(waveform, num_mel_bins,
    sample_frequency=..., frame_length=25, frame_shift=10)` computes them with its other defaults: frames of 25 ms
    every 10 ms (only whole frames), each with its mean removed, pre-emphasised (0.97, its first sample repeated
    before it), weighted by the Povey window (Hann ** 0.85), zero-padded to a power of two, power spectrum, Kaldi's
    triangular mel bins from 20 Hz to Nyquist, natural log floored at float32's epsilon. No dither.

    Args:
        waveform: float `(samples,)`, in the scale the caller wants (BEATs takes 16-bit sample values).
    Returns:
        float32 `(frames, num_mel_bins)`; no frame for a waveform shorter than one frame.
    """
    frame_length = int(sample_frequency * 0.025)
    frame_shift = int(sample_frequency * 0.010)
    waveform = waveform.to(torch.float32).reshape(-1)
    if len(waveform) < frame_length:
        return torch.zeros(0, num_mel_bins)
    frames = waveform.unfold(0, frame_length, frame_shift)
    frames = frames - frames.mean(dim=1, keepdim=True)
    previous = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)
    frames = frames - 0.97 * previous
    window = torch.hann_window(frame_length, periodic=False, dtype=torch.float32).pow(0.85)
    fft_size = 1 << (frame_length - 1).bit_length()
    power = torch.fft.rfft(frames * window, n=fft_size).abs().pow(2)
    mel_energies = power @ _kaldi_mel_banks(num_mel_bins, fft_size, sample_frequency).T
    return torch.maximum(mel_energies, torch.tensor(torch.finfo(torch.float32).eps)).log()


def _kaldi_mel_banks(num_bins: int, fft_size: int, sample_frequency: float, low_frequency: float = 20.0):
    """
    Kaldi's triangles `(num_bins, fft_size // 2 + 1)`, equally spaced on `1127 ln(1 + f / 700)` from
    `low_frequency` to Nyquist, none at Nyquist itself; float32, computed in torchaudio's order.
    """
    mel_low = 1127.0 * math.log(1.0 + low_frequency / 700.0)
    mel_high = 1127.0 * math.log(1.0 + 0.5 * sample_frequency / 700.0)
    spacing = (mel_high - mel_low) / (num_bins + 1)
    bins = torch.arange(num_bins)[:, None]
    left, center, right = (mel_low + (bins + offset) * spacing for offset in (0.0, 1.0, 2.0))
    bin_mels = 1127.0 * (1.0 + sample_frequency / fft_size * torch.arange(fft_size // 2) / 700.0).log()
    up = (bin_mels[None, :] - left) / (center - left)
    down = (right - bin_mels[None, :]) / (right - center)
    banks = torch.clamp(torch.minimum(up, down), min=0.0)
    return F.pad(banks, (0, 1))


class _WeightNormConv1d(nn.Module):
    """A grouped 1-D convolution whose weight is `weight_g * weight_v / |weight_v|`, norms over all but the kernel
    position (`nn.utils.weight_norm(dim=2)`, whose parameter names the checkpoints keep)."""

    def __init__(self, channels: int, kernel_size: int, groups: int):
        super().__init__()
        self.weight_g = nn.Parameter(torch.ones(1, 1, kernel_size))
        self.weight_v = nn.Parameter(torch.randn(channels, channels // groups, kernel_size) * 0.02)
        self.bias = nn.Parameter(torch.zeros(channels))
        self.groups = groups

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        weight = self.weight_v * (self.weight_g / self.weight_v.norm(dim=(0, 1), keepdim=True))
        kernel_size = weight.shape[-1]
        output = F.conv1d(hidden, weight, self.bias, padding=kernel_size // 2, groups=self.groups)
        # An even kernel gives one output too many: the last is dropped
        return output[..., :-1] if kernel_size % 2 == 0 else output


class _BeatsAttention(nn.Module):
    def __init__(self, config: dict, shares_position_bias: bool):
        super().__init__()
        width, self.heads = config["encoder_embed_dim"], config["encoder_attention_heads"]
        self.q_proj, self.k_proj = nn.Linear(width, width), nn.Linear(width, width)
        self.v_proj, self.out_proj = nn.Linear(width, width), nn.Linear(width, width)
        # The first layer holds the bias table of every layer
        if shares_position_bias:
            self.relative_attention_bias = nn.Embedding(config["num_buckets"], self.heads)
        self.grep_linear = nn.Linear(width // self.heads, 8)
        self.grep_a = nn.Parameter(torch.ones(1, self.heads, 1, 1))

    def forward(self, hidden: torch.Tensor, position_bias: torch.Tensor) -> torch.Tensor:
        """`hidden (batch, patches, width)`, `position_bias (heads, patches, patches)` -> `(batch, patches, width)`."""
        batch, patches, width = hidden.shape

        def by_head(projection):
            return projection(hidden).view(batch, patches, self.heads, -1).transpose(1, 2)

        query, key, value = by_head(self.q_proj), by_head(self.k_proj), by_head(self.v_proj)
        # Each query scales the shared bias by a gate computed from it (BEATs' "gated relative position bias")
        gates = torch.sigmoid(self.grep_linear(query).view(batch, self.heads, patches, 2, 4).sum(-1))
        gate = gates[..., 0] * (gates[..., 1] * self.grep_a[..., 0] - 1.0) + 2.0
        bias = gate[..., None] * position_bias.to(query.dtype)
        attended = F.scaled_dot_product_attention(query, key, value, attn_mask=bias)
        return self.out_proj(attended.transpose(1, 2).reshape(batch, patches, width))


class _BeatsLayer(nn.Module):
    def __init__(self, config: dict, shares_position_bias: bool):
        super().__init__()
        width = config["encoder_embed_dim"]
        self.self_attn = _BeatsAttention(config, shares_position_bias)
        self.self_attn_layer_norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, config["encoder_ffn_embed_dim"])
        self.fc2 = nn.Linear(config["encoder_ffn_embed_dim"], width)
        self.final_layer_norm = nn.LayerNorm(width)
        # DeepNorm: the residual is scaled up before each post-LayerNorm
        self.residual_scale = math.pow(2 * config["encoder_layers"], 0.25)

    def forward(self, hidden: torch.Tensor, position_bias: torch.Tensor) -> torch.Tensor:
        hidden = self.self_attn_layer_norm(hidden * self.residual_scale + self.self_attn(hidden, position_bias))
        feed_forward = self.fc2(F.gelu(self.fc1(hidden).float()).type_as(hidden))
        return self.final_layer_norm(hidden * self.residual_scale + feed_forward)


class _BeatsEncoder(nn.Module):
    def __init__(self, config: dict):
        super().__init__()
        width = config["encoder_embed_dim"]
        self.pos_conv = nn.ModuleList([_WeightNormConv1d(width, config["conv_pos"], config["conv_pos_groups"])])
        self.layer_norm = nn.LayerNorm(width)
        self.layers = nn.ModuleList(_BeatsLayer(config, index == 0) for index in range(config["encoder_layers"]))
        self.num_buckets, self.max_distance = config["num_buckets"], config["max_distance"]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = hidden + F.gelu(self.pos_conv[0](hidden.transpose(1, 2))).transpose(1, 2)
        hidden = self.layer_norm(hidden)
        buckets = relative_position_buckets(hidden.shape[1], self.num_buckets, self.max_distance)
        table = self.layers[0].self_attn.relative_attention_bias
        position_bias = table(buckets.to(table.weight.device)).permute(2, 0, 1)
        for layer in self.layers:
            hidden = layer(hidden, position_bias)
        return hidden


def relative_position_buckets(length: int, num_buckets: int, max_distance: int) -> torch.Tensor:
    """
    `(length, length)` bucket of each (query, key) pair, as T5 buckets bidirectional offsets `key - query`: half the
    buckets per direction, exact below a quarter of the buckets, logarithmic up to `max_distance`, the last one
    beyond.
    """
    offsets = torch.arange(length)[None, :] - torch.arange(length)[:, None]
    half = num_buckets // 2
    exact = half // 2
    distance = offsets.abs()
    logarithmic = exact + (
        torch.log(distance.clamp_min(1).float() / exact) / math.log(max_distance / exact) * (half - exact)
    ).to(torch.long)
    logarithmic = logarithmic.clamp_max(half - 1)
    return (offsets > 0).long() * half + torch.where(distance < exact, distance, logarithmic)


class BeatsModel(nn.Module):
    r"""
    BEATs' backbone: normalised fbank `(batch, frames, mel_bins)` -> patch states `(batch, patches, width)`.

    Patches of 16 x 16 (frames x bins) are embedded, LayerNorm'ed and projected to the encoder's width, then the
    encoder adds a convolutional position embedding and runs its post-LayerNorm layers (DeepNorm residuals; attention
    with a relative position bias, shared by the layers and gated per query). No padding mask: LongVALE's windows
    include their zero padding. Parameter names are those of the official checkpoints.

    Args:
        config: the checkpoint's `cfg` (only the fields of `ARCHITECTURE_FIELDS` are read).
    """

    def __init__(self, config: dict):
        super().__init__()
        missing = [field for field in ARCHITECTURE_FIELDS if field not in config]
        if missing:
            raise ValueError(f"The BEATs configuration lacks {missing}.")
        unsupported = {field: config[field] for field, value in SUPPORTED_ARCHITECTURE.items()
                       if config[field] != value}  # fmt: skip
        if unsupported:
            raise ValueError(f"This BEATs builds the iter3 architecture {SUPPORTED_ARCHITECTURE}, got {unsupported}.")
        self.config = {field: config[field] for field in ARCHITECTURE_FIELDS}
        patch, embed = config["input_patch_size"], config["embed_dim"]
        self.patch_embedding = nn.Conv2d(1, embed, kernel_size=patch, stride=patch, bias=config["conv_bias"])
        self.layer_norm = nn.LayerNorm(embed)
        self.post_extract_proj = nn.Linear(embed, config["encoder_embed_dim"])
        self.encoder = _BeatsEncoder(config)

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        """`fbank (batch, frames, mel_bins)`, frames and bins multiples of the patch size -> `(batch, patches,
        width)`."""
        patch = self.config["input_patch_size"]
        if fbank.ndim != 3 or fbank.shape[1] % patch or fbank.shape[2] % patch:
            raise ValueError(
                f"BEATs takes fbank (batch, frames, mel_bins) with frames and bins multiples of {patch}, got "
                f"{tuple(fbank.shape)}."
            )
        patches = self.patch_embedding(fbank[:, None].to(self.patch_embedding.weight.dtype))
        patches = self.layer_norm(patches.flatten(2).transpose(1, 2))
        return self.encoder(self.post_extract_proj(patches))

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> "BeatsModel":
        """
        The backbone of an official BEATs checkpoint file (`torch.save({"cfg": ..., "model": state_dict})`), read
        with `weights_only=True`. A fine-tuned checkpoint's classifier (`predictor.*`) is left out; the copies of
        the shared position-bias table under every layer must equal the first layer's.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"BEATs checkpoint not found: {path}")
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
            config, state = checkpoint["cfg"], dict(checkpoint["model"])
        except Exception as error:  # unpickling, a missing key, or a file that is no checkpoint
            raise ValueError(f"{path} is not a BEATs checkpoint ({{'cfg', 'model'}}): {error}") from error
        try:
            model = cls(config)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from error
        shared = "encoder.layers.0.self_attn.relative_attention_bias.weight"
        for index in range(1, config["encoder_layers"]):
            copy = state.pop(f"encoder.layers.{index}.self_attn.relative_attention_bias.weight", None)
            if copy is not None and shared in state and not torch.equal(copy, state[shared]):
                raise ValueError(f"{path}: layer {index}'s position-bias table differs from the shared one.")
        state = {key: value for key, value in state.items() if not key.startswith("predictor.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{path} does not match the BEATs backbone: missing {missing}, unexpected {unexpected}.")
        return model.eval()


__all__ = ["FBANK_MEAN", "FBANK_STD", "BeatsModel", "kaldi_fbank", "relative_position_buckets"]
