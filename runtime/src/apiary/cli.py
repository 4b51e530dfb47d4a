"""The `apiary` command (like cilium-dbg + hubble, plus `apiary lab` for the embedded lab)."""
from __future__ import annotations

import argparse
import sys

from apiary import __version__, output
from apiary.lab import nodes as lab_nodes


def _lab_get_nodes(args) -> int:
    rows = lab_nodes.get_nodes(args.lab_root)
    if args.output == "json":
        output.as_json(rows)
    else:
        output.table(
            [[r["name"], r["status"], ",".join(r["roles"]) or "<none>", r["internal_ip"], r["kernel"],
              r["routing_mode"], r["etcd"], "; ".join(r["problems"])] for r in rows],
            ["NAME", "STATUS", "ROLES", "INTERNAL-IP", "KERNEL-VERSION", "ROUTING", "ETCD", "PROBLEMS"],
        )
    return 0 if all(r["status"] == "Ready" for r in rows) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="apiary", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    version = sub.add_parser("version", help="print the runtime version")
    version.set_defaults(func=lambda args: print("apiary %s" % __version__) or 0)

    lab = sub.add_parser("lab", help="the lab cluster on this machine")
    lab.add_argument("--lab-root", default=lab_nodes.DEFAULT_LAB_ROOT)
    lab_sub = lab.add_subparsers(dest="lab_command", required=True)
    get = lab_sub.add_parser("get", help="show lab objects")
    get.add_argument("kind", choices=["nodes"])
    get.add_argument("-o", "--output", choices=["table", "json"], default="table")
    get.set_defaults(func=_lab_get_nodes)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except lab_nodes.LabNotFound as exc:
        print("apiary: %s" % exc, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
