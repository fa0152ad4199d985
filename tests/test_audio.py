import numpy as np
import pytest
import soundfile as sf
import torch

from patchprobe.audio import FbankConfig, kaldi_fbank, load_audio
from patchprobe.errors import AudioError

from .conftest import GOLDEN, assert_fbank_close

CASES = [
    ("fbank_htk_hanning_16k.npz", FbankConfig(), "htk"),
    ("fbank_htk_hanning_32k.npz", FbankConfig(sample_rate=32000), "htk"),
    ("fbank_beats_povey_16k.npz", FbankConfig(window_type="povey"), "beats"),
]


@pytest.mark.parametrize("filename,config,key", CASES)
def test_fbank_matches_kaldi_reference(filename, config, key):
    data = np.load(GOLDEN / "kaldi_fbank" / filename)
    signals = [k[: -len("__raw")] for k in data.files if k.endswith("__raw")]
    assert signals
    for signal in signals:
        reference = data[f"{signal}__{key}_fbank"]
        ours = kaldi_fbank(torch.from_numpy(data[f"{signal}__{key}_in"]), config).numpy()
        assert ours.shape == reference.shape
        assert_fbank_close(ours, reference)


def test_fbank_empty_low_filters_read_log_eps():
    data = np.load(GOLDEN / "kaldi_fbank" / "fbank_htk_hanning_16k.npz")
    ours = kaldi_fbank(torch.from_numpy(data["noise_10p0s__htk_in"])).numpy()
    empty = np.all(data["noise_10p0s__htk_fbank"] == np.float32(np.log(np.finfo(np.float32).eps)), axis=0)
    assert empty.any()
    assert np.all(ours[:, empty] == np.float32(-15.942385))


def test_fbank_batched_equals_single():
    rng = np.random.default_rng(1)
    batch = torch.from_numpy(rng.standard_normal((3, 8000)).astype(np.float32))
    together = kaldi_fbank(batch)
    for row in range(3):
        torch.testing.assert_close(together[row], kaldi_fbank(batch[row]), atol=1e-5, rtol=0)
    assert together.shape == (3, FbankConfig().num_frames(8000), 128)


def test_load_audio_mixdown_and_resample(tmp_path):
    stereo = np.stack([np.full(4800, 0.5), np.full(4800, -0.1)], axis=1).astype(np.float32)
    for ext in ("wav", "flac", "ogg"):
        sf.write(tmp_path / f"a.{ext}", stereo, 48000)
        wave, sr = load_audio(tmp_path / f"a.{ext}", 16000)
        assert sr == 16000 and wave.ndim == 1 and abs(len(wave) - 1600) <= 1
        assert abs(float(np.median(wave)) - 0.2) < 0.02


@pytest.mark.parametrize(
    "make,needle",
    [
        (lambda p: None, "not found"),
        (lambda p: p.write_bytes(b"definitely not audio"), "cannot decode"),
        (lambda p: sf.write(p, np.zeros(0, np.float32), 16000), "no samples"),
        (lambda p: sf.write(p, np.array([0.1, np.nan, 0.2] * 100, np.float32), 16000, subtype="FLOAT"), "non-finite"),
    ],
)
def test_bad_audio_raises_one_error_type_naming_the_file(tmp_path, make, needle):
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(AudioError) as info:
        load_audio(path, 16000)
    assert str(path) in str(info.value) and needle in str(info.value)


def test_zero_length_after_resampling(tmp_path):
    path = tmp_path / "one.wav"
    sf.write(path, np.array([0.5], np.float32), 48000)
    with pytest.raises(AudioError, match="after resampling"):
        load_audio(path, 8000)


# ---- truncated files: reported with expected vs found length, never silently shortened (issue 13) ----

def _cut(path, keep):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("name,subtype,channels", [("a.wav", "PCM_16", 1), ("a.wav", "FLOAT", 2), ("a.aiff", "PCM_24", 1)])
def test_truncated_wav_and_aiff_name_expected_and_found_length(tmp_path, name, subtype, channels):
    from patchprobe.audio.decode import check_audio_file

    path = tmp_path / name
    sf.write(path, np.zeros((16000, channels), np.float32), 16000, subtype=subtype)
    _cut(path, 0.5)
    assert sf.info(str(path)).frames < 16000  # libsndfile alone would hand back the shorter clip without a word
    for read in (check_audio_file, lambda p: load_audio(p, 16000)):
        with pytest.raises(AudioError) as info:
            read(path)
        message = str(info.value)
        assert message.startswith(str(path)) and "the header declares 16000 frames (1.000 s)" in message, message
        assert "the file holds 79" in message and "truncated" in message  # about half the frames are there


def test_truncated_compressed_wav_gives_an_estimate(tmp_path):
    path = tmp_path / "adpcm.wav"
    sf.write(path, np.zeros(16000, np.float32), 16000, subtype="IMA_ADPCM")
    _cut(path, 0.6)
    with pytest.raises(AudioError, match=r"the header declares about \d+ frames .* truncated"):
        load_audio(path)


@pytest.mark.parametrize("name,subtype", [("a.flac", "PCM_16"), ("a.mp3", "MPEG_LAYER_III")])
def test_truncated_flac_and_mp3_fail_on_decode(tmp_path, name, subtype):
    path = tmp_path / name
    rng = np.random.default_rng(0)
    sf.write(path, (0.1 * rng.standard_normal(16000)).astype(np.float32), 16000, subtype=subtype)
    _cut(path, 0.5)
    with pytest.raises(AudioError) as info:
        load_audio(path, 16000)
    message = str(info.value)
    assert message.startswith(str(path)) and "16000 frames (1.000 s)" in message and "truncated" in message, message


def test_whole_files_and_streamed_wav_sizes_still_read(tmp_path):
    from patchprobe.audio.decode import check_audio_file

    rng = np.random.default_rng(1)
    wave = (0.1 * rng.standard_normal(4001)).astype(np.float32)
    for name, subtype in (("a.wav", "PCM_16"), ("b.wav", "PCM_24"), ("c.aiff", "PCM_16"), ("d.flac", "PCM_16"),
                          ("e.mp3", "MPEG_LAYER_III"), ("f.ogg", "VORBIS"), ("g.wav", "IMA_ADPCM")):
        sf.write(tmp_path / name, wave, 16000, subtype=subtype)
        check_audio_file(tmp_path / name)
        assert len(load_audio(tmp_path / name)[0]) >= 4001
    streamed = tmp_path / "streamed.wav"  # writers that cannot seek back leave 0xFFFFFFFF as the data size
    data = bytearray((tmp_path / "a.wav").read_bytes())
    at = data.index(b"data")
    data[at + 4 : at + 8] = b"\xff\xff\xff\xff"
    streamed.write_bytes(bytes(data))
    check_audio_file(streamed)
    assert len(load_audio(streamed)[0]) == 4001
    padded = tmp_path / "padded.wav"  # bytes after the data chunk (a trailing LIST chunk, say) are fine
    padded.write_bytes((tmp_path / "a.wav").read_bytes() + b"LIST\x04\x00\x00\x00INFO")
    assert len(load_audio(padded)[0]) == 4001


def test_a_folder_is_not_an_audio_file(tmp_path):
    with pytest.raises(AudioError, match="is a folder"):
        load_audio(tmp_path)


# ---- property-based: any bytes, cut headers and valid files written by soundfile give a waveform or AudioError ----

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_FORMATS = [("wav", "PCM_16"), ("wav", "FLOAT"), ("wav", "PCM_U8"), ("aiff", "PCM_16"), ("flac", "PCM_16"), ("flac", "PCM_24"),
            ("ogg", "VORBIS")]


@pytest.fixture(scope="module")
def audio_scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("audio-properties")


def _read_or_audio_error(path, target_sr):
    from patchprobe.audio.decode import check_audio_file

    try:
        check_audio_file(path)
    except AudioError as exc:
        assert exc.path == str(path)
    try:
        wave, sr = load_audio(path, target_sr)
    except AudioError as exc:
        assert exc.path == str(path) and exc.problem
        return None
    assert wave.ndim == 1 and wave.dtype == np.float32 and len(wave) >= 1 and np.isfinite(wave).all()
    assert sr == (target_sr or sr)
    return wave


@settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=2048), magic=st.sampled_from([b"", b"RIFF", b"RIFF\x10\x00\x00\x00WAVEfmt ", b"fLaC", b"OggS",
                                                             b"FORM\x00\x00\x00\x20AIFF", b"RIFX\x00\x00\x00\x00WAVE"]))
def test_random_bytes_give_audio_error_or_a_waveform(audio_scratch, data, magic):
    path = audio_scratch / "random.wav"
    path.write_bytes(magic + data)
    _read_or_audio_error(path, 16000)


@settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(_FORMATS), frames=st.integers(1, 3000), channels=st.integers(1, 3),
       rate=st.sampled_from([8000, 16000, 22050, 44100]), seed=st.integers(0, 2**16),
       cut=st.one_of(st.none(), st.floats(0.0, 1.0)), flip=st.one_of(st.none(), st.tuples(st.floats(0.0, 1.0), st.integers(1, 255))))
def test_written_then_cut_or_flipped_files_give_audio_error_or_the_samples(audio_scratch, kind, frames, channels, rate, seed, cut, flip):
    extension, subtype = kind
    path = audio_scratch / f"clip.{extension}"
    wave = (0.5 * np.random.default_rng(seed).uniform(-1, 1, (frames, channels))).astype(np.float32)
    sf.write(path, wave, rate, subtype=subtype)
    whole = path.read_bytes()
    data = bytearray(whole)
    if cut is not None:
        data = data[: int(len(data) * cut)]
    if flip is not None and data:
        data[min(int(len(data) * flip[0]), len(data) - 1)] ^= flip[1]
    path.write_bytes(bytes(data))
    decoded = _read_or_audio_error(path, None)
    if bytes(data) == whole:  # untouched: every frame comes back
        assert decoded is not None and len(decoded) == frames
    elif cut is not None and flip is None and len(data) < len(whole) - 1 and extension in ("wav", "aiff"):
        assert decoded is None  # a cut WAV/AIFF is always reported (cutting only an odd-sized chunk's pad byte loses nothing)


def test_declared_length_check_reads_bytes_in_memory_and_keeps_the_position(tmp_path):
    import io

    from patchprobe.audio.decode import check_declared_length

    path = tmp_path / "a.wav"
    sf.write(path, np.zeros(8000, np.float32), 16000)
    whole = io.BytesIO(path.read_bytes())
    whole.seek(5)
    check_declared_length(whole, 8000, 16000, name="clip-1")
    assert whole.tell() == 5
    cut = io.BytesIO(path.read_bytes()[:9000])
    frames = sf.info(cut).frames
    with pytest.raises(AudioError) as info:
        check_declared_length(cut, frames, 16000, name="clip-1")
    assert info.value.path == "clip-1" and "the header declares 8000 frames (0.500 s)" in str(info.value)
