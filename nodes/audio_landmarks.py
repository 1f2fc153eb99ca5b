"""Audio → Landmarks node: speech AUDIO + reference PTALK_LANDMARKS → PTALK_LANDMARKS sequence."""
from __future__ import annotations

import os

from comfy_api.latest import io

from ..ptalk_models.audio2landmarks import BACKENDS, generate_landmarks
from ..ptalk_models.errors import InputError
from .glue.convert import audio_to_numpy
from .glue.errors import log, node_error, node_error_from
from .glue.folders import audio2motion_options, resolve_audio2motion
from .glue.preview import landmark_preview
from .glue.sockets import CATEGORY, Landmarks

NODE = "Audio → Landmarks"

#: :func:`ptalk_models.audio2landmarks.generate_landmarks`'s arguments -> this node's inputs.
ENGINE_INPUTS = {"waveform": "audio", "sample_rate": "audio", "reference": "reference", "backend": "backend",
                 "fps": "fps", "seed": "seed", "expressiveness": "expressiveness", "transcript": "transcript",
                 "audio_features": "audio_features", "neural_weights": "neural_model"}


class AudioToLandmarks(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PTalkAudioToLandmarks",
            display_name="Audio → Landmarks (PortraitTalk)",
            category=CATEGORY,
            description=(
                "Animates the reference face's landmarks from speech: round(duration × fps) frames whose mouth and "
                "jaw follow the audio, with natural blinks and small head motion (paper III-B, audio→motion). "
                "Backends: neural — the paper's audio→motion VAE (dilated convolutions over log-mel speech "
                "features, trained on real talking faces; any language; shipped inside the pack); phonemes — "
                "pocketsphinx phone timings (forced alignment when a transcript is given) → visemes → mouth "
                "displacements scaled by loudness (English acoustic model). Any sample rate / channel count."),
            inputs=[
                io.Audio.Input("audio", tooltip="Speech; any sample rate and channel count (mixed to mono, resampled to 16 kHz)."),
                Landmarks.Input("reference", tooltip="Landmarks of the portrait (frame 0 is the rest pose)."),
                io.Combo.Input("backend", options=list(BACKENDS), default=next(iter(BACKENDS)),
                               tooltip="Audio→motion model. neural: the §III-B VAE on log-mel features, any "
                                       "language, ~1000× real time on one core. phonemes: pocketsphinx (English) → "
                                       "visemes; uses the transcript. Both are embedded (no download)."),
                io.Float.Input("fps", default=25.0, min=1.0, max=120.0, step=1.0,
                               tooltip="Output frame rate (frames per second). Wire the fps output into Create Video."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFF, control_after_generate=True,
                             tooltip="Seed for blinks, head motion and (neural backend) the VAE's motion sample; same seed → "
                                     "same landmarks."),
                io.Float.Input("expressiveness", default=1.0, min=0.0, max=2.0, step=0.05,
                               tooltip="Scales mouth amplitude and head motion (1 = natural)."),
                io.Boolean.Input("blink", default=True, tooltip="Add seeded natural eye blinks."),
                io.Boolean.Input("head_motion", default=True, tooltip="Add small seeded head motion."),
                io.String.Input("transcript", default="", multiline=True, optional=True,
                                tooltip="Optional text of the speech (English). Given → forced alignment (more "
                                        "accurate phone timing); empty → phone recognition. Phonemes backend only."),
                io.Combo.Input("neural_model", options=audio2motion_options(), optional=True,
                               tooltip="Neural backend's weights: the embedded log-mel model, or a model you "
                                       "trained (scripts/train_audio2motion.py) in ComfyUI/models/audio2motion."),
                io.AudioEncoderOutput.Input("audio_features", optional=True,
                                            tooltip="For a neural model trained on audio-encoder features only: "
                                                    "the Audio Encoder Encode output (wav2vec2/whisper) of the "
                                                    "same audio. The embedded model ignores it."),
            ],
            outputs=[
                Landmarks.Output("landmarks", tooltip="PTALK_LANDMARKS sequence at fps."),
                io.Float.Output("fps_out", display_name="fps", tooltip="The frame rate, for Create Video."),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, neural_model=None, **kwargs):
        """ComfyUI re-runs the node when this changes: the chosen audio→motion file's size and modification time,
        so a model retrained under the same name is used (the other inputs are compared by ComfyUI itself)."""
        try:
            path = resolve_audio2motion(neural_model)
            st = os.stat(path) if path else None
        except (FileNotFoundError, OSError):
            return str(neural_model)
        return f"{neural_model}|{st.st_size}|{st.st_mtime_ns}" if st else str(neural_model)

    @classmethod
    def execute(cls, audio, reference, backend, fps, seed, expressiveness, blink, head_motion,
                transcript="", neural_model=None, audio_features=None) -> io.NodeOutput:
        wav, sr = audio_to_numpy(audio, NODE, "audio")
        if backend not in BACKENDS:
            raise node_error(NODE, "backend", f"unknown backend {backend!r}; choose one of {list(BACKENDS)}")
        try:
            weights = resolve_audio2motion(neural_model)
        except FileNotFoundError as e:
            raise node_error(NODE, "neural_model", f"{e}; refresh the node or copy the file there") from None
        try:
            lm = generate_landmarks(wav, sr, reference, fps=fps, seed=seed, expressiveness=expressiveness,
                                    transcript=transcript or "", backend=backend, blink=blink,
                                    head_motion=head_motion, audio_features=audio_features,
                                    neural_weights=weights)
        except InputError as e:
            raise node_error_from(NODE, e, ENGINE_INPUTS) from None
        for w in lm.meta.get("warnings", []):
            log.warning("%s: %s", NODE, w)
        return io.NodeOutput(lm, float(fps),
                             ui=landmark_preview(lm, node=NODE, audio=(wav, sr), backdrop_input="reference"))


NODES = [AudioToLandmarks]
