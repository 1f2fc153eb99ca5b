"""The SD1.5 checkpoint loaded for training (:class:`SD15`), cached per process (:func:`load_sd15`): the frozen
UNet, CLIP and VAE of a user's checkpoint as ComfyUI loads them, shared by the two trainers."""
from __future__ import annotations

from pathlib import Path

from .training_cli import TrainError


class SD15:
    """A ComfyUI SD1.5 checkpoint loaded for training: ``model`` (ModelPatcher), ``clip``, ``vae``, the frozen
    UNet ``diffusion_model`` on ``device`` (fp32 weights; bf16 autocast does the low-precision compute), and
    a cache of text contexts (caption → ``[77·k, 768]``)."""

    def __init__(self, path: Path, device):
        import comfy.sd
        import torch

        self.path, self.device = Path(path), torch.device(device)
        try:
            out = comfy.sd.load_checkpoint_guess_config(str(self.path), output_vae=True, output_clip=True,
                                                        model_options={"dtype": torch.float32})
        except RuntimeError as e:
            raise TrainError(f"--checkpoint {self.path.name}: ComfyUI could not load it as a model ({e})") from None
        self.model, self.clip, self.vae = out[:3]
        if self.model is None or self.clip is None or self.vae is None:
            raise TrainError(f"--checkpoint {self.path.name} lacks a UNet, text encoder or VAE; IdentityNet training "
                             "needs a full SD1.5 checkpoint")
        self.dm = self.model.model.diffusion_model
        self.dm.requires_grad_(False).eval()
        for m in (getattr(self.clip, "cond_stage_model", None), getattr(self.vae, "first_stage_model", None)):
            if m is not None:
                m.requires_grad_(False).eval()
        self._contexts: dict[str, "torch.Tensor"] = {}
        self._placed = False

    def text_context(self, caption: str):
        """Frozen CLIP tokens ``[L, 768]`` (float32, CPU) of a caption (ComfyUI's own tokenizer/encoder)."""
        import torch

        c = self._contexts.get(caption)
        if c is None:
            with torch.no_grad():
                c = self.clip.encode_from_tokens(self.clip.tokenize(caption))[0].float().cpu()
            self._contexts[caption] = c
        return c

    def place(self):
        """Free ComfyUI's loaded models (the text encoder) and put the frozen UNet on the training device."""
        import comfy.model_management as mm

        if not self._placed:
            mm.unload_all_models()
            mm.soft_empty_cache()
            self.dm.to(self.device)
            self._placed = True

    def encode(self, frames):
        """float32 ``[b, H, W, 3]`` in [0, 1] → scaled latents ``[b, 4, H/8, W/8]`` on the device (frozen VAE,
        then ``latent_format.process_in``)."""
        import torch

        with torch.no_grad():
            z = self.vae.encode(frames)
            return self.model.model.process_latent_in(z.to(self.device, torch.float32))

    def sigmas(self):
        """The model's own noise schedule (``model_sampling.sigmas``)."""
        return self.model.get_model_object("model_sampling").sigmas

    def text_kv(self, layers):
        """The UNet's text ``(to_k.weight, to_v.weight)`` of each cross-attention layer in ``layers`` (the
        order of ``cross_attention_layers``)."""
        out = []
        for (name, block_id, t), width, _ in layers:
            block = self.dm.middle_block if name == "middle" else getattr(self.dm, f"{name}_blocks")[block_id]
            tbs = [tb for m in block for tb in getattr(m, "transformer_blocks", ())]
            attn2 = tbs[t].attn2
            if attn2.to_k.out_features != width:
                raise TrainError(f"cross-attention layer {(name, block_id, t)}: width {attn2.to_k.out_features} "
                                 f"≠ {width}", code=1)
            out.append((attn2.to_k.weight.detach().float().cpu(), attn2.to_v.weight.detach().float().cpu()))
        return out


_LOADED: dict = {}


def load_sd15(path, device) -> SD15:
    """:class:`SD15` of ``path`` on ``device``, cached per (path, mtime, device) within the process (the
    frozen weights are never modified, so repeated runs in one process share them)."""
    p = Path(path).expanduser().resolve()
    if not p.is_file():
        raise TrainError(f"--checkpoint {path} does not exist")
    key = (str(p), p.stat().st_mtime_ns, str(device))
    sd = _LOADED.get(key)
    if sd is None:
        _LOADED.clear()
        sd = _LOADED[key] = SD15(p, device)
    return sd


def clear_cache() -> None:
    """Drop the cached :class:`SD15` (its ComfyUI ModelPatcher with it), e.g. before ComfyUI shuts down."""
    _LOADED.clear()
