"""Long-text jobs on a real server process with the embedded hibari voice: a SIGKILL in
the middle of a job loses nothing, and what the job says can be recognised."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import wave
from pathlib import Path

import av
import numpy as np
import pytest
from helpers import clean_environ, free_port, http, stop, wait_healthy

SENTENCES = [
    f"Chapter {n}. The harbour town was quiet when the fishing boats came home at dusk."
    for n in range(1, 61)
]
LONG = " ".join(SENTENCES)
LONG_TEXT_ENV = ("DATA_DIR", "LONG_TEXT_MAX_LENGTH", "LONG_TEXT_MAX_CONCURRENT_JOBS", "LONG_TEXT_MAX_DISK_MB",
                 "LONG_TEXT_JOB_RETENTION_DAYS", "LONG_TEXT_SILENCE_PADDING_MS")

class Server:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.process: subprocess.Popen | None = None
        self.base = ""
        self.runs = 0

    def start(self) -> None:
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        self.runs += 1
        self.log_path = self.tmp_path / f"serve-{self.runs}.log"
        env = {k: v for k, v in clean_environ().items() if k not in LONG_TEXT_ENV}
        env.update(DATA_DIR=str(self.tmp_path / "data"), MAX_CHUNK_LENGTH="90", ENGINE="hibari")
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "chatterbox_status", "serve", "--host", "127.0.0.1", "--port", str(port)],
                cwd=self.tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
            )
        wait_healthy(self.base, self.process, self.log_path, deadline_s=90)

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
        status, _, raw = http(method, self.base + path, body, timeout=60)
        return status, raw

    def json(self, method: str, path: str, body: dict | None = None) -> dict:
        status, raw = self.call(method, path, body)
        assert status == 200, raw[:500]
        return json.loads(raw)

    def wait(self, job_id: str, until, deadline_s: float) -> dict:
        """Poll the job until ``until(view)``; fail if the server dies or time runs out."""
        deadline = time.monotonic() + deadline_s
        view: dict = {}
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                pytest.fail(f"server exited:\n{self.log_path.read_text(errors='replace')}")
            view = self.json("GET", f"/audio/speech/long/{job_id}")
            if until(view):
                return view
            time.sleep(0.02)  # poll interval, not synchronisation: the deadline loop decides
        pytest.fail(f"job {job_id} did not get there in {deadline_s}s; last view: {view}")

    def download(self, job_id: str) -> bytes:
        status, raw = self.call("GET", f"/audio/speech/long/{job_id}/download")
        assert status == 200, raw[:500]
        return raw


@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path)
    yield s
    if s.process is not None:
        stop(s.process)


def pcm_of(wav_bytes: bytes) -> tuple[int, np.ndarray]:
    with wave.open(io.BytesIO(wav_bytes)) as w:
        assert w.getnchannels() == 1 and w.getsampwidth() == 2
        return w.getframerate(), np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")


def test_sigkill_mid_job_then_restart_completes_the_same_audio(server):
    server.start()
    body = {"input": LONG, "response_format": "wav", "seed": 1234}
    created = server.json("POST", "/v1/audio/speech/long", body)
    job_id, total = created["job_id"], created["total_chunks"]
    assert total >= 40
    view = server.wait(job_id, lambda v: v["progress"]["completed_chunks"] >= 5, deadline_s=120)
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait(timeout=30)
    assert view["status"] == "processing", view
    done_before_kill = view["progress"]["completed_chunks"]
    assert done_before_kill < total

    server.start()
    after = server.json("GET", f"/audio/speech/long/{job_id}")
    assert after["status"] in ("pending", "processing", "completed")
    assert after["progress"]["completed_chunks"] >= done_before_kill  # nothing finished was lost
    view = server.wait(job_id, lambda v: v["status"] in ("completed", "failed"), deadline_s=300)
    assert view["status"] == "completed", view
    interrupted = server.download(job_id)

    # The same text and seed, uninterrupted.
    again = server.json("POST", "/audio/speech/long", body)["job_id"]
    server.wait(again, lambda v: v["status"] in ("completed", "failed"), deadline_s=300)
    reference = server.download(again)

    rate, pcm = pcm_of(interrupted)
    ref_rate, ref_pcm = pcm_of(reference)
    assert rate == ref_rate == 24_000
    assert len(pcm) == len(ref_pcm)
    assert len(pcm) / rate > 60  # the whole text
    assert np.array_equal(pcm, ref_pcm)  # bit-identical PCM


# --- what the job says ------------------------------------------------------------------

SPOKEN = (
    "The weather was warm and the sky was blue. "
    "We walked along the river to the old stone bridge. "
    "My brother carried the bread and the cheese for lunch. "
    "In the evening we came back home and read a good book."
)


def to_16k_int16(pcm: np.ndarray, rate: int) -> bytes:
    """Mono int16 at 16 kHz, resampled with FFmpeg's resampler through PyAV."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=16_000)
    frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = rate
    out = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    out += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(out).astype("<i2").tobytes()


def transcribe(raw16k: bytes) -> list[str]:
    from pocketsphinx import Decoder

    decoder = Decoder(samprate=16_000, loglevel="FATAL")
    decoder.start_utt()
    decoder.process_raw(raw16k, full_utt=True)
    decoder.end_utt()
    hyp = decoder.hyp()
    return [] if hyp is None else hyp.hypstr.lower().split()


def word_error_rate(reference: list[str], hypothesis: list[str]) -> float:
    previous = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, start=1):
        current = [i]
        for j, hyp in enumerate(hypothesis, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref != hyp)))
        previous = current
    return previous[-1] / len(reference)


def test_a_multi_chunk_jobs_audio_says_the_text_in_order(server):
    pytest.importorskip("pocketsphinx")
    server.start()
    created = server.json("POST", "/audio/speech/long", {"input": SPOKEN, "response_format": "wav", "seed": 7})
    assert created["total_chunks"] >= 3
    server.wait(created["job_id"], lambda v: v["status"] in ("completed", "failed"), deadline_s=120)
    rate, pcm = pcm_of(server.download(created["job_id"]))
    words = transcribe(to_16k_int16(pcm, rate))
    reference = [w.strip(".,").lower() for w in SPOKEN.split()]
    wer = word_error_rate(reference, words)
    print(f"WER {wer:.3f}: {' '.join(words)}")
    assert wer < 0.35, (wer, " ".join(words))
