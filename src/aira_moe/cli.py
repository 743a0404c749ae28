"""The `aira-moe` command. Training itself goes through the stock `llamafactory-cli`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

DEFAULT_SOURCE = Path(os.environ.get("AIRA_MOE_SOURCE", "../shared/data"))


def add_demo(commands) -> None:
    demo = commands.add_parser(
        "demo", help="Fine-tune SmolLM2-135M-Instruct on MedMCQA with aira_moe on CPU; score before and after."
    )
    demo.add_argument("--output-dir", type=Path, default=Path("outputs/demo"), help="Where everything is written.")
    demo.add_argument("--epochs", type=float, default=1.0, help="Training epochs over the 240 training questions.")
    demo.add_argument("--calibration-batches", type=int, default=10, help="Training batches the full mode calibrates on (awsvd_collect_steps).")
    demo.add_argument("--questions", type=int, default=60, help="Held-out questions scored before and after (1-60).")


def add_export(commands) -> None:
    export = commands.add_parser(
        "export-lora", help="Write a stock peft LoRA adapter that reproduces an aira_moe adapter on the original base."
    )
    export.add_argument("--model", required=True, help="The ORIGINAL base model (path or hub id) the adapter was trained on.")
    export.add_argument("--adapter", required=True, help="The aira_moe adapter directory.")
    export.add_argument("--output", required=True, help="Where to write the LoRA adapter.")


def add_prepare(commands) -> None:
    prepare = commands.add_parser(
        "prepare-data", help="Convert raw GSM8K, FinEval-en, GenMedGPT-5k and LawBench into LLaMA-Factory files with held-out splits."
    )
    prepare.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="Raw data folder (layout of ../shared/data; env AIRA_MOE_SOURCE).")
    prepare.add_argument("--output", type=Path, default=Path("data"), help="Folder of dataset_info.json, where the files go.")


def add_eval(commands) -> None:
    from .evaluation.registry import TASKS

    evaluate = commands.add_parser("eval", help="Score a base model, base + adapter (aira_moe or LoRA) or a merged model on tasks.")
    evaluate.add_argument("--model", required=True, help="Base or merged model (path or hub id).")
    evaluate.add_argument("--adapter", help="A peft adapter directory (aira_moe or LoRA) to load on --model.")
    evaluate.add_argument(
        "--task", required=True, type=task_list,
        help="A task or a comma list (one model load for all): " + "; ".join(f"{k}: {t.description}" for k, t in TASKS.items()),
    )
    evaluate.add_argument("--data", type=Path, help="Task data (file or folder); default: the task's file under --source or --data-dir.")
    evaluate.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="Raw benchmark folder (env AIRA_MOE_SOURCE).")
    evaluate.add_argument("--data-dir", type=Path, default=Path("data"), help="Folder of the prepared held-out splits.")
    evaluate.add_argument("--output", required=True, help="Results JSON to write; with several tasks a path holding {task}.")
    evaluate.add_argument("--template", help="LLaMA-Factory template the model was trained with (default: the tokenizer's chat template).")
    evaluate.add_argument("--batch-size", type=int, default=8)
    evaluate.add_argument("--limit", type=int, help="Score a seeded random sample of this many items.")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda, cuda:1, ...")
    evaluate.add_argument("--max-new-tokens", type=int, help="Generation budget (generative tasks; default per task).")


def task_list(value: str) -> list[str]:
    """`--task`'s comma list, each name checked against the registry."""
    from .evaluation.registry import TASKS

    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in TASKS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"{', '.join(unknown) or repr(value)} is not a task; choose from {', '.join(TASKS)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aira-moe", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for add in (add_demo, add_export, add_prepare, add_eval):
        add(commands)
    return parser


def run_eval(args: argparse.Namespace) -> None:
    from .evaluation.registry import default_data
    from .evaluation.tasks import EvalSettings, evaluate_tasks

    if len(args.task) > 1 and "{task}" not in args.output:
        raise SystemExit(f"--output {args.output}: with several tasks it must hold {{task}}, e.g. eval_{{task}}.json")
    if len(args.task) > 1 and args.data:
        raise SystemExit("--data names one task's file; give one --task with it, or leave it out for the defaults")
    evaluate_tasks([
        EvalSettings(
            model=args.model,
            adapter=args.adapter,
            task=task,
            data=args.data or default_data(task, args.source, args.data_dir),
            output=Path(args.output.replace("{task}", task)),
            template=args.template,
            batch_size=args.batch_size,
            limit=args.limit,
            seed=args.seed,
            device=args.device,
            max_new_tokens=args.max_new_tokens,
        )
        for task in args.task
    ])


def main(argv: list[str] | None = None) -> None:
    """The command line; a refusal of ours is one line on stderr and exit status 2."""
    from .errors import AiraMoeError

    try:
        run(build_parser().parse_args(argv))
    except AiraMoeError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def run(args: argparse.Namespace) -> None:
    if args.command == "demo":
        if args.epochs <= 0:
            raise SystemExit(f"--epochs must be > 0, got {args.epochs}")
        if args.calibration_batches < 1:
            raise SystemExit(f"--calibration-batches must be >= 1, got {args.calibration_batches}")
        if not 1 <= args.questions <= 60:
            raise SystemExit(f"--questions must be between 1 and 60 (the held-out split), got {args.questions}")
        from .demo import run_demo

        run_demo(args.output_dir, args.epochs, args.calibration_batches, args.questions)
    elif args.command == "export-lora":
        from .export import export_lora

        print(f"LoRA adapter written to {export_lora(args.model, args.adapter, args.output)}")
    elif args.command == "prepare-data":
        from .prepare_data import prepare

        manifest = prepare(args.source, args.output)
        for name, rows in manifest["rows"].items():
            print(f"{name:<20}{rows:>7} rows -> {args.output / (name + '.json')}")
    else:
        run_eval(args)


if __name__ == "__main__":
    main()
