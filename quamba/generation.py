"""Decoding on top of the inference cache: one prefill, then one recurrent step per token."""
from __future__ import annotations

import torch


@torch.no_grad()
def greedy_generate(model, input_ids: torch.Tensor, max_new_tokens: int, eos_token_id: int | None = None) -> torch.Tensor:
    """input_ids: [B, L] -> [B, L + n] with n <= max_new_tokens greedy tokens (stops when all rows hit eos)."""
    cache = model.allocate_cache(input_ids.shape[0])
    logits = model(input_ids, cache).logits[:, -1]
    out, done = [input_ids], torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    for _ in range(max_new_tokens):
        nxt = logits.argmax(-1)
        out.append(nxt[:, None])
        if eos_token_id is not None:
            done |= nxt == eos_token_id
            if bool(done.all()):
                break
        logits = model(nxt[:, None], cache).logits[:, -1]
    return torch.cat(out, dim=1)
