"""Smoke test + behaviour probes for the tiny random Chatterbox checkpoints.

Run with the chatterbox venv (see install.sh), from anywhere:

    /work/cbvenv/bin/python tests/chatterbox_support/smoke.py [--kinds K ...]
        [--tokens N] [--keep DIR] [--quick]

For each kind it builds a checkpoint in a temp dir (tiny_model.build_checkpoint),
loads it with ``Cls.from_local(dir, device="cpu")`` (inside
tiny_model.loading(), which swaps in the tiny T3 backbone config), writes a
synthetic reference WAV with the ``wave`` module and calls
``generate(text, audio_prompt_path=..., ...)`` with the speech-token count
capped by tiny_model.cap_tokens.  It prints load/generate times, output
shape and sample rate, then probes (unless --quick):

  (a) a forward hook on model.t3.tfmr: calls per generated token, CFG batch,
      prefill call; raising from the hook to cancel generation
  (b) cfg_weight=0
  (c) torch.manual_seed -> same audio?
  (d) generate() parameter names
  (e) prepare_conditionals / model.conds contents, exaggeration changes
  (f) the Perth watermarker offline

Exit status 0 iff every kind generated audio at 24 kHz and every probe
matched the expectation written next to it.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")     # T3's per-token tqdm bar

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
import tiny_model as tm  # noqa: E402
import torch  # noqa: E402

TEXT = {
    "chatterbox": "Hello there, this is a test.",
    "chatterbox-multilingual": "Bonjour tout le monde.",
    "chatterbox-turbo": "Hello there, this is a test.",
}
LANG = {"chatterbox-multilingual": {"language_id": "fr"}}
FAILURES: list[str] = []


def check(ok: bool, what: str) -> None:
    print(f"    [{'ok' if ok else 'FAIL'}] {what}")
    if not ok:
        FAILURES.append(what)


class Cancelled(Exception):
    pass


def timed(fn, *a, **kw):
    t0 = time.perf_counter()
    out = fn(*a, **kw)
    return out, time.perf_counter() - t0


def tokens_in(kind: str, wav: torch.Tensor) -> float:
    """Speech tokens behind an output: 25 tokens/s -> 960 samples each."""
    return wav.shape[-1] / 960.0


def probe_hook(kind, model, n):
    """(a) per-token hook and cancellation."""
    print("  (a) forward hook on model.t3.tfmr")
    calls = []

    def hook(module, args, kwargs, output):
        x = kwargs.get("inputs_embeds")
        calls.append(tuple(x.shape))

    h = model.t3.tfmr.register_forward_hook(hook, with_kwargs=True)
    try:
        torch.manual_seed(0)
        with tm.cap_tokens(model, n):
            wav = model.generate(TEXT[kind], **LANG.get(kind, {}))
    finally:
        h.remove()
    prefill, steps = calls[0], calls[1:]
    print(f"    calls={len(calls)} prefill inputs_embeds={prefill} "
          f"step shapes={sorted(set(steps))} output={tuple(wav.shape)}")
    check(all(s[1] == 1 for s in steps) and prefill[1] > 1,
          "first call is the prefill (cond+text+BOS), then one call per token with seq len 1")
    check(len(calls) == n + 1,
          f"cap {n}: {n + 1} calls = prefill + {n} (turbo: prefill samples token 1, "
          f"loop samples {n} more; others: loop samples {n}, last forward unused)")
    batch = prefill[0]
    check(batch == (1 if kind == "chatterbox-turbo" else 2),
          f"batch={batch} (2 = CFG cond/uncond rows for chatterbox+multilingual)")

    if kind != "chatterbox-turbo":
        calls.clear()
        h = model.t3.tfmr.register_forward_hook(hook, with_kwargs=True)
        try:
            torch.manual_seed(0)
            wav = model.generate(TEXT[kind], **LANG.get(kind, {}))   # uncapped
        finally:
            h.remove()
        print(f"    uncapped (shaped stop_after=20): calls={len(calls)} "
              f"-> {len(calls) - 1} tokens, audio {tokens_in(kind, wav):.1f} tokens long")
        check(20 <= len(calls) - 1 <= 23, "natural stop after ~20 tokens (no cap needed)")

    # cancellation: raise from a forward *pre*-hook before the k-th step
    k = 4
    seen = []

    def cancel_hook(module, args, kwargs):
        if kwargs["inputs_embeds"].shape[1] == 1:
            seen.append(1)
            if len(seen) >= k:
                raise Cancelled(f"cancelled after {len(seen)} tokens")

    h = model.t3.tfmr.register_forward_pre_hook(cancel_hook, with_kwargs=True)
    t0 = time.perf_counter()
    try:
        with tm.cap_tokens(model, n):
            model.generate(TEXT[kind], **LANG.get(kind, {}))
        raised = None
    except Cancelled as e:
        raised = e
    finally:
        h.remove()
    dt = time.perf_counter() - t0
    check(isinstance(raised, Cancelled),
          f"Cancelled raised in the hook propagates unchanged out of generate() "
          f"({raised!s}; {dt:.2f} s, S3Gen never ran)")
    torch.manual_seed(0)
    with tm.cap_tokens(model, n):
        wav = model.generate(TEXT[kind], **LANG.get(kind, {}))
    check(wav.shape[-1] > 0, "model generates normally after a cancelled call")
    if kind == "chatterbox-multilingual":
        hooks = [len(model.t3.tfmr.layers[i].self_attn._forward_hooks)
                 for i in (9, 12, 13)]
        print(f"    AlignmentStreamAnalyzer hooks left on layers 9/12/13 after the "
              f"generate() calls so far: {hooks} (one per call: never removed)")


def probe_cfg0(kind, model, n):
    print("  (b) cfg_weight=0")
    try:
        with tm.cap_tokens(model, n):
            wav = model.generate(TEXT[kind], cfg_weight=0.0, **LANG.get(kind, {}))
        print(f"    works: output {tuple(wav.shape)}")
        check(kind != "chatterbox", "no crash (expected for multilingual/turbo)")
    except Exception as e:  # noqa: BLE001
        tb = traceback.extract_tb(e.__traceback__)
        where = [f"{Path(f.filename).name}:{f.lineno} {f.name}: {f.line}" for f in tb[-3:]]
        print(f"    {type(e).__name__}: {str(e).splitlines()[0]}")
        for w in where:
            print(f"      at {w}")
        check(kind == "chatterbox", "crash expected only for English ChatterboxTTS")


def probe_seed(kind, model, n):
    print("  (c) global RNG seeding")
    outs = []
    for seed in (123, 123, 124):
        torch.manual_seed(seed)
        with tm.cap_tokens(model, n):
            outs.append(model.generate(TEXT[kind], **LANG.get(kind, {})))
    same = outs[0].shape == outs[1].shape and torch.equal(outs[0], outs[1])
    diff = not (outs[0].shape == outs[2].shape and torch.equal(outs[0], outs[2]))
    check(same, "torch.manual_seed(s) before generate -> identical audio")
    check(diff, "different seed -> different audio")
    # does generate touch numpy / random? (it should not matter)
    np.random.seed(0)
    torch.manual_seed(123)
    with tm.cap_tokens(model, n):
        w = model.generate(TEXT[kind], **LANG.get(kind, {}))
    check(torch.equal(w, outs[0]), "numpy seed irrelevant: only torch's global RNG matters")


def probe_signature(kind, cls):
    print("  (d) signatures")
    for name in ("generate", "prepare_conditionals", "from_local"):
        print(f"    {cls.__name__}.{name}{inspect.signature(getattr(cls, name))}")


def probe_conds(kind, model, ref, n):
    print("  (e) conditionals")

    def desc(c):
        t3 = {k: (tuple(v.shape) if torch.is_tensor(v) else v)
              for k, v in c.t3.__dict__.items()}
        gen = {k: (tuple(v.shape) if torch.is_tensor(v) else v)
               for k, v in c.gen.items()}
        return t3, gen

    _, dt = timed(model.prepare_conditionals, str(ref))
    t3, gen = desc(model.conds)
    print(f"    prepare_conditionals({Path(ref).name}) {dt:.2f} s")
    print(f"    conds.t3  = {t3}")
    print(f"    conds.gen = {gen}")
    before = model.conds.t3
    with tm.cap_tokens(model, n):
        model.generate(TEXT[kind], **LANG.get(kind, {}))
    emb = model.conds.t3.cond_prompt_speech_emb
    print(f"    after generate: conds.t3 same object={model.conds.t3 is before}, "
          f"cond_prompt_speech_emb cached={None if emb is None else tuple(emb.shape)}")
    if kind == "chatterbox-turbo":
        return
    with tm.cap_tokens(model, n):
        model.generate(TEXT[kind], exaggeration=0.9, **LANG.get(kind, {}))
    ea = float(model.conds.t3.emotion_adv.flatten()[0])
    check(model.conds.t3 is not before and abs(ea - 0.9) < 1e-6,
          f"exaggeration=0.9 replaced conds.t3 (new T3Cond, emotion_adv={ea:.2f}, "
          f"same speaker_emb/prompt tokens, prompt emb recomputed); no re-prepare; "
          f"it persists in model.conds")


def probe_watermark(kind, model, wav):
    print("  (f) watermark")
    import perth
    raw = tm.reference_audio(2.0, 24000, seed=5)
    w = model.watermarker
    marked, dt = timed(w.apply_watermark, raw, sample_rate=24000)
    on = float(np.mean(w.get_watermark(marked, sample_rate=24000)))
    off = float(np.mean(w.get_watermark(raw, sample_rate=24000)))
    out = float(np.mean(w.get_watermark(wav.squeeze(0).numpy(), sample_rate=24000)))
    print(f"    {type(w).__name__} from {Path(perth.__file__).parent.name}/perth_net/pretrained "
          f"(bundled); apply 2 s clip: {dt:.2f} s; detect: marked={on:.2f} "
          f"unmarked={off:.2f} generate() output={out:.2f}")
    check(on > 0.5 and not np.allclose(marked[:raw.size], raw),
          "watermarker works offline and changes the audio")


def run_kind(kind, args, workdir):
    print(f"\n=== {kind}")
    cls = tm.model_class(kind)
    ckpt = workdir / kind
    _, t_build = timed(tm.build_checkpoint, kind, ckpt, seed=0)
    sizes = tm.checkpoint_sizes(ckpt)
    total = sum(sizes.values())
    print(f"  build_checkpoint: {t_build:.1f} s, {total / 1e6:.0f} MB: "
          + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in sizes.items()
                      if v > 100_000))
    model, t_load = timed(tm.load_model, kind, ckpt, "cpu")
    print(f"  {cls.__name__}.from_local(dir, device='cpu'): {t_load:.1f} s")

    ref = tm.write_reference_wav(workdir / f"{kind}-prompt.wav",
                                 seconds=5.6 if kind == "chatterbox-turbo" else 3.0,
                                 seed=1)
    n = args.tokens
    for i in range(2):
        torch.manual_seed(0)
        with tm.cap_tokens(model, n):
            wav, dt = timed(model.generate, TEXT[kind], audio_prompt_path=str(ref),
                            **LANG.get(kind, {}))
        print(f"  generate #{i + 1} (audio_prompt_path, cap {n} tokens): {dt:.1f} s -> "
              f"{type(wav).__name__} {tuple(wav.shape)} {wav.dtype}, sr={model.sr}, "
              f"{wav.shape[-1] / model.sr:.2f} s audio, peak {float(wav.abs().max()):.3f}")
    check(model.sr == 24000 and wav.ndim == 2 and wav.shape[0] == 1
          and wav.shape[-1] > 0 and bool(torch.isfinite(wav).all()),
          "output (1, samples) float tensor at 24 kHz, finite")
    if args.quick:
        return
    probe_hook(kind, model, n)
    probe_cfg0(kind, model, n)
    probe_seed(kind, model, n)
    probe_signature(kind, cls)
    probe_conds(kind, model, ref, n)
    probe_watermark(kind, model, wav)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kinds", nargs="+", default=list(tm.KINDS), choices=tm.KINDS)
    ap.add_argument("--tokens", type=int, default=12, help="speech-token cap")
    ap.add_argument("--keep", type=Path, help="build checkpoints here and keep them")
    ap.add_argument("--quick", action="store_true", help="skip probes (a)-(f)")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory(prefix="cb-smoke-") as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for kind in args.kinds:
            try:
                run_kind(kind, args, workdir)
            except Exception:  # noqa: BLE001
                traceback.print_exc()
                FAILURES.append(f"{kind}: exception")
    print("\nRESULT:", "OK" if not FAILURES else f"{len(FAILURES)} failure(s): {FAILURES}")
    return 0 if not FAILURES else 1


if __name__ == "__main__":
    sys.exit(main())
