"""`apiary datapath ...`: load, attach and remove the BPF datapath on this node."""
from __future__ import annotations

from apiary import output
from apiary.bpf.libbpf import LibbpfError
from apiary.datapath import loader
from apiary.errors import UserError


def _print(result: dict, args, quiet_line: str) -> int:
    if args.output == "json":
        output.as_json(result)
        return 0
    prefix = "would " if args.check else ""
    for line in result["actions"]:
        print(prefix + line)
    if not result["actions"]:
        print(quiet_line)
    programs = result.get("programs")
    if programs:
        output.table([[name, info["id"] if info["id"] is not None else "<new>", info["tag"] or ""]
                      for name, info in sorted(programs.items())], ["PROGRAM", "ID", "TAG"])
    return 0


def _apply(args) -> int:
    try:
        result = loader.apply(args.objects, args.pin_dir, args.uplink, args.routing_mode, check=args.check,
                              state_file=args.state_file, cgroup=args.cgroup)
    except LibbpfError as exc:
        raise UserError(str(exc)) from None
    return _print(result, args, "datapath up to date")


def _remove(args) -> int:
    try:
        result = loader.remove(args.pin_dir, args.uplink, check=args.check, state_file=args.state_file,
                               cgroup=args.cgroup)
    except LibbpfError as exc:
        raise UserError(str(exc)) from None
    return _print(result, args, "nothing to remove")


def _common(parser) -> None:
    parser.add_argument("--pin-dir", required=True, help="bpffs folder for the maps and programs")
    parser.add_argument("--uplink", default="eth0", help="the node's uplink device (default eth0)")
    parser.add_argument("--state-file", help="what was loaded (default: datapath.json beside the objects folder)")
    parser.add_argument("--cgroup", help="cgroup v2 directory of the socket load-balancing programs (never the "
                        "cgroup2 root; remove: default the one apply was given)")
    parser.add_argument("--check", action="store_true", help="change nothing; say what would be done")
    parser.add_argument("-o", "--output", choices=["text", "json"], default="text")


def register(sub) -> None:
    datapath = sub.add_parser("datapath", help="the BPF datapath of this node")
    datapath_sub = datapath.add_subparsers(dest="datapath_command", required=True)

    apply = datapath_sub.add_parser("apply", help="load the objects and attach them (idempotent)")
    apply.add_argument("--objects", required=True, metavar="DIR", help="folder with bpf_lxc.o, bpf_host.o, ...")
    apply.add_argument("--routing-mode", choices=loader.ROUTING_MODES, default="native")
    _common(apply)
    apply.set_defaults(func=_apply)

    remove = datapath_sub.add_parser("remove", help="detach everything, delete apiary_vxlan, unpin")
    _common(remove)
    remove.set_defaults(func=_remove)
