"""The Chatterbox engines: ChatterboxTTS, ChatterboxMultilingualTTS and ChatterboxTurboTTS.

The library is imported only in ``load`` (torch takes seconds to import), on the engine
thread, which alone touches the model: ``generate`` mutates the model's conditionals and
draws from torch's global RNG, so seeding right before it makes a seed reproducible.

Progress inside a chunk comes from the T3 token loop: a forward pre-hook on the
backbone runs once for the prompt and once per speech token, reports the fraction of the
expected tokens (estimated from the text, corrected as tokens arrive) and checks for
cancellation, so a cancelled request stops within one token. S3Gen's flow-matching steps
check it too.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import importlib
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .base import AudioFn, Cancelled, ChunkRequest, EngineError, ProgressFn, SynthesisParams, Voice
from .chatterbox_batch import MAX_NEW_TOKENS, BatchedSequence, sample_together
from .chatterbox_stream import SPEECH_VOCABULARY, WindowedVocoder

# chatterbox.models.s3gen.const.S3GEN_SIL, the token of silence.
S3GEN_SILENCE = 4299

log = logging.getLogger(__name__)

CLASSES = {
    "chatterbox": ("chatterbox.tts", "ChatterboxTTS"),
    "chatterbox-multilingual": ("chatterbox.mtl_tts", "ChatterboxMultilingualTTS"),
    "chatterbox-turbo": ("chatterbox.tts_turbo", "ChatterboxTurboTTS"),
}
# Voices whose conditionals stay prepared; a voice costs a few MB of tensors.
CONDITIONALS_CACHE_SIZE = 16
# Speech tokens (25 per second) per input character before any chunk was measured:
# about 14 characters are spoken per second.
INITIAL_TOKENS_PER_CHAR = 25 / 14
# Weight of the newest chunk in the tokens-per-character moving average.
TOKENS_PER_CHAR_ALPHA = 0.3
# Share of a chunk's progress earned by the token loop; S3Gen's vocoding earns the rest.
TOKEN_SHARE = 0.8
# What each class's ``generate`` samples with when a request leaves these out.
GENERATE_DEFAULTS = {
    "chatterbox": {"repetition_penalty": 1.2, "min_p": 0.05, "top_p": 1.0},
    "chatterbox-multilingual": {"repetition_penalty": 2.0, "min_p": 0.05, "top_p": 1.0},
    "chatterbox-turbo": {"repetition_penalty": 1.2, "top_p": 0.95, "top_k": 1000},
}
# Silence tokens ChatterboxTurboTTS.generate ends a chunk's speech tokens with, and its
# vocoder's flow-matching steps (a meanflow S3Gen).
TURBO_TAIL_TOKENS = 3
TURBO_CFM_STEPS = 2
# The engines whose chunks can be spoken as they are generated (chatterbox_stream.py): all
# three, whose token loops embed each sampled token with ``t3.speech_emb``. Only on a GPU,
# where S3Gen's passes are short beside T3's token loop. Every window is a pass over the voice
# prompt's frames again, which on a CPU costs seconds: there the first window is heard early
# (at a quarter of the chunk with the real T3), but the chunk takes twice as long in all,
# which halves what a CPU, already slower than real time, gets through (docs/benchmarks.rst,
# "Streaming within a chunk").
STREAMING_ENGINES = tuple(CLASSES)
# The engines whose concurrent chunks are stepped together through T3 (chatterbox_batch.py):
# the multilingual model's token loop is steered by an alignment analyser that follows one
# sequence's attention (forward hooks on three heads, reading row 0 of the batch), so it runs
# one chunk at a time.
BATCHING_ENGINES = ("chatterbox", "chatterbox-turbo")
# MAX_BATCH_SIZE=0 chooses by device: on CUDA eight requests' key/value caches (about 0.6 GB
# each at 1000 tokens in float32) fit beside the model on a 24 GB card; on a CPU the real
# T3's token loop is most of a chunk, and four requests stepped together sample 2.9 times as
# many tokens a second as one at a time (docs/benchmarks.rst, "Batching across requests").
AUTO_BATCH_SIZE = {"cuda": 8, "cpu": 4}
# ChatterboxTTS crashes with cfg_weight=0 (it builds one text row for a two-row batch),
# so "no guidance" runs with a weight too small to change the result.
NO_GUIDANCE = 1e-6


def kind_streams(kind: str, device: str) -> bool:
    """Whether chunks of ``kind`` on ``device`` are spoken a window at a time (see STREAMING_ENGINES)."""
    return kind in STREAMING_ENGINES and device != "cpu"


def batch_size_for(kind: str, device: str, requested: int) -> int:
    """How many chunks ``kind`` on ``device`` steps together (MAX_BATCH_SIZE, 0 = by device)."""
    if kind not in BATCHING_ENGINES:
        return 1
    return requested or AUTO_BATCH_SIZE.get(device.split(":")[0], 1)


def pick_device(requested: str, torch: Any) -> str:
    """cuda, then mps, then cpu for "auto"; an explicit device must exist."""
    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise EngineError(f"DEVICE={requested} but torch sees no CUDA device")
    if requested == "mps" and not torch.backends.mps.is_available():
        raise EngineError("DEVICE=mps but torch sees no MPS device")
    return requested


@dataclass
class _Chunk:
    """The chunk being generated, as the token hook sees it."""

    expected_tokens: float
    progress: ProgressFn
    cancel: threading.Event
    calls: int = 0

    @property
    def tokens(self) -> int:
        return max(0, self.calls - 1)  # the first call is the prompt

    def advance(self, tokens: int) -> None:
        """``tokens`` sampled so far: stop here if cancelled, else report the fraction."""
        if self.cancel.is_set():
            raise Cancelled()
        if tokens:
            # The estimate only ever grows, so the fraction approaches but never reaches 1.
            self.expected_tokens = max(self.expected_tokens, tokens + 1)
            self.progress(TOKEN_SHARE * tokens / self.expected_tokens)


class ChatterboxEngine:
    supports_cloning = True
    speed_range = None  # no tempo control: the pipeline time-stretches

    def __init__(
        self, kind: str, device: str = "auto", model_dir: str | None = None, cache_dir: str | None = None, max_batch_size: int = 0
    ):
        if kind not in CLASSES:
            raise ValueError(f"unknown chatterbox engine {kind!r}")
        self.name = kind
        # Both decided once the device is known (load).
        self.streams_within_chunk = False
        self.max_batch_size = 1
        self._requested_batch_size = max_batch_size
        self.device = device
        self.sample_rate = 24_000
        self.languages: dict[str, str] = {"en": "English"}
        self.model: Any = None
        self.tokens_per_char = INITIAL_TOKENS_PER_CHAR
        self.conditionals: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self._model_dir = model_dir
        self._cache_dir = cache_dir
        self._builtin: Any = None
        self._chunk: _Chunk | None = None
        self._torch: Any = None
        # Speech tokens a batched chunk may sample (the library's loops stop at 1000 too).
        self.max_new_tokens = MAX_NEW_TOKENS

    # -- loading -------------------------------------------------------------------

    def load(self, progress: ProgressFn) -> None:
        if self._cache_dir and not self._model_dir:
            os.environ.setdefault("HF_HUB_CACHE", self._cache_dir)
        import torch

        self._torch = torch
        module_name, class_name = CLASSES[self.name]
        cls = getattr(importlib.import_module(module_name), class_name)
        progress(0.1)
        self.device = pick_device(self.device, torch)
        self.streams_within_chunk = kind_streams(self.name, self.device)
        self.max_batch_size = batch_size_for(self.name, self.device, self._requested_batch_size)
        self.model = self._load_model(cls, self.device)
        progress(0.9)
        self.sample_rate = int(self.model.sr)
        self._builtin = self.model.conds
        if self.name == "chatterbox-multilingual":
            self.languages = dict(cls.get_supported_languages())
        self.model.t3.tfmr.register_forward_pre_hook(self._on_step, with_kwargs=True)
        self._check_cancel_in_vocoder()
        progress(1.0)

    def _load_model(self, cls: Any, device: str) -> Any:
        """From MODEL_DIR when given, else from the hub (cached under MODEL_CACHE_DIR)."""
        if self._model_dir:
            return cls.from_local(Path(self._model_dir), device)
        return cls.from_pretrained(device)

    def _check_cancel_in_vocoder(self) -> None:
        """S3Gen calls its estimator's ``forward`` directly (hooks never fire), once per
        flow-matching step: wrap it on this instance so cancellation lands there too."""
        try:
            estimator = self.model.s3gen.flow.decoder.estimator
        except AttributeError:
            log.warning("chatterbox: S3Gen's estimator not found; cancellation waits for the vocoder")
            return
        forward = estimator.forward

        def checked_forward(*args: Any, **kwargs: Any) -> Any:
            chunk = self._chunk
            if chunk is not None and chunk.cancel.is_set():
                raise Cancelled()
            return forward(*args, **kwargs)

        estimator.forward = checked_forward

    # -- one token ---------------------------------------------------------------------

    def _on_step(self, module: Any, args: Any, kwargs: Any) -> None:
        chunk = self._chunk
        if chunk is None:
            return
        if chunk.cancel.is_set():
            raise Cancelled()
        chunk.calls += 1
        chunk.advance(chunk.tokens)

    # -- one chunk ---------------------------------------------------------------------

    def synthesize(
        self,
        text: str,
        voice: Voice,
        params: SynthesisParams,
        progress: ProgressFn,
        cancel: threading.Event,
        on_audio: AudioFn | None = None,
    ) -> np.ndarray:
        """One chunk; with ``on_audio`` (engines that stream within a chunk), its audio goes
        out a window at a time as it is generated and the return value is the last window."""
        if self.model is None:
            raise EngineError(f"{self.name} engine used before load()")
        if cancel.is_set():
            raise Cancelled()
        self.model.conds = self._conditionals_for(voice, params)
        torch = self._torch
        if params.seed is not None:
            torch.manual_seed(params.seed)
            if torch.cuda.is_available():
                torch.cuda.manual_seed_all(params.seed)
        self._chunk = self._start_chunk(text, progress, cancel)
        hooks_before = _forward_hooks(self.model.t3.tfmr)
        try:
            if on_audio is not None and self.streams_within_chunk:
                wav = self._generate_in_windows(text, params, on_audio)
            else:
                wav = self.model.generate(text, **self._generate_kwargs(params))
            tokens = self._chunk.tokens
        finally:
            self._chunk = None
            _remove_hooks_since(self.model.t3.tfmr, hooks_before)
        self._learn_pace(text, tokens)
        progress(1.0)
        return wav.squeeze(0).detach().cpu().numpy().astype(np.float32)

    def _start_chunk(self, text: str, progress: ProgressFn, cancel: threading.Event) -> _Chunk:
        return _Chunk(max(1.0, len(text) * self.tokens_per_char), progress, cancel)

    def _learn_pace(self, text: str, tokens: int) -> None:
        """Fold a finished chunk's speech tokens per character into the estimate."""
        if tokens:
            sample = tokens / max(1, len(text))
            self.tokens_per_char += TOKENS_PER_CHAR_ALPHA * (sample - self.tokens_per_char)

    def synthesize_batch(self, chunks: Sequence[ChunkRequest]) -> None:
        """Several requests' chunks at once: T3 steps them together (chatterbox_batch), and
        each is vocoded, and replied to, as soon as its tokens are done (the others wait that
        one vocoding). A chunk cancelled or failed leaves the batch at once; the others go on."""
        if self.model is None:
            raise EngineError(f"{self.name} engine used before load()")
        sequences: dict[BatchedSequence, tuple[ChunkRequest, _Chunk, Any, WindowedVocoder | None]] = {}
        for chunk in chunks:
            try:
                if chunk.cancel.is_set():
                    raise Cancelled()
                state = self._start_chunk(chunk.text, chunk.progress, chunk.cancel)
                sequence, conds = self._sequence_for(chunk, state)
                windows = None
                if chunk.on_audio is not None and self.streams_within_chunk:
                    windows = WindowedVocoder(self.model, chunk.on_audio, conds)
                    sequence.on_token = functools.partial(_stream_token, state, windows, sequence)
                sequences[sequence] = (chunk, state, conds, windows)
            except Exception as exc:  # Cancelled included: it is this chunk's reply
                chunk.reply(exc)

        def vocode(sequence: BatchedSequence) -> None:
            chunk, state, conds, windows = sequences.pop(sequence)
            chunk.reply(sequence.error or self._vocode(chunk, sequence.tokens, state, conds, windows))

        try:
            with self._torch.inference_mode():
                sample_together(self.model.t3, list(sequences), vocode)
        except Exception as exc:  # the batch itself failed (out of memory): every chunk still in it
            for chunk, *_ in sequences.values():
                chunk.reply(exc)

    def _sequence_for(self, chunk: ChunkRequest, state: _Chunk) -> tuple[Any, Any]:
        """A chunk as ``chatterbox_batch`` samples it: what the class's ``generate`` gives its
        token loop, with the request's own random generator."""
        torch, model = self._torch, self.model
        conds = self._conditionals_for(chunk.voice, chunk.params)
        kwargs = self._sampling(chunk.params)
        generator = torch.Generator(device=model.device)
        if chunk.params.seed is not None:
            generator.manual_seed(chunk.params.seed)
        else:
            generator.seed()
        sequence = BatchedSequence(
            t3_cond=conds.t3 if self.name == "chatterbox-turbo" else self._t3_cond(conds, kwargs["exaggeration"]),
            text_tokens=self._text_tokens(chunk.text, chunk.params.language),
            cfg_weight=kwargs["cfg_weight"],
            temperature=kwargs["temperature"],
            repetition_penalty=kwargs["repetition_penalty"],
            min_p=kwargs["min_p"],
            top_p=kwargs["top_p"],
            top_k=kwargs.get("top_k", 0),
            generator=generator,
            on_token=state.advance,
            max_new_tokens=self.max_new_tokens,
        )
        return sequence, conds

    def _vocode(
        self, chunk: ChunkRequest, tokens: list[int], state: _Chunk, conds: Any, windows: WindowedVocoder | None
    ) -> np.ndarray | BaseException:
        """A batched chunk's tokens into its audio, as ``generate`` makes it (S3Gen, watermark),
        or, streamed, its last window; S3Gen's steps check this chunk's cancellation."""
        torch, model = self._torch, self.model
        speech = self._speech_of(tokens)
        # Turbo's S3Gen (meanflow) takes two flow-matching steps, as ChatterboxTurboTTS.generate asks.
        steps = {"n_cfm_timesteps": TURBO_CFM_STEPS} if self.name == "chatterbox-turbo" else {}
        self._chunk = state
        try:
            if windows is not None:
                wav = windows.finish(speech)
            elif not speech:
                wav = np.zeros(0, dtype=np.float32)
            else:
                out, _ = model.s3gen.inference(speech_tokens=torch.tensor(speech, device=model.device), ref_dict=conds.gen, **steps)
                wav = model.watermarker.apply_watermark(out.squeeze(0).detach().cpu().numpy(), sample_rate=model.sr)
        except Exception as exc:  # Cancelled included: it is this chunk's result
            return exc
        finally:
            self._chunk = None
        self._learn_pace(chunk.text, len(tokens))
        chunk.progress(1.0)
        return np.asarray(wav, dtype=np.float32)

    def _t3_cond(self, conds: Any, exaggeration: float) -> Any:
        """The voice's T3 condition, with the request's exaggeration (a new one when it
        differs, as ``generate`` makes it, leaving the cached conditionals alone)."""
        from chatterbox.models.t3.modules.cond_enc import T3Cond

        cond = conds.t3
        if exaggeration == cond.emotion_adv[0, 0, 0]:
            return cond
        return T3Cond(
            speaker_emb=cond.speaker_emb,
            cond_prompt_speech_tokens=cond.cond_prompt_speech_tokens,
            emotion_adv=exaggeration * self._torch.ones(1, 1, 1),
        ).to(device=self.model.device)

    def _speech_of(self, tokens: list[int]) -> list[int]:
        """The speech tokens S3Gen gets of what the token loop sampled, as ``generate`` hands
        them over: control tokens left out, and turbo's silence at the end."""
        speech = [token for token in tokens if token < SPEECH_VOCABULARY]
        return speech + [S3GEN_SILENCE] * TURBO_TAIL_TOKENS if self.name == "chatterbox-turbo" else speech

    def _sampling(self, params: SynthesisParams) -> dict[str, Any]:
        """Everything the class's token loop samples with: the request's, else ``generate``'s defaults."""
        return {**GENERATE_DEFAULTS[self.name], **self._generate_kwargs(params)}

    def _text_tokens(self, text: str, language: str | None) -> Any:
        """A chunk's text tokens as the class's ``generate`` makes them: turbo's one row, or the
        guidance pair between start and stop tokens (in ``language``, for the multilingual model)."""
        module = importlib.import_module(CLASSES[self.name][0])
        torch, model, text = self._torch, self.model, module.punc_norm(text)
        if self.name == "chatterbox-turbo":
            return model.tokenizer(text, return_tensors="pt", padding=True, truncation=True).input_ids.to(model.device)
        if self.name == "chatterbox-multilingual":
            tokens = model.tokenizer.text_to_tokens(text, language_id=(language or "en").lower())
        else:
            tokens = model.tokenizer.text_to_tokens(text)
        tokens = torch.cat([tokens, tokens], dim=0).to(model.device)
        tokens = torch.nn.functional.pad(tokens, (1, 0), value=model.t3.hp.start_text_token)
        return torch.nn.functional.pad(tokens, (0, 1), value=model.t3.hp.stop_text_token)

    def _generate_in_windows(self, text: str, params: SynthesisParams, on_audio: AudioFn) -> Any:
        """What the class's ``generate`` does, with T3's tokens vocoded in windows as they are
        sampled (chatterbox_stream.WindowedVocoder); the chunk's last window is returned."""
        torch, model = self._torch, self.model
        kwargs = self._sampling(params)
        text_tokens = self._text_tokens(text, kwargs.pop("language_id", None))
        exaggeration = kwargs.pop("exaggeration")
        vocoder = WindowedVocoder(model, on_audio, model.conds)
        hook = model.t3.speech_emb.register_forward_hook(vocoder.on_embedding)
        try:
            with torch.inference_mode():
                if self.name == "chatterbox-turbo":
                    sampling = {name: kwargs[name] for name in ("temperature", "top_k", "top_p", "repetition_penalty")}
                    tokens = model.t3.inference_turbo(t3_cond=model.conds.t3, text_tokens=text_tokens, **sampling)
                else:
                    t3_cond = self._t3_cond(model.conds, exaggeration)
                    tokens = model.t3.inference(t3_cond=t3_cond, text_tokens=text_tokens, max_new_tokens=MAX_NEW_TOKENS, **kwargs)
                # The loop's own list: its last token (at the cap) was never embedded, so never seen.
                last = vocoder.finish(self._speech_of(tokens[0].tolist()))
        finally:
            hook.remove()
        return torch.from_numpy(last).unsqueeze(0)

    def _generate_kwargs(self, params: SynthesisParams) -> dict[str, Any]:
        sampling = {
            name: value
            for name in ("repetition_penalty", "min_p", "top_p")
            if (value := getattr(params, name)) is not None
        }
        if self.name == "chatterbox-turbo":
            # Turbo has no guidance, exaggeration or min_p (it warns when they are set).
            return {"temperature": params.temperature, **sampling, "min_p": 0.0, "exaggeration": 0.0, "cfg_weight": 0.0}
        kwargs = {
            "exaggeration": params.exaggeration,
            "cfg_weight": params.cfg_weight or NO_GUIDANCE,
            "temperature": params.temperature,
            **sampling,
        }
        if self.name == "chatterbox-multilingual":
            kwargs["language_id"] = params.language or "en"
        return kwargs

    def _conditionals_for(self, voice: Voice, params: SynthesisParams) -> Any:
        """The voice's prepared conditionals, from the cache keyed by the file's content.

        A new exaggeration needs no new preparation: ``generate`` swaps in a T3 condition
        with the new emotion value and keeps the prepared speaker data.
        """
        if voice.path is None:
            if self._builtin is None:
                raise EngineError("this model has no built-in voice: set VOICE_SAMPLE_PATH or pass a voice")
            return self._builtin
        key = hashlib.sha256(Path(voice.path).read_bytes()).hexdigest()
        if key in self.conditionals:
            self.conditionals.move_to_end(key)
            return self.conditionals[key]
        self.model.prepare_conditionals(voice.path, exaggeration=params.exaggeration)
        self.conditionals[key] = self.model.conds
        if len(self.conditionals) > CONDITIONALS_CACHE_SIZE:
            self.conditionals.popitem(last=False)
        return self.model.conds


def _stream_token(state: _Chunk, windows: WindowedVocoder, sequence: BatchedSequence, tokens: int) -> None:
    """A streamed chunk's token in a batch: progress and cancellation, then its windows."""
    state.advance(tokens)
    windows.add(sequence.tokens[-1])


def _forward_hooks(module: Any) -> dict[int, set[int]]:
    """Which forward hooks each submodule has now (by hook id)."""
    return {id(sub): set(sub._forward_hooks) for sub in module.modules()}


def _remove_hooks_since(module: Any, before: dict[int, set[int]]) -> None:
    """Remove forward hooks added during a call: ChatterboxMultilingualTTS registers three
    attention hooks per ``generate`` and never removes them, so they would pile up."""
    for sub in module.modules():
        for hook_id in set(sub._forward_hooks) - before.get(id(sub), set()):
            sub._forward_hooks.pop(hook_id, None)
            sub._forward_hooks_with_kwargs.pop(hook_id, None)
            sub._forward_hooks_always_called.pop(hook_id, None)
