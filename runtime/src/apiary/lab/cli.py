"""`apiary lab ...`: the embedded lab cluster on this machine."""
from __future__ import annotations

from apiary import output
from apiary.lab import nodes as lab_nodes


def _get_nodes(args) -> int:
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


def register(sub) -> None:
    lab = sub.add_parser("lab", help="the lab cluster on this machine")
    lab.add_argument("--lab-root", default=lab_nodes.DEFAULT_LAB_ROOT)
    lab_sub = lab.add_subparsers(dest="lab_command", required=True)
    get = lab_sub.add_parser("get", help="show lab objects")
    get.add_argument("kind", choices=["nodes"])
    get.add_argument("-o", "--output", choices=["table", "json"], default="table")
    get.set_defaults(func=_get_nodes)
