"""Every change this package makes to LLaMA-Factory, each applied right after its module is imported.

LLaMA-Factory 0.9.5 has no plugin point for finetuning types (NOTES.md): `finetuning_type`
is a closed Literal checked in several places. Each patch below checks that its target exists
and raises `IncompatibleLlamaFactory`, naming the installed and the expected version, when not.
Non-`aira_moe` runs go through the original code unchanged.
"""

from __future__ import annotations

import functools
import sys
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
        from .checks import check_before_loading

        check_before_loading(model_args, data_args, finetuning_args)

    return verify


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


def _run_in_scope(original: Callable) -> Callable:
    """An `aira_moe` workflow runs inside its own `training_run()` scope, which ends with it."""

    def run(model_args, data_args, training_args, finetuning_args, *args, **kwargs):
        if finetuning_args.finetuning_type != FINETUNING_TYPE:
            return original(model_args, data_args, training_args, finetuning_args, *args, **kwargs)
        from .checks import check_deepspeed, check_fsdp, check_resume
        from .run_data import training_run

        check_deepspeed(training_args.deepspeed, model_args)
        check_fsdp()
        check_resume(training_args.resume_from_checkpoint, finetuning_args)
        with training_run():
            return original(model_args, data_args, training_args, finetuning_args, *args, **kwargs)

    return run


WORKFLOWS = ("run_pt", "run_sft", "run_rm", "run_dpo", "run_kto")


def patch_workflow(workflow: ModuleType) -> None:
    """Each training workflow (`run_pt`, `run_sft`, `run_rm`, `run_dpo`, `run_kto`), bound by name in its package."""
    names = [name for name in WORKFLOWS if hasattr(workflow, name)]
    _require(workflow, names[0] if names else "run_<stage>")
    _wrap(workflow, names[0], _run_in_scope)


def _reference_by_disabling(original: Callable) -> Callable:
    """As for LoRA, the reference model is the policy with its adapter disabled, not a second model.

    Disabling an aira_moe adapter also gives its AwSVD residual back, so the reference is the base model.
    """

    def create_ref_model(model_args, finetuning_args, add_valuehead=False):
        if finetuning_args.finetuning_type == FINETUNING_TYPE and finetuning_args.ref_model is None:
            return None
        return original(model_args, finetuning_args, add_valuehead)

    return create_ref_model


def _bank_rates(original: Callable) -> Callable:
    """Where LLaMA-Factory builds no optimizer of its own, an aira_moe run gets per-bank learning rates."""

    def create_custom_optimizer(model, training_args, finetuning_args):
        optimizer = original(model, training_args, finetuning_args)
        if optimizer is None and finetuning_args.finetuning_type == FINETUNING_TYPE and finetuning_args.bank_lr_scaling:
            from ..optimizer import trainer_optimizer

            optimizer = trainer_optimizer(model, training_args)
        return optimizer

    return create_custom_optimizer


def patch_trainer_utils(trainer_utils: ModuleType) -> None:
    """The dpo and kto workflows bind `create_ref_model`, every trainer `create_custom_optimizer`, by name from here."""
    _wrap(trainer_utils, "create_ref_model", _reference_by_disabling)
    _wrap(trainer_utils, "create_custom_optimizer", _bank_rates)


def _remember_names(original: Callable) -> Callable:
    """Each dataset's attributes keep the name it is registered under (they hold only its file or hub id)."""

    def get_dataset_list(dataset_names, dataset_dir):
        attributes = original(dataset_names, dataset_dir)
        for name, attribute in zip(dataset_names or [], attributes):
            attribute.aira_moe_name = name
        return attributes

    return get_dataset_list


def _tag_rows(original: Callable) -> Callable:
    """Inside a run's scope, each loaded dataset's rows carry its name, which merging and splitting keep."""

    def load(dataset_attr, model_args, data_args, training_args):
        dataset = original(dataset_attr, model_args, data_args, training_args)
        from .run_data import SOURCE_COLUMN, current

        if current() is not None and not data_args.streaming and hasattr(dataset, "add_column"):
            name = getattr(dataset_attr, "aira_moe_name", dataset_attr.dataset_name)
            dataset = dataset.add_column(SOURCE_COLUMN, [name] * len(dataset))
        return dataset

    return load


def _untag_and_record(original: Callable) -> Callable:
    """Tokenize without the tag; for the training set, keep the row -> dataset map it gives."""

    def preprocess(dataset, data_args, training_args, stage, template, tokenizer, processor=None, is_eval=False):
        from .run_data import SOURCE_COLUMN, current

        sources = None
        if dataset is not None and SOURCE_COLUMN in (getattr(dataset, "column_names", None) or []):
            sources = list(dataset[SOURCE_COLUMN])
            dataset = dataset.remove_columns(SOURCE_COLUMN)
        result = original(dataset, data_args, training_args, stage, template, tokenizer, processor, is_eval=is_eval)
        run = current()
        if run is not None and not is_eval and sources is not None:
            run.record_sources(sources, len(result), packed=stage == "pt" or bool(data_args.packing))
        return result

    return preprocess


def _record_dataset(original: Callable) -> Callable:
    def get_dataset(template, model_args, data_args, training_args, stage, tokenizer, processor=None):
        dataset_module = original(template, model_args, data_args, training_args, stage, tokenizer, processor)
        from .run_data import current

        run = current()
        if run is not None:
            run.template, run.data_args, run.training_args, run.stage = template, data_args, training_args, stage
            run.tokenizer_module = {"tokenizer": tokenizer, "processor": processor}
            run.train_dataset = dataset_module.get("train_dataset")
        return dataset_module

    return get_dataset


def patch_data_loader(loader: ModuleType) -> None:
    """`get_dataset` calls the loader's helpers through its module's names; `llamafactory.data` binds it after."""
    _wrap(loader, "get_dataset_list", _remember_names)
    _wrap(loader, "_load_single_dataset", _tag_rows)
    _wrap(loader, "_get_preprocessed_dataset", _untag_and_record)
    _wrap(loader, "get_dataset", _record_dataset)


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


def _one_line(function: Callable) -> Callable:
    """Our refusals (`AiraMoeError`) end the process with one line on stderr; LLaMA-Factory's errors stay as they are."""

    def run(*args, **kwargs):
        from ..errors import AiraMoeError

        try:
            return function(*args, **kwargs)
        except AiraMoeError as error:
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(2) from None

    return run


def _precheck_arguments() -> None:
    """Parse the model, data and finetuning arguments of an `aira_moe` command before LLaMA-Factory starts.

    `llamafactory-cli train` hands several processes to torchrun before anything is parsed; checking
    here, once, in the parent, turns a bad value into one line instead of a traceback per process.
    Training arguments are left out: building them can touch the devices.
    """
    from llamafactory.hparams import DataArguments, ModelArguments
    from llamafactory.hparams.parser import read_args
    from transformers import HfArgumentParser

    from .arguments import AiraMoeFinetuningArguments
    from .checks import check_before_loading, check_deepspeed

    if len(sys.argv) < 2 or sys.argv[1] not in ("train", "export", "chat", "webchat", "api", "eval"):
        return
    saved = sys.argv
    sys.argv = [saved[0], *saved[2:]]
    try:
        args = read_args()
    finally:
        sys.argv = saved
    values = list(args.values()) if isinstance(args, dict) else list(args)
    if FINETUNING_TYPE not in values:
        return
    parser = HfArgumentParser((ModelArguments, DataArguments, AiraMoeFinetuningArguments))
    if isinstance(args, dict):
        model_args, data_args, finetuning_args = parser.parse_dict(args, allow_extra_keys=True)
        deepspeed = args.get("deepspeed")
    else:
        model_args, data_args, finetuning_args, _ = parser.parse_args_into_dataclasses(args, return_remaining_strings=True)
        deepspeed = args[args.index("--deepspeed") + 1] if "--deepspeed" in args[:-1] else None
    check_before_loading(model_args, data_args, finetuning_args)
    check_deepspeed(deepspeed, model_args)


def _launch_checked(original: Callable) -> Callable:
    def launch():
        _precheck_arguments()
        return original()

    return _one_line(launch)


def patch_launcher(launcher: ModuleType) -> None:
    """`llamafactory-cli` runs `launcher.launch`: bad `aira_moe` input is one line, checked before any work."""
    _wrap(launcher, "launch", _launch_checked)


def patch_tuner(tuner: ModuleType) -> None:
    """torchrun workers call `run_exp` directly (LLaMA-Factory's launcher.py as a script): one line there too."""
    _wrap(tuner, "run_exp", _one_line)
    _wrap(tuner, "export_model", _one_line)


def _with_aira_panel(original: Callable) -> Callable:
    """The Train tab gains the `aira_moe` panel, whose controls join the inputs of its buttons.

    The stock function wires its buttons to `manager.get_base_elems()` plus its own controls, so
    for the length of the call that method also returns ours; the panel shows for `aira_moe` only.
    """

    def create_train_tab(engine):
        import importlib

        import gradio as gr

        from .webui import PANEL, create_panel, locales

        _require(importlib.import_module("llamafactory.webui.locales"), "LOCALES").update(locales())
        panel = create_panel()
        manager = engine.manager
        base = _require(manager, "get_base_elems")
        manager.get_base_elems = lambda: base() | {elem for name, elem in panel.items() if name != PANEL}
        try:
            elem_dict = original(engine)
        finally:
            del manager.get_base_elems
        finetuning_type = manager.get_elem_by_id("top.finetuning_type")
        finetuning_type.change(lambda value: gr.update(visible=value == FINETUNING_TYPE), [finetuning_type],
                               [panel[PANEL]], queue=False)
        return {**elem_dict, **panel}

    return create_train_tab


def patch_webui_train(train: ModuleType) -> None:
    """`llamafactory.webui.components` binds `create_train_tab` by name from here."""
    _wrap(train, "create_train_tab", _with_aira_panel)


def _aira_train_args(original: Callable) -> Callable:
    def parse(self, data):
        args = original(self, data)
        if args.get("finetuning_type") == FINETUNING_TYPE:
            from .webui import option_values

            args.update(option_values(lambda elem_id: data[self.manager.get_elem_by_id(elem_id)]))
        return args

    return parse


def patch_webui_runner(runner: ModuleType) -> None:
    """The runner copies the LoRA controls into the arguments by hand for `lora` only; ours likewise."""
    _wrap(_require(runner, "Runner"), "_parse_train_args", _aira_train_args)
