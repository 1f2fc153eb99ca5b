"""Phone timing from speech with pocketsphinx 5.1 and its bundled US-English models (no downloads).

Two modes, both on 16 kHz mono audio (see :func:`ptalk_models.audio.prepare_audio`):

* **phone recognition** (:func:`recognize_phones`): pocketsphinx "allphone" search (context-independent
  phone loop) constrained by the bundled phone trigram ``en-us-phone.lm.bin``.
* **forced alignment** (:func:`align_transcript`): a :class:`pocketsphinx.Decoder` with ``bestpath=False``
  and the bundled CMU dictionary; ``set_align_text(text)`` runs a word-level pass (FSG search with optional
  silences), then ``set_alignment()`` and a second pass give phone (and state) boundaries read from
  ``get_alignment()``. Words missing from the dictionary are dropped (and reported); if alignment fails
  (no word left, audio too short for the text, ...) it falls back to phone recognition and says so.

:func:`phones_from_audio` picks the mode: a non-empty (after normalisation) transcript -> forced
alignment, otherwise phone recognition.

Output phones are ARPAbet without stress digits (``AA``, ``AE`` ... ``ZH``) plus ``SIL``; pocketsphinx's
fillers (``+NSN+`` noise, ``+SPN+`` spoken noise, ``<sil>`` ...) map to ``SIL``. Segments are contiguous,
sorted, and cover ``[0, duration]`` (gaps are filled with ``SIL``). Times are seconds: pocketsphinx frame
``i`` (10 ms hop, 25.6 ms window) is placed at ``i * 0.01 + FRAME_OFFSET_S``, the centre of its window
minus half a hop, i.e. the boundary between frames ``i-1`` and ``i``.

Decoders are created once per process (about 0.1 s each) and reused under a lock, with their feature
front end re-initialised before every utterance, so a result depends only on the audio (and transcript);
pocketsphinx holds the GIL while decoding, so concurrent calls simply queue.
"""
from __future__ import annotations

import os
import re
import threading
import unicodedata
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from .audio import TARGET_SR as SAMPLE_RATE  # 16 kHz, the rate of pocketsphinx's en-us acoustic model
FRAME_S = 0.01                       # pocketsphinx frame hop (frate = 100)
_WLEN_S = 0.025625                   # pocketsphinx default analysis window
FRAME_OFFSET_S = (_WLEN_S - FRAME_S) / 2.0   # ~7.8 ms: frame index -> boundary time
MIN_DECODE_S = 0.05                  # shorter audio is not decoded (pocketsphinx needs a few frames)

# Search beams: pocketsphinx's defaults. Narrower allphone beams (1e-20) halve the decoding time but the
# search can die after a long pause (measured: beckett.wav lost everything after 2.8 s), so they are not used.
ALLPHONE_BEAM = 1e-48
ALIGN_BEAM = 1e-48

MODE_ALIGN = "forced_alignment"
MODE_RECOGNITION = "phone_recognition"
MODE_NONE = "none"

ARPABET = ("AA", "AE", "AH", "AO", "AW", "AY", "B", "CH", "D", "DH", "EH", "ER", "EY", "F", "G", "HH", "IH",
           "IY", "JH", "K", "L", "M", "N", "NG", "OW", "OY", "P", "R", "S", "SH", "T", "TH", "UH", "UW", "V",
           "W", "Y", "Z", "ZH")
SILENCE = "SIL"
_ARPABET_SET = frozenset(ARPABET)


class PhoneSegment(NamedTuple):
    """One phone: ARPAbet symbol without stress (or ``SIL``), start and end in seconds."""

    phone: str
    start: float
    end: float


@dataclass
class PhoneAlignment:
    """Result of :func:`phones_from_audio`.

    ``segments``       contiguous :class:`PhoneSegment` list covering ``[0, duration]``.
    ``mode``           ``"forced_alignment"``, ``"phone_recognition"`` or ``"none"`` (nothing decodable).
    ``words``          ``(word, start_s, end_s)`` from forced alignment (empty for phone recognition).
    ``dropped_words``  transcript words not in the bundled CMU dictionary (dropped from the alignment).
    ``warnings``       human-readable notes (dropped words, fallbacks, decode failures).
    ``transcript``     the normalised word string that was aligned ("" for phone recognition).
    """

    segments: list
    mode: str
    words: list = field(default_factory=list)
    dropped_words: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    transcript: str = ""


# ----------------------------------------------------------------------------------------------------
# Text normalisation
_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
         "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def _number_words(n: int) -> list[str]:
    """Cardinal English words for 0 <= n < 10**9 (e.g. 1961 -> one thousand nine hundred sixty one)."""
    if n < 20:
        return [_ONES[n]]
    if n < 100:
        return [_TENS[n // 10]] + ([_ONES[n % 10]] if n % 10 else [])
    if n < 1000:
        return [_ONES[n // 100], "hundred"] + (_number_words(n % 100) if n % 100 else [])
    for size, name in ((10 ** 6, "million"), (1000, "thousand")):
        if n >= size:
            return _number_words(n // size) + [name] + (_number_words(n % size) if n % size else [])
    raise AssertionError(n)


def normalize_transcript(text: str) -> list[str]:
    """Lower-case word tokens for alignment.

    Unicode is folded to ASCII (accents dropped), curly apostrophes become ``'``, hyphens/slashes split
    words, all other punctuation is removed, apostrophes inside words are kept (``don't`` is in the
    dictionary), and integers below 10^9 are spelled out (``42`` -> ``forty two``); other digit strings
    are kept and will be reported as out-of-vocabulary.
    """
    if text is None:
        return []
    if not isinstance(text, str):
        raise ValueError(f"transcript must be a string, got {type(text).__name__}")
    t = unicodedata.normalize("NFKD", text)
    t = "".join(c for c in t if not unicodedata.combining(c))
    t = t.replace("\u2019", "'").replace("\u2018", "'").lower()
    t = re.sub(r"[-\u2013\u2014/_]", " ", t)
    words = []
    for tok in re.findall(r"[a-z0-9']+", t):
        tok = tok.strip("'")
        if not tok:
            continue
        if tok.isdigit() and len(tok) <= 9:
            words.extend(_number_words(int(tok)))
        else:
            words.append(tok)
    return words


# ----------------------------------------------------------------------------------------------------
# Decoders (lazy, cached per process)
_LOCK = threading.RLock()
_DECODERS: dict = {}


def _model_file(*parts) -> str:
    import pocketsphinx

    path = os.path.join(pocketsphinx.get_model_path(), *parts)
    if not os.path.exists(path):
        raise RuntimeError(f"pocketsphinx model file {path} is missing; reinstall pocketsphinx==5.1.1")
    return path


def _decoder(kind: str):
    """The cached allphone (``"allphone"``) or alignment (``"align"``) decoder."""
    import pocketsphinx

    with _LOCK:
        dec = _DECODERS.get(kind)
        if dec is None:
            hmm = _model_file("en-us", "en-us")
            if kind == "allphone":
                cfg = pocketsphinx.Config(hmm=hmm, allphone=_model_file("en-us", "en-us-phone.lm.bin"), lm=None,
                                          beam=ALLPHONE_BEAM, pbeam=ALLPHONE_BEAM, loglevel="FATAL")
            elif kind == "align":
                cfg = pocketsphinx.Config(hmm=hmm, dict=_model_file("en-us", "cmudict-en-us.dict"), lm=None,
                                          bestpath=False, beam=ALIGN_BEAM, loglevel="FATAL")
            else:
                raise ValueError(kind)
            dec = pocketsphinx.Decoder(cfg)
            _DECODERS[kind] = dec
        return dec


def _decode(dec, pcm: bytes) -> None:
    """One full utterance. ``reinit_feat()`` first: the front end otherwise carries state (cepstral mean
    and more) from the previous utterance, and the same audio would decode differently depending on what
    was decoded before it (measured: allphone output changed after decoding another clip)."""
    dec.reinit_feat()
    dec.start_utt()
    try:
        dec.process_raw(pcm, full_utt=True)
    finally:
        dec.end_utt()


def _pcm16(mono16k: np.ndarray) -> bytes:
    x = np.nan_to_num(np.asarray(mono16k, dtype=np.float64).reshape(-1), nan=0.0, posinf=0.0, neginf=0.0)
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak > 1.0:  # float audio may exceed full scale: scale rather than clip for the recogniser
        x = x / peak
    return (x * 32767.0).astype("<i2").tobytes()


def _frame_time(frame: int) -> float:
    return max(0.0, frame * FRAME_S + FRAME_OFFSET_S) if frame > 0 else 0.0


def _clean_phone(name: str) -> str:
    p = re.sub(r"\d", "", str(name)).upper()
    return p if p in _ARPABET_SET else SILENCE


def _clean_word(name: str) -> str:
    return re.sub(r"\(\d+\)$", "", str(name))


def _finalise(raw: list, duration: float) -> list:
    """Sort, clip to [0, duration], fill gaps with SIL, merge neighbouring SIL, drop empty segments."""
    out: list[PhoneSegment] = []
    t = 0.0
    for ph, s, e in sorted(raw, key=lambda r: r[1]):
        s, e = max(s, t), min(e, duration)
        if e <= s + 1e-9:
            continue
        if s > t + 1e-9:
            out.append(PhoneSegment(SILENCE, t, s))
        out.append(PhoneSegment(ph, s, e))
        t = e
    if t < duration - 1e-9:
        out.append(PhoneSegment(SILENCE, t, duration))
    merged: list[PhoneSegment] = []
    for seg in out:
        if merged and seg.phone == SILENCE and merged[-1].phone == SILENCE:
            merged[-1] = PhoneSegment(SILENCE, merged[-1].start, seg.end)
        else:
            merged.append(seg)
    if merged:  # make the cover exact
        merged[0] = merged[0]._replace(start=0.0)
        merged[-1] = merged[-1]._replace(end=float(duration))
    return merged or [PhoneSegment(SILENCE, 0.0, float(duration))]


def _is_digital_silence(mono16k: np.ndarray) -> bool:
    """Peak below -80 dBFS. pocketsphinx must not see it: on all-zero input the allphone search returns
    garbage (measured: 2 s of zeros -> one 2-s 'S')."""
    x = np.nan_to_num(np.asarray(mono16k, dtype=np.float64))
    return x.size == 0 or float(np.max(np.abs(x))) < 1e-4


def _duration(mono16k: np.ndarray) -> float:
    return len(mono16k) / SAMPLE_RATE


def recognize_phones(mono16k: np.ndarray) -> PhoneAlignment:
    """Phone recognition with pocketsphinx allphone search and the bundled en-us phone trigram.

    Args:
        mono16k: float ``[N]`` mono samples at 16 kHz in [-1, 1] (NaN/Inf count as 0).

    Returns:
        :class:`PhoneAlignment` with ``mode="phone_recognition"`` (``"none"`` when the audio is shorter
        than :data:`MIN_DECODE_S`, digitally silent, or the decoder fails: one ``SIL`` segment, with a
        warning).
    """
    mono16k = np.asarray(mono16k).reshape(-1)
    dur = _duration(mono16k)
    if dur < MIN_DECODE_S:
        return PhoneAlignment(_finalise([], dur), MODE_NONE,
                              warnings=[f"audio of {dur * 1000:.0f} ms is too short for phone recognition; "
                                        "treated as silence"])
    if _is_digital_silence(mono16k):
        return PhoneAlignment(_finalise([], dur), MODE_NONE, warnings=["audio is silent (peak below -80 dBFS)"])
    with _LOCK:
        dec = _decoder("allphone")
        try:
            _decode(dec, _pcm16(mono16k))
            hyp = dec.hyp()
            raw = [] if hyp is None else [(_clean_phone(s.word), _frame_time(s.start_frame),
                                           _frame_time(s.end_frame + 1)) for s in dec.seg()]
        except (RuntimeError, IndexError, TypeError) as e:
            return PhoneAlignment(_finalise([], dur), MODE_NONE,
                                  warnings=[f"pocketsphinx phone recognition failed ({e}); treated as silence"])
    return PhoneAlignment(_finalise(raw, dur), MODE_RECOGNITION)


def align_transcript(mono16k: np.ndarray, transcript: str) -> PhoneAlignment:
    """Forced alignment of ``transcript`` to the audio (pocketsphinx, ``bestpath=False``), phone level.

    Steps: :func:`normalize_transcript`; words missing from the bundled CMU dictionary are dropped with a
    warning; ``Decoder.set_align_text`` + decode (word pass), ``Decoder.set_alignment`` + decode (phone
    pass), phones from ``Decoder.get_alignment().phones()``, words from ``.words()``.

    Falls back to :func:`recognize_phones` (``mode="phone_recognition"``, with a warning saying why) when
    no dictionary word is left or the alignment fails (e.g. the text is too long for the audio).

    Args:
        mono16k: float ``[N]`` mono 16 kHz samples. transcript: free text (English).
    """
    mono16k = np.asarray(mono16k).reshape(-1)
    dur = _duration(mono16k)
    words = normalize_transcript(transcript)
    if not words:
        return recognize_phones(mono16k)
    with _LOCK:
        dec = _decoder("align")
        known, dropped = [], []
        for w in words:
            (known if dec.lookup_word(w) is not None else dropped).append(w)
        warnings = []
        if dropped:
            warnings.append("words not in the pocketsphinx en-us dictionary were dropped from the alignment: "
                            + " ".join(dropped))
        text = " ".join(known)
        reason = None
        if not known:
            reason = "no transcript word is in the dictionary"
        elif dur < MIN_DECODE_S:
            reason = f"audio of {dur * 1000:.0f} ms is too short to align"
        elif _is_digital_silence(mono16k):
            reason = "the audio is silent"
        else:
            try:
                pcm = _pcm16(mono16k)
                dec.set_align_text(text)
                _decode(dec, pcm)
                if dec.hyp() is None:
                    reason = "the transcript could not be aligned to the audio (too long for it, or not speech)"
                else:
                    dec.set_alignment()
                    _decode(dec, pcm)
                    al = dec.get_alignment()
                    phones = [(_clean_phone(p.name), _frame_time(p.start), _frame_time(p.start + p.duration))
                              for p in al.phones()]
                    wsegs = [(_clean_word(w.name), _frame_time(w.start), min(dur, _frame_time(w.start + w.duration)))
                             for w in al.words() if not str(w.name).startswith(("<", "["))]
                    if not phones:
                        reason = "the alignment returned no phones"
            except (RuntimeError, IndexError, TypeError) as e:
                reason = f"pocketsphinx alignment failed ({e})"
    if reason is not None:
        res = recognize_phones(mono16k)
        res.dropped_words = dropped
        res.warnings = (warnings + [f"forced alignment not used: {reason}; fell back to phone recognition"]
                        + res.warnings)
        return res
    return PhoneAlignment(_finalise(phones, dur), MODE_ALIGN, words=wsegs, dropped_words=dropped,
                          warnings=warnings, transcript=text)


def phones_from_audio(mono16k: np.ndarray, transcript: str = "") -> PhoneAlignment:
    """Forced alignment when ``transcript`` has words after normalisation, else phone recognition.

    ``transcript=""`` (or only whitespace/punctuation) is exactly the same as no transcript.
    """
    if transcript and normalize_transcript(transcript):
        return align_transcript(mono16k, transcript)
    return recognize_phones(mono16k)
