"""Tiny, offline, random-weight Chatterbox checkpoints for tests.

Builds a REAL chatterbox-tts 0.1.7 model (the library's own ``T3``,
``S3Gen``, ``VoiceEncoder``, tokenizers and ``Conditionals``) with random
weights on CPU, and writes it as a checkpoint folder that the library's own
``Cls.from_local(ckpt_dir, device)`` loads -- the same path real users take.

Typical use::

    from tests.chatterbox_support import tiny_model as tm   # or sys.path
    ckpt = tm.build_checkpoint("chatterbox", tmp_path / "cb")
    model = tm.load_model("chatterbox", ckpt)         # = from_local inside tm.loading()
    wav = model.generate("Hello there.")              # uses the built-in conds.pt voice
    # -> torch.float32 tensor (1, samples) at model.sr == 24000

Kinds, classes and the files ``build_checkpoint`` writes
(all kinds also write ``reference.wav`` -- the synthetic clip the voice in
``conds.pt`` was prepared from -- and ``tiny_model.json`` -- the build
recipe; ``from_local`` ignores both):

=========================  ============================  ==========================================
kind                       class                         files read by ``from_local``
=========================  ============================  ==========================================
chatterbox                 chatterbox.tts.ChatterboxTTS  ve.safetensors, t3_cfg.safetensors,
                                                         s3gen.safetensors, tokenizer.json, conds.pt
chatterbox-multilingual    chatterbox.mtl_tts.           ve.pt, t3_mtl23ls_v2.safetensors, s3gen.pt,
                           ChatterboxMultilingualTTS     grapheme_mtl_merged_expanded_v1.json,
                                                         conds.pt, and (via hf_hub_download with
                                                         cache_dir=ckpt_dir) the HF-cache layout
                                                         models--ResembleAI--chatterbox/.../
                                                         Cangjie5_TC.json (zh front end)
chatterbox-turbo           chatterbox.tts_turbo.         ve.safetensors, t3_turbo_v1.safetensors,
                           ChatterboxTurboTTS            s3gen_meanflow.safetensors, tokenizer.json +
                                                         tokenizer_config.json (AutoTokenizer),
                                                         conds.pt
=========================  ============================  ==========================================

What is tiny and what is not:

* T3 (the token LM).  ``T3.__init__`` takes its backbone config from the
  module-global dict ``chatterbox.models.t3.llama_configs.LLAMA_CONFIGS``
  keyed by ``hp.llama_config_name`` ("Llama_520M" for chatterbox and
  multilingual, "GPT2_medium" for turbo), and ``from_local`` always builds
  ``T3()`` / ``T3(T3Config.multilingual())`` / a turbo ``T3Config`` itself.
  So the ONLY way to make ``from_local`` build a tiny T3 is to patch those
  dict entries while it runs: use ``with loading(): Cls.from_local(...)``
  (or ``load_model``).  Without the patch, ``from_local`` builds the
  full-size 520M backbone and ``load_state_dict`` fails on shape mismatch.

  - Llama (chatterbox, multilingual): hidden_size must stay 1024 because the
    Perceiver resampler (``T3CondEnc.perceiver = Perceiver()``) hard-codes
    1024.  Shrunk instead: head_dim 64 -> 4, intermediate 4096 -> 32,
    layers 30 -> 14.  14 layers x 16 heads is the minimum for the
    multilingual ``AlignmentStreamAnalyzer`` (it spies on layers 9, 12, 13,
    head up to 15: ``LLAMA_ALIGNED_HEADS``).  What remains is dominated by
    the fixed vocab-sized tables at width 1024 (speech_emb / speech_head
    8194 rows, speech_pos_emb 4100 rows, text tables).
  - GPT2 (turbo): no Perceiver, so width 64, 2 layers, 4 heads.

* S3Gen (speech-token -> mel -> wav) is the real, full-size module with
  random init (``S3Gen()`` has no size knobs): ~264 M parameters, of which
  124 M are the S3 speech tokenizer's encoder.  Stored as float16 by
  default (``load_state_dict`` casts back to float32), ~530 MB on disk.

* VoiceEncoder: real, random (1.4 M parameters).

Shaped random weights ("natural stop")
---------------------------------------
Random weights never emit the stop-of-speech token, and random multilingual
outputs also include ids 6563..8193 which ``ChatterboxMultilingualTTS.generate``
feeds straight into S3Gen (no ``< 6561`` filter there) -> IndexError.  So for
the Llama kinds two residual-stream channels are reserved:

* channel 0 is a constant 32 at every speech position (set in
  ``speech_pos_emb``), ignored and never written by the layers; the speech
  head gives every id >= 6561 except stop a weight of -1 on it, so those ids
  get logits of about -30 and are never sampled;
* channel 1 is 32 from speech position ``stop_after`` onwards; the stop
  token (6562) gets weight +3 on it (and -1 on channel 0), so the model
  samples uniformly among the 6561 real speech tokens for ``stop_after``
  steps and then emits the stop token (logit about +45).

  Multilingual only: its ``AlignmentStreamAnalyzer`` may overwrite the stop
  logit with -2**15 (it suppresses EOS until attention reaches the end of
  the text), so the silence token 4299 is boosted the same way; two 4299 in
  a row trip the analyzer's repetition check, which forces EOS.  It stops
  within ``stop_after`` + 3 tokens.

Hence ``generate()`` of the chatterbox and multilingual checkpoints ends by
itself after ``stop_after`` speech tokens (default 20), no patching needed.
Turbo (GPT2, absolute positions that depend on prompt + text length) has no
such stop: cap it with ``cap_tokens(model, n)`` (works for all kinds).

Everything is seeded (``torch.manual_seed(seed)`` before construction), so
the same ``seed`` gives byte-identical checkpoint files.

Importing this module sets ``HF_HUB_OFFLINE=1`` (setdefault) and needs torch
and chatterbox-tts (see install.sh); in the project's test-suite guard with
``pytest.importorskip("chatterbox")``.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import os
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np

# Multilingual tokenizer init calls hf_hub_download(); keep the hub offline
# (the checkpoint ships the file in the HF cache layout, so offline works).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

KINDS = ("chatterbox", "chatterbox-multilingual", "chatterbox-turbo")

# ---- token-id facts of chatterbox 0.1.7 (T3Config / s3tokenizer) --------
SPEECH_VOCAB = 6561          # real speech tokens: 0..6560
START_SPEECH = 6561
STOP_SPEECH = 6562
SILENCE_TOKEN = 4299         # chatterbox.models.s3gen.const.S3GEN_SIL
START_TEXT = 255             # T3Config.start_text_token
STOP_TEXT = 0                # T3Config.stop_text_token
EN_TEXT_VOCAB = 704          # T3Config.english_only()
MTL_TEXT_VOCAB = 2454        # T3Config.multilingual()
TURBO_TEXT_VOCAB = 50276     # tts_turbo: T3Config(text_tokens_dict_size=50276)

# ---- tiny backbone configs (patched into LLAMA_CONFIGS by loading()) -----
TINY_LLAMA_OVERRIDES = dict(
    hidden_size=1024,          # fixed: Perceiver() hard-codes 1024
    num_attention_heads=16,    # >= 16: AlignmentStreamAnalyzer uses head 15
    num_key_value_heads=16,
    head_dim=4,
    intermediate_size=32,
    num_hidden_layers=14,      # >= 14: AlignmentStreamAnalyzer uses layer 13
)
TINY_GPT2_OVERRIDES = dict(
    n_embd=64, hidden_size=64, n_layer=2, n_head=4,
)

# shaped-logit channels (see module docstring)
_VALID_CH = 0
_STOP_CH = 1
_BIG = 32.0

REF_SR = 24000


# ---------------------------------------------------------------------------
# config patch
# ---------------------------------------------------------------------------

def tiny_llama_configs() -> dict[str, dict]:
    """The two LLAMA_CONFIGS entries a tiny checkpoint needs."""
    from chatterbox.models.t3.llama_configs import (
        GPT2_MEDIUM_CONFIG,
        LLAMA_520M_CONFIG_DICT,
    )
    return {
        "Llama_520M": dict(LLAMA_520M_CONFIG_DICT, **TINY_LLAMA_OVERRIDES),
        "GPT2_medium": dict(copy.deepcopy(GPT2_MEDIUM_CONFIG),
                            **TINY_GPT2_OVERRIDES),
    }


def _real_llama_configs() -> dict[str, dict]:
    """The library's own entries, as a full-size checkpoint records them."""
    from chatterbox.models.t3.llama_configs import LLAMA_CONFIGS
    return {name: copy.deepcopy(LLAMA_CONFIGS[name]) for name in tiny_llama_configs()}


@contextlib.contextmanager
def loading(directory: Path | None = None) -> Iterator[None]:
    """Patch ``LLAMA_CONFIGS`` so ``T3()`` builds the tiny backbone.

    ``chatterbox.models.t3.llama_configs.LLAMA_CONFIGS`` is one dict object
    imported by ``t3.py`` and ``t3_config.py``; its entries are replaced in
    place and restored on exit.  Only construction needs the patch (a built
    T3 keeps its config), so wrap just the ``from_local`` call.  If
    ``directory`` holds a ``tiny_model.json``, its recorded configs are used.
    Not thread-safe (module-global state).
    """
    from chatterbox.models.t3 import llama_configs as lc
    configs = tiny_llama_configs()
    if directory is not None:
        meta = Path(directory) / "tiny_model.json"
        if meta.exists():
            configs.update(json.loads(meta.read_text())["llama_configs"])
    saved = {k: lc.LLAMA_CONFIGS[k] for k in configs}
    lc.LLAMA_CONFIGS.update(configs)
    try:
        yield
    finally:
        lc.LLAMA_CONFIGS.update(saved)


def model_class(kind: str):
    if kind == "chatterbox":
        from chatterbox.tts import ChatterboxTTS
        return ChatterboxTTS
    if kind == "chatterbox-multilingual":
        from chatterbox.mtl_tts import ChatterboxMultilingualTTS
        return ChatterboxMultilingualTTS
    if kind == "chatterbox-turbo":
        from chatterbox.tts_turbo import ChatterboxTurboTTS
        return ChatterboxTurboTTS
    raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")


def load_model(kind: str, directory: Path, device: str = "cpu"):
    """``model_class(kind).from_local(directory, device)`` with the patch."""
    with loading(directory):
        return model_class(kind).from_local(Path(directory), device)


@contextlib.contextmanager
def cap_tokens(model, max_tokens: int) -> Iterator[None]:
    """Cap the number of speech tokens ``model.generate`` samples.

    ``generate`` hard-codes ``max_new_tokens=1000`` (ChatterboxTTS,
    ChatterboxMultilingualTTS -> ``T3.inference``) or relies on
    ``max_gen_len=1000`` (ChatterboxTurboTTS -> ``T3.inference_turbo``) and
    exposes neither.  This shadows the bound method on the ``model.t3``
    instance with a wrapper that forces the limit, and removes it on exit.
    Turbo samples one token in its prefill step plus ``max_gen_len`` in the
    loop, so it yields ``max_tokens`` + 1 tokens at most.
    """
    t3 = model.t3
    orig_inf, orig_turbo = type(t3).inference, type(t3).inference_turbo

    @functools.wraps(orig_inf)
    def inference(*args, **kwargs):
        kwargs["max_new_tokens"] = max_tokens
        return orig_inf(t3, *args, **kwargs)

    @functools.wraps(orig_turbo)
    def inference_turbo(*args, **kwargs):
        kwargs["max_gen_len"] = max_tokens
        return orig_turbo(t3, *args, **kwargs)

    t3.inference = inference
    t3.inference_turbo = inference_turbo
    try:
        yield
    finally:
        del t3.inference
        del t3.inference_turbo


# ---------------------------------------------------------------------------
# synthetic audio
# ---------------------------------------------------------------------------

def reference_audio(seconds: float = 6.0, sr: int = REF_SR,
                    seed: int = 0) -> np.ndarray:
    """Speech-ish float32 mono clip in [-1, 1]: a gliding harmonic tone with
    syllable-rate amplitude modulation plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 140.0 + 30.0 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    voice = sum((0.6 / k) * np.sin(k * phase) for k in range(1, 8))
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 3.5 * t) ** 2
    x = voice * envelope + 0.02 * rng.standard_normal(t.size)
    x = 0.5 * x / np.max(np.abs(x))
    return x.astype(np.float32)


def write_wav(path: Path, audio: np.ndarray, sr: int = REF_SR) -> Path:
    """16-bit PCM mono WAV via the stdlib ``wave`` module."""
    pcm = (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(pcm.tobytes())
    return Path(path)


def write_reference_wav(path: Path, seconds: float = 6.0, sr: int = REF_SR,
                        seed: int = 0) -> Path:
    """Synthetic reference clip for ``audio_prompt_path``.  Turbo's
    ``prepare_conditionals`` asserts the clip is longer than 5 s."""
    return write_wav(path, reference_audio(seconds, sr, seed), sr)


# ---------------------------------------------------------------------------
# tokenizers
# ---------------------------------------------------------------------------

_MTL_LANGS = ("ar da de el en es fi fr he hi it ja ko ms nl no pl pt ru sv "
              "sw tr zh").split()


def _char_vocab(chars, size: int, extra_tokens=()) -> dict[str, int]:
    """[STOP]=0 [UNK]=1 [SPACE]=2, [START]=255 (T3Config's fixed text ids),
    then the remaining special tokens and characters, all ids < size."""
    vocab = {"[STOP]": STOP_TEXT, "[UNK]": 1, "[SPACE]": 2,
             "[START]": START_TEXT}
    nxt = 3
    for tok in ["[PAD]", "[SEP]", "[CLS]", "[MASK]", *extra_tokens, *chars]:
        if tok in vocab:
            continue
        if nxt == START_TEXT:
            nxt += 1
        vocab[tok] = nxt
        nxt += 1
    assert nxt <= size, (nxt, size)
    used = set(vocab.values())          # no holes (tokenizers warns on them)
    for i in range(max(used)):
        if i not in used:
            vocab[f"[unused{i}]"] = i
    return vocab


def _char_tokenizer_json(vocab: dict[str, int], specials) -> str:
    """A character-level BPE (no merges) like chatterbox's grapheme
    tokenizers: no pre-tokenizer, special tokens matched as added tokens."""
    from tokenizers import AddedToken, Tokenizer, models
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="[UNK]"))
    tok.add_special_tokens([AddedToken(s, normalized=False) for s in specials])
    return tok.to_str(pretty=False)


def _ranges(*pairs):
    out = []
    for lo, hi in pairs:
        out.extend(chr(c) for c in range(lo, hi + 1))
    return out


def english_tokenizer_json() -> str:
    chars = _ranges((0x21, 0x7E), (0xC0, 0xFF))  # printable ASCII, Latin-1
    specials = ["[START]", "[STOP]", "[UNK]", "[SPACE]",
                "[PAD]", "[SEP]", "[CLS]", "[MASK]"]
    vocab = _char_vocab(chars, EN_TEXT_VOCAB)
    return _char_tokenizer_json(vocab, specials)


def multilingual_tokenizer_json() -> str:
    chars = _ranges(
        (0x21, 0x7E), (0xA1, 0x24F),        # ASCII, Latin-1, Latin Ext-A/B
        (0x300, 0x36F),                     # combining marks (NFKD output)
        (0x370, 0x3FF), (0x400, 0x4FF),     # Greek, Cyrillic
        (0x590, 0x5FF), (0x600, 0x6FF),     # Hebrew, Arabic
        (0x900, 0x97F),                     # Devanagari
        (0x1100, 0x11FF),                   # Hangul Jamo (korean_normalize)
        (0x3001, 0x3002), (0x3040, 0x30FF), # CJK punct, Hiragana, Katakana
        (0xFF01, 0xFF1F),                   # full-width punctuation
    )
    lang_tokens = [f"[{lang}]" for lang in _MTL_LANGS]
    cj_tokens = [f"[cj_{c}]" for c in "abcdefghijklmnopqrstuvwxyz."]
    specials = ["[START]", "[STOP]", "[UNK]", "[SPACE]", "[PAD]", "[SEP]",
                "[CLS]", "[MASK]", *lang_tokens, *cj_tokens]
    vocab = _char_vocab(chars, MTL_TEXT_VOCAB, lang_tokens + cj_tokens)
    return _char_tokenizer_json(vocab, specials)


def _gpt2_bytes_to_unicode() -> dict[int, str]:
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD))
          + list(range(0xAE, 0x100)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def write_turbo_tokenizer(directory: Path) -> None:
    """GPT-2-style byte-level BPE with exactly 50276 ids (256 bytes + 50019
    synthetic merges + <|endoftext|>), loadable by ``AutoTokenizer``."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    alphabet = list(_gpt2_bytes_to_unicode().values())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    merges = []
    n_merges = TURBO_TEXT_VOCAB - 256 - 1
    # deterministic pairs, most "natural" ones first (printable ASCII)
    order = sorted(alphabet, key=lambda ch: (not ("a" <= ch <= "z"),
                                             not ch.isalnum(), ord(ch)))
    for a in order:
        for b in order:
            if len(merges) == n_merges:
                break
            merges.append((a, b))
            vocab[a + b] = len(vocab)
        if len(merges) == n_merges:
            break
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken("<|endoftext|>", normalized=False)])
    assert tok.get_vocab_size() == TURBO_TEXT_VOCAB, tok.get_vocab_size()
    (directory / "tokenizer.json").write_text(tok.to_str(pretty=False),
                                              encoding="utf-8")
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GPT2Tokenizer",
        "bos_token": "<|endoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "add_prefix_space": False,
        "model_max_length": 1024,
    }, indent=1), encoding="utf-8")


def write_cangjie_cache(directory: Path) -> None:
    """``ChineseCangjieConverter`` calls ``hf_hub_download("ResembleAI/
    chatterbox", "Cangjie5_TC.json", cache_dir=ckpt_dir)``; put a small
    synthetic mapping there in HF-cache layout so it resolves offline."""
    commit = "0" * 40
    repo = directory / "models--ResembleAI--chatterbox"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    entries = ["你\tonf", "好\tvnd", "世\tpt", "界\twol", "中\tl", "文\tyk",
               "我\thqi", "是\tamyo", "的\thaipi", "人\to"]
    (snap / "Cangjie5_TC.json").write_text(
        json.dumps(entries, ensure_ascii=False), encoding="utf-8")


# ---------------------------------------------------------------------------
# weights
# ---------------------------------------------------------------------------

def _t3_config(kind: str):
    from chatterbox.models.t3.modules.t3_config import T3Config
    if kind == "chatterbox":
        return T3Config.english_only()
    if kind == "chatterbox-multilingual":
        return T3Config.multilingual()
    # exactly what ChatterboxTurboTTS.from_local builds
    hp = T3Config(text_tokens_dict_size=TURBO_TEXT_VOCAB)
    hp.llama_config_name = "GPT2_medium"
    hp.speech_tokens_dict_size = 6563
    hp.input_pos_emb = None
    hp.speech_cond_prompt_len = 375
    hp.use_perceiver_resampler = False
    hp.emotion_adv = False
    return hp


@torch.no_grad()
def _shape_llama_t3(t3, stop_after: int, boost_silence: bool) -> None:
    """Reserve residual channels 0/1 (see module docstring)."""
    ch = [_VALID_CH, _STOP_CH]
    pos = t3.speech_pos_emb.emb.weight          # (4100, 1024)
    pos[:, _VALID_CH] = _BIG
    pos[:, _STOP_CH] = 0.0
    pos[stop_after:, _STOP_CH] = _BIG
    t3.speech_emb.weight[:, ch] = 0.0
    for layer in t3.tfmr.layers:                # layers neither read nor write them
        layer.input_layernorm.weight[ch] = 0.0
        layer.post_attention_layernorm.weight[ch] = 0.0
        layer.self_attn.o_proj.weight[ch, :] = 0.0
        layer.mlp.down_proj.weight[ch, :] = 0.0
    t3.tfmr.norm.weight[ch] = 1.0
    head = t3.speech_head.weight                # (8194, 1024)
    head[:, ch] = 0.0
    head[SPEECH_VOCAB:, _VALID_CH] = -1.0       # never sample ids >= 6561 ...
    head[STOP_SPEECH, _STOP_CH] = 3.0           # ... except stop, once due
    if boost_silence:
        head[SILENCE_TOKEN, _STOP_CH] = 3.0


def _round_trip(module: torch.nn.Module, dtype: torch.dtype,
                min_numel: int = 65536) -> None:
    """Round large float tensors through the storage dtype, so the in-memory
    model equals what from_local will load."""
    if dtype == torch.float32:
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            if t.is_floating_point() and t.numel() >= min_numel:
                t.copy_(t.to(dtype))


def _state_for_disk(module: torch.nn.Module, dtype: torch.dtype,
                    min_numel: int = 65536) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in module.state_dict().items():
        v = v.detach()
        if v.is_floating_point() and v.numel() >= min_numel:
            v = v.to(dtype)
        out[k] = v.contiguous().clone()
    return out


def _save(state: dict[str, torch.Tensor], path: Path) -> None:
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file(state, str(path))
    else:
        torch.save(state, str(path))


_FILES = {
    "chatterbox": dict(ve="ve.safetensors", t3="t3_cfg.safetensors",
                       s3gen="s3gen.safetensors"),
    "chatterbox-multilingual": dict(ve="ve.pt", t3="t3_mtl23ls_v2.safetensors",
                                    s3gen="s3gen.pt"),
    "chatterbox-turbo": dict(ve="ve.safetensors", t3="t3_turbo_v1.safetensors",
                             s3gen="s3gen_meanflow.safetensors"),
}


def build_checkpoint(kind: str, directory: Path, *, seed: int = 0,
                     stop_after: int = 20, ref_seconds: float | None = None,
                     exaggeration: float = 0.5,
                     weight_dtype: torch.dtype = torch.float16,
                     full_size: bool = False) -> Path:
    """Write a random-weight checkpoint folder for ``kind`` and return it.

    ``kind``: "chatterbox", "chatterbox-multilingual" or "chatterbox-turbo".
    ``stop_after``: speech tokens before the shaped stop (Llama kinds only).
    ``weight_dtype``: storage dtype of tensors with >= 65536 elements
    (float16 halves the ~1 GB S3Gen; float32 for exact init values).
    ``ref_seconds``: length of the synthetic voice clip behind conds.pt;
    default 3.0 (5.6 for turbo, whose prepare_conditionals demands > 5 s).
    S3Gen's cost grows with it: every generate() runs the flow decoder over
    the reference mel (prompt_feat) plus the new frames.
    ``exaggeration``: stored in conds.pt as ``t3.emotion_adv``.
    ``full_size``: the real backbone configs (the 520M Llama, GPT2 medium) instead of the
    tiny ones, for benchmarks on a GPU (scripts/bench --full-size); ``loading()`` then
    re-applies the recorded real configs, so the same loading code serves both.
    Files: see the module docstring.  Takes ~15-30 s on 2 CPU cores.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
    from chatterbox.models.s3gen import S3Gen
    from chatterbox.models.t3 import T3
    from chatterbox.models.voice_encoder import VoiceEncoder

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files = _FILES[kind]
    turbo = kind == "chatterbox-turbo"
    if ref_seconds is None:
        ref_seconds = 5.6 if turbo else 3.0

    # -- tokenizer files
    if kind == "chatterbox":
        (directory / "tokenizer.json").write_text(english_tokenizer_json(),
                                                  encoding="utf-8")
    elif kind == "chatterbox-multilingual":
        (directory / "grapheme_mtl_merged_expanded_v1.json").write_text(
            multilingual_tokenizer_json(), encoding="utf-8")
        write_cangjie_cache(directory)
    else:
        write_turbo_tokenizer(directory)

    # -- modules, seeded
    torch.manual_seed(seed)
    with contextlib.nullcontext() if full_size else loading():
        ve = VoiceEncoder()
        t3 = T3(_t3_config(kind))
    s3gen = S3Gen(meanflow=turbo)
    if not turbo:
        _shape_llama_t3(t3, stop_after,
                        boost_silence=(kind == "chatterbox-multilingual"))
    for m in (ve, t3, s3gen):
        _round_trip(m, weight_dtype)
        m.eval()

    # -- weights in the formats from_local reads
    _save(_state_for_disk(ve, torch.float32), directory / files["ve"])
    _save(_state_for_disk(t3, weight_dtype), directory / files["t3"])
    _save(_state_for_disk(s3gen, weight_dtype), directory / files["s3gen"])

    # -- the built-in voice: conds.pt from a synthetic reference clip,
    #    prepared by the class's own prepare_conditionals
    ref = write_reference_wav(directory / "reference.wav", ref_seconds,
                              seed=seed)
    cls = model_class(kind)
    if kind == "chatterbox":
        from chatterbox.models.tokenizers import EnTokenizer
        tokenizer = EnTokenizer(str(directory / "tokenizer.json"))
    elif kind == "chatterbox-multilingual":
        from chatterbox.models.tokenizers import MTLTokenizer
        tokenizer = MTLTokenizer(
            str(directory / "grapheme_mtl_merged_expanded_v1.json"))
    else:
        from transformers import AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
    if turbo:
        del t3.tfmr.wte          # as from_local does (after saving it)
    model = cls(t3, s3gen, ve, tokenizer, "cpu")
    if turbo:
        # norm_loudness=False: with numpy >= 2 turbo's norm_loudness turns the
        # clip into float64 (pyloudnorm gain is np.float64, NEP 50) and the
        # S3 tokenizer then fails with "expected scalar type Double but found
        # Float".  Irrelevant for a synthetic clip; keeps the build working
        # under numpy 1 and 2.
        model.prepare_conditionals(str(ref), exaggeration=exaggeration,
                                   norm_loudness=False)
    else:
        model.prepare_conditionals(str(ref), exaggeration=exaggeration)
    model.conds.save(directory / "conds.pt")

    (directory / "tiny_model.json").write_text(json.dumps({
        "kind": kind,
        "class": f"{cls.__module__}.{cls.__name__}",
        "seed": seed,
        "stop_after": None if turbo else stop_after,
        "ref_seconds": ref_seconds,
        "exaggeration": exaggeration,
        "weight_dtype": str(weight_dtype),
        "files": sorted(p.name for p in directory.iterdir()) + ["tiny_model.json"],
        "llama_configs": _real_llama_configs() if full_size else tiny_llama_configs(),
        "load": "tiny_model.load_model(kind, dir)  # from_local inside loading()",
    }, indent=1, default=str), encoding="utf-8")
    return directory


def checkpoint_sizes(directory: Path) -> dict[str, int]:
    """File name -> bytes (recursing into the Cangjie cache)."""
    directory = Path(directory)
    return {str(p.relative_to(directory)): p.stat().st_size
            for p in sorted(directory.rglob("*")) if p.is_file()}


if __name__ == "__main__":  # python tiny_model.py KIND DIR
    import sys
    import time
    t0 = time.time()
    out = build_checkpoint(sys.argv[1], Path(sys.argv[2]))
    print(f"built {out} in {time.time() - t0:.1f} s")
    for name, size in checkpoint_sizes(out).items():
        print(f"{size / 1e6:10.2f} MB  {name}")
