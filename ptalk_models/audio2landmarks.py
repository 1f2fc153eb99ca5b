"""Audio -> Landmarks: speech audio + a reference face -> a lip-synced :class:`FaceLandmarks` sequence.

Public entry point: :func:`generate_landmarks`; :data:`BACKENDS` maps a backend name to its class (the
first key is the default). Every backend implements :class:`Audio2LandmarksBackend` -- the same
``generate(...)`` signature and the same output type.

* ``"neural (log-mel VAE)"`` (:class:`NeuralBackend`): PortraitTalk's audio-to-motion model (arXiv 2412.07754,
  Sec. III-B): a VAE with dilated-convolution encoder/decoder over speech features (log-mel here instead of
  HuBERT, which does not exist offline; or ComfyUI's AUDIO_ENCODER_OUTPUT for a model trained on those),
  trained on real talking faces and shipped with the pack (:mod:`ptalk_models.audio2motion`). Any language.
* ``"phonemes (pocketsphinx)"`` (:class:`PhonemeBackend`), embedded and CPU-only:

  1. audio -> mono 16 kHz (soxr) -- :mod:`ptalk_models.audio`;
  2. phones with times: pocketsphinx forced alignment of ``transcript`` when given, else phone
     recognition -- :mod:`ptalk_models.phonemes`;
  3. phones -> visemes -> coarticulated mouth parameters, scaled by loudness -- :mod:`ptalk_models.visemes`;
  4. mouth parameters + seeded blinks + seeded head motion applied to the reference mesh --
     :mod:`ptalk_models.motion`.
"""
from __future__ import annotations

import math
from typing import Protocol

import numpy as np

from .audio import DB_FLOOR, TARGET_SR, n_video_frames, prepare_audio, rms_dbfs
from .audio2motion import Audio2MotionFormatError, audio2motion_model, model_features, n_motion_frames, predict_offsets
from .easing import smoothstep
from .errors import InputError
from .landmarks import NUM_LANDMARKS, FaceLandmarks
from .motion import animate, animate_offsets, blink_curve, build_rig
from .motion import head_motion as head_motion_curve
from .mouth_motion import offsets_to_pixels
from .phonemes import phones_from_audio
from .visemes import MOUTH_PARAMS, SILENCE_GATE_DB, loudness_gain, mouth_parameters

EXPRESSIVENESS_RANGE = (0.0, 2.0)
_CHUNK = 1024  # frames per animate() call
FPS_RANGE = (1.0, 240.0)


class Audio2LandmarksBackend(Protocol):
    """What every entry of :data:`BACKENDS` provides (instantiated with no arguments)."""

    name: str

    def generate(self, waveform, sample_rate, reference: FaceLandmarks, *, fps: float, seed: int,
                 expressiveness: float, transcript: str, blink: bool, head_motion: bool) -> FaceLandmarks:
        """Arguments already validated by :func:`generate_landmarks`; returns ``T = n_video_frames(...)``
        frames with the reference's ``image_size``, ``fps=fps`` and ``meta["backend"] = name``. Raises
        :class:`~ptalk_models.errors.InputError` naming ``waveform``, ``sample_rate`` or ``reference`` (the
        parameter names of :func:`generate_landmarks`) for audio or a reference face it cannot use."""
        ...


def _audio_and_rig(waveform, sample_rate, reference: FaceLandmarks, fps: float):
    """What every backend starts from: (16 kHz mono :class:`~ptalk_models.audio.PreparedAudio`, the number of
    video frames ``T``, the reference's :class:`~ptalk_models.motion.FaceRig`). Raises InputError naming
    ``waveform`` / ``sample_rate`` (:func:`prepare_audio`) or ``reference`` (:func:`build_rig` rejects only it)."""
    audio = prepare_audio(waveform, sample_rate)
    T = n_video_frames(audio.n_input_samples, audio.source_rate, fps)
    try:
        rig = build_rig(reference)
    except ValueError as e:
        raise InputError("reference", str(e)) from None
    return audio, T, rig


def _audio_warnings(audio) -> list[str]:
    """The warnings every backend reports about its audio (NaN/Inf samples replaced by silence)."""
    return [f"{audio.n_nonfinite} NaN/Inf audio samples were replaced by silence"] if audio.n_nonfinite else []


class PhonemeBackend:
    """Phones (pocketsphinx) -> visemes -> mouth/jaw deformation of the reference mesh, + blinks + head motion."""

    name = "phonemes (pocketsphinx)"

    def generate(self, waveform, sample_rate, reference: FaceLandmarks, *, fps: float, seed: int,
                 expressiveness: float, transcript: str, blink: bool, head_motion: bool) -> FaceLandmarks:
        audio, T, rig = _audio_and_rig(waveform, sample_rate, reference, fps)
        phones = phones_from_audio(audio.samples, transcript)
        mouth = mouth_parameters(phones.segments, audio.samples, T, fps)
        blinks = blink_curve(T, fps, seed) if blink else None
        head = head_motion_curve(T, fps, seed, speech=mouth.gain) if head_motion else None
        warnings = _audio_warnings(audio) + list(phones.warnings)
        loudest = float(np.percentile(mouth.level_db, 95))
        if DB_FLOOR < loudest < SILENCE_GATE_DB[1]:
            warnings.append(f"the audio is very quiet (95th-percentile level {loudest:.0f} dBFS); below "
                            f"{SILENCE_GATE_DB[1]:.0f} dBFS the mouth opens less and below {SILENCE_GATE_DB[0]:.0f} "
                            "dBFS not at all: normalise the audio's loudness first")
        meta = dict(reference.meta)
        meta.update({
            "source": "audio2landmarks",
            "backend": self.name,
            "phone_segments": [(s.phone, round(float(s.start), 4), round(float(s.end), 4)) for s in phones.segments],
            "alignment_mode": phones.mode,
            "words": [(w, round(float(a), 4), round(float(b), 4)) for w, a, b in phones.words],
            "dropped_words": list(phones.dropped_words),
            "warnings": warnings,
            "nonfinite_samples": int(audio.n_nonfinite),
            "audio_duration_s": float(audio.duration_s),
            "seed": int(seed),
            "expressiveness": float(expressiveness),
            "blink": bool(blink),
            "head_motion": bool(head_motion),
            "mouth_params": {k: mouth.params[:, i].round(4).tolist() for i, k in enumerate(MOUTH_PARAMS)},
        })
        out = np.empty((T, NUM_LANDMARKS, 3), np.float32)
        for s in range(0, T, _CHUNK):  # bounded float64 temporaries for long audio
            e = min(T, s + _CHUNK)
            out[s:e] = rig.to_normalised(animate(rig, mouth.params[s:e], None if blinks is None else blinks[s:e],
                                                 None if head is None else head[s:e], expressiveness))
        return FaceLandmarks.from_points(out, rig.image_size, fps=fps, meta=meta)


class NeuralBackend:
    """Speech features → the §III-B VAE (:mod:`ptalk_models.audio2motion`) → lower-face offsets → the reference
    mesh, + blinks + head motion. Language-independent: no phones, no dictionary.

    1. audio → mono 16 kHz (soxr) → 80-band log-mel at 100 Hz (torchaudio, :mod:`ptalk_models.audio_features`),
       or the ``audio_features`` given (ComfyUI's ``AUDIO_ENCODER_OUTPUT``) for a model trained on those;
    2. the VAE decoder with z ~ N(0, I) drawn from ``seed`` → offsets of the lower-face landmarks (inter-ocular
       units, relative to a closed neutral mouth) at 25 Hz, linearly resampled to ``fps``;
    3. loudness: offsets × ``(1 - loudness_mix) · gate + loudness_mix · loudness_gain``, where ``gate`` is a
       smoothstep of the frame's RMS level between :data:`SILENCE_GATE_DB` (-60 → -48 dBFS: the mouth rests
       closed in silence) and ``loudness_gain`` the phoneme backend's gain relative to the clip's loud parts
       (:func:`ptalk_models.visemes.loudness_gain`). ``loudness_mix`` = 0.5, the phoneme backend's own coupling
       (``OPEN_GAIN_MIX``), was chosen on TRAINING speakers (``bench/bench_audio2motion.py --split train``):
       mix 0 / 0.5 / 1 gave aperture correlation with the real mouth 0.69 / 0.65 / 0.53 and sync proxy
       0.49 / 0.62 / 0.70 there;
    4. offsets → pixels in the reference's face axes (:func:`ptalk_models.mouth_motion.offsets_to_pixels`), the
       reference's own lip gap closed, seeded blinks and head motion (:func:`ptalk_models.motion.animate_offsets`).
    """

    name = "neural (log-mel VAE)"
    weights = None  # None: the embedded model (ptalk_models/weights/audio2motion_logmel.safetensors)
    loudness_mix = 0.5

    def generate(self, waveform, sample_rate, reference: FaceLandmarks, *, fps: float, seed: int,
                 expressiveness: float, transcript: str, blink: bool, head_motion: bool,
                 audio_features=None) -> FaceLandmarks:
        audio, T, rig = _audio_and_rig(waveform, sample_rate, reference, fps)
        model = audio2motion_model(self.weights)
        feats = model_features(model, audio.samples, audio_features)
        c = model.config
        n_motion = n_motion_frames(audio.duration_s, c.motion_rate)
        off = predict_offsets(model, feats, n_motion, seed)                  # [n_motion, K, 3]
        pos = np.clip((np.arange(T) + 0.5) / fps * c.motion_rate - 0.5, 0, n_motion - 1)
        j = np.minimum(np.floor(pos).astype(int), max(n_motion - 2, 0))
        w = (pos - j)[:, None, None] if n_motion > 1 else np.zeros((T, 1, 1))
        level = rms_dbfs(audio.samples, TARGET_SR, fps, T)
        gate = smoothstep((level - SILENCE_GATE_DB[0]) / (SILENCE_GATE_DB[1] - SILENCE_GATE_DB[0]))
        if self.loudness_mix:
            gate = (1.0 - self.loudness_mix) * gate + self.loudness_mix * loudness_gain(level)
        idx = model.indices.numpy()
        blinks = blink_curve(T, fps, seed) if blink else None
        head = head_motion_curve(T, fps, seed, speech=gate) if head_motion else None
        out = np.empty((T, NUM_LANDMARKS, 3), np.float32)
        ua, ub = rig.axes
        for s in range(0, T, _CHUNK):  # bounded float64 temporaries for long audio
            e = min(T, s + _CHUNK)
            k1 = np.minimum(j[s:e] + 1, n_motion - 1)
            o = ((1 - w[s:e]) * off[j[s:e]] + w[s:e] * off[k1]) * gate[s:e, None, None]
            px = offsets_to_pixels(o, ua, ub, rig.iod)
            out[s:e] = rig.to_normalised(animate_offsets(rig, px, None if blinks is None else blinks[s:e],
                                                         None if head is None else head[s:e], expressiveness,
                                                         indices=idx))
        warnings = _audio_warnings(audio)
        if transcript.strip():
            warnings.append("the neural backend does not use the transcript (it reads the speech itself)")
        meta = dict(reference.meta)
        meta.update({"source": "audio2landmarks", "backend": self.name, "model": getattr(model, "source", ""),
                     "features": c.feature_kind, "warnings": warnings, "nonfinite_samples": int(audio.n_nonfinite),
                     "audio_duration_s": float(audio.duration_s), "seed": int(seed),
                     "expressiveness": float(expressiveness), "blink": bool(blink), "head_motion": bool(head_motion)})
        return FaceLandmarks.from_points(out, rig.image_size, fps=fps, meta=meta)


BACKENDS: dict[str, type] = {PhonemeBackend.name: PhonemeBackend, NeuralBackend.name: NeuralBackend}
DEFAULT_BACKEND = next(iter(BACKENDS))


def generate_landmarks(waveform, sample_rate, reference: FaceLandmarks, fps: float = 25.0, seed: int = 0,
                       expressiveness: float = 1.0, transcript: str = "", backend: str = DEFAULT_BACKEND,
                       blink: bool = True, head_motion: bool = True, audio_features=None,
                       neural_weights=None) -> FaceLandmarks:
    """Lip-synced landmark sequence for ``waveform`` on the ``reference`` face.

    Args:
        waveform: float ``[channels, samples]`` or ``[samples]`` in [-1, 1] (any channel count; integer
            arrays are scaled by their full scale). NaN/Inf samples become silence (counted in
            ``meta["nonfinite_samples"]``, with a warning in ``meta["warnings"]``).
        sample_rate: Hz, any rate > 0 (resampled to 16 kHz with soxr).
        reference: :class:`FaceLandmarks`; frame 0 is the rest pose (other frames are ignored).
        fps: output frame rate, 1..240.
        seed: blinks and head-motion randomness, and for the neural backend the VAE's sample z (any int; same
            seed -> identical output). The phoneme backend's mouth does not depend on the seed.
        expressiveness: 0..2, multiplies the mouth's deviation from the reference and the head motion.
            0 = mouth and head stay at the reference pose (only blinks, if enabled); 1 = nominal (closed
            lips in silence; phonemes: ~0.35 x inter-ocular inner-lip gap for a loud "aa"; neural: the
            learnt motion); 2 = exaggerated (phonemes: the gap is soft-limited to 0.55 x inter-ocular;
            neural: twice the learnt offsets).
        transcript: optional English text. Non-empty (after normalisation) -> pocketsphinx forced alignment
            (``bestpath=False``); empty -> phone recognition. Words missing from the dictionary are
            dropped; if alignment fails it falls back to phone recognition (``meta["alignment_mode"]``).
        backend: a key of :data:`BACKENDS`.
        blink, head_motion: switch the seeded blinks / head motion on or off.
        audio_features: ComfyUI ``AUDIO_ENCODER_OUTPUT`` for a neural model trained on audio-encoder features
            (``neural_weights``); ignored by log-mel models and by the phoneme backend.
        neural_weights: path of an audio→motion safetensors (:mod:`ptalk_models.audio2motion`) for the neural
            backend; None = the embedded log-mel model.

    Returns:
        :class:`FaceLandmarks` with ``T = max(1, round_half_up(duration_s * fps))`` frames
        (:func:`ptalk_models.audio.n_video_frames`), the reference's ``image_size``, ``fps=fps``, all
        ``present``; ``meta`` adds ``backend``, ``phone_segments`` [(phone, start_s, end_s)],
        ``alignment_mode`` (``forced_alignment`` / ``phone_recognition`` / ``none``), ``words``,
        ``dropped_words``, ``warnings``, ``nonfinite_samples``, ``audio_duration_s``, ``seed``,
        ``expressiveness``, ``mouth_params`` (per-frame curves).

    Raises:
        InputError (a ValueError; :mod:`ptalk_models.errors`), ``argument`` = the rejected parameter:
        ``"backend"`` (not a key of :data:`BACKENDS`), ``"neural_weights"`` (a missing, truncated or foreign
        audio→motion file), ``"audio_features"`` (missing or mismatched encoder features), ``"reference"``
        (not FaceLandmarks; no detected face in frame 0, NaN/Inf or degenerate points:
        :func:`ptalk_models.motion.build_rig`), ``"fps"`` (not a number or outside :data:`FPS_RANGE`),
        ``"expressiveness"`` (not a number or outside :data:`EXPRESSIVENESS_RANGE`), ``"transcript"`` (not
        text), ``"seed"`` (not an integer), ``"waveform"`` (empty or malformed array) or ``"sample_rate"``
        (not a number > 0 Hz): see :func:`ptalk_models.audio.prepare_audio`.
    """
    if backend not in BACKENDS:
        raise InputError("backend", f"unknown audio-to-landmarks backend {backend!r}; choose one of "
                                    f"{list(BACKENDS)}")
    if not isinstance(reference, FaceLandmarks):
        raise InputError("reference", f"reference must be FaceLandmarks (PTALK_LANDMARKS), got "
                                      f"{type(reference).__name__}")
    for name, value in (("fps", fps), ("expressiveness", expressiveness)):
        try:
            float(value)
        except (TypeError, ValueError):
            raise InputError(name, f"fps and expressiveness must be numbers, got {fps!r}, {expressiveness!r}") from None
    fps, expressiveness = float(fps), float(expressiveness)
    if not (math.isfinite(fps) and FPS_RANGE[0] <= fps <= FPS_RANGE[1]):
        raise InputError("fps", f"fps must be in {FPS_RANGE}, got {fps}")
    if not (math.isfinite(expressiveness) and EXPRESSIVENESS_RANGE[0] <= expressiveness <= EXPRESSIVENESS_RANGE[1]):
        raise InputError("expressiveness", f"expressiveness must be in {EXPRESSIVENESS_RANGE}, got {expressiveness}")
    if transcript is None:
        transcript = ""
    if not isinstance(transcript, str):
        raise InputError("transcript", f"transcript must be text, got {type(transcript).__name__}")
    try:
        seed = int(seed)
    except (TypeError, ValueError):
        raise InputError("seed", f"seed must be an integer, got {seed!r}") from None
    impl = BACKENDS[backend]()
    kwargs = {}
    if isinstance(impl, NeuralBackend):
        impl.weights = neural_weights
        kwargs["audio_features"] = audio_features
    try:
        return impl.generate(waveform, sample_rate, reference, fps=fps, seed=seed, expressiveness=expressiveness,
                             transcript=transcript, blink=bool(blink), head_motion=bool(head_motion), **kwargs)
    except Audio2MotionFormatError as e:
        raise InputError("neural_weights", f"{str(e).rstrip('. ')}.",
                         "Choose another model file (or the embedded one), or re-train it.") from None
