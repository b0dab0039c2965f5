"""Speech inside a chunk, as it is generated: the speech tokens of the three Chatterbox
classes are vocoded in windows while T3 still samples the next ones, so a streamed request
speaks after its first window instead of after its whole chunk.

Built on the library's own modules, not a rewrite of the model:

- T3's token loops (``t3.inference``, ``t3.inference_turbo``) embed each token they sample
  with ``t3.speech_emb`` before feeding it back; a forward hook there sees the tokens one by
  one (a batch, chatterbox_batch.py, hands them over itself). The loop's returned tokens
  are the chunk's in the end: the last one, sampled at the cap, is never embedded.
- S3Gen's flow (``flow_inference``) turns all the tokens so far into mel frames; the frames
  of the last tokens, which its lookahead (``pre_lookahead_len``) would see differently once
  more tokens come, are held back until the next window, and only frames not sent before
  are vocoded. (The flow's own ``finalize=False`` trims its frames but not its mask, and
  fails; so the window runs finalized and drops those frames itself.)
- S3Gen's HiFT vocoder (``hift_inference``) vocodes each window's new frames after the last
  MEL_CACHE_FRAMES frames of the window before, reusing that window's excitation source
  (``cache_source``); the overlapping samples are cross-faded with a Hamming window, as
  CosyVoice's streaming does, so windows join without clicks. The samples of a chunk add up
  to exactly what one pass over all its tokens makes (frames x 480).

The first window is short (FIRST_WINDOW_TOKENS) so the first audio comes early; each later
one is at least WINDOW_TOKENS and as long as all before it, since each window runs the flow
over every token so far (and over the voice prompt's frames, a fixed cost per window): a
chunk of n tokens takes about log2(n / 10) windows, not n / 25.
Each window is watermarked as ``generate`` watermarks a whole chunk, and the start of the
chunk is faded in as ``S3Gen.inference`` fades it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import AudioFn

# Tokens (25 a second) before the first window, and the least between later ones.
FIRST_WINDOW_TOKENS = 10
WINDOW_TOKENS = 25
# Mel frames (50 a second) each window re-vocodes of the one before, and samples a frame makes.
MEL_CACHE_FRAMES = 8
SAMPLES_PER_FRAME = 480
# T3's speech vocabulary: tokens from here on are control tokens (start, stop, padding).
SPEECH_VOCABULARY = 6561


class WindowedVocoder:
    """Collects the tokens T3 samples and hands out audio a window at a time."""

    def __init__(self, model: Any, on_audio: AudioFn, conds: Any) -> None:
        import torch

        self._torch = torch
        self.model = model
        self.on_audio = on_audio
        self.conds = conds  # the voice's prepared conditionals: S3Gen's reference
        self.start_token = int(model.t3.hp.start_speech_token)
        self.tokens: list[int] = []
        self.sampling = False  # T3 embeds the voice prompt's tokens first, then its start token
        self.next_window = FIRST_WINDOW_TOKENS
        self.frames_sent = 0
        self.cache_mel: Any = None
        self.cache_source = torch.zeros(1, 1, 0, device=model.device)
        self.cache_speech: Any = None
        self.windows = 0
        # Vocoding draws noise; T3 samples on from the random state it would have had without it,
        # so a seeded chunk gets the same tokens streamed or not.
        self._devices = [torch.cuda.current_device()] if str(model.device).startswith("cuda") else []

    def on_embedding(self, module: Any, args: Any, output: Any) -> None:
        """Forward hook on ``t3.speech_emb`` (one chunk alone): each sampled token passes here once."""
        tokens = args[0]
        if tokens.numel() != 1:
            return
        token = int(tokens.reshape(-1)[0])
        if not self.sampling:
            self.sampling = token == self.start_token
            return
        self.add(token)

    def add(self, token: int) -> None:
        """One sampled token (a batch hands them here itself); a window is vocoded once enough came."""
        if token < SPEECH_VOCABULARY:
            self.tokens.append(token)
        if len(self.tokens) >= self.next_window:
            with self._torch.random.fork_rng(devices=self._devices):
                self._vocode(finalize=False)
            self.next_window = len(self.tokens) + max(WINDOW_TOKENS, len(self.tokens))

    def finish(self, tokens: list[int]) -> np.ndarray:
        """After T3 has stopped: the chunk's last audio (every frame, the lookahead's too), of
        ``tokens``, the chunk's speech tokens as the loop returned them (the windows' so far,
        then any the hook never saw, and what ``generate`` appends)."""
        self.tokens = tokens
        return self._vocode(finalize=True)

    def _vocode(self, finalize: bool) -> np.ndarray:
        torch, s3gen = self._torch, self.model.s3gen
        empty = np.zeros(0, dtype=np.float32)
        if not self.tokens:
            return empty
        tokens = torch.tensor([self.tokens], dtype=torch.long, device=self.model.device)
        mels = s3gen.flow_inference(tokens, ref_dict=self.conds.gen, finalize=True)
        if not finalize:
            mels = mels[:, :, : -s3gen.flow.pre_lookahead_len * s3gen.flow.token_mel_ratio]
        new = mels[:, :, self.frames_sent :].to(dtype=s3gen.dtype)
        if new.shape[2] == 0 and not finalize:
            return empty
        self.frames_sent = mels.shape[2]
        frames = new if self.cache_mel is None else torch.cat([self.cache_mel, new], dim=2)
        wav, source = s3gen.hift_inference(frames, self.cache_source)
        wav = wav[0]
        if self.cache_speech is None:
            fade = s3gen.trim_fade  # the chunk's start, as S3Gen.inference fades it
            wav[: len(fade)] *= fade[: len(wav)]
        else:
            overlap = len(self.cache_speech)
            window = torch.from_numpy(np.hamming(2 * overlap)).to(wav)
            wav[:overlap] = wav[:overlap] * window[:overlap] + self.cache_speech * window[overlap:]
        if not finalize:
            held = MEL_CACHE_FRAMES * SAMPLES_PER_FRAME
            self.cache_mel = frames[:, :, -MEL_CACHE_FRAMES:]
            self.cache_source = source[:, :, -held:]
            self.cache_speech = wav[-held:].clone()
            wav = wav[:-held]
        samples = wav.detach().cpu().numpy().astype(np.float32)
        samples = self.model.watermarker.apply_watermark(samples, sample_rate=self.model.sr).astype(np.float32)
        if finalize:
            return samples
        self.windows += 1
        self.on_audio(samples)
        return empty
