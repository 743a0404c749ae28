"""The command line the report scripts share: results files in, a markdown table out, a plot on request."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable


def run_report(
    description: str,
    load: Callable[[list[Path]], Any],
    table: Callable[[Any], str],
    plot: Callable[[Any, Path], None],
) -> None:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, nargs="+", help="results files (JSON lines); each report says how it reads several")
    parser.add_argument("--plot", type=Path, help="where to write the figure (PNG)")
    args = parser.parse_args()
    data = load(args.results)
    print(table(data))
    if args.plot:
        plot(data, args.plot)
