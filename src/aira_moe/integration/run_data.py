"""What one `aira_moe` training run's calibration needs from LLaMA-Factory's data pipeline.

LLaMA-Factory's training workflows build the tokenized training set before they load the
model, but pass neither to `init_adapter`. The patches open a `training_run()` scope around the
workflow; inside it the data loader tags every row with its dataset's name (so the mixture's
shares survive merging and the `val_size` split), and `get_dataset` leaves its result here. The
scope closes with the workflow, so nothing of one run reaches the next.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Optional

from torch.utils.data import DataLoader, Subset

from ..errors import AiraMoeError

SOURCE_COLUMN = "_aira_moe_source"


@dataclass
class RunData:
    """The run's data objects, recorded by the patches as LLaMA-Factory builds them."""

    template: Any = None
    data_args: Any = None
    training_args: Any = None
    stage: str = ""
    tokenizer_module: dict[str, Any] = field(default_factory=dict)
    train_dataset: Any = None
    sources: Optional[list[str]] = None  # dataset name of each tokenized training row, when traceable
    untraceable: str = "the training set was not built by LLaMA-Factory's loader"

    def record_sources(self, sources: list[str], tokenized_rows: int, packed: bool) -> None:
        """Keep the row -> dataset map if tokenization kept rows one to one."""
        if packed:
            self.sources, self.untraceable = None, "packing mixes datasets within a row"
        elif len(sources) != tokenized_rows:
            self.sources = None
            self.untraceable = f"tokenization dropped {len(sources) - tokenized_rows} invalid rows"
        else:
            self.sources, self.untraceable = sources, ""

    def collator(self) -> Any:
        """The workflow's own collator for pt and sft; for pairwise (rm, dpo) and kto rows, their sequences padded.

        Pairwise rows calibrate on the chosen responses.
        """
        from llamafactory.data import SFTDataCollatorWith4DAttentionMask
        from llamafactory.extras.constants import IGNORE_INDEX
        from transformers import DataCollatorForLanguageModeling

        if self.stage in ("rm", "kto"):
            key = "chosen_input_ids" if self.stage == "rm" else "input_ids"
            return SequencePadder(key, self.tokenizer_module["tokenizer"].pad_token_id or 0)
        if self.stage == "pt":
            return DataCollatorForLanguageModeling(tokenizer=self.tokenizer_module["tokenizer"], mlm=False)
        return SFTDataCollatorWith4DAttentionMask(
            template=self.template, pad_to_multiple_of=8, label_pad_token_id=IGNORE_INDEX, **self.tokenizer_module
        )

    def calibration_loader(self, steps: int, seed: int) -> tuple[DataLoader, str]:
        """`steps` batches of a seeded random sample of the training set, and a line saying what it holds."""
        dataset = self.train_dataset
        if dataset is None or not hasattr(dataset, "__len__"):
            raise AiraMoeError("aira_moe's techniques sample the training set at random: it must be a map-style "
                             "dataset (turn `streaming` off).")
        batch_size = self.training_args.per_device_train_batch_size
        sources = self.sources or [""] * len(dataset)
        indices = stratified_sample(sources, min(steps * batch_size, len(dataset)), seed)
        loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, collate_fn=self.collator(), shuffle=False)
        return loader, describe_sample(indices, sources, len(dataset), seed, self.untraceable)

    def cache_fields(self, model_name: str) -> dict[str, Any]:
        """What the statistics depend on besides the weights, the token ids and the targets."""
        tokenizer = self.tokenizer_module["tokenizer"]
        vocab = json.dumps(sorted(tokenizer.get_vocab().items())).encode()
        return {
            "model": model_name,
            "tokenizer": f"{type(tokenizer).__name__}:{len(tokenizer)}:{hashlib.sha256(vocab).hexdigest()[:16]}",
            "template": self.data_args.template,
            "cutoff_len": self.data_args.cutoff_len,
            "packing": bool(self.data_args.packing),
            "neat_packing": bool(self.data_args.neat_packing),
            "stage": self.stage,
            "batch_size": self.training_args.per_device_train_batch_size,
            "seed": self.training_args.seed,
        }


@dataclass
class SequencePadder:
    """Right-pads one token-id column of a batch into `input_ids` and `attention_mask`."""

    key: str
    pad_id: int

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        rows = [list(feature[self.key]) for feature in features]
        width = max(len(row) for row in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for index, row in enumerate(rows):
            ids[index, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[index, : len(row)] = 1
        return {"input_ids": ids, "attention_mask": mask}


def stratified_sample(sources: list[str], count: int, seed: int) -> list[int]:
    """`count` distinct row indices, each source getting its share (largest remainder), in seeded random order."""
    rows: dict[str, list[int]] = {}
    for index, source in enumerate(sources):
        rows.setdefault(source, []).append(index)
    exact = {source: count * len(members) / len(sources) for source, members in rows.items()}
    quota = {source: int(share) for source, share in exact.items()}
    by_remainder = sorted(rows, key=lambda source: quota[source] - exact[source])  # stable: first seen wins ties
    for source in by_remainder[: count - sum(quota.values())]:
        quota[source] += 1
    generator = random.Random(seed)
    picked = [index for source, members in rows.items() for index in generator.sample(members, quota[source])]
    generator.shuffle(picked)
    return picked


def describe_sample(indices: list[int], sources: list[str], total: int, seed: int, untraceable: str) -> str:
    head = f"Calibration sample: {len(indices)} of {total} training rows (seed {seed})"
    if untraceable:
        return f"{head}; rows per dataset unknown: {untraceable}."
    counts = Counter(sources[index] for index in indices)
    return f"{head}: " + ", ".join(f"{name} {counts[name]}" for name in dict.fromkeys(sources)) + "."


_RUN: ContextVar[Optional[RunData]] = ContextVar("aira_moe_run", default=None)


@contextmanager
def training_run() -> Iterator[RunData]:
    """The scope of one `aira_moe` training workflow."""
    token = _RUN.set(RunData())
    try:
        yield _RUN.get()
    finally:
        _RUN.reset(token)


def current() -> Optional[RunData]:
    return _RUN.get()
