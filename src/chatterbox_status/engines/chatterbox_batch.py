"""Concurrent requests stepped together through T3: one forward pass per token for all.

``T3.inference`` (ChatterboxTTS) samples one request's speech tokens with a batch of two
rows, the classifier-free-guidance pair; ``T3.inference_turbo`` (ChatterboxTurboTTS) with
one row and no guidance. Here the rows of several requests share each forward pass: their
prompts (voice conditioning, text, start token) differ in length, so they are padded on the
left, with an attention mask hiding the padding and position ids counting each row's own
tokens, so every row sees what it would see alone. Each request keeps its own sampling
(guidance weight, temperature, repetition penalty, min_p or top_k, top_p, its own random
generator, so a seed gives the same tokens batched or not), its own progress and its own
cancellation, and leaves the batch when it samples its stop token, reaches its cap, or is
cancelled: its rows are dropped from the key/value cache, so the others go on without it.

Built on the library's own modules (``prepare_input_embeds``, the Llama or GPT-2 backbone,
the speech embedding, positions and head) and the same logits processors the library's two
loops use, in their order; nothing of the model is rewritten.

Requests join a batch when it starts (at a chunk boundary), not mid-way: joining at a step
would mean prefilling the newcomer's prompt into a cache whose rows are already hundreds of
positions long (re-padding every layer's keys and values), and a batch lasts one chunk.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# The library's cap on speech tokens per chunk (``ChatterboxTTS.generate``'s max_new_tokens).
MAX_NEW_TOKENS = 1000


@dataclass(eq=False)
class BatchedSequence:
    """One request's chunk in a batch: its inputs, sampling, and what it produced."""

    t3_cond: Any  # T3Cond: speaker embedding, voice prompt tokens, exaggeration
    text_tokens: Any  # (2, L): the guidance pair, with start and stop text tokens
    cfg_weight: float
    temperature: float
    repetition_penalty: float
    min_p: float
    top_p: float
    generator: Any  # torch.Generator, seeded when the request has a seed
    # Called after each sampled token with the number sampled so far; raising (Cancelled)
    # takes the sequence out of the batch.
    on_token: Callable[[int], None]
    max_new_tokens: int = MAX_NEW_TOKENS
    top_k: int = 0  # turbo's (its loop keeps the 1000 likeliest tokens); 0: no such cut
    tokens: list[int] = field(default_factory=list)
    error: BaseException | None = None
    done: bool = False


def _processors(sequence: BatchedSequence, turbo: bool) -> list[Any]:
    """The logits processors the library's loop applies, in its order."""
    from transformers.generation.logits_process import (
        MinPLogitsWarper,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    temperature = [TemperatureLogitsWarper(sequence.temperature)] if sequence.temperature != 1.0 else []
    repetition = RepetitionPenaltyLogitsProcessor(penalty=float(sequence.repetition_penalty))
    if not turbo:  # T3.inference
        return [repetition, *temperature, MinPLogitsWarper(min_p=sequence.min_p), TopPLogitsWarper(top_p=sequence.top_p)]
    return [  # T3.inference_turbo
        *(temperature if sequence.temperature > 0 else []),
        *([TopKLogitsWarper(sequence.top_k)] if sequence.top_k > 0 else []),
        *([TopPLogitsWarper(sequence.top_p)] if sequence.top_p < 1.0 else []),
        *([repetition] if sequence.repetition_penalty != 1.0 else []),
    ]


def sample_together(t3: Any, sequences: list[BatchedSequence], on_done: Callable[[BatchedSequence], None]) -> None:
    """Sample every sequence's speech tokens in one padded batch; ``on_done`` is called for
    each as soon as it leaves the batch (stopped, capped, cancelled or failed), so its audio
    can be made while the others are still sampled."""
    import torch

    hp = t3.hp
    start, stop = hp.start_speech_token, hp.stop_speech_token
    device = t3.device
    turbo = bool(getattr(t3, "is_gpt", False))
    rows = 1 if turbo else 2  # turbo has no guidance pair
    prompts = []
    for seq in sequences:
        start_tokens = start * torch.ones_like(seq.text_tokens[:, :1])
        embeds, _ = t3.prepare_input_embeds(
            t3_cond=seq.t3_cond, text_tokens=seq.text_tokens, speech_tokens=start_tokens, cfg_weight=0.0 if turbo else seq.cfg_weight
        )
        if not turbo:  # T3.inference feeds its start token once more, at fixed position 0
            bos = t3.speech_emb(torch.tensor([[start]], device=device)) + t3.speech_pos_emb.get_fixed_embedding(0)
            embeds = torch.cat([embeds, bos.expand(embeds.size(0), -1, -1)], dim=1)
        prompts.append(embeds)
    longest = max(p.size(1) for p in prompts)
    width = prompts[0].size(2)
    inputs = torch.zeros(rows * len(prompts), longest, width, dtype=prompts[0].dtype, device=device)
    mask = torch.zeros(rows * len(prompts), longest, dtype=torch.long, device=device)
    for n, prompt in enumerate(prompts):
        inputs[rows * n : rows * n + rows, longest - prompt.size(1) :] = prompt
        mask[rows * n : rows * n + rows, longest - prompt.size(1) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    processors = [_processors(seq, turbo) for seq in sequences]

    def forward(embeds: Any, past: Any) -> Any:
        output = t3.tfmr(
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions, past_key_values=past, use_cache=True,
            output_hidden_states=not turbo, return_dict=True,
        )
        # T3.inference reads the last of the hidden states, as its backend does; turbo the output.
        hidden = output.last_hidden_state if turbo else output.hidden_states[-1]
        return t3.speech_head(hidden[:, -1, :]), output.past_key_values

    active = list(range(len(sequences)))  # indices into sequences, in row order
    logits, past = forward(inputs, None)
    step = 0
    while active:
        next_tokens = []
        leaving = []
        for row, n in enumerate(active):
            seq = sequences[n]
            scores = logits[rows * row : rows * row + 1]
            if not turbo:  # the guidance pair: conditioned, then unconditioned
                uncond = logits[rows * row + 1 : rows * row + 2]
                scores = scores + torch.as_tensor(seq.cfg_weight, device=device, dtype=scores.dtype) * (scores - uncond)
            generated = torch.tensor([[start, *seq.tokens]] if not turbo or not seq.tokens else [seq.tokens], device=device)
            for processor in processors[n]:
                scores = processor(generated, scores)
            token = int(torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1, generator=seq.generator))
            next_tokens.append(token)
            if token == stop:
                leaving.append(row)
                continue
            seq.tokens.append(token)
            try:
                seq.on_token(len(seq.tokens))
            except BaseException as exc:  # Cancelled, or the caller's own failure
                seq.error = exc
                leaving.append(row)
                continue
            if len(seq.tokens) >= seq.max_new_tokens:
                leaving.append(row)
        for row in leaving:
            sequences[active[row]].done = True
        if leaving:
            keep = [row for row in range(len(active)) if row not in leaving]
            for row in leaving:
                on_done(sequences[active[row]])
            active = [active[row] for row in keep]
            if not active:
                break
            kept_rows = torch.tensor([rows * row + r for row in keep for r in range(rows)], device=device)
            past.batch_select_indices(kept_rows)
            mask, positions = mask[kept_rows], positions[kept_rows]
            next_tokens = [next_tokens[row] for row in keep]
        step += 1
        token_ids = torch.tensor(next_tokens, device=device).repeat_interleave(rows).unsqueeze(1)
        embeds = t3.speech_emb(token_ids)
        if not turbo:  # learned speech positions; turbo's backbone adds its own from position_ids
            embeds = embeds + t3.speech_pos_emb.get_fixed_embedding(step)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        positions = positions[:, -1:] + 1
        logits, past = forward(embeds, past)
