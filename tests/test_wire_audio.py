"""Audio as it arrives over HTTP: the WAV header read byte by byte, the samples against a reference.

``wave`` and PyAV read a WAV whatever its byte rate and block align say, but players use
them to time and seek the audio, so the fields are checked by hand. The samples are compared
with an independent PCM16 reference (tests/helpers.py) of exactly what the scripted engine
spoke, so a wrong byte order or scale shows in every format that carries raw PCM.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import pcm16_reference, wav_fields

HIBARI_RATE = 24_000
TEXT = "Every byte on the wire counts."


def assert_mono_16_bit(fields: dict[str, int], rate: int) -> None:
    assert (fields["fmt_size"], fields["format"], fields["channels"]) == (16, 1, 1), fields
    assert fields["sample_rate"] == rate, fields
    assert fields["byte_rate"] == 2 * rate, fields  # samples per second x 2 bytes
    assert (fields["block_align"], fields["bits_per_sample"]) == (2, 16), fields


@pytest.mark.parametrize("path", ["/v1/audio/speech", "/v1/audio/speech/stream"], ids=["file", "stream"])
async def test_the_embedded_voice_sends_a_wav_header_players_can_trust(make_client, path):
    client = await make_client()
    response = await client.post(path, json={"input": "The header tells a player how to play this."})
    assert response.status == 200
    assert response.headers["Content-Type"] == "audio/wav"
    data = await response.read()
    fields, pcm = wav_fields(data)
    assert_mono_16_bit(fields, HIBARI_RATE)
    assert fields["data_offset"] == 44
    if path.endswith("/stream"):  # its length was not known when the header went out
        assert fields["riff_size"] == fields["data_size"] == 0xFFFFFFFF
    else:
        assert (fields["riff_size"], fields["data_size"]) == (len(data) - 8, len(data) - 44)
    assert len(pcm) % 2 == 0
    samples = np.frombuffer(pcm, dtype="<i2")
    assert len(samples) / HIBARI_RATE > 0.5  # about two seconds of speech
    assert np.abs(samples.astype(np.int32)).max() > 1000  # and it is not silence


@pytest.mark.parametrize(
    "path, response_format",
    [
        ("/v1/audio/speech", "pcm"),
        ("/v1/audio/speech/stream", "pcm"),
        ("/v1/audio/speech", "wav"),
        ("/v1/audio/speech/stream", "wav"),
    ],
)
async def test_the_samples_on_the_wire_are_exactly_what_the_engine_spoke(make_client, scripted, path, response_format):
    client = await make_client(engine=scripted)
    response = await client.post(path, json={"input": TEXT, "response_format": response_format})
    assert response.status == 200
    data = await response.read()
    spoken = scripted.calls[-1]
    assert spoken == TEXT  # one chunk, as sent
    expected = pcm16_reference(scripted.tone(spoken))
    if response_format == "wav":
        fields, data = wav_fields(data)
        assert_mono_16_bit(fields, scripted.sample_rate)
    assert data == expected
