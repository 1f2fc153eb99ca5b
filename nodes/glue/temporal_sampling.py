"""The Temporal Sampler's frame-window loop: a talking-face video generated window by window with ComfyUI's own
sampler, each window's AnimateNet tokens and temporal condition held by a :class:`TemporalWindow`, core
ControlNets optionally fed the same condition images.
"""
from __future__ import annotations

import torch

from .control import animatenet_control_class, with_control
from .patcher import load_module, module_patcher
from .progress import diffusion_model, interruptible


class TemporalWindow:
    """The conditions of one window of W consecutive frames, shared by the AnimateNet control and the sampler.

    ``tokens``: precomputed structure / identity tokens ``[W, G², D]`` (they do not change across steps).
    ``anchor``: latent ``[1, 4, h, w]`` (model space, i.e. after ``process_latent_in``) of the frame before the
    window — the reference for frame 0. ``estimates``: the current x0 estimates ``[W, 4, h, w]`` of the window's
    frames (model space), updated after every sampling step. Frame j's temporal condition is the latent of frame
    j − 1: the anchor for j = 0, else frame j − 1's estimate from the previous step (step-lagged; exact when
    W = 1), so frame t depends on frame t − 1 while W frames are denoised as one batch.
    """

    def __init__(self, tokens: dict, anchor: torch.Tensor, estimates: torch.Tensor):
        self.tokens, self.anchor, self.estimates = tokens, anchor, estimates

    def temporal_latents(self) -> torch.Tensor:
        est = self.estimates
        return torch.cat([self.anchor.to(est), est[:-1]], dim=0)


def _decode(vae, latents: torch.Tensor, chunk: int = 16) -> torch.Tensor:
    """VAE-decode ``[T, 4, h, w]`` latents in chunks → IMAGE ``[T, H, W, 3]`` float in [0, 1]; ComfyUI's
    interrupt is checked before each chunk."""
    import comfy.model_management as mm

    out = []
    for i in range(0, latents.shape[0], chunk):
        mm.throw_exception_if_processing_interrupted()
        out.append(vae.decode(latents[i:i + chunk])[..., :3])
    return torch.cat(out)


def temporal_sample(model, positive, negative, vae, frames: int, size_hw: tuple[int, int], reference: torch.Tensor,
                    conditions, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str,
                    denoise: float, window: int, animatenet=None, controlnets=(), strength: float = 1.0,
                    percent_range: tuple[float, float] = (0.0, 1.0), init_frames: torch.Tensor | None = None,
                    noise_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Frame-window generation of a talking-face video with ComfyUI's own sampler (paper §III-B).

    ``frames`` T frames of ``size_hw`` (H, W; multiples of 8), ``window`` frames denoised together per
    ``comfy.sample.sample`` call (VRAM is bounded by the window, not the video length). ``conditions``:
    an object with ``structure(start, stop)`` → float ``[W, 3, H, W]`` landmark drawings and
    ``identity(start, stop, previous_frame)`` → float ``[W, 3, H, W]`` contour guides, where
    ``previous_frame`` is the last generated IMAGE ``[1, H, W, 3]`` before the window (None for the first, and
    always None unless ``conditions.needs_previous_frame`` — then the last frame of each window is VAE-decoded).
    ``reference``: IMAGE ``[1, H, W, 3]`` (its latent is frame 0's temporal condition). ``animatenet``: an
    AnimateNet (three-way attention control) or None; ``controlnets``: ``[(CONTROL_NET, "structure" |
    "identity", strength)]`` — the training-free mode (core ControlNets fed with the same images). Frame t's
    initial noise comes from ``seed + t``; the result still depends on ``window`` (step-lagged temporal
    condition and one contour per window inside a window; ancestral samplers' per-step noise). ``init_frames``: IMAGE
    ``[T, H, W, 3]`` encoded as the starting latents (with ``denoise`` < 1). ``noise_mask``: float ``[T, 1, h, w]``
    in [0, 1] at pixel (H, W) or latent (H/8, W/8) size — ComfyUI resizes it bilinearly to the latent
    (``comfy.sampler_helpers.prepare_mask``) — with ``init_frames``: latents are denoised where it is 1, stay the
    encoded init frames where it is 0 and are blended between (core Set Latent Noise Mask / inpainting semantics).
    One progress bar over frames × steps with a live preview; ComfyUI's interrupt is checked after every
    sampling step and before every block of the UNet and the AnimateNet (:func:`progress.interruptible`).
    Returns IMAGE ``[T, H, W, 3]``.
    """
    if noise_mask is not None and init_frames is None:
        raise ValueError("temporal_sample: noise_mask needs init_frames (the latents kept outside the mask)")
    # as under ComfyUI's executor (direct callers must not build autograd graphs); the interrupt is checked
    # before every UNet / AnimateNet block, not only after each sampling step
    with torch.inference_mode(), interruptible(diffusion_model(model), animatenet):
        return _temporal_sample(model, positive, negative, vae, frames, size_hw, reference, conditions, seed, steps,
                                cfg, sampler_name, scheduler, denoise, window, animatenet, controlnets, strength,
                                percent_range, init_frames, noise_mask)


def _temporal_sample(model, positive, negative, vae, frames, size_hw, reference, conditions, seed, steps, cfg,
                     sampler_name, scheduler, denoise, window, animatenet, controlnets, strength, percent_range,
                     init_frames, noise_mask):
    import comfy.model_management as mm
    import comfy.sample
    import comfy.utils
    import latent_preview

    h, w = size_hw
    lat_h, lat_w = h // 8, w // 8
    process_in = model.model.process_latent_in
    anchor = process_in(vae.encode(reference[..., :3]).float())
    patcher = module_patcher(animatenet) if animatenet is not None else None
    bar = comfy.utils.ProgressBar(frames * steps)  # one bar: frames × steps, advanced after every step
    previewer = latent_preview.get_previewer(model.load_device, model.model.latent_format)
    latents, previous_frame = [], None
    for start in range(0, frames, window):
        stop = min(frames, start + window)
        n = stop - start
        structure = conditions.structure(start, stop)
        identity = conditions.identity(start, stop, previous_frame)
        if init_frames is not None:
            latent_image = vae.encode(init_frames[start:stop, :, :, :3]).float()
            estimates = process_in(latent_image)
        else:
            latent_image = torch.zeros(n, 4, lat_h, lat_w)
            estimates = anchor.repeat(n, 1, 1, 1)
        pos, neg = positive, negative
        state = None
        if animatenet is not None:
            load_module(animatenet)
            p = next(animatenet.parameters())
            with torch.no_grad():
                tokens = animatenet.encode_conditions(structure=structure.to(p.device, p.dtype),
                                                      identity=identity.to(p.device, p.dtype))
            state = TemporalWindow(tokens, anchor, estimates)
            cls = animatenet_control_class()

            def make(state=state):
                c = cls(animatenet, patcher, state)
                c.strength, c.timestep_percent_range = float(strength), tuple(percent_range)
                return c

            pos, neg = with_control(pos, neg, make)
        for cnet, kind, cn_strength in controlnets:
            hint = structure if kind == "structure" else identity

            def make_cn(cnet=cnet, hint=hint, cn_strength=cn_strength):
                return cnet.copy().set_cond_hint(hint, cn_strength, tuple(percent_range), vae=vae)

            pos, neg = with_control(pos, neg, make_cn)

        def callback(step, x0, x, total_steps, state=state, start=start, n=n):
            if state is not None:
                state.estimates = x0.detach()
            mm.throw_exception_if_processing_interrupted()
            image = previewer.decode_latent_to_preview_image("JPEG", x0[:1]) if previewer else None
            bar.update_absolute(start * steps + min(step + 1, steps) * n, frames * steps, image)

        noise = torch.cat([comfy.sample.prepare_noise(torch.zeros(1, 4, lat_h, lat_w), (seed + t) % 2 ** 64)
                           for t in range(start, stop)])
        samples = comfy.sample.sample(model, noise, steps, cfg, sampler_name, scheduler, pos, neg, latent_image,
                                      denoise=denoise, callback=callback, disable_pbar=True,
                                      noise_mask=None if noise_mask is None else noise_mask[start:stop],
                                      seed=(seed + start) % 2 ** 64)
        latents.append(samples.float().cpu())
        anchor = process_in(samples[-1:].float())
        if conditions.needs_previous_frame:
            previous_frame = _decode(vae, samples[-1:])
        mm.throw_exception_if_processing_interrupted()
    return _decode(vae, torch.cat(latents))
