"""Every change this package makes to LLaMA-Factory, each applied right after its module is imported.

LLaMA-Factory 0.9.5 has no plugin point for finetuning types (NOTES.md): `finetuning_type`
is a closed Literal checked in several places. Each patch below checks that its target exists
and raises `IncompatibleLlamaFactory`, naming the installed and the expected version, when not.
Non-`aira_moe` runs go through the original code unchanged.
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Any, Callable

EXPECTED_VERSION = "0.9.5"
FINETUNING_TYPE = "aira_moe"


class IncompatibleLlamaFactory(RuntimeError):
    """The installed LLaMA-Factory does not look like the version these patches were written for."""


def _require(module: ModuleType, name: str) -> Any:
    """Return `module.name`, or explain that this LLaMA-Factory differs from the expected one."""
    if not hasattr(module, name):
        from llamafactory.extras.env import VERSION

        raise IncompatibleLlamaFactory(
            f"{module.__name__}.{name} not found: aira_moe patches LLaMA-Factory {EXPECTED_VERSION}, "
            f"installed is {VERSION}. Install llamafactory=={EXPECTED_VERSION}."
        )
    return getattr(module, name)


def _wrap(module: ModuleType, name: str, make: Callable[[Callable], Callable]) -> None:
    """Replace `module.name` by `make(original)` once; re-applying the patch is a no-op."""
    original = _require(module, name)
    if getattr(original, "__aira_moe_patched__", False):
        return
    patched = functools.wraps(original)(make(original))
    patched.__aira_moe_patched__ = True
    setattr(module, name, patched)


def patch_constants(constants: ModuleType) -> None:
    """List `aira_moe` among the methods the web UI offers."""
    methods = _require(constants, "METHODS")
    if FINETUNING_TYPE not in methods:
        methods.append(FINETUNING_TYPE)
    _require(constants, "PEFT_METHODS").add(FINETUNING_TYPE)


def _verify_model_args(original: Callable) -> Callable:
    """The stock check rejects adapters of any type but LoRA (blocking chat, export, resume)."""

    def verify(model_args, data_args, finetuning_args) -> None:
        if finetuning_args.finetuning_type != FINETUNING_TYPE:
            return original(model_args, data_args, finetuning_args)
        for name in ("quantization_bit", "use_unsloth", "use_kt"):
            value = getattr(model_args, name, None)
            if value not in (None, False):
                raise ValueError(
                    f"`{name}: {value!r}` is not supported with finetuning_type aira_moe "
                    f"(quantised bases, Unsloth and KTransformers are LoRA-only for now); remove it."
                )
        # With quantisation refused, what remains of the stock check is the LoRA-only adapter rule.
        if finetuning_args.use_layer_wise_rank:
            _check_rank_budget(model_args, finetuning_args)

    return verify


def _check_rank_budget(model_args, finetuning_args) -> None:
    """Infeasible budgets fail now, from the model's config alone, before any weight is loaded."""
    from transformers import AutoConfig

    from ..rank_allocation import check_budget

    config = AutoConfig.from_pretrained(model_args.model_name_or_path, trust_remote_code=model_args.trust_remote_code)
    config = getattr(config, "text_config", None) or config
    check_budget(
        config.num_hidden_layers, finetuning_args.rank_budget, finetuning_args.min_rank, finetuning_args.max_rank
    )


def _set_lora_training_defaults(training_args, finetuning_args) -> None:
    """The training defaults LLaMA-Factory sets for LoRA hold for any peft adapter."""
    if finetuning_args.finetuning_type != FINETUNING_TYPE:
        return
    # PeftModel hides the labels argument from the Trainer's signature inspection.
    training_args.label_names = training_args.label_names or ["labels"]
    if training_args.ddp_find_unused_parameters is None:
        training_args.ddp_find_unused_parameters = False


def _use_extended_arguments(parser: ModuleType) -> None:
    """Put `AiraMoeFinetuningArguments` in place of the stock class in the parser's class lists.

    Done at parse time, not when the parser module is imported: our arguments module imports
    LLaMA-Factory's, which may be what is importing the parser at that moment.
    """
    from .arguments import AiraMoeFinetuningArguments

    stock = _require(parser, "FinetuningArguments")
    for list_name in ("_TRAIN_ARGS", "_INFER_ARGS", "_EVAL_ARGS", "_TRAIN_MCA_ARGS"):
        arg_classes = _require(parser, list_name)
        arg_classes[:] = [AiraMoeFinetuningArguments if cls is stock else cls for cls in arg_classes]


def _parse_args_with(parser: ModuleType) -> Callable[[Callable], Callable]:
    def wrap(original: Callable) -> Callable:
        def parse(args=None):
            _use_extended_arguments(parser)
            parsed = original(args)
            if len(parsed) == 5:  # training: model, data, training, finetuning, generating
                _set_lora_training_defaults(parsed[2], parsed[3])
            return parsed

        return parse

    return wrap


def patch_parser(parser: ModuleType) -> None:
    """Let `aira_moe` through the parser (extended arguments) and its LoRA-only checks."""
    for name in ("FinetuningArguments", "_TRAIN_ARGS", "_INFER_ARGS", "_EVAL_ARGS", "_TRAIN_MCA_ARGS"):
        _require(parser, name)
    for name in ("_parse_train_args", "_parse_infer_args", "_parse_eval_args"):
        _wrap(parser, name, _parse_args_with(parser))
    _wrap(parser, "_verify_model_args", _verify_model_args)


def _record_run_context(original: Callable) -> Callable:
    """Remember the dataset the workflow builds before loading the model, for calibration."""

    def get_dataset(template, model_args, data_args, training_args, stage, **tokenizer_module):
        dataset_module = original(template, model_args, data_args, training_args, stage=stage, **tokenizer_module)
        from .run_context import RunContext, record

        record(RunContext(template, model_args, data_args, training_args, stage, tokenizer_module, dataset_module))
        return dataset_module

    return get_dataset


def patch_workflow(workflow: ModuleType) -> None:
    """The pt and sft workflows call `get_dataset` through the name bound in their module."""
    _wrap(workflow, "get_dataset", _record_run_context)


def _init_adapter(original: Callable) -> Callable:
    def init_adapter(config, model, model_args, finetuning_args, is_trainable):
        if finetuning_args.finetuning_type != FINETUNING_TYPE:
            return original(config, model, model_args, finetuning_args, is_trainable)
        from .adapter import init_aira_moe_adapter

        return init_aira_moe_adapter(model, model_args, finetuning_args, is_trainable)

    return init_adapter


def patch_loader(loader: ModuleType) -> None:
    """`load_model` calls `init_adapter` through the name bound in the loader module."""
    _wrap(loader, "init_adapter", _init_adapter)
