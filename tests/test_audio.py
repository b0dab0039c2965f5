"""Encoding every response format, one-shot and streamed, speed changes and chunk joins."""

from __future__ import annotations

import hashlib
import io
import math
import struct
import wave

import av
import numpy as np
import pytest
from helpers import pcm16_reference, wav_fields

from chatterbox_status import audio

RATE = 24000
SECONDS = 1.5
# Chunk sizes a generator might hand over: uneven, one of them tiny.
CHUNK_SECONDS = (0.3, 0.01, 0.7, 0.49)

EXPECTED_TYPES = {
    "wav": "audio/wav",
    "pcm": "audio/pcm",
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
}
OUTPUT_RATES = {"opus": 48000}
# Lossy codecs add priming and pad the last frame; ADTS and headerless MP3 cannot say how much.
# Allowed extra: 50 ms plus one codec frame (MP3 576, AAC 1024 samples at 24 kHz; Opus 960 at 48 kHz).
SLACK = {"wav": 0.0, "pcm": 0.0, "flac": 0.0, "mp3": 0.05 + 576 / RATE, "aac": 0.05 + 1024 / RATE, "opus": 0.05 + 0.02}
LOSSLESS = ("wav", "pcm", "flac")


def sine(seconds: float = SECONDS, rate: int = RATE, frequency: float = 440.0) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (0.5 * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def quantised(samples: np.ndarray) -> np.ndarray:
    """The expected 16-bit samples, from a reference that does not call the audio module."""
    return np.frombuffer(pcm16_reference(samples), dtype="<i2")


def decode(data: bytes, response_format: str) -> tuple[np.ndarray, int]:
    """Mono samples and sample rate, via PyAV (numpy for headerless pcm)."""
    if response_format == "pcm":
        return np.frombuffer(data, dtype="<i2"), RATE
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        assert stream.channels == 1
        frames = [frame.to_ndarray().reshape(-1) for frame in container.decode(stream)]
        return np.concatenate(frames), stream.rate


def stream(response_format: str, samples: np.ndarray) -> list[bytes]:
    """header, one part per chunk of CHUNK_SECONDS, finish."""
    encoder = audio.StreamEncoder(response_format, RATE)
    assert encoder.content_type == EXPECTED_TYPES[response_format]
    bounds = np.cumsum([0, *(int(round(s * RATE)) for s in CHUNK_SECONDS)])
    assert bounds[-1] == len(samples)
    parts = [encoder.header()]
    parts += [encoder.feed(samples[start:end]) for start, end in zip(bounds, bounds[1:])]
    parts.append(encoder.finish())
    return parts


def test_formats_and_content_types():
    assert audio.CONTENT_TYPES == EXPECTED_TYPES
    assert audio.FORMATS[0] == "wav"
    assert set(audio.FORMATS) == set(EXPECTED_TYPES)


@pytest.mark.parametrize("response_format", EXPECTED_TYPES)
def test_encode_decodes_to_the_same_duration_and_rate(response_format):
    samples = sine()
    data = audio.encode(samples, RATE, response_format)
    decoded, rate = decode(data, response_format)
    assert rate == OUTPUT_RATES.get(response_format, RATE)
    assert abs(len(decoded) / rate - SECONDS) <= SLACK[response_format] + 1e-9
    if response_format in LOSSLESS:
        assert np.array_equal(decoded, quantised(samples))


@pytest.mark.parametrize("streamed", [False, True])
def test_opus_is_encoded_at_48_khz_in_ogg(streamed):
    """Ogg Opus always decodes at 48 kHz; the OpusHead says what rate the encoder was fed."""
    data = b"".join(stream("opus", sine())) if streamed else audio.encode(sine(), RATE, "opus")
    assert data.startswith(b"OggS")
    head = data.index(b"OpusHead")
    assert int.from_bytes(data[head + 12 : head + 16], "little") == 48000


def test_pcm_is_two_bytes_per_sample_without_header():
    samples = sine()
    data = audio.encode(samples, RATE, "pcm")
    assert len(data) == 2 * len(samples)
    assert data == quantised(samples).tobytes()


def test_wav_is_read_by_the_wave_module():
    samples = sine()
    with wave.open(io.BytesIO(audio.encode(samples, RATE, "wav"))) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, RATE)
        assert wav.getnframes() == len(samples)


@pytest.mark.parametrize("response_format", EXPECTED_TYPES)
def test_stream_decodes_like_the_one_shot_encoding(response_format):
    samples = sine()
    decoded, rate = decode(b"".join(stream(response_format, samples)), response_format)
    whole, whole_rate = decode(audio.encode(samples, RATE, response_format), response_format)
    assert rate == whole_rate == OUTPUT_RATES.get(response_format, RATE)
    assert abs(len(decoded) - len(whole)) / rate <= SLACK[response_format] + 1e-9
    if response_format in LOSSLESS:
        assert np.array_equal(decoded, quantised(samples))


@pytest.mark.parametrize("response_format", EXPECTED_TYPES)
def test_stream_sends_audio_before_it_finishes(response_format):
    """What went out before finish() already plays as most of the audio fed so far."""
    samples = sine()
    parts = stream(response_format, samples)
    sent, _ = decode(b"".join(parts[:-1]), response_format)
    rate = OUTPUT_RATES.get(response_format, RATE)
    assert len(sent) / rate >= SECONDS - 0.25


@pytest.mark.parametrize("response_format", ["wav", "pcm"])
def test_uncompressed_stream_returns_each_chunk_at_once(response_format):
    samples = sine(0.3)
    encoder = audio.StreamEncoder(response_format, RATE)
    header = encoder.header()
    assert len(header) == (44 if response_format == "wav" else 0)
    assert encoder.feed(samples) == pcm16_reference(samples)
    assert encoder.finish() == b""


def test_streamed_wav_has_unknown_sizes_and_wave_reads_it_to_the_end():
    samples = sine()
    data = b"".join(stream("wav", samples))
    assert data[4:8] == data[40:44] == b"\xff\xff\xff\xff"
    with wave.open(io.BytesIO(data)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, RATE)
        assert wav.readframes(10 * len(samples)) == pcm16_reference(samples)


@pytest.mark.parametrize("streamed", [False, True], ids=["file", "stream"])
def test_wav_header_fields_read_by_hand(streamed):
    """Byte rate and block align are what players use to seek and time the audio."""
    samples = sine()
    data = b"".join(stream("wav", samples)) if streamed else audio.encode(samples, RATE, "wav")
    fields, pcm = wav_fields(data)
    assert (fields["fmt_size"], fields["format"], fields["channels"]) == (16, 1, 1)
    assert (fields["sample_rate"], fields["byte_rate"]) == (RATE, 2 * RATE)
    assert (fields["block_align"], fields["bits_per_sample"]) == (2, 16)
    assert fields["data_offset"] == 44
    if streamed:
        assert fields["riff_size"] == fields["data_size"] == 0xFFFFFFFF
    else:
        assert (fields["riff_size"], fields["data_size"]) == (len(data) - 8, 2 * len(samples))
    assert pcm == pcm16_reference(samples)


def test_pcm16_clips_overs_and_rounds_to_nearest_little_endian():
    samples = np.array([0.0, 1.0, -1.0, 1.5, -7.0, 0.5, -0.25, 1 / 32767], dtype=np.float32)
    expected = struct.pack("<8h", 0, 32767, -32767, 32767, -32767, 16384, -8192, 1)
    assert audio.encode(samples, RATE, "pcm") == expected
    encoder = audio.StreamEncoder("pcm", RATE)
    assert encoder.feed(samples) == expected


def test_header_comes_with_the_first_feed_when_not_asked_for():
    samples = sine(0.2)
    encoder = audio.StreamEncoder("wav", RATE)
    data = encoder.feed(samples)
    assert encoder.header() == b""
    assert len(data) == 44 + 2 * len(samples)


@pytest.mark.parametrize("response_format", EXPECTED_TYPES)
def test_feeding_after_finish_raises(response_format):
    encoder = audio.StreamEncoder(response_format, RATE)
    encoder.feed(sine(0.1))
    encoder.finish()
    with pytest.raises(RuntimeError, match="^the stream is already finished$"):
        encoder.feed(sine(0.1))
    with pytest.raises(RuntimeError, match="^the stream is already finished$"):
        encoder.finish()


def test_unknown_format_raises():
    with pytest.raises(ValueError, match="unsupported response_format 'avi'"):
        audio.StreamEncoder("avi", RATE)
    with pytest.raises(ValueError, match="unsupported response_format 'avi'"):
        audio.encode(sine(), RATE, "avi")


def dominant_frequency(samples: np.ndarray, rate: int) -> float:
    middle = samples[len(samples) // 4 : 3 * len(samples) // 4]
    spectrum = np.abs(np.fft.rfft(middle * np.hanning(len(middle))))
    return float(np.argmax(spectrum) * rate / len(middle))


@pytest.mark.parametrize("speed", [0.25, 0.5, 1.5, 2.0, 4.0])
def test_change_speed_scales_duration_and_keeps_pitch(speed):
    samples = sine()
    out = audio.change_speed(samples, RATE, speed)
    assert out.dtype == np.float32 and out.ndim == 1
    assert len(out) == pytest.approx(len(samples) / speed, rel=0.03)
    assert dominant_frequency(out, RATE) == pytest.approx(440.0, rel=0.02)


def test_change_speed_at_one_is_the_input():
    samples = sine()
    assert np.array_equal(audio.change_speed(samples, RATE, 1.0), samples)


@pytest.mark.parametrize("speed", [0.2, 4.5])
def test_change_speed_outside_the_range_raises(speed):
    with pytest.raises(ValueError):
        audio.change_speed(sine(), RATE, speed)


def test_join_chunks_puts_exactly_the_pause_between_chunks():
    pieces = [np.ones(1000, dtype=np.float32), np.ones(500, dtype=np.float32), np.ones(700, dtype=np.float32)]
    joined = audio.join_chunks(pieces, RATE)
    gap = int(round(audio.PAUSE_SECONDS * RATE))
    assert gap / RATE == audio.PAUSE_SECONDS
    assert len(joined) == 2200 + 2 * gap
    silent = np.flatnonzero(joined == 0)
    assert np.array_equal(silent, np.r_[1000 : 1000 + gap, 1500 + gap : 1500 + 2 * gap])


@pytest.mark.parametrize("speed", [0.25, 0.3, 0.5, 0.75, 1.5, 2.0, 2.5, 3.0, 4.0])
def test_atempo_runs_in_the_fewest_stages_it_plays_without_skipping(speed):
    """atempo skips audio past 2x and each extra stage costs time and quality."""
    stages = audio._atempo_stages(speed)
    assert all(0.5 <= stage <= 2.0 for stage in stages), stages
    assert math.prod(stages) == pytest.approx(speed)
    assert len(stages) == max(1, math.ceil(abs(math.log2(speed)) - 1e-9)), stages


def test_change_speed_takes_float64_and_a_row_of_samples():
    samples = sine()
    for given in (samples.astype(np.float64), samples.reshape(1, -1)):
        out = audio.change_speed(given, RATE, 2.0)
        assert out.dtype == np.float32 and out.ndim == 1
        assert len(out) == pytest.approx(len(samples) / 2.0, rel=0.03)


def test_change_speed_of_a_clip_too_short_for_atempo_is_empty_not_an_error():
    out = audio.change_speed(np.full(5, 0.1, dtype=np.float32), RATE, 2.0)
    assert out.dtype == np.float32 and out.shape == (0,)


def test_change_speed_outside_the_range_says_what_the_range_is():
    with pytest.raises(ValueError, match=r"between 0\.25 and 4\.0, not 9"):
        audio.change_speed(sine(), RATE, 9)


def test_a_whole_flac_file_states_its_length_and_checksum():
    """Written seekably, so the header is finished: players show the duration and can verify it."""
    samples = sine()
    data = audio.encode(samples, RATE, "flac")
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # the first metadata block is STREAMINFO
    info = data[8:42]
    packed = int.from_bytes(info[10:18], "big")
    rate, channels, bits, total = packed >> 44, ((packed >> 41) & 7) + 1, ((packed >> 36) & 31) + 1, packed & (2**36 - 1)
    assert (rate, channels, bits, total) == (RATE, 1, 16, len(samples))
    assert info[18:34] == hashlib.md5(pcm16_reference(samples)).digest()


@pytest.mark.parametrize("response_format", ["mp3", "aac", "flac"])
def test_a_live_stream_hands_over_each_chunk_s_audio_at_once(response_format):
    """Not held back until an I/O buffer fills: 0.3 s fed is (nearly) 0.3 s sent."""
    encoder = audio.StreamEncoder(response_format, RATE)
    samples = sine(0.3)
    sent = encoder.header() + encoder.feed(samples)
    decoded, rate = decode(sent, response_format)
    assert len(decoded) / rate >= 0.3 - 0.1


@pytest.mark.parametrize("streamed", [False, True], ids=["file", "stream"])
def test_ogg_opus_ends_exactly_where_the_audio_does(streamed):
    """Players take the duration from the last page's granule position less the pre-skip (RFC 7845)."""
    data = b"".join(stream("opus", sine())) if streamed else audio.encode(sine(), RATE, "opus")
    pages = [offset for offset in range(len(data) - 3) if data[offset : offset + 4] == b"OggS"]
    last_granule = struct.unpack_from("<q", data, pages[-1] + 6)[0]
    head = data.index(b"OpusHead")
    pre_skip = struct.unpack_from("<H", data, head + 10)[0]
    assert last_granule - pre_skip == round(SECONDS * 48000)


def test_joining_no_chunks_is_no_audio():
    joined = audio.join_chunks([], RATE)
    assert joined.dtype == np.float32 and joined.shape == (0,)


def test_join_chunks_takes_float64_and_rows_of_samples_and_gives_float32():
    pieces = [np.ones(100, dtype=np.float64), np.ones((1, 50), dtype=np.float32)]
    joined = audio.join_chunks(pieces, RATE)
    assert joined.dtype == np.float32 and joined.shape == (150 + int(round(audio.PAUSE_SECONDS * RATE)),)
