"""Prompt token ids in the format the model was trained with.

By default the tokenizer's own chat template (what the CoLA protocol and most users mean by "the
model's chat template"); with `--template NAME` LLaMA-Factory's template of that name, which is
exactly what `llamafactory-cli train` used, for models whose tokenizer has no chat template.
"""

from __future__ import annotations

from typing import Callable

PromptEncoder = Callable[[str, str], list[int]]


def chat_template_encoder(tokenizer) -> PromptEncoder:
    def encode(system: str, user: str) -> list[int]:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
        return list(encoded["input_ids"])

    return encode


def llamafactory_template_encoder(tokenizer, template: str) -> PromptEncoder:
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.hparams import DataArguments

    chat = get_template_and_fix_tokenizer(tokenizer, DataArguments(template=template))

    def encode(system: str, user: str) -> list[int]:
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": ""}]
        prompt_ids, _ = chat.encode_oneturn(tokenizer, messages, system or None)
        return list(prompt_ids)

    return encode


def plain_encoder(tokenizer) -> PromptEncoder:
    """For base models without any template: the text itself, as an lm-evaluation-harness user would."""

    def encode(system: str, user: str) -> list[int]:
        text = f"{system}\n\n{user}" if system else user
        return tokenizer(text, add_special_tokens=True)["input_ids"]

    return encode


def prompt_encoder(tokenizer, template: str | None) -> PromptEncoder:
    if template:
        return llamafactory_template_encoder(tokenizer, template)
    if getattr(tokenizer, "chat_template", None):
        return chat_template_encoder(tokenizer)
    return plain_encoder(tokenizer)
