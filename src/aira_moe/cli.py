"""The `aira-moe` command. Training itself goes through the stock `llamafactory-cli`."""

from __future__ import annotations

import argparse
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aira-moe", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="Fine-tune SmolLM2-135M-Instruct on MedMCQA with aira_moe on CPU; score before and after."
    )
    demo.add_argument("--output-dir", type=Path, default=Path("outputs/demo"), help="Where everything is written.")
    demo.add_argument("--epochs", type=float, default=1.0, help="Training epochs over the 240 training questions.")
    export = commands.add_parser(
        "export-lora", help="Write a stock peft LoRA adapter that reproduces an aira_moe adapter on the original base."
    )
    export.add_argument("--model", required=True, help="The ORIGINAL base model (path or hub id) the adapter was trained on.")
    export.add_argument("--adapter", required=True, help="The aira_moe adapter directory.")
    export.add_argument("--output", required=True, help="Where to write the LoRA adapter.")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        if args.epochs <= 0:
            raise SystemExit(f"--epochs must be > 0, got {args.epochs}")
        from .demo import run_demo

        run_demo(args.output_dir, args.epochs)
    elif args.command == "export-lora":
        from .export import export_lora

        print(f"LoRA adapter written to {export_lora(args.model, args.adapter, args.output)}")


if __name__ == "__main__":
    main()
