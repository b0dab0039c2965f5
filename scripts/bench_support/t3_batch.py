"""T3's token loop alone, batched against one request at a time: what batching buys before
S3Gen's vocoding, which on a CPU takes most of a chunk and is not batched.

    TQDM_DISABLE=1 HF_HUB_OFFLINE=1 .tox/chatterbox/bin/python -m scripts.bench_support.t3_batch [--sizes 1,4,8] [--device cpu]

For each N, N different sentences with their own seeds: the library's ``T3.inference`` (as
``ChatterboxTTS.generate`` calls it) one after another, against the product's
``chatterbox_batch.sample_together`` over all N at once, on the tests' tiny random-weight
checkpoint (``--full-size`` for one of the real model's size). Prints speech tokens per second
both ways and their ratio, and checks that both sampled the same tokens.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from . import tiny_chatterbox

SENTENCES = [
    "The first words of an answer should be heard while the rest is still being made.",
    "A second voice asks about the weather in the hills this weekend.",
    "Four requests at once should take less time than four in a row.",
    "Each request keeps its own seed, its own progress and its own cancel.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1,4,8")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--full-size", action="store_true")
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) - 1), help="torch threads (ENGINE_THREADS)")
    args = parser.parse_args()
    folder = tiny_chatterbox.checkpoint("chatterbox", Path(tempfile.mkdtemp(prefix="t3-batch-")) / "checkpoint", args.full_size)
    engine = tiny_chatterbox.engine("chatterbox", folder, args.device)
    engine.load(lambda fraction: None)
    torch = engine._torch
    torch.set_num_threads(args.threads)

    from chatterbox_status.engines.chatterbox_batch import BatchedSequence, sample_together

    t3, conds = engine.model.t3, engine.model.conds
    kwargs = {"temperature": 0.8, "cfg_weight": 0.5, "repetition_penalty": 1.2, "min_p": 0.05, "top_p": 1.0}

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    print(f"T3 on {args.device}, {args.threads} threads, {'full-size' if args.full_size else 'tiny'} checkpoint")
    print(f"{'N':>3} {'alone tok/s':>12} {'batched tok/s':>14} {'ratio':>6}  same tokens")
    with torch.inference_mode():
        t3.inference(t3_cond=conds.t3, text_tokens=engine._text_tokens(SENTENCES[0], None), max_new_tokens=1000, **kwargs)  # warm-up
        for size in (int(n) for n in args.sizes.split(",")):
            texts = [SENTENCES[n % len(SENTENCES)] for n in range(size)]
            sync()
            started = time.perf_counter()
            alone = []
            for n, text in enumerate(texts):
                torch.manual_seed(n)
                tokens = t3.inference(t3_cond=conds.t3, text_tokens=engine._text_tokens(text, None), max_new_tokens=1000, **kwargs)
                alone.append([t for t in tokens[0].tolist() if t != t3.hp.stop_speech_token])
            sync()
            alone_seconds = time.perf_counter() - started
            sequences = [
                BatchedSequence(
                    conds.t3, engine._text_tokens(text, None), generator=torch.Generator(device=engine.model.device).manual_seed(n),
                    on_token=lambda count: None, **kwargs,
                )
                for n, text in enumerate(texts)
            ]
            sync()
            started = time.perf_counter()
            sample_together(t3, sequences, lambda sequence: None)
            sync()
            batched_seconds = time.perf_counter() - started
            count = sum(len(tokens) for tokens in alone)
            same = [s.tokens for s in sequences] == alone
            print(f"{size:>3} {count / alone_seconds:>12.1f} {count / batched_seconds:>14.1f} {alone_seconds / batched_seconds:>6.2f}  {same}")


if __name__ == "__main__":
    main()
