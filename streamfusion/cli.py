"""The ``streamfusion`` command: one sub-command per driver.

Each driver module exposes ``add_arguments(parser)`` and ``run(args) -> int``; this file only
wires them, so the CLI never knows more than a command's name and one-line summary.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

COMMANDS = {
    "replay": ("streamfusion.replay", "replay a click log: progressive + holdout evaluation"),
    "reproduce": ("streamfusion.reproduce", "offline reproduction of the paper's Tables 2-3"),
    "generate": ("streamfusion.data.generate", "write a synthetic click log, planted structure"),
    "serve": ("streamfusion.kafka.serve", "Kafka daemon: score live events, learn from labels"),
    "produce": ("streamfusion.kafka.produce", "replay a click log into a Kafka topic as JSON"),
    "score": ("streamfusion.score", "score a click log with a model file (replay --save-model)"),
}
EXIT_NOT_BUILT = 2


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every flag's help ends with its default, unless the help already says it in words."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        return text if "(default" in text else super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser with every sub-command attached."""
    parser = argparse.ArgumentParser(
        prog="streamfusion",
        description="Online ResFusion CTR prediction: LightGBM trees + a compiled FM/DeepFM "
        "residual learner.",
    )
    from streamfusion import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, summary) in COMMANDS.items():
        p = sub.add_parser(name, help=summary, description=summary,
                           formatter_class=DefaultsHelpFormatter)
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not module_name.startswith(exc.name):
                raise
            p.set_defaults(_run=_not_built(name))
            continue
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def _not_built(name: str):
    def run(args: argparse.Namespace) -> int:
        print(f"streamfusion {name}: not built yet", file=sys.stderr)
        return EXIT_NOT_BUILT

    return run


def _format_warning(message, category, filename, lineno, line=None) -> str:
    kind = "" if category is UserWarning else f" ({category.__name__})"
    return f"streamfusion: warning{kind}: {message}\n"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``streamfusion`` console script."""
    warnings.formatwarning = _format_warning  # one plain line, not a quoted source line
    try:
        args = build_parser().parse_args(argv)
        return int(args._run(args) or 0)
    except KeyboardInterrupt:  # Ctrl-C before a command installs its own handling
        print("streamfusion: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
