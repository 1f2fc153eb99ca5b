"""Speech features for the neural audio→motion model (:mod:`ptalk_models.audio2motion`).

Two kinds, named by ``Audio2MotionConfig.feature_kind``:

* ``"log-mel"`` (the embedded default): 80-band log-mel power spectrogram of 16 kHz mono speech, 25 ms Hann
  window (400 samples, FFT 512), 10 ms hop, 50–7600 Hz, HTK mel scale -- ``torchaudio.transforms.MelSpectrogram``
  (``center=True``: frame ``j`` is centred on ``j × 10 ms``). Kept as mel POWER (:func:`mel_power`) so that the
  trainer can change gain and add noise in the power domain; :func:`log_compress` turns it into the model's input.
* ``"audio-encoder"``: ComfyUI's ``AUDIO_ENCODER_OUTPUT`` (core Audio Encoder Encode node: wav2vec2 or whisper from
  ``models/audio_encoders``): its ``encoded_audio`` ``[1, frames, dim]`` at the encoder's frame rate (wav2vec2:
  50 Hz). :func:`encoder_features` converts it; a model trained on such features records ``dim`` and ``rate``.
"""
from __future__ import annotations

import numpy as np
import torch

SAMPLE_RATE = 16000        # Hz
N_MELS = 80
N_FFT = 512
WIN_LENGTH = 400           # samples, 25 ms
HOP_LENGTH = 160           # samples, 10 ms -> 100 frames/s
F_MIN, F_MAX = 50.0, 7600.0
LOG_EPS = 1e-6             # added to the mel power before the log (digital silence -> log(1e-6))
MEL_RATE = SAMPLE_RATE / HOP_LENGTH
WHISPER_FRAMES, WHISPER_HOP = 1500, 320   # ComfyUI's whisper: 30 s at 50 frames/s (320 samples per frame)


_MEL = {}


def _mel_transform():
    import torchaudio

    if "t" not in _MEL:
        _MEL["t"] = torchaudio.transforms.MelSpectrogram(
            sample_rate=SAMPLE_RATE, n_fft=N_FFT, win_length=WIN_LENGTH, hop_length=HOP_LENGTH, f_min=F_MIN,
            f_max=F_MAX, n_mels=N_MELS, power=2.0, center=True, norm=None, mel_scale="htk")
    return _MEL["t"]


def mel_power(mono16k: np.ndarray, chunk_s: float = 60.0) -> np.ndarray:
    """Mel power spectrogram, float32 ``[1 + N // 160, 80]`` (frames at 100 Hz) of float mono 16 kHz samples
    ``[N]`` in [-1, 1]. Computed in chunks of ``chunk_s`` seconds (with a window's overlap), so 10 minutes of
    audio needs a few MB of temporaries; the chunks give the same frames as one pass. The signal's ends are
    zero-padded (torchaudio's own ``MelSpectrogram`` reflects them: its first and last ~2 frames differ)."""
    x = torch.from_numpy(np.ascontiguousarray(np.asarray(mono16k, np.float32)))
    n_frames = 1 + len(x) // HOP_LENGTH
    step = max(1, int(chunk_s * MEL_RATE))
    half = N_FFT // 2
    out = np.empty((n_frames, N_MELS), np.float32)
    t = _mel_transform()
    with torch.no_grad():
        for f0 in range(0, n_frames, step):
            f1 = min(n_frames, f0 + step)
            a, b = f0 * HOP_LENGTH - half, (f1 - 1) * HOP_LENGTH + half
            seg = x[max(a, 0):min(b, len(x))]
            seg = torch.nn.functional.pad(seg, (max(0, -a), max(0, b - len(x))))
            # center=False on the pre-padded segment: frame k of the chunk is centred on sample (f0 + k) * HOP
            spec = torch.stft(seg, N_FFT, HOP_LENGTH, WIN_LENGTH, t.spectrogram.window, center=False,
                              return_complex=True)
            p = spec.real ** 2 + spec.imag ** 2                     # [257, frames]
            out[f0:f1] = (p.T @ t.mel_scale.fb).numpy()[: f1 - f0]
    return out


def mel_centres() -> np.ndarray:
    """Centre frequencies (Hz) of the 80 mel bands, float32 ``[80]`` (HTK mel scale, 50–7600 Hz)."""
    def mel(f):
        return 2595.0 * np.log10(1.0 + f / 700.0)

    pts = np.linspace(mel(F_MIN), mel(F_MAX), N_MELS + 2)[1:-1]
    return (700.0 * (10 ** (pts / 2595.0) - 1.0)).astype(np.float32)


def log_compress(mel: np.ndarray | torch.Tensor):
    """``log(mel + 1e-6)``, the model's log-mel input (same type as given)."""
    if isinstance(mel, torch.Tensor):
        return torch.log(mel + LOG_EPS)
    return np.log(np.asarray(mel, np.float32) + LOG_EPS)


def white_noise_mel(power: float = 1.0) -> np.ndarray:
    """Mel power ``[80]`` of white noise of variance ``power`` (the expected value per frame): what adding such
    noise to the waveform adds to :func:`mel_power` (for training-time noise augmentation)."""
    t = _mel_transform()
    w = t.spectrogram.window.numpy().astype(np.float64)
    per_bin = np.full(N_FFT // 2 + 1, power * (w ** 2).sum())
    return (per_bin @ t.mel_scale.fb.numpy()).astype(np.float32)


def encoder_features(audio_encoder_output) -> tuple[np.ndarray, float]:
    """ComfyUI's ``AUDIO_ENCODER_OUTPUT`` (a dict with ``encoded_audio`` ``[1, frames, dim]`` and
    ``audio_samples``, the 16 kHz sample count it encoded) → (float32 ``[frames, dim]``, frame rate in Hz).

    ComfyUI's whisper output always has 1500 frames (30 s, zero-padded): only the frames of the
    ``audio_samples`` encoded are kept (audio longer than 30 s is rejected).

    Raises:
        ValueError: not such a dict, a batch other than 1, no frames, or whisper features of more than 30 s.
    """
    if not isinstance(audio_encoder_output, dict) or "encoded_audio" not in audio_encoder_output:
        raise ValueError("expected an AUDIO_ENCODER_OUTPUT (the output of ComfyUI's Audio Encoder Encode node)")
    enc = audio_encoder_output["encoded_audio"]
    enc = enc.detach().float().cpu() if isinstance(enc, torch.Tensor) else torch.as_tensor(np.asarray(enc, np.float32))
    if enc.ndim == 2:
        enc = enc[None]
    if enc.ndim != 3 or enc.shape[0] != 1 or enc.shape[1] < 1:
        raise ValueError(f"encoded_audio must be [1, frames, dim], got {tuple(enc.shape)}")
    n_samples = int(audio_encoder_output.get("audio_samples") or 0)
    if enc.shape[1] == WHISPER_FRAMES and n_samples > 0:
        # ComfyUI's whisper encodes a fixed 30 s window (zero-padded): keep the frames of the real audio
        if n_samples > WHISPER_FRAMES * WHISPER_HOP:
            raise ValueError("ComfyUI's whisper encodes only the first 30 s of audio; use wav2vec2 for longer speech")
        return enc[0, :-(-n_samples // WHISPER_HOP)].numpy(), SAMPLE_RATE / WHISPER_HOP
    rate = enc.shape[1] * SAMPLE_RATE / n_samples if n_samples > 0 else 50.0
    return enc[0].numpy(), float(rate)
