"""AnimateNet (PortraitTalk §III-B): the motion → frame branch, a ControlNet-like copy of the SD1.5 UNet encoder
whose cross-attention is the paper's three-way attention (Eq. 2).

Architecture
------------
A trainable copy of the base UNet's time embedding, input blocks and middle block, in the exact LDM key layout
(``time_embed.{0,2}``, ``input_blocks.<i>.<j>.*``, ``middle_block.{0,1,2}.*``), so it is initialised, like a
ControlNet, by copying those tensors of the base UNet (:meth:`AnimateNet.init_from_unet`). The ResBlocks,
downsamplers and SpatialTransformers reproduce the LDM SD1.5 maths (conv ``proj_in``/``proj_out``, GEGLU
feed-forward, LayerNorms, GroupNorm(32, eps 1e-6) before the transformer, GroupNorm(32) in ResBlocks,
``num_heads`` heads of width C / num_heads, sinusoidal timestep embedding cos-first). The one change: every
transformer block's ``attn2`` (text cross-attention in the UNet) is a :class:`ThreeWayAttention`::

    out = to_out( w1·Attn(Q, K_s, V_s) + w2·Attn(Q, K_i, V_i) + w3·Attn(Q, K_t, V_t) ),   Q = to_q(x)

with separate key/value projections of three condition token sets — Structure (this frame's drawn landmarks),
Identity (the head-contour guide), Temporal (the previous generated frame) — and learnable scalars w1..w3
(``weights``, one ``[3]`` vector per layer, initialised to (1, 1, 0): the temporal term starts switched off, like a
zero conv, so a stage-1 net — trained without temporal tokens — ignores them at inference too, and stage 2 learns
w3 from 0). ``to_q`` and ``to_out.0`` keep their LDM names
and are copied from the UNet's ``attn2``; the UNet's text ``attn2.to_k``/``to_v`` (``[C, 768]``) have no
counterpart and are skipped. Without temporal tokens (training stage 1, "without temporal attention") the w3
term is left out entirely.

Every input block's output and the middle block's output leave through a zero-initialised 1x1 conv, exactly as
in ComfyUI's ``comfy/cldm/cldm.py`` ControlNet (``zero_convs.<i>.0``, ``middle_block_out.0``), and
:meth:`AnimateNet.forward` returns ComfyUI's control format ``{"output": [r_0, r_1, …], "middle": [r_mid]}``:
``r_i`` has the shape of the UNet's i-th input-block output (its i-th skip connection ``hs[i]``); the UNet adds
``control["output"].pop()`` (the last entry first) to each skip connection it pops, and ``control["middle"]``
after its middle block. An untrained branch returns exact zeros, so the base UNet is unchanged at step 0.

Condition tokens (design choices of this implementation; the paper leaves them open)
-----------------------------------------------------------------------------------
Each condition goes through its own :class:`ConditionEncoder`: a shallow conv stack (3x3 convs + SiLU, stride-2
downsamplings, like ControlNet's ``input_hint_block``) → adaptive average pooling to a ``token_grid`` ×
``token_grid`` grid → flattened to ``G²`` tokens → + a learned 2-D position embedding → LayerNorm →
``[B, G², cond_dim]``. Pooling to a fixed grid makes the token count independent of the image size (256 tokens
per condition at the defaults, G = 16, whatever the resolution), so the attention cost stays ``O(L·G²)``.

* Structure: the Draw Landmarks image of the frame, RGB float ``[B, 3, H, W]`` in [0, 1] (H, W = image size =
  8 × latent size; any size works, the pooling fixes the grid) → ``structure_encoder`` (three stride-2
  downsamplings: 512 px → 64 → pooled to 16 × 16).
* Identity: the Contour Guide edge map, same format → ``identity_encoder`` (same design, own weights).
* Temporal: the previous generated frame's latent ``[B, 4, H/8, W/8]``, already scaled by the model's latent
  format (``latent_format.process_in``, ×0.18215 for SD1.5 — what the sampler holds) → ``temporal_encoder`` (one
  stride-2 downsampling). Using the latent rather than pixels means a sampler needs no VAE decode per step.

Images are mapped from [0, 1] to [-1, 1] inside the encoder. The tokens of a frame do not depend on the noise
level: :meth:`AnimateNet.encode_conditions` computes them once per frame and ``forward(…, tokens=…)`` reuses
them at every denoising step.

File format: safetensors with this module's state-dict keys (fp32) and metadata
``{"format": FORMAT, "config": <json of AnimateNetConfig>}`` (:func:`save_animatenet` / :func:`load_animatenet`).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from .attention import sdpa_attention
from .weights import check_state_dict, config_from_metadata, load_fp32, read_safetensors, save_module

FORMAT = "portraittalk-animatenet/1"
CONDITIONS = ("structure", "identity", "temporal")
#: Where the tensors copied from the base UNet live (LDM layout, no ``model.diffusion_model.`` prefix).
UNET_PREFIXES = ("time_embed.", "input_blocks.", "middle_block.")
UNET_KEY_PREFIX = "model.diffusion_model."
#: Channel widths of the image condition encoders' conv stages (each after the first starts with a stride-2
#: conv; the final conv to ``cond_dim`` is the third stride-2 one) and of the temporal (latent) encoder.
IMAGE_ENCODER_WIDTHS = (32, 64, 128)
LATENT_ENCODER_WIDTHS = (128,)


class AnimateNetFormatError(ValueError):
    """An AnimateNet file, config or input that does not fit; the message says why and what to do."""


# ------------------------------------------------------------------------------------------------------ config
@dataclass
class AnimateNetConfig:
    """Architecture of an AnimateNet (the copied UNet encoder + the condition encoders).

    ``in_channels``: latent channels (4). ``model_channels``: base width C (320 for SD1.5). ``channel_mult``:
    width multiplier per level. ``num_res_blocks``: ResBlocks per level. ``transformer_depth``: transformer
    blocks after each ResBlock of a level (per LEVEL; ComfyUI's unet_config lists it per input ResBlock, see
    :meth:`from_unet_config`). ``transformer_depth_middle``: transformer blocks in the middle block.
    ``num_heads``: attention heads (head width = level width / num_heads). ``context_dim``: the base UNet's text
    width (768), recorded to check the UNet's ``attn2.to_k`` shapes; not used by the branch. ``cond_dim``: width
    D of the condition tokens. ``token_grid``: G (G² tokens per condition). ``use_temporal``: whether the branch
    has the temporal encoder and temporal K/V (stage 2 of training); without it ``temporal`` must be None.
    """

    in_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple = (1, 2, 4, 4)
    num_res_blocks: tuple = (2, 2, 2, 2)
    transformer_depth: tuple = (1, 1, 1, 0)
    transformer_depth_middle: int = 1
    num_heads: int = 8
    context_dim: int = 768
    cond_dim: int = 256
    token_grid: int = 16
    use_temporal: bool = True

    def __post_init__(self):
        self.channel_mult = tuple(int(m) for m in self.channel_mult)
        levels = len(self.channel_mult)
        if isinstance(self.num_res_blocks, int):
            self.num_res_blocks = (self.num_res_blocks,) * levels
        if isinstance(self.transformer_depth, int):
            self.transformer_depth = (self.transformer_depth,) * levels
        self.num_res_blocks = tuple(int(n) for n in self.num_res_blocks)
        self.transformer_depth = tuple(int(d) for d in self.transformer_depth)
        for name in ("in_channels", "model_channels", "transformer_depth_middle", "num_heads", "context_dim",
                     "cond_dim", "token_grid"):
            setattr(self, name, int(getattr(self, name)))
        self.use_temporal = bool(self.use_temporal)
        if not levels or len(self.num_res_blocks) != levels or len(self.transformer_depth) != levels:
            raise AnimateNetFormatError(
                f"AnimateNetConfig: channel_mult {list(self.channel_mult)}, num_res_blocks "
                f"{list(self.num_res_blocks)} and transformer_depth {list(self.transformer_depth)} must have one "
                "entry per level")
        if min(self.channel_mult) < 1 or min(self.num_res_blocks) < 1 or min(self.transformer_depth) < 0:
            raise AnimateNetFormatError("AnimateNetConfig: channel_mult and num_res_blocks must be ≥ 1, "
                                        "transformer_depth ≥ 0")
        for m in self.channel_mult:
            c = m * self.model_channels
            if c % 32 or c % self.num_heads:
                raise AnimateNetFormatError(f"AnimateNetConfig: width {c} must be a multiple of 32 (GroupNorm) and "
                                            f"of num_heads {self.num_heads}")
        if self.in_channels < 1 or self.cond_dim < 1 or self.token_grid < 1 or self.transformer_depth_middle < 0:
            raise AnimateNetFormatError("AnimateNetConfig: in_channels, cond_dim and token_grid must be ≥ 1, "
                                        "transformer_depth_middle ≥ 0")

    @classmethod
    def from_unet_config(cls, unet_config: dict, **overrides) -> "AnimateNetConfig":
        """The config of an AnimateNet for the UNet that ComfyUI built from ``unet_config`` (its
        ``model.model_config.unet_config`` dict: ``transformer_depth`` per input ResBlock, ``num_res_blocks`` /
        ``channel_mult`` per level, …), with ``overrides`` (e.g. ``cond_dim``, ``token_grid``, ``use_temporal``).

        Raises :class:`AnimateNetFormatError` for UNets this branch does not reproduce (linear transformer
        projections as in SD2/SDXL, per-head-width attention, video/temporal layers, a class/ADM embedding, a
        transformer depth that varies inside a level).
        """
        u = dict(unet_config)
        problems = []
        if u.get("use_linear_in_transformer"):
            problems.append("linear proj_in/proj_out (use_linear_in_transformer; SD2/SDXL)")
        if u.get("num_head_channels", -1) not in (-1, None):
            problems.append(f"fixed head width num_head_channels={u['num_head_channels']}")
        if u.get("use_temporal_resblock") or u.get("use_temporal_attention"):
            problems.append("video/temporal UNet layers")
        if u.get("adm_in_channels") is not None or u.get("num_classes") is not None:
            problems.append("a class/ADM embedding (SDXL-style label_emb)")
        if u.get("use_scale_shift_norm") or u.get("resblock_updown"):
            problems.append("scale-shift ResBlocks or ResBlock up/downsampling")
        if u.get("use_spatial_transformer") is False:
            problems.append("no spatial transformers")
        if problems:
            raise AnimateNetFormatError("AnimateNet reproduces SD1.5-style UNets only; this UNet has "
                                        + ", ".join(problems))
        try:
            mult = [int(m) for m in u["channel_mult"]]
            nrb = u["num_res_blocks"]
            nrb = [int(nrb)] * len(mult) if isinstance(nrb, int) else [int(n) for n in nrb]
            td = u.get("transformer_depth", 1)
            td = [int(td)] * sum(nrb) if isinstance(td, int) else [int(d) for d in td]
            model_channels, num_heads = int(u["model_channels"]), int(u["num_heads"])
        except (KeyError, TypeError, ValueError) as e:
            raise AnimateNetFormatError(f"unet_config lacks or has an unreadable {e} entry") from None
        if len(td) != sum(nrb):
            raise AnimateNetFormatError(f"unet_config transformer_depth {td} has {len(td)} entries, expected one per "
                                        f"input ResBlock ({sum(nrb)})")
        per_level, i = [], 0
        for level, n in enumerate(nrb):
            depths = set(td[i:i + n])
            if len(depths) != 1:
                raise AnimateNetFormatError(f"unet_config: transformer depth varies inside level {level} "
                                            f"({td[i:i + n]}); AnimateNet needs one depth per level")
            per_level.append(depths.pop())
            i += n
        mid = u.get("transformer_depth_middle")
        mid = per_level[-1] if mid is None else int(mid)
        args = dict(in_channels=int(u.get("in_channels", 4)), model_channels=model_channels, channel_mult=tuple(mult),
                    num_res_blocks=tuple(nrb), transformer_depth=tuple(per_level), transformer_depth_middle=mid,
                    num_heads=num_heads, context_dim=int(u.get("context_dim") or 768))
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise AnimateNetFormatError(f"unknown AnimateNetConfig fields {sorted(unknown)}")
        args.update(overrides)
        return cls(**args)

    def architecture(self) -> dict:
        """The fields that must match the base UNet (everything but the condition-token settings)."""
        return {k: getattr(self, k) for k in ("in_channels", "model_channels", "channel_mult", "num_res_blocks",
                                              "transformer_depth", "transformer_depth_middle", "num_heads",
                                              "context_dim")}


# ------------------------------------------------------------------------------------------- LDM building blocks
def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """Sinusoidal timestep embedding ``[B, dim]`` float32 of timesteps ``[B]`` (DDPM units, may be fractional):
    ``[cos(t·f_k), sin(t·f_k)]`` (cos first) with ``f_k = max_period^(-k/half)``, as LDM /
    ``comfy/ldm/modules/diffusionmodules/util.py``; a zero column is appended for odd ``dim``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class GroupNorm32(nn.GroupNorm):
    """LDM's GroupNorm32: GroupNorm computed in float32 (input and affine parameters) and cast back to the input
    dtype, so a half-precision branch normalises like a float32 one."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps)
        return out.type(x.dtype)


class ResBlock(nn.Module):
    """LDM ResBlock (no up/down, no scale-shift): ``skip(x) + out_layers(in_layers(x) + emb_layers(emb))``.

    Keys ``in_layers.{0,2}``, ``emb_layers.1``, ``out_layers.{0,3}``, ``skip_connection`` (1x1 conv when the
    width changes). ``x`` ``[B, C_in, h, w]``, ``emb`` ``[B, E]`` → ``[B, C_out, h, w]``."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int | None = None):
        super().__init__()
        out_channels = out_channels or channels
        self.in_layers = nn.Sequential(GroupNorm32(32, channels), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(GroupNorm32(32, out_channels), nn.SiLU(), nn.Dropout(0.0),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).type(h.dtype)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class Downsample(nn.Module):
    """LDM Downsample with a conv: ``op`` = 3x3 conv, stride 2, padding 1."""

    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class SelfAttention(nn.Module):
    """LDM CrossAttention used as self-attention (``attn1``): ``to_q``/``to_k``/``to_v`` (no bias), ``to_out.0``."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_out(sdpa_attention(self.to_q(x), self.to_k(x), self.to_v(x), self.heads))


class ThreeWayAttention(nn.Module):
    """Three-way attention (paper Eq. 2), replacing a UNet block's text cross-attention ``attn2``.

    ``x`` ``[B, L, C]`` (the normed image tokens); ``tokens``: ``{"structure": [B, N, D], "identity": [B, N, D],
    "temporal": [B, N, D] or None/absent}`` → ``[B, L, C]``::

        to_out( w1·Attn(Q, K_s, V_s) + w2·Attn(Q, K_i, V_i) [+ w3·Attn(Q, K_t, V_t)] ),   Q = to_q(x)

    Keys: ``to_q`` ``[C, C]`` and ``to_out.0`` (weight ``[C, C]``, bias) — the LDM names, copied from the base
    UNet's ``attn2`` —, ``to_k_<cond>``/``to_v_<cond>`` ``[C, D]`` (no bias) for cond in structure, identity and
    (``use_temporal``) temporal, and ``weights`` ``[3]`` = (w1, w2, w3), initialised to (1, 1, 0). The w3 term is
    left out entirely when there are no temporal tokens (training stage 1). Heads: ``heads`` of width C/heads.
    """

    def __init__(self, dim: int, cond_dim: int, heads: int, use_temporal: bool = True):
        super().__init__()
        self.heads = heads
        self.conditions = CONDITIONS if use_temporal else CONDITIONS[:2]
        self.to_q = nn.Linear(dim, dim, bias=False)
        for cond in self.conditions:
            setattr(self, f"to_k_{cond}", nn.Linear(cond_dim, dim, bias=False))
            setattr(self, f"to_v_{cond}", nn.Linear(cond_dim, dim, bias=False))
        self.weights = nn.Parameter(torch.tensor([1.0, 1.0, 0.0]))
        self.to_out = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor, tokens: dict[str, torch.Tensor | None]) -> torch.Tensor:
        q = self.to_q(x)
        out = None
        for i, cond in enumerate(self.conditions):
            c = tokens.get(cond)
            if c is None:
                if cond == "temporal":
                    continue
                raise AnimateNetFormatError(f"ThreeWayAttention needs {cond} tokens")
            c = c.to(q.dtype)
            term = sdpa_attention(q, getattr(self, f"to_k_{cond}")(c), getattr(self, f"to_v_{cond}")(c),
                                  self.heads)
            term = self.weights[i].to(term.dtype) * term
            out = term if out is None else out + term
        return self.to_out(out)


class GEGLU(nn.Module):
    """``proj`` Linear(dim → 2·inner); ``a · gelu(gate)`` of its two halves."""

    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, gate = self.proj(x).chunk(2, dim=-1)
        return a * F.gelu(gate)


class FeedForward(nn.Module):
    """LDM gated feed-forward (``ff.net.0.proj``, ``ff.net.2``), inner width 4·dim."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """LDM BasicTransformerBlock with ``attn2`` = :class:`ThreeWayAttention`:
    ``x += attn1(norm1(x)); x += attn2(norm2(x), tokens); x += ff(norm3(x))``."""

    def __init__(self, dim: int, heads: int, cond_dim: int, use_temporal: bool):
        super().__init__()
        self.attn1 = SelfAttention(dim, heads)
        self.ff = FeedForward(dim)
        self.attn2 = ThreeWayAttention(dim, cond_dim, heads, use_temporal)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, tokens: dict) -> torch.Tensor:
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), tokens) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """LDM SpatialTransformer with conv projections (SD1.5): ``x + proj_out(blocks(proj_in(norm(x))))``, where
    ``norm`` is GroupNorm(32, eps 1e-6) and the blocks see ``[B, h·w, C]`` tokens."""

    def __init__(self, channels: int, heads: int, depth: int, cond_dim: int, use_temporal: bool):
        super().__init__()
        self.norm = nn.GroupNorm(32, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(channels, heads, cond_dim, use_temporal) for _ in range(depth))
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, tokens: dict) -> torch.Tensor:
        b, c, h, w = x.shape
        t = self.proj_in(self.norm(x)).movedim(1, 3).flatten(1, 2)
        for block in self.transformer_blocks:
            t = block(t, tokens)
        t = t.reshape(b, h, w, c).movedim(3, 1).contiguous()
        return self.proj_out(t) + x


class _Block(nn.ModuleList):
    """``TimestepEmbedSequential``: runs its layers in turn, giving ResBlocks ``emb`` and transformers tokens."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, tokens: dict) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, tokens)
            else:
                x = layer(x)
        return x


def _zero_conv(channels: int) -> nn.Sequential:
    """ControlNet's zero conv: ``Sequential(Conv2d(C, C, 1))`` with weight and bias zero (key ``…0.weight``)."""
    conv = nn.Conv2d(channels, channels, 1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return nn.Sequential(conv)


# -------------------------------------------------------------------------------------------- condition tokens
class ConditionEncoder(nn.Module):
    """Condition map ``[B, in_channels, H, W]`` → tokens ``[B, G², cond_dim]`` (float, the weights' dtype).

    ``net``: 3x3 convs with SiLU — ``conv(in→w0), conv(w0→w0)``, then for each further width ``conv(→w, stride 2),
    conv(w→w)``, then a final ``conv(→cond_dim, stride 2)`` (so ``len(widths)`` stride-2 downsamplings) —;
    adaptive average pooling to G × G (G = ``token_grid``; up-samples by repetition when the map is smaller);
    row-major flattening; ``+ pos_emb`` (learned ``[1, G², cond_dim]``, normal std 0.02); ``norm`` (LayerNorm).
    ``image=True``: inputs are images in [0, 1], mapped to [-1, 1] first; latents go in as they are.
    """

    def __init__(self, in_channels: int, cond_dim: int, token_grid: int, widths: tuple = IMAGE_ENCODER_WIDTHS,
                 image: bool = True):
        super().__init__()
        self.in_channels, self.token_grid, self.image = in_channels, token_grid, image
        layers, prev = [], in_channels
        for i, w in enumerate(widths):
            layers += [nn.Conv2d(prev, w, 3, padding=1, stride=1 if i == 0 else 2), nn.SiLU(),
                       nn.Conv2d(w, w, 3, padding=1), nn.SiLU()]
            prev = w
        layers.append(nn.Conv2d(prev, cond_dim, 3, padding=1, stride=2))
        self.net = nn.Sequential(*layers)
        self.pos_emb = nn.Parameter(torch.randn(1, token_grid * token_grid, cond_dim) * 0.02)
        self.norm = nn.LayerNorm(cond_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.image:
            x = x * 2.0 - 1.0
        h = F.adaptive_avg_pool2d(self.net(x), self.token_grid)
        return self.norm(h.flatten(2).transpose(1, 2) + self.pos_emb.to(h.dtype))


# ----------------------------------------------------------------------------------------------------- network
class AnimateNet(nn.Module):
    """The AnimateNet branch (see the module docstring for the maths, keys and control format).

    Attributes: ``config``; ``input_block_channels`` (width of each input block's output = of each
    ``forward()["output"]`` entry); ``input_block_strides`` (its downsampling factor vs the latent);
    ``source`` (file name it was loaded from, for messages).
    """

    def __init__(self, config: AnimateNetConfig):
        super().__init__()
        self.config = cfg = config
        c0, emb_dim = cfg.model_channels, cfg.model_channels * 4
        tf = lambda ch, depth: SpatialTransformer(ch, cfg.num_heads, depth, cfg.cond_dim, cfg.use_temporal)  # noqa: E731
        self.time_embed = nn.Sequential(nn.Linear(c0, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.input_blocks = nn.ModuleList([_Block([nn.Conv2d(cfg.in_channels, c0, 3, padding=1)])])
        chans, strides, ch, ds = [c0], [1], c0, 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks[level]):
                layers = [ResBlock(ch, emb_dim, mult * c0)]
                ch = mult * c0
                if cfg.transformer_depth[level] > 0:
                    layers.append(tf(ch, cfg.transformer_depth[level]))
                self.input_blocks.append(_Block(layers))
                chans.append(ch)
                strides.append(ds)
            if level != len(cfg.channel_mult) - 1:
                self.input_blocks.append(_Block([Downsample(ch)]))
                ds *= 2
                chans.append(ch)
                strides.append(ds)
        mid = [ResBlock(ch, emb_dim)]
        if cfg.transformer_depth_middle > 0:
            mid += [tf(ch, cfg.transformer_depth_middle), ResBlock(ch, emb_dim)]
        self.middle_block = _Block(mid)
        self.zero_convs = nn.ModuleList(_zero_conv(c) for c in chans)
        self.middle_block_out = _zero_conv(ch)
        self.structure_encoder = ConditionEncoder(3, cfg.cond_dim, cfg.token_grid)
        self.identity_encoder = ConditionEncoder(3, cfg.cond_dim, cfg.token_grid)
        if cfg.use_temporal:
            self.temporal_encoder = ConditionEncoder(cfg.in_channels, cfg.cond_dim, cfg.token_grid,
                                                     LATENT_ENCODER_WIDTHS, image=False)
        self.input_block_channels, self.input_block_strides = chans, strides
        self.source = "<new>"

    # ------------------------------------------------------------------------------------------------ helpers
    @property
    def dtype(self) -> torch.dtype:
        return self.time_embed[0].weight.dtype

    @property
    def weight_device(self) -> torch.device:
        """Where the weights are. (Deliberately not ``device``: ComfyUI's ``ModelPatcher`` keeps its own plain
        ``device`` attribute on the modules it manages — the device it loaded them to — and sets it.)"""
        return self.time_embed[0].weight.device

    @property
    def has_temporal(self) -> bool:
        return self.config.use_temporal

    def three_way_layers(self) -> list[tuple[str, ThreeWayAttention]]:
        """``(module name, ThreeWayAttention)`` of every transformer block, in network order."""
        return [(n, m) for n, m in self.named_modules() if isinstance(m, ThreeWayAttention)]

    # ----------------------------------------------------------------------------------------------- tokens
    def _condition(self, name: str, x: torch.Tensor, channels: int) -> torch.Tensor:
        if not torch.is_tensor(x) or x.ndim != 4:
            raise AnimateNetFormatError(f"{name} must be a [B, {channels}, H, W] tensor, got "
                                        f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}")
        if x.shape[1] != channels:
            hint = (" (it looks like a ComfyUI IMAGE [B, H, W, C]: use .movedim(-1, 1))"
                    if x.shape[-1] == channels else "")
            raise AnimateNetFormatError(f"{name} must have {channels} channels in dim 1, got shape "
                                        f"{tuple(x.shape)}{hint}")
        return x.to(device=self.weight_device, dtype=self.dtype)

    def encode_conditions(self, structure: torch.Tensor, identity: torch.Tensor,
                          temporal: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Condition tokens ``{"structure", "identity"[, "temporal"]}``, each ``[B, G², cond_dim]`` (the weights'
        dtype and device) — independent of the noise level, so compute them once per frame and pass them to
        :meth:`forward` as ``tokens=`` at every denoising step.

        ``structure``: Draw Landmarks image ``[B, 3, H, W]`` float in [0, 1]; ``identity``: Contour Guide image,
        same format; ``temporal``: the previous frame's latent ``[B, 4, H/8, W/8]`` (scaled by the latent format)
        or None (no temporal term). Raises :class:`AnimateNetFormatError` for wrong shapes, or a temporal input
        to a net without temporal attention.
        """
        if structure is None or identity is None:
            raise AnimateNetFormatError("AnimateNet needs both a structure (Draw Landmarks) and an identity "
                                        "(Contour Guide) image")
        out = {"structure": self.structure_encoder(self._condition("structure", structure, 3)),
               "identity": self.identity_encoder(self._condition("identity", identity, 3))}
        if temporal is not None:
            if not self.has_temporal:
                raise AnimateNetFormatError(f"{self.source} has no temporal attention (a stage-1 AnimateNet, "
                                            "use_temporal False): give temporal=None")
            out["temporal"] = self.temporal_encoder(self._condition("temporal", temporal, self.config.in_channels))
        return out

    # ---------------------------------------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor, timesteps: torch.Tensor | float, structure: torch.Tensor | None = None,
                identity: torch.Tensor | None = None, temporal: torch.Tensor | None = None, *,
                tokens: dict[str, torch.Tensor] | None = None) -> dict[str, list[torch.Tensor]]:
        """Control residuals for the base UNet.

        ``x``: the noisy latent ``[B, 4, h, w]`` as the UNet sees it (``model_sampling.calculate_input`` applied);
        ``timesteps``: float ``[B]`` (or a scalar) in DDPM units 0..999; the conditions either as images
        (``structure``, ``identity``, ``temporal``; see :meth:`encode_conditions`) or as precomputed ``tokens``
        (the dict :meth:`encode_conditions` returns; ``"temporal"`` absent or None skips the w3 term) — not both.
        Token batches of 1 are broadcast to B.

        Returns ``{"output": [r_0 … r_{n-1}], "middle": [r_mid]}`` in ``x``'s dtype: ``r_i`` ``[B, C_i, h_i, w_i]``
        has the shape of the UNet's i-th input-block output (its i-th skip connection), ``r_mid`` that of its
        middle-block output — ComfyUI's control format (``apply_control`` pops entries from the end).
        """
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise AnimateNetFormatError(f"x must be a [B, {self.config.in_channels}, h, w] latent, got "
                                        f"{tuple(x.shape)}")
        if tokens is None:
            tokens = self.encode_conditions(structure, identity, temporal)
        elif structure is not None or identity is not None or temporal is not None:
            raise AnimateNetFormatError("give the conditions either as images or as tokens=, not both")
        tokens = self._batch_tokens(tokens, x.shape[0])
        out_dtype = x.dtype
        x = x.to(device=self.weight_device, dtype=self.dtype)
        t = torch.as_tensor(timesteps, device=x.device)
        t = t.reshape(1).expand(x.shape[0]) if t.ndim == 0 else t.reshape(-1)
        if t.shape[0] != x.shape[0]:
            raise AnimateNetFormatError(f"timesteps has {t.shape[0]} entries for a batch of {x.shape[0]}")
        emb = self.time_embed(timestep_embedding(t, self.config.model_channels).to(x.dtype))
        outputs, h = [], x
        for block, zero_conv in zip(self.input_blocks, self.zero_convs):
            h = block(h, emb, tokens)
            outputs.append(zero_conv(h).to(out_dtype))
        h = self.middle_block(h, emb, tokens)
        return {"output": outputs, "middle": [self.middle_block_out(h).to(out_dtype)]}

    def _batch_tokens(self, tokens: dict, batch: int) -> dict[str, torch.Tensor | None]:
        out = {}
        for name in CONDITIONS:
            t = tokens.get(name)
            if t is None:
                if name != "temporal":
                    raise AnimateNetFormatError(f"tokens lacks {name!r} (use encode_conditions)")
                out[name] = None
                continue
            if name == "temporal" and not self.has_temporal:
                raise AnimateNetFormatError(f"{self.source} has no temporal attention (use_temporal False): "
                                            "leave the temporal tokens out")
            want = (self.config.token_grid ** 2, self.config.cond_dim)
            if t.ndim != 3 or tuple(t.shape[1:]) != want:
                raise AnimateNetFormatError(f"{name} tokens must be [B, {want[0]}, {want[1]}], got {tuple(t.shape)}")
            if t.shape[0] not in (1, batch):
                raise AnimateNetFormatError(f"{name} tokens have batch {t.shape[0]}, the latent {batch}")
            out[name] = t.to(device=self.weight_device, dtype=self.dtype).expand(batch, -1, -1)
        return out

    # ------------------------------------------------------------------------------------------ initialisation
    def init_from_unet(self, unet_sd: dict[str, torch.Tensor]) -> dict:
        """Copy the base UNet's ``time_embed.*``, ``input_blocks.*`` and ``middle_block.*`` tensors (LDM layout;
        a ``model.diffusion_model.`` prefix is stripped) into this branch, as ControlNet is initialised.

        Every copied-layout tensor of the branch (all but the condition K/V projections and ``weights``) must be
        present with the same shape, and the UNet may have no tensors in those blocks beyond the branch's and
        its text ``attn2.to_k``/``to_v``; otherwise :class:`AnimateNetFormatError` (a UNet of another
        architecture). Returns ``{"copied": n, "skipped": [UNet keys not copied (text K/V)], "new": [branch
        keys under those blocks that keep their own init (condition K/V, weights)]}``.
        """
        sd = {}
        for k, v in unet_sd.items():
            k = k[len(UNET_KEY_PREFIX):] if k.startswith(UNET_KEY_PREFIX) else k
            if k.startswith(UNET_PREFIXES):
                sd[k] = v
        if not sd:
            raise AnimateNetFormatError("the state dict has no UNet tensors (time_embed.*, input_blocks.*, "
                                        "middle_block.*, optionally prefixed model.diffusion_model.)")
        own = {k: v for k, v in self.state_dict().items() if k.startswith(UNET_PREFIXES)}
        new = [k for k in own if ".attn2." in k and not k.split(".attn2.")[1].startswith(("to_q.", "to_out."))]
        wanted = [k for k in own if k not in new]
        missing = [k for k in wanted if k not in sd]
        skipped = sorted(k for k in sd if k not in own and ".attn2.to_" in k and k.endswith((".to_k.weight",
                                                                                              ".to_v.weight")))
        extra = sorted(k for k in sd if k not in own and k not in skipped)
        arch = self._arch_text()
        if missing or extra:
            detail = []
            if missing:
                detail.append(f"{len(missing)} branch tensors missing from it (e.g. {', '.join(missing[:3])})")
            if extra:
                detail.append(f"{len(extra)} UNet tensors with no place in the branch (e.g. {', '.join(extra[:3])})")
            raise AnimateNetFormatError(f"the UNet does not fit this AnimateNet ({arch}): {'; '.join(detail)} — a "
                                        "UNet of another architecture; build the config with "
                                        "AnimateNetConfig.from_unet_config")
        bad = [f"{k} {tuple(sd[k].shape)} ≠ {tuple(own[k].shape)}" for k in wanted
               if tuple(sd[k].shape) != tuple(own[k].shape)]
        bad += [f"{k} {tuple(sd[k].shape)}: text width {sd[k].shape[-1]} ≠ context_dim {self.config.context_dim}"
                for k in skipped if sd[k].ndim != 2 or sd[k].shape[-1] != self.config.context_dim]
        if bad:
            raise AnimateNetFormatError(f"the UNet does not fit this AnimateNet ({arch}): wrong shapes: "
                                        f"{'; '.join(bad[:3])}")
        with torch.no_grad():
            params = dict(self.named_parameters())
            params.update(dict(self.named_buffers()))
            for k in wanted:
                params[k].copy_(sd[k].to(dtype=params[k].dtype, device=params[k].device))
        return {"copied": len(wanted), "skipped": skipped, "new": new}

    def _arch_text(self) -> str:
        c = self.config
        return (f"model_channels {c.model_channels}, channel_mult {list(c.channel_mult)}, num_res_blocks "
                f"{list(c.num_res_blocks)}, transformer_depth {list(c.transformer_depth)}, middle "
                f"{c.transformer_depth_middle}, {c.num_heads} heads")


# --------------------------------------------------------------------------------------------------- factories
def new_animatenet(config: AnimateNetConfig, seed: int = 0, unet_sd: dict[str, torch.Tensor] | None = None
                   ) -> AnimateNet:
    """A freshly initialised, trainable AnimateNet (fp32, CPU): PyTorch's default init under
    ``torch.manual_seed(seed)`` (the global RNG state is restored), zero convs zero, ``weights`` (1, 1, 0); with
    ``unet_sd`` (the base UNet's state dict, LDM layout, prefixed or not) the copied blocks start as the UNet's
    (:meth:`AnimateNet.init_from_unet`)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        net = AnimateNet(config)
    if unet_sd is not None:
        net.init_from_unet(unet_sd)
    return net


def check_compatible(net: AnimateNet, unet_config: dict) -> None:
    """Raise :class:`AnimateNetFormatError` naming the mismatch unless ``net`` was built for the UNet that
    ComfyUI builds from ``unet_config`` (``model.model_config.unet_config``)."""
    want = AnimateNetConfig.from_unet_config(unet_config).architecture()
    have = net.config.architecture()
    diff = [f"{k} {_fmt(have[k])} vs {_fmt(want[k])}" for k in have if have[k] != want[k]]
    if diff:
        raise AnimateNetFormatError(f"{net.source} is an AnimateNet for a different UNet: " + "; ".join(diff)
                                    + " (AnimateNet vs model)")


def _fmt(v) -> str:
    return str(list(v)) if isinstance(v, tuple) else str(v)


def _is_temporal(name: str) -> bool:
    return name.startswith("temporal_encoder.") or ".to_k_temporal." in name or ".to_v_temporal." in name


def trainable_parameters(net: AnimateNet, stage: int) -> list[nn.Parameter]:
    """The parameters trained in ``stage`` (paper §III-B training), with ``requires_grad`` set accordingly.

    Stage 1 ("without temporal attention", trained with ``temporal=None``): everything except the temporal
    encoder and the temporal K/V projections, which are frozen (``requires_grad`` False). The ``weights``
    vectors (w1, w2, w3) are included as whole tensors; w3 gets an exactly zero gradient in stage 1 (the term is
    skipped), so put ``weights`` in a parameter group without weight decay to keep w3 at its initial 0 (a stage-1
    net then ignores temporal tokens at inference).
    Stage 2: every parameter. Raises :class:`AnimateNetFormatError` for another stage, or stage 2 on a net
    without temporal attention.
    """
    if stage not in (1, 2):
        raise AnimateNetFormatError(f"training stage must be 1 or 2, not {stage!r}")
    if stage == 2 and not net.has_temporal:
        raise AnimateNetFormatError(f"{net.source} has no temporal attention (use_temporal False): stage 2 needs "
                                    "an AnimateNet built with use_temporal=True")
    out = []
    for name, p in net.named_parameters():
        train = stage == 2 or not _is_temporal(name)
        p.requires_grad_(train)
        if train:
            out.append(p)
    return out


# ----------------------------------------------------------------------------------------------------- file I/O
def save_animatenet(net: AnimateNet, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """Write ``net`` as safetensors (fp32 state dict) with ``{"format": FORMAT, "config": json}`` metadata
    (+ ``metadata``), atomically."""
    save_module(net, path, FORMAT, metadata)


def _read(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    return read_safetensors(path, AnimateNetFormatError, "AnimateNet files are .safetensors written by "
                                                         "save_animatenet — copy it again")


def _foreign_kind(keys: set[str], name: str) -> str | None:
    """A message for a known non-AnimateNet file, else None."""
    if any(k.startswith(("input_hint_block.", "control_model.", "control_add_embedding.")) for k in keys) or (
            any(k.startswith("zero_convs.") for k in keys) and not any(k.startswith("structure_encoder.")
                                                                        for k in keys)):
        return (f"{name} is a core ControlNet (input_hint_block / control_model.* keys), not an AnimateNet: use it "
                "in training-free mode with the core Load ControlNet + Apply ControlNet nodes")
    if any(k.startswith(("image_proj.", "ip_adapter.")) for k in keys):
        return (f"{name} is an IdentityNet / IP-Adapter (image_proj.* / ip_adapter.* keys), not an AnimateNet: load "
                "it with the IdentityNet Loader")
    if any(k.startswith((UNET_KEY_PREFIX, "output_blocks.", "down_blocks.")) for k in keys):
        return f"{name} is a UNet/checkpoint, not an AnimateNet: load it with Load Checkpoint"
    return None


def load_animatenet(path: str | os.PathLike) -> AnimateNet:
    """Load an AnimateNet written by :func:`save_animatenet`. Returns an fp32 CPU module in eval mode with
    ``requires_grad`` off (call :func:`trainable_parameters` to train it further).

    Raises :class:`AnimateNetFormatError` for: a missing, truncated or corrupt file; a core ControlNet,
    IdentityNet/IP-Adapter or checkpoint file (saying which loader to use); a file without our format metadata
    or of another format version; an unreadable config; missing keys or wrong shapes.
    """
    path = os.fspath(path)
    name = os.path.basename(path)
    sd, meta = _read(path)
    fmt = meta.get("format")
    if fmt != FORMAT:
        foreign = _foreign_kind(set(sd), name)
        if foreign:
            raise AnimateNetFormatError(foreign)
        if fmt and str(fmt).startswith(FORMAT.split("/")[0] + "/"):
            raise AnimateNetFormatError(f"{name} is AnimateNet format {fmt!r}; this version reads {FORMAT!r} — "
                                        "update ComfyUI-PortraitTalk")
        raise AnimateNetFormatError(f"{name} is not an AnimateNet file (metadata format {fmt!r}, expected "
                                    f"{FORMAT!r})")
    cfg = config_from_metadata(meta, AnimateNetConfig, name, AnimateNetFormatError, "AnimateNet")
    net = AnimateNet(cfg)
    check_state_dict(net.state_dict(), sd, name, AnimateNetFormatError, "does not match its config",
                     " for its config", allow_unexpected=False)
    load_fp32(net, sd)
    net.source = name
    return net.eval().requires_grad_(False)
