"""ComfyUI's own sampling for the pack's samplers: ``comfy.sample.sample`` as core KSampler runs it, and the
KSampler-style widgets (seed, steps, cfg, sampler, scheduler) with ComfyUI's sampler and scheduler lists.
"""
from __future__ import annotations

from comfy_api.latest import io

from .progress import diffusion_model, interruptible


def sample_latent(model, positive, negative, latent: dict, seed: int, steps: int, cfg: float, sampler_name: str,
                  scheduler: str, denoise: float) -> dict:
    """ComfyUI's own sampling (``comfy.sample.sample``, as core KSampler does): seeded noise, live preview and
    progress bar, interruptible between steps and within a step (before every UNet block). Returns the LATENT
    dict with the new ``samples``."""
    import comfy.sample
    import comfy.utils
    import latent_preview

    samples = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    noise = comfy.sample.prepare_noise(samples, seed, latent.get("batch_index"))
    callback = latent_preview.prepare_callback(model, steps)
    with interruptible(diffusion_model(model)):  # Cancel within a step too, not only between steps
        out = comfy.sample.sample(model, noise, steps, cfg, sampler_name, scheduler, positive, negative, samples,
                                  denoise=denoise, noise_mask=latent.get("noise_mask"), callback=callback,
                                  disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
    result = dict(latent)
    result["samples"] = out
    return result


def sampling_inputs(seed_tooltip: str, steps: int, steps_tooltip: str, cfg: float, cfg_tooltip: str) -> list:
    """The KSampler-style widgets shared by the samplers: seed (with control after generate), steps, cfg,
    sampler_name, scheduler — with ComfyUI's own sampler and scheduler lists."""
    return [
        io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                     tooltip=seed_tooltip),
        io.Int.Input("steps", default=steps, min=1, max=10000, tooltip=steps_tooltip),
        io.Float.Input("cfg", default=cfg, min=0.0, max=100.0, step=0.1, round=0.01, tooltip=cfg_tooltip),
        io.Combo.Input("sampler_name", options=sampler_names(), default="euler", tooltip="ComfyUI sampler."),
        io.Combo.Input("scheduler", options=scheduler_names(), default="normal", tooltip="ComfyUI scheduler."),
    ]


def sampler_names() -> list[str]:
    """ComfyUI's sampler names (the KSampler combo)."""
    import comfy.samplers

    return list(comfy.samplers.KSampler.SAMPLERS)


def scheduler_names() -> list[str]:
    """ComfyUI's scheduler names (the KSampler combo)."""
    import comfy.samplers

    return list(comfy.samplers.KSampler.SCHEDULERS)
