"""AnimateNet as a ComfyUI control: a ``comfy.controlnet.ControlBase`` subclass (made on first use) that chains
with other ControlNets in a CONDITIONING, and the helper attaching a control to positive and negative
conditionings as core Apply ControlNet does; and the motion→frame control inputs (an AnimateNet or, training-free,
ControlNets) shared by the AnimateNet Temporal Sampler and Dub Diffusion Render, with their validation
(:func:`control_inputs`, :func:`checked_controls`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from comfy_api.latest import io

from ...ptalk_models.animatenet import AnimateNetFormatError, check_compatible
from .errors import node_error
from .patcher import load_module, unet_config
from .sockets import AnimateNetType

if TYPE_CHECKING:
    from .temporal_sampling import TemporalWindow

_CONTROL_CLASS = None


def animatenet_control_class():
    """The ``comfy.controlnet.ControlBase`` subclass running AnimateNet (made on first use, so importing this
    module does not import ``comfy.controlnet``)."""
    global _CONTROL_CLASS
    if _CONTROL_CLASS is not None:
        return _CONTROL_CLASS
    import comfy.controlnet

    class AnimateNetControl(comfy.controlnet.ControlBase):
        """AnimateNet as a ComfyUI control: chains with other ControlNets (``previous_controlnet``), honours
        strength and start/end percent (``ControlBase``), its weights are a ModelPatcher returned by
        ``get_models`` so ``comfy.model_management`` loads and offloads them. Residuals follow ComfyUI's control
        format (``{"output": [per input block], "middle": [1]}``) and are added to the UNet's skip connections
        and middle block (paper §III-B: zero-convolution fusion)."""

        def __init__(self, net, patcher, window: TemporalWindow):
            super().__init__()
            self.net, self.patcher, self.window = net, patcher, window
            self.model_sampling_current = None
            self.compute_dtype = torch.float32

        def get_control(self, x_noisy, t, cond, batched_number, transformer_options):
            prev = None
            if self.previous_controlnet is not None:
                prev = self.previous_controlnet.get_control(x_noisy, t, cond, batched_number, transformer_options)
            if self.strength == 0.0 or self.timestep_range is not None and (
                    t[0] > self.timestep_range[0] or t[0] < self.timestep_range[1]):
                return prev
            device = x_noisy.device
            if any(p.device != device for p in self.net.parameters()):  # e.g. split by a low-VRAM partial load
                load_module(self.net)
            w = self.window
            frames = next(iter(w.tokens.values())).shape[0]
            if x_noisy.shape[0] % frames:
                raise ValueError(f"[PortraitTalk · AnimateNet] a batch of {x_noisy.shape[0]} latents cannot be split "
                                 f"into chunks of the window's {frames} frames")
            ms = self.model_sampling_current
            timestep = ms.timestep(t).float()
            x_in = ms.calculate_input(t, x_noisy)
            tokens = {k: v.to(device) for k, v in w.tokens.items()}
            # run in the UNet's compute precision on GPUs (autocast; the loaded weights themselves stay fp32).
            # x_noisy is the sampler's (fp32) latent, so the precision comes from the model (pre_run).
            low = self.compute_dtype if device.type != "cpu" and self.compute_dtype in (torch.float16,
                                                                                         torch.bfloat16) else None
            with torch.autocast(device.type, dtype=low or torch.float32, enabled=low is not None):
                if self.net.has_temporal:  # previous frames' latents → temporal tokens (a small conv stack)
                    tokens["temporal"] = self.net.temporal_encoder(w.temporal_latents().to(device).float())
                reps = x_noisy.shape[0] // frames  # ComfyUI batches whole chunks: cond frames, uncond frames
                tokens = {k: v.repeat(reps, 1, 1) for k, v in tokens.items()}
                out = self.net(x_in.float(), timestep, tokens=tokens)
            return self.control_merge(out, prev, output_dtype=None)  # the UNet adds them in its own dtype

        def copy(self):
            c = AnimateNetControl(self.net, self.patcher, self.window)
            self.copy_to(c)
            return c

        def get_models(self):
            return super().get_models() + [self.patcher]

        def pre_run(self, model, percent_to_timestep_function):
            super().pre_run(model, percent_to_timestep_function)
            self.model_sampling_current = model.model_sampling
            self.compute_dtype = getattr(model, "manual_cast_dtype", None) or model.get_dtype()

        def cleanup(self):
            self.model_sampling_current = None
            super().cleanup()

    _CONTROL_CLASS = AnimateNetControl
    return _CONTROL_CLASS


def with_control(positive: list, negative: list, make_control) -> tuple[list, list]:
    """Copies of the positive and negative CONDITIONING lists whose entries carry the control ``make_control()``
    chained after the control they already had — one new control per distinct previous one, shared by positive
    and negative (as core Apply ControlNet does, so cond and uncond still run as one batch)."""
    made = {}

    def attach(conditioning):
        out = []
        for cond, extra in conditioning:
            extra = dict(extra)
            prev = extra.get("control")
            if id(prev) not in made:
                c = make_control()
                if prev is not None:
                    c.set_previous_controlnet(prev)
                made[id(prev)] = c
            extra["control"] = made[id(prev)]
            extra["control_apply_to_uncond"] = False
            out.append([cond, extra])
        return out

    return attach(positive), attach(negative)


def control_inputs(landmark_hint: str, contour_hint: str) -> list:
    """The motion→frame control inputs shared by the Temporal Sampler and Dub Diffusion Render: an AnimateNet or,
    training-free, a landmark and/or a contour ControlNet (``*_hint``: what each ControlNet is fed)."""
    return [
        AnimateNetType.Input("animatenet", optional=True, tooltip="From AnimateNet Loader."),
        io.ControlNet.Input("landmark_controlnet", optional=True,
                            tooltip="Training-free mode: a landmark (MediaPipe face) ControlNet, fed "
                                    f"{landmark_hint}."),
        io.ControlNet.Input("contour_controlnet", optional=True,
                            tooltip=f"Training-free mode: a contour/Canny/lineart ControlNet, fed {contour_hint}."),
        io.Float.Input("controlnet_strength", default=0.8, min=0.0, max=3.0, step=0.05, optional=True,
                       tooltip="Strength of the training-free ControlNets."),
    ]


def checked_controls(node: str, model, animatenet, landmark_controlnet, contour_controlnet,
                     controlnet_strength: float) -> list:
    """Validate :func:`control_inputs` (at least one connected; the AnimateNet made for this MODEL's UNet) and
    return the ControlNets as ``temporal_sample``'s ``[(CONTROL_NET, "structure" | "identity", strength)]``.

    Raises :class:`~nodes.glue.errors.NodeInputError` of node ``node`` on input ``animatenet`` when nothing is
    connected or the AnimateNet was made for another UNet (:func:`ptalk_models.animatenet.check_compatible`)."""
    if animatenet is None and landmark_controlnet is None and contour_controlnet is None:
        raise node_error(node, "animatenet", "connect an AnimateNet (AnimateNet Loader) or, training-free, a "
                                             "landmark_controlnet and/or contour_controlnet (core Load ControlNet)")
    if animatenet is not None:
        try:
            check_compatible(animatenet, unet_config(model))
        except AnimateNetFormatError as e:
            raise node_error(node, "animatenet", str(e)) from None
    return [(c, kind, controlnet_strength) for c, kind in
            ((landmark_controlnet, "structure"), (contour_controlnet, "identity")) if c is not None]
