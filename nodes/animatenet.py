"""AnimateNet nodes (paper §III-B, motion → frames): AnimateNet Loader (weights file → PTALK_ANIMATENET) and
AnimateNet Temporal Sampler (frame-window generation conditioned on landmarks, head contour and the previous
frame → IMAGE frames)."""
from __future__ import annotations

import numpy as np
from comfy_api.latest import io

from ..ptalk_models.animatenet import AnimateNetFormatError, load_animatenet
from ..ptalk_models.contour import ContourInputError
from ..ptalk_models.temporal import CONTOUR_SOURCES, FrameConditions
from .glue.convert import image_to_numpy, numpy_to_image
from .glue.control import checked_controls, control_inputs
from .glue.errors import node_error, node_error_from
from .glue.folders import portraittalk_options, resolve_portraittalk
from .glue.sampling import sampling_inputs
from .glue.sockets import CATEGORY, AnimateNetType, Landmarks
from .glue.temporal_sampling import temporal_sample

LOADER, SAMPLER = "AnimateNet Loader", "AnimateNet Temporal Sampler"

#: The sampler input whose image a frame's head contour outlines, by ``contour_source`` (the contour of
#: :func:`ptalk_models.contour.head_contour`'s ``images``; generated frames are made from the reference).
CONTOUR_IMAGE_INPUT = {"previous frame": "reference", "init frames": "init_frames", "reference": "reference"}


def _fit(frames: np.ndarray, w: int, h: int) -> np.ndarray:
    """uint8 ``[..., H0, W0, 3]`` resized (OpenCV area) to ``w`` × ``h`` pixels; unchanged when already that size."""
    import cv2

    if frames.shape[-3:-1] == (h, w):
        return frames
    flat = frames.reshape((-1,) + frames.shape[-3:])
    out = np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in flat])
    return out.reshape(frames.shape[:-3] + out.shape[1:])


class AnimateNetLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PTalkAnimateNetLoader",
            display_name="AnimateNet Loader (PortraitTalk)",
            category=CATEGORY,
            description=(
                "Loads AnimateNet weights (paper §III-B: the ControlNet-like branch with the three-way Structure / "
                "Identity / Temporal cross-attention, Eq. 2) from ComfyUI/models/portraittalk — safetensors "
                "written by our trainer. Checks the architecture and says what is wrong (a core ControlNet, an "
                "IdentityNet, a truncated file)."),
            inputs=[io.Combo.Input("weights", options=portraittalk_options(), tooltip="A file in models/portraittalk.")],
            outputs=[AnimateNetType.Output("animatenet", tooltip="PTALK_ANIMATENET: the loaded branch (CPU).")],
        )

    @classmethod
    def execute(cls, weights) -> io.NodeOutput:
        try:
            return io.NodeOutput(load_animatenet(resolve_portraittalk(weights)))
        except (FileNotFoundError, AnimateNetFormatError) as e:
            raise node_error(LOADER, "weights", str(e)) from None


class AnimateNetTemporalSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PTalkAnimateNetTemporalSampler",
            display_name="AnimateNet Temporal Sampler (PortraitTalk)",
            category=CATEGORY,
            description=(
                "The design card's AnimateNet Temporal Sampler (paper §III-B): renders one frame per landmark frame "
                "with your SD1.5 MODEL (plain or IdentityNet-applied) and ComfyUI's own sampler. Every frame is "
                "conditioned on its landmarks (Structure, lip sync), on the head contour of the previous frame "
                "(Identity) and on the previous generated frame (Temporal) — through AnimateNet, or, training-free, "
                "through core ControlNets you already have (a landmark ControlNet fed the Draw Landmarks image, a "
                "contour/Canny ControlNet fed the contour guide). Frames are denoised in windows of "
                "frames_per_window (VRAM bounded by the window, not the video length); inside a window frame t's "
                "temporal condition is frame t−1's latest estimate (exactly the previous frame when the window is "
                "1). Same seed → same frames."),
            inputs=[
                io.Model.Input("model", tooltip="SD1.5 MODEL, plain or from IdentityNet Apply."),
                io.Conditioning.Input("positive", tooltip="Prompt (+ identity from Text Encode)."),
                io.Conditioning.Input("negative", tooltip="Negative prompt (no identity)."),
                io.Vae.Input("vae", tooltip="VAE of the checkpoint (encodes reference/init frames, decodes frames)."),
                Landmarks.Input("landmarks", tooltip="Driving landmark sequence (Audio → Landmarks), made from this "
                                                     "reference: one output frame per landmark frame."),
                io.Image.Input("reference", tooltip="The portrait (its size is the output size, resized down to a "
                                                    "multiple of 8); frame 0's previous frame."),
                *sampling_inputs("Frame t uses noise seed + t; same seed → same frames.", 20,
                                 "Sampling steps per frame.", 5.0,
                                 "Classifier-free guidance (1 = no CFG: half the cost)."),
                io.Float.Input("denoise", default=1.0, min=0.01, max=1.0, step=0.01,
                               tooltip="1 = from noise; < 1 starts from init_frames (e.g. the warp render)."),
                io.Int.Input("frames_per_window", default=8, min=1, max=256,
                             tooltip="Frames denoised together (one batch). 1 = strictly sequential (frame t sees "
                                     "the finished frame t−1); larger = faster, VRAM grows with it."),
                io.Float.Input("strength", default=1.0, min=0.0, max=3.0, step=0.05,
                               tooltip="AnimateNet strength (scales its residuals; 0 = off)."),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Sampling progress from which AnimateNet/ControlNets act."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Sampling progress after which they stop."),
                io.Combo.Input("contour_source", options=list(CONTOUR_SOURCES), default="previous frame",
                               tooltip="Head contour (Identity condition) of: the previous generated frame (paper; "
                                       "with windows, the last frame before the window), init frame t−1, or the "
                                       "reference for every frame."),
                *control_inputs("the frame's Draw Landmarks image", "the contour guide"),
                io.Image.Input("init_frames", optional=True,
                               tooltip="Starting frames (e.g. Landmark Warp Render of the same reference and "
                                       "landmarks), one per landmark frame or one for all; use denoise < 1."),
            ],
            outputs=[io.Image.Output("images", tooltip="One frame per landmark frame, float [T, H, W, 3]."),
                     io.Float.Output("fps", tooltip="Frame rate of the landmark sequence (for Create Video).")],
        )

    @classmethod
    def execute(cls, model, positive, negative, vae, landmarks, reference, seed, steps, cfg, sampler_name,
                scheduler, denoise, frames_per_window, strength, start_percent, end_percent, contour_source,
                animatenet=None, landmark_controlnet=None, contour_controlnet=None, controlnet_strength=0.8,
                init_frames=None) -> io.NodeOutput:
        import torch

        controlnets = checked_controls(SAMPLER, model, animatenet, landmark_controlnet, contour_controlnet,
                                       controlnet_strength)
        if len(landmarks) == 0:
            raise node_error(SAMPLER, "landmarks", "the landmark sequence is empty")
        ref = image_to_numpy(reference, SAMPLER, "reference")[0]
        h0, w0 = ref.shape[:2]
        if tuple(landmarks.image_size) != (w0, h0):
            raise node_error(SAMPLER, "landmarks", f"the landmarks were made for a {landmarks.image_size[0]}x"
                             f"{landmarks.image_size[1]} image but the reference is {w0}x{h0}: drive the landmarks "
                             "from this reference (Face Landmarks on it → Audio → Landmarks)")
        h, w = h0 // 8 * 8, w0 // 8 * 8
        if h < 64 or w < 64:
            raise node_error(SAMPLER, "reference", f"{w0}x{h0} is too small: at least 64x64 pixels")
        if end_percent < start_percent:
            raise node_error(SAMPLER, "end_percent", f"end_percent {end_percent} is before start_percent "
                                                     f"{start_percent}: AnimateNet/ControlNets would never act")
        ref = _fit(ref, w, h)  # a multiple of 8 (the VAE's factor): resized, so normalised landmarks stay aligned
        frames = len(landmarks)
        init = None
        if init_frames is not None:
            init = image_to_numpy(init_frames, SAMPLER, "init_frames")
            if len(init) not in (1, frames) or init.shape[1:3] != (h0, w0):
                raise node_error(SAMPLER, "init_frames", f"{len(init)} frames of {init.shape[2]}x{init.shape[1]}; "
                                 f"expected {frames} (or 1) of {w0}x{h0}, like the reference")
            init = _fit(init if len(init) == frames else np.repeat(init, frames, axis=0), w, h)
        elif denoise < 1.0:
            raise node_error(SAMPLER, "denoise", "denoise < 1 keeps part of init_frames, but none are connected: "
                                                 "connect init_frames (e.g. Landmark Warp Render) or set denoise 1")
        if contour_source == "init frames" and init is None:
            raise node_error(SAMPLER, "contour_source", "'init frames' needs init_frames connected")
        conditions = FrameConditions(landmarks, (h, w), ref, contour_source, init)
        try:
            images = temporal_sample(
                model, positive, negative, vae, frames, (h, w), numpy_to_image(ref[None]), conditions, seed, steps,
                cfg, sampler_name, scheduler, denoise, frames_per_window, animatenet=animatenet,
                controlnets=controlnets, strength=strength, percent_range=(start_percent, end_percent),
                init_frames=None if init is None else numpy_to_image(np.ascontiguousarray(init)))
        except AnimateNetFormatError as e:
            raise node_error(SAMPLER, "animatenet", str(e)) from None
        except ContourInputError as e:  # a frame's head contour: head_contour(the frame's image, its landmarks)
            raise node_error_from(SAMPLER, e, {"landmarks": "landmarks",
                                               "images": CONTOUR_IMAGE_INPUT[contour_source]}) from None
        fps = float(landmarks.fps) if landmarks.fps > 0 else 25.0
        return io.NodeOutput(images.to(torch.float32), fps)


NODES = [AnimateNetLoader, AnimateNetTemporalSampler]
