"""IdentityNet (PortraitTalk §III-A): face-identity tokens and decoupled cross-attention for an SD1.5 UNet.

A face-recognition embedding (ArcFace 512-D, or dlib 128-D for IdentityNets trained on it) goes through a
projection layer to ``num_tokens`` tokens of the text-embedding width (768 for SD1.5), with a LayerNorm.
Every UNet cross-attention layer gets its own key/value projections for those face tokens, and its output
becomes (decoupled cross-attention, as in IP-Adapter)::

    Attn(Q, K_text, V_text) + scale · Attn(Q, K_face, V_face)

with the layer's own query Q. This module holds the weights and the maths only (pure torch, no ComfyUI);
``nodes/glue/identity_patch.py`` installs it on a ComfyUI MODEL as attn2 replace patches.

State-dict layout (shared with IP-Adapter-FaceID SD1.5, so ``ip-adapter-faceid_sd15`` and
``ip-adapter-faceid-plusv2_sd15`` weights load as they are):

* ``image_proj.proj.0.weight/bias`` ``[H, D]``, ``image_proj.proj.2.weight/bias`` ``[T·N, H]``,
  ``image_proj.norm.weight/bias`` ``[T]`` — the MLP projection (D = id dim, H hidden, T token width, N tokens);
* ``image_proj.perceiver_resampler.*`` — FaceID-Plus(v2) only: a perceiver resampler that refines the tokens
  with CLIP-vision features of the face crop (``[B, 257, C]`` penultimate hidden states, C = 1280 ViT-H);
* ``ip_adapter.<2i+1>.to_k_ip.weight`` / ``to_v_ip.weight`` ``[W_i, T]`` for the i-th cross-attention layer in
  IP-Adapter order: UNet input blocks, then output blocks, then the middle block (SD1.5: 16 layers);
* FaceID files also hold ``ip_adapter.*.to_*_lora.*`` weights of the LoRA that ships with them; they are
  listed in :attr:`IdentityNet.ignored_keys`, not used (load the separate FaceID LoRA with a LoRA loader).

Our own files are safetensors with that layout plus metadata ``{"format": FORMAT, "config": <json>}``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .attention import sdpa_attention
from .weights import check_state_dict, config_from_metadata, load_fp32, read_state_dict, save_module

FORMAT = "portraittalk-identitynet/1"
KINDS = ("faceid", "faceid_plus", "faceid_plusv2")
#: Widths of the 16 cross-attention layers of SD1.5 in IP-Adapter order (input 1,2,4,5,7,8; output 3..11;
#: middle).
SD15_LAYER_DIMS = [320, 320, 640, 640, 1280, 1280] + [1280] * 3 + [640] * 3 + [320] * 3 + [1280]
#: Embedding widths of the Face Embed backends.
EMBED_DIMS = {"insightface": 512, "dlib": 128}


class IdentityNetFormatError(ValueError):
    """A weights file that is not a usable SD1.5 IdentityNet / IP-Adapter-FaceID; the message says why."""


@dataclass
class IdentityNetConfig:
    """Architecture of an IdentityNet.

    ``kind``: ``faceid`` (MLP projection), ``faceid_plus`` (MLP + perceiver resampler over CLIP-vision
    features: the resampler output is the tokens) or ``faceid_plusv2`` (the same weights layout; tokens = MLP
    tokens + the resampler output, IP-Adapter's v2 "shortcut"). ``id_dim``: face embedding width D (512
    ArcFace, 128 dlib). ``hidden``: MLP
    hidden width. ``token_dim``: text-embedding width T (768 for SD1.5). ``num_tokens``: N. ``layer_dims``:
    output width of each cross-attention layer's face K/V, in IP-Adapter order. ``clip_dim`` /
    ``resampler_depth`` / ``resampler_dim_head`` / ``resampler_ff_mult``: the plusv2 resampler.
    ``embed_backend``: the Face Embed backend whose embeddings it was trained on.
    """

    kind: str = "faceid"
    id_dim: int = 512
    hidden: int = 1024
    token_dim: int = 768
    num_tokens: int = 4
    layer_dims: list[int] = field(default_factory=lambda: list(SD15_LAYER_DIMS))
    clip_dim: int = 1280
    resampler_depth: int = 4
    resampler_dim_head: int = 64
    resampler_ff_mult: int = 4
    embed_backend: str = "insightface"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise IdentityNetFormatError(f"unknown IdentityNet kind {self.kind!r}; expected one of {KINDS}")
        self.layer_dims = [int(d) for d in self.layer_dims]


# ------------------------------------------------------------------------------------------------ projection
class FaceIdProjection(nn.Module):
    """IP-Adapter-FaceID MLP projection: embedding ``[B, D]`` → tokens ``[B, N, T]`` (Linear–GELU–Linear, then
    LayerNorm over T). Keys ``proj.0``, ``proj.2``, ``norm``."""

    def __init__(self, id_dim: int, hidden: int, token_dim: int, num_tokens: int):
        super().__init__()
        self.token_dim, self.num_tokens = token_dim, num_tokens
        self.proj = nn.Sequential(nn.Linear(id_dim, hidden), nn.GELU(), nn.Linear(hidden, token_dim * num_tokens))
        self.norm = nn.LayerNorm(token_dim)

    def forward(self, id_embeds: torch.Tensor) -> torch.Tensor:
        x = self.proj(id_embeds).reshape(-1, self.num_tokens, self.token_dim)
        return self.norm(x)


class _PerceiverAttention(nn.Module):
    """Latents attend to [features; latents] (keys ``norm1``, ``norm2``, ``to_q``, ``to_kv``, ``to_out``)."""

    def __init__(self, dim: int, dim_head: int, heads: int):
        super().__init__()
        inner = dim_head * heads
        self.heads, self.dim_head = heads, dim_head
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        x, latents = self.norm1(x), self.norm2(latents)
        b, n, _ = latents.shape
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat((x, latents), dim=-2)).chunk(2, dim=-1)
        q, k, v = (t.reshape(b, -1, self.heads, self.dim_head).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class _FeedForward(nn.Sequential):
    """LayerNorm–Linear–GELU–Linear without biases (keys ``0``, ``1``, ``3``)."""

    def __init__(self, dim: int, mult: int):
        inner = int(dim * mult)
        super().__init__(nn.LayerNorm(dim), nn.Linear(dim, inner, bias=False), nn.GELU(),
                         nn.Linear(inner, dim, bias=False))


class FacePerceiverResampler(nn.Module):
    """The FaceID-Plus resampler: face tokens ``[B, N, T]`` refined by CLIP-vision features ``[B, L, C]``."""

    def __init__(self, dim: int, depth: int, dim_head: int, embedding_dim: int, ff_mult: int):
        super().__init__()
        self.proj_in = nn.Linear(embedding_dim, dim)
        self.proj_out = nn.Linear(dim, dim)
        self.norm_out = nn.LayerNorm(dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([_PerceiverAttention(dim, dim_head, dim // dim_head), _FeedForward(dim, ff_mult)])
            for _ in range(depth))

    def forward(self, latents: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        x = self.proj_in(x)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))


class FaceIdPlusProjection(FaceIdProjection):
    """IP-Adapter-FaceID-Plus projection: the perceiver output over CLIP-vision features of the face crop,
    refining the MLP tokens ``x``; with ``shortcut`` (PlusV2) the tokens are ``x + s_scale ×`` that output."""

    def __init__(self, cfg: IdentityNetConfig):
        super().__init__(cfg.id_dim, cfg.hidden, cfg.token_dim, cfg.num_tokens)
        self.shortcut = cfg.kind == "faceid_plusv2"
        self.perceiver_resampler = FacePerceiverResampler(cfg.token_dim, cfg.resampler_depth, cfg.resampler_dim_head,
                                                          cfg.clip_dim, cfg.resampler_ff_mult)

    def forward(self, id_embeds: torch.Tensor, clip_embeds: torch.Tensor | None = None,
                s_scale: float = 1.0) -> torch.Tensor:
        if clip_embeds is None:
            raise IdentityNetFormatError("this IdentityNet is FaceID-Plus: it needs CLIP-vision features of the "
                                         "face (connect a CLIP_VISION, ViT-H)")
        x = super().forward(id_embeds)
        out = self.perceiver_resampler(x, clip_embeds.to(x))
        return x + s_scale * out if self.shortcut else out


class _FaceKV(nn.Module):
    """One cross-attention layer's face key/value projections (``to_k_ip``, ``to_v_ip``: T → W, no bias)."""

    def __init__(self, token_dim: int, dim: int):
        super().__init__()
        self.to_k_ip = nn.Linear(token_dim, dim, bias=False)
        self.to_v_ip = nn.Linear(token_dim, dim, bias=False)


class IdentityNet(nn.Module):
    """Projection (``image_proj``) + per-layer face K/V (``ip_adapter``); see the module docstring for keys.

    ``ignored_keys``: keys of the loaded file that are not part of the architecture (FaceID LoRA weights).
    ``source``: where it was loaded from (file name) — for messages.
    """

    def __init__(self, cfg: IdentityNetConfig):
        super().__init__()
        self.config = cfg
        self.image_proj = FaceIdPlusProjection(cfg) if cfg.kind != "faceid" else FaceIdProjection(
            cfg.id_dim, cfg.hidden, cfg.token_dim, cfg.num_tokens)
        self.ip_adapter = nn.ModuleDict({str(2 * i + 1): _FaceKV(cfg.token_dim, d) for i, d in enumerate(cfg.layer_dims)})
        self.ignored_keys: list[str] = []
        self.source = "<new>"

    @property
    def needs_clip_vision(self) -> bool:
        return self.config.kind != "faceid"

    def layer(self, i: int) -> _FaceKV:
        """Face K/V of the i-th cross-attention layer (IP-Adapter order)."""
        return self.ip_adapter[str(2 * i + 1)]

    def face_tokens(self, id_embeds: torch.Tensor, clip_embeds: torch.Tensor | None = None,
                    s_scale: float = 1.0) -> torch.Tensor:
        """Face tokens ``[B, N, T]`` (float, on the weights' device) of embeddings ``[B, D]`` or ``[D]``.

        Raises :class:`IdentityNetFormatError` when D differs from the projection's input width (e.g. a 128-D
        dlib embedding given to a 512-D ArcFace projection) or when a PlusV2 net gets no CLIP features.
        """
        check_embedding(self, int(id_embeds.shape[-1]))
        p = next(self.parameters())
        x = id_embeds.reshape(-1, id_embeds.shape[-1]).to(device=p.device, dtype=p.dtype)
        if self.needs_clip_vision:
            return self.image_proj(x, clip_embeds, s_scale)
        return self.image_proj(x)

    def check_layers(self, layer_dims: list[int], token_dim: int = 768) -> None:
        """Raise :class:`IdentityNetFormatError` unless this net fits a UNet whose cross-attention layers (in
        IP-Adapter order) have widths ``layer_dims`` and whose text tokens are ``token_dim`` wide."""
        cfg = self.config
        if token_dim != cfg.token_dim:
            raise IdentityNetFormatError(
                f"{self.source}: made for cross-attention context width {cfg.token_dim}, the model's is {token_dim}"
                f" ({_arch_name(cfg.token_dim)} vs {_arch_name(token_dim)})")
        if list(layer_dims) != cfg.layer_dims:
            raise IdentityNetFormatError(
                f"{self.source}: {len(cfg.layer_dims)} cross-attention layers of widths {_dims_text(cfg.layer_dims)}"
                f", but the model has {len(layer_dims)} of widths {_dims_text(layer_dims)} — an IdentityNet for a "
                "different UNet")


def _dims_text(dims: list[int]) -> str:
    return "[" + ", ".join(map(str, dims)) + "]"


def _arch_name(token_dim: int) -> str:
    return {768: "SD1.5", 1024: "SD2", 2048: "SDXL"}.get(token_dim, f"{token_dim}-wide")


def check_embedding(net: IdentityNet, dim: int) -> None:
    """Raise :class:`IdentityNetFormatError` when a ``dim``-D face embedding does not fit ``net``'s projection."""
    want = net.config.id_dim
    if dim == want:
        return
    names = {v: k for k, v in EMBED_DIMS.items()}
    got_name, want_name = names.get(dim, f"{dim}-D"), names.get(want, f"{want}-D")
    raise IdentityNetFormatError(
        f"a {dim}-D ({got_name}) face embedding cannot feed {net.source}, whose projection takes {want}-D "
        f"({want_name}) embeddings: set Face Embed's backend to {want_name}" +
        (" or train an IdentityNet on dlib embeddings" if dim == 128 else ""))


# ------------------------------------------------------------------------------------------- attention maths
def add_face_attention(out: torch.Tensor, q: torch.Tensor, k_face: torch.Tensor, v_face: torch.Tensor, heads: int,
                       scale: torch.Tensor | float, attention: Callable[..., torch.Tensor] | None = None,
                       rows: torch.Tensor | None = None) -> torch.Tensor:
    """The face term of decoupled cross-attention (paper §III-A, IP-Adapter)
    ``Attn(Q, K, V) + scale · Attn(Q, K_face, V_face)``, added to an already computed text term ``out =
    Attn(Q, K, V)`` ``[B, Lq, H·d]``: returns ``out + scale · Attn(Q, K_face, V_face)`` on the batch rows
    ``rows`` (int index ``[R]``; all rows when None) — the other rows keep only the text term.

    ``q`` ``[B, Lq, H·d]``; ``k_face``/``v_face`` ``[R, N, H·d]`` (cast to ``q``'s dtype). ``scale``: float or
    ``[R]``. ``attention(q, k, v, heads)`` → ``[B, Lq, H·d]`` (default:
    :func:`~ptalk_models.attention.sdpa_attention`, PyTorch SDPA with ``heads`` heads).
    """
    attention = attention or sdpa_attention
    qf = q if rows is None else q.index_select(0, rows)
    face = attention(qf, k_face.to(q.dtype), v_face.to(q.dtype), heads)
    face = face * (scale.to(face).reshape(-1, 1, 1) if torch.is_tensor(scale) else scale)
    if rows is None:
        return out + face
    return out.index_add(0, rows, face.to(out.dtype))


# ------------------------------------------------------------------------------------------------ file I/O
def infer_config(sd: dict[str, torch.Tensor], name: str = "weights") -> IdentityNetConfig:
    """The :class:`IdentityNetConfig` implied by an IP-Adapter-FaceID-layout state dict (key names and shapes).

    Raises :class:`IdentityNetFormatError` naming what is wrong: a CLIP-image IP-Adapter (not FaceID), an
    SDXL/SD2 adapter, missing or inconsistent keys.
    """
    keys = set(sd)
    if "image_proj.proj.0.weight" not in keys or "image_proj.proj.2.weight" not in keys:
        if any(k.startswith("image_proj.") for k in keys) or "image_proj.latents" in keys:
            raise IdentityNetFormatError(
                f"{name} is a CLIP-image IP-Adapter (image_proj has no face-ID MLP proj.0/proj.2), not "
                "IP-Adapter-FaceID: IdentityNet needs a face-ID adapter such as ip-adapter-faceid_sd15")
        if any(k.startswith(("model.diffusion_model.", "input_blocks.", "down_blocks.")) for k in keys):
            raise IdentityNetFormatError(f"{name} is a UNet/checkpoint, not an IdentityNet: load it with Load "
                                         "Checkpoint")
        raise IdentityNetFormatError(f"{name} has no IdentityNet/IP-Adapter-FaceID keys (image_proj.proj.*, "
                                     "ip_adapter.*.to_k_ip.weight)")
    p0, p2 = sd["image_proj.proj.0.weight"], sd["image_proj.proj.2.weight"]
    norm = sd.get("image_proj.norm.weight")
    if norm is None or p0.ndim != 2 or p2.ndim != 2:
        raise IdentityNetFormatError(f"{name}: image_proj.norm.weight is missing or proj weights are not matrices")
    token_dim = int(norm.shape[0])
    if token_dim != 768:
        raise IdentityNetFormatError(
            f"{name} is an {_arch_name(token_dim)} adapter (cross-attention width {token_dim}); IdentityNet needs "
            "an SD1.5 one (width 768) for an SD1.5 checkpoint")
    if p2.shape[1] != p0.shape[0] or p2.shape[0] % token_dim:
        raise IdentityNetFormatError(f"{name}: inconsistent projection shapes {tuple(p0.shape)}, {tuple(p2.shape)}")
    kind = "faceid"
    if any(k.startswith("image_proj.perceiver_resampler.") for k in keys):
        # Plus and PlusV2 share one layout; only their forward differs (v2 adds the MLP tokens back). As in
        # IPAdapter_plus, the file name tells them apart ("…plusv2…"/"…v2…").
        kind = "faceid_plusv2" if "v2" in name.lower() else "faceid_plus"
    idx = sorted({int(k.split(".")[1]) for k in keys if k.startswith("ip_adapter.") and k.endswith(".to_k_ip.weight")})
    if not idx:
        raise IdentityNetFormatError(f"{name} has a projection but no ip_adapter.*.to_k_ip.weight layers")
    if idx != [2 * i + 1 for i in range(len(idx))]:
        raise IdentityNetFormatError(f"{name}: face K/V layers are numbered {idx}, expected 1, 3, 5, …")
    dims = []
    for i in idx:
        k, v = sd[f"ip_adapter.{i}.to_k_ip.weight"], sd.get(f"ip_adapter.{i}.to_v_ip.weight")
        if v is None or tuple(v.shape) != tuple(k.shape) or k.shape[1] != token_dim:
            raise IdentityNetFormatError(f"{name}: layer {i} face K/V shapes {tuple(k.shape)} / "
                                         f"{None if v is None else tuple(v.shape)} do not match (T={token_dim})")
        dims.append(int(k.shape[0]))
    cfg = dict(kind=kind, id_dim=int(p0.shape[1]), hidden=int(p0.shape[0]), token_dim=token_dim,
               num_tokens=int(p2.shape[0]) // token_dim, layer_dims=dims,
               embed_backend="dlib" if p0.shape[1] == 128 else "insightface")
    if kind != "faceid":
        pin = sd.get("image_proj.perceiver_resampler.proj_in.weight")
        if pin is None:
            raise IdentityNetFormatError(f"{name}: perceiver_resampler.proj_in.weight is missing")
        depth = len({k.split(".")[3] for k in keys if k.startswith("image_proj.perceiver_resampler.layers.")})
        ff = sd.get("image_proj.perceiver_resampler.layers.0.1.1.weight")
        cfg.update(clip_dim=int(pin.shape[1]), resampler_depth=depth,
                   resampler_ff_mult=int(ff.shape[0]) // token_dim if ff is not None else 4)
    return IdentityNetConfig(**cfg)


def identitynet_from_state_dict(sd: dict[str, torch.Tensor], config: IdentityNetConfig | None = None,
                                name: str = "weights") -> IdentityNet:
    """Build an :class:`IdentityNet` (fp32, CPU) from a flat state dict; ``config`` inferred when None.

    Raises :class:`IdentityNetFormatError` for missing keys or wrong shapes (naming the first few).
    """
    cfg = config or infer_config(sd, name)
    net = IdentityNet(cfg)
    own = net.state_dict()
    check_state_dict(own, sd, name, IdentityNetFormatError, "of another architecture")
    load_fp32(net, sd)
    net.ignored_keys = sorted(k for k in sd if k not in own)
    net.source = name
    return net.eval().requires_grad_(False)


def load_identitynet(path: str | os.PathLike) -> IdentityNet:
    """Load an IdentityNet from our safetensors format or an IP-Adapter-FaceID SD1.5 file (``.bin`` through
    ``torch.load(weights_only=True)``, or ``.safetensors``; IP-Adapter's nested ``{"image_proj": …,
    "ip_adapter": …}`` pickle is flattened to ``image_proj.*`` / ``ip_adapter.*``). Returns an fp32 CPU module in
    eval mode with ``requires_grad`` off. Raises :class:`IdentityNetFormatError` for a missing, truncated or
    corrupt file or a pickle that is not plain tensors (:func:`ptalk_models.weights.read_state_dict`), and see
    :func:`infer_config`."""
    name = os.path.basename(os.fspath(path))
    sd, meta = read_state_dict(path, IdentityNetFormatError, "put the weights in ComfyUI/models/portraittalk or "
                                                             "ComfyUI/models/ipadapter")
    cfg = None
    if meta.get("format") == FORMAT:
        cfg = config_from_metadata(meta, IdentityNetConfig, name, IdentityNetFormatError, "IdentityNet")
        if cfg.token_dim != 768:
            raise IdentityNetFormatError(f"{name} is an {_arch_name(cfg.token_dim)} IdentityNet (cross-attention width "
                                         f"{cfg.token_dim}); it needs an SD1.5 one (768) for an SD1.5 checkpoint")
    return identitynet_from_state_dict(sd, cfg, name)


def save_identitynet(net: IdentityNet, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """Write ``net`` as safetensors (IP-Adapter-FaceID key layout, fp32) with ``{"format", "config"}`` metadata
    (+ ``metadata``), atomically (temp file + rename)."""
    save_module(net, path, FORMAT, metadata)


def new_identitynet(config: IdentityNetConfig, seed: int = 0,
                    text_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> IdentityNet:
    """A freshly initialised, trainable IdentityNet: PyTorch's default init under ``torch.manual_seed(seed)``.

    ``text_kv``: the UNet's own text ``(to_k.weight, to_v.weight)`` ``[W_i, T]`` per cross-attention layer (IP-Adapter
    order); when given, each face K/V starts as a copy of them (IP-Adapter's initialisation), so face tokens
    are read like text tokens from step 0. Raises :class:`IdentityNetFormatError` when their shapes do not fit.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        net = IdentityNet(config)
    if text_kv is not None:
        if len(text_kv) != len(config.layer_dims):
            raise IdentityNetFormatError(f"text_kv has {len(text_kv)} layers, the config {len(config.layer_dims)}")
        with torch.no_grad():
            for i, (wk, wv) in enumerate(text_kv):
                layer = net.layer(i)
                if tuple(wk.shape) != tuple(layer.to_k_ip.weight.shape) or tuple(wv.shape) != tuple(wk.shape):
                    raise IdentityNetFormatError(f"layer {i}: text K/V {tuple(wk.shape)} ≠ face K/V "
                                                 f"{tuple(layer.to_k_ip.weight.shape)}")
                layer.to_k_ip.weight.copy_(wk.float())
                layer.to_v_ip.weight.copy_(wv.float())
    net.source = "<new>"
    return net
