"""The `apiary` command (like cilium-dbg + hubble, plus `apiary lab` for the embedded lab).

Each area registers its own sub-commands: a module in COMMAND_MODULES has `register(subparsers)`.
A command's handler returns the exit code; errors meant for the user are raised as
`apiary.errors.UserError` (printed as `apiary: <message>`, exit 2).
"""
from __future__ import annotations

import argparse
import importlib
import sys

from apiary import __version__
from apiary.errors import UserError

COMMAND_MODULES = [
    "apiary.lab.cli",
    "apiary.agent.cli",
    "apiary.datapath.cli",
    "apiary.observe.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="apiary", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    version = sub.add_parser("version", help="print the runtime version")
    version.set_defaults(func=lambda args: print("apiary %s" % __version__) or 0)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        print("apiary: %s" % exc, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
