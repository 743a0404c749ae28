"""What the current training run's data looks like, captured for calibration.

LLaMA-Factory's pt and sft workflows build the tokenized dataset before they load the model,
but pass neither to `init_adapter`. A patch on the workflows' `get_dataset` records its inputs
and result here; `init_adapter` then calibrates on exactly that data, with LLaMA-Factory's own
template, tokenizer and collator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from torch.utils.data import DataLoader


@dataclass
class RunContext:
    template: Any
    model_args: Any
    data_args: Any
    training_args: Any
    stage: str
    tokenizer_module: dict[str, Any]
    dataset_module: dict[str, Any]

    def train_loader(self) -> DataLoader:
        """The training set in order (no shuffling), batched and padded by the workflow's collator."""
        from llamafactory.data import SFTDataCollatorWith4DAttentionMask
        from llamafactory.extras.constants import IGNORE_INDEX
        from transformers import DataCollatorForLanguageModeling

        if self.stage == "pt":
            collator = DataCollatorForLanguageModeling(tokenizer=self.tokenizer_module["tokenizer"], mlm=False)
        else:
            collator = SFTDataCollatorWith4DAttentionMask(
                template=self.template, pad_to_multiple_of=8, label_pad_token_id=IGNORE_INDEX, **self.tokenizer_module
            )
        return DataLoader(
            self.dataset_module["train_dataset"],
            batch_size=self.training_args.per_device_train_batch_size,
            collate_fn=collator,
            shuffle=False,
        )


_current: Optional[RunContext] = None


def record(context: RunContext) -> None:
    global _current
    _current = context


def current() -> Optional[RunContext]:
    return _current
