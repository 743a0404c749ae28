"""Batched forward passes shared by every task: next-token logits, greedy generation, answer NLL.

Prompts are sorted by length before batching (less padding) and results are returned in the
caller's order. Left padding keeps every prompt's last token at the same position; with rotary
embeddings the constant shift does not change attention between real tokens.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
from tqdm import tqdm


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        ids[row, width - len(sequence) :] = torch.tensor(sequence, dtype=torch.long)
        mask[row, width - len(sequence) :] = 1
    return ids.to(device), mask.to(device)


def batches(lengths: Sequence[int], batch_size: int, desc: str) -> Iterator[list[int]]:
    """Indices grouped into batches of similar length, with a progress bar counting items."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    with tqdm(total=len(order), desc=desc, unit="item") as progress:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            yield chunk
            progress.update(len(chunk))


@torch.no_grad()
def next_token_logits(model, prompts: list[list[int]], token_ids: list[int], pad_id: int, batch_size: int, desc: str) -> torch.Tensor:
    """Logits of `token_ids` at the position after each prompt, shape (len(prompts), len(token_ids)), fp32 CPU."""
    device = model.device
    out = torch.empty((len(prompts), len(token_ids)))
    for chunk in batches([len(p) for p in prompts], batch_size, desc):
        ids, mask = left_pad([prompts[i] for i in chunk], pad_id, device)
        logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=1).logits[:, -1]
        out[chunk] = logits[:, token_ids].float().cpu()
    return out


@torch.no_grad()
def generate(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, batch_size: int, desc: str) -> list[str]:
    """Greedy continuations (special tokens dropped), in the order of `prompts`."""
    texts: list[str] = [""] * len(prompts)
    for chunk in batches([len(p) for p in prompts], batch_size, desc):
        ids, mask = left_pad([prompts[i] for i in chunk], tokenizer.pad_token_id, model.device)
        output = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
        for row, index in enumerate(chunk):
            texts[index] = tokenizer.decode(output[row, ids.shape[1] :], skip_special_tokens=True).strip()
    return texts


@torch.no_grad()
def answer_nll(model, prompts: list[list[int]], answers: list[list[int]], pad_id: int, batch_size: int, desc: str) -> tuple[float, int]:
    """Summed negative log-likelihood of each answer given its prompt, and the number of answer tokens."""
    total, tokens = 0.0, 0
    sequences = [p + a for p, a in zip(prompts, answers)]
    for chunk in batches([len(s) for s in sequences], batch_size, desc):
        ids, mask = left_pad([sequences[i] for i in chunk], pad_id, model.device)
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        for row, index in enumerate(chunk):
            n = len(answers[index])
            predicted = logits[row, -n - 1 : -1]
            target = ids[row, -n:]
            total += torch.nn.functional.cross_entropy(predicted, target, reduction="sum").item()
            tokens += n
    return total, tokens
