"""Decode audio files to mono float32 at a target sample rate (soundfile + soxr)."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from ..errors import AudioError


def _require_file(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        raise AudioError(path, "is a folder, not an audio file; check the manifest's `path` column")
    if not path.exists():
        hint = ""
        stripped = Path(*[part.strip() for part in path.parts]) if path.parts else path
        if stripped != path and stripped.is_file():
            hint = (f"; {stripped} (without the spaces around a name) exists: the manifest's `path` has leading or "
                    "trailing spaces, remove them (paths are used exactly as written)")
        raise AudioError(path, "file not found; check the manifest's `path` column (paths are relative to the manifest)" + hint)
    return path


_CANNOT_DECODE = "cannot decode audio ({}); re-encode it as wav/flac/ogg"
_TRUNCATED_ADVICE = "the file is truncated (an interrupted copy or download?): copy it again, or leave it out with --skip-bad"


def check_audio_file(path: str | Path) -> None:
    """Raise AudioError unless `path` exists, its header reads as audio, and (WAV/AIFF) the file holds as much
    audio data as its header declares. No decoding."""
    path = _require_file(path)
    try:
        info = sf.info(str(path))
    except Exception as exc:  # libsndfile raises several types; all mean "cannot decode"
        raise AudioError(path, _CANNOT_DECODE.format(exc)) from exc
    check_declared_length(path, info.frames, info.samplerate)


def load_audio(path: str | Path, target_sr: int | None = None, min_samples: int = 1) -> tuple[np.ndarray, int]:
    """Read an audio file (wav, flac, ogg, ...), mix down to mono and resample.

    Args:
        path: the audio file.
        target_sr: output sample rate; None keeps the file's rate.
        min_samples: fewest samples accepted after resampling.

    Returns:
        (waveform (N,) float32, sample_rate)

    Raises:
        AudioError: naming the file, when it is missing, unreadable, empty, truncated (fewer frames than its
            header declares), holds NaN/inf, or is shorter than `min_samples` after resampling.
    """
    path = _require_file(path)
    try:
        sound = sf.SoundFile(str(path))
    except Exception as exc:  # libsndfile raises several types; all mean "cannot decode"
        raise AudioError(path, _CANNOT_DECODE.format(exc)) from exc
    with sound:
        sr, declared = sound.samplerate, sound.frames
        try:
            data = sound.read(dtype="float32", always_2d=True)
        except Exception as exc:  # the header read, the data does not: cut off or damaged after it (e.g. FLAC "lost sync")
            raise AudioError(path, f"the header reads ({_frames(declared, sr)}) but decoding fails ({exc}); the file is "
                                   "damaged or truncated: copy it again, or leave it out with --skip-bad") from exc
    check_declared_length(path, declared, sr)
    if 0 < data.shape[0] < declared:  # e.g. MP3: the header's frame count is the promise, decoding stops early
        raise AudioError(path, f"the header declares {_frames(declared, sr)} but only {_frames(data.shape[0], sr)} "
                               f"decode; {_TRUNCATED_ADVICE}")
    if data.shape[0] == 0:
        raise AudioError(path, "file holds no samples (empty audio)")
    return prepare_waveform(data, sr, target_sr, source=path, min_samples=min_samples)


def _frames(count: int, sr: int) -> str:
    return f"{count} frames ({count / sr:.3f} s)" if sr > 0 else f"{count} frames"


def check_declared_length(source, found_frames: int, sr: int, name: object = None) -> None:
    """Raise AudioError when a WAV or AIFF holds less audio data than its header declares.

    libsndfile quietly shortens such a file (it reports the frames that are there), so this compares the
    data chunk's declared size with the bytes that follow it. Other formats pass (FLAC and MP3 fail or come
    up short on decode, which `load_audio` reports).

    Args:
        source: a path, or a seekable binary file object (its position is restored), e.g. a hub row's bytes.
        found_frames: the frame count libsndfile reports (sf.info(...).frames).
        sr: the sample rate, for durations in the message.
        name: what the error names (default: the path).
    """
    try:
        shortfall = _data_chunk_shortfall(source)
    except OSError:
        return  # unreadable here means unreadable for libsndfile too, which has already said so
    path = source if name is None else name
    if shortfall is None:
        return
    declared_bytes, held_bytes, frames_declared = shortfall
    estimated = frames_declared is None and held_bytes > 0
    if estimated:  # e.g. compressed WAV: scale the frames found by the missing share
        frames_declared = int(round(found_frames * declared_bytes / held_bytes))
    expected = "more frames" if frames_declared is None else _frames(frames_declared, sr)
    if estimated:
        expected = "about " + expected
    raise AudioError(path, f"the header declares {expected} ({declared_bytes} bytes of audio data) but the file holds "
                           f"{_frames(found_frames, sr)} ({held_bytes} bytes); {_TRUNCATED_ADVICE}")


def _data_chunk_shortfall(source) -> tuple[int, int, int | None] | None:
    """(declared data bytes, bytes held, declared frames or None) when a RIFF/RIFX WAV's `data` chunk or an
    AIFF's `SSND` chunk is longer than what follows it in the file; None when the file is whole, is another
    format, or declares no usable size (streamed WAVs write 0 or 0xFFFFFFFF)."""
    if hasattr(source, "read"):
        start = source.tell()
        try:
            return _chunk_shortfall(source, source.seek(0, 2))
        finally:
            source.seek(start)
    with open(source, "rb") as handle:
        return _chunk_shortfall(handle, os.fstat(handle.fileno()).st_size)


def _chunk_shortfall(handle, size: int) -> tuple[int, int, int | None] | None:
    handle.seek(0)
    head = handle.read(12)
    if len(head) < 12:
        return None
    if head[:4] in (b"RIFF", b"RIFX") and head[8:12] == b"WAVE":
        order, audio_chunk = ("<" if head[:4] == b"RIFF" else ">"), b"data"
    elif head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        order, audio_chunk = ">", b"SSND"
    else:
        return None
    block_align, frames_declared, offset = 0, None, 12
    for _ in range(256):  # chunks before the audio: fmt, fact, LIST, bext, JUNK, COMM, ...
        handle.seek(offset)
        chunk = handle.read(8)
        if len(chunk) < 8:
            return None
        chunk_id, chunk_size = chunk[:4], struct.unpack(order + "I", chunk[4:])[0]
        if chunk_id == b"fmt " and chunk_size >= 14:
            body = handle.read(14)
            if len(body) < 14:
                return None
            tag, _, _, _, block_align = struct.unpack(order + "HHIIH", body)
            block_align = block_align if tag in _PCM_TAGS else 0
        elif chunk_id == b"COMM" and chunk_size >= 6:
            body = handle.read(6)
            if len(body) < 6:
                return None
            frames_declared = struct.unpack(">hI", body)[1]
        elif chunk_id == audio_chunk:
            held = size - (offset + 8)
            if chunk_size in (0, 0xFFFFFFFF) or held >= chunk_size:
                return None
            if audio_chunk == b"SSND":  # its data starts with 8 bytes of offset and block size
                chunk_size, held = max(chunk_size - 8, 0), held - 8
            if audio_chunk == b"data" and block_align:
                frames_declared = chunk_size // block_align
            return chunk_size, max(held, 0), frames_declared
        offset += 8 + chunk_size + (chunk_size & 1)
    return None


_PCM_TAGS = {0x0001, 0x0003, 0x0006, 0x0007, 0xFFFE}  # PCM, IEEE float, A-law, mu-law, extensible: fixed bytes per frame


def prepare_waveform(
    data: np.ndarray,
    sr: int,
    target_sr: int | None,
    source: object = "<array>",
    min_samples: int = 1,
) -> tuple[np.ndarray, int]:
    """Validate an in-memory waveform, mix down to mono and resample.

    Args:
        data: (N,) mono or (N, channels) samples.
        sr: its sample rate.
        target_sr: output rate, or None to keep `sr`.
        source: name used in error messages (file path or clip id).
    """
    data = np.asarray(data, dtype=np.float32)
    if data.ndim == 2:
        data = data.mean(axis=1, dtype=np.float32)
    elif data.ndim != 1:
        raise AudioError(source, f"expected (samples,) or (samples, channels), got shape {data.shape}")
    if data.size == 0:
        raise AudioError(source, "waveform is empty")
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise AudioError(source, f"{bad} non-finite samples (NaN or inf); the file is corrupt")
    if target_sr is not None and target_sr != sr:
        data = soxr.resample(data, sr, target_sr, quality="HQ").astype(np.float32, copy=False)
        sr = target_sr
    if data.size < max(min_samples, 1):
        raise AudioError(source, f"only {data.size} samples at {sr} Hz after resampling; need at least {max(min_samples, 1)}")
    return np.ascontiguousarray(data), sr
