"""`apiary observe` (like `hubble observe`, cluster-wide through the relay), `apiary monitor` (like
`cilium monitor`, one node's raw events) and `apiary hubble-relay` (runs the relay)."""
from __future__ import annotations

import argparse
import logging
import os
import sys

from apiary import output
from apiary.errors import UserError
from apiary.lab import nodes as lab_nodes
from apiary.observe import filters, printer, server

# argparse dest -> filter key (the query string's names); every flag may be repeated (OR).
_FILTER_ARGS = ["pod", "from_pod", "to_pod", "namespace", "verdict", "type", "protocol", "port", "ip", "from_ip",
                "to_ip", "label", "from_label", "to_label", "node_name"]
DEFAULT_LAST = 20   # what `hubble observe` shows with no --last, --since or --follow


def _lab_socket(lab_root: str, name: str):
    """A file in the lab nodes' run dirs: the first node that has it (None if no lab or none has it)."""
    try:
        lab = lab_nodes.load_lab(lab_root)
    except lab_nodes.LabNotFound:
        return None
    for node in lab["nodes"]:
        path = os.path.join(node["run_dir"], name)
        if os.path.exists(path):
            return path
    return None


def _node_socket(args) -> str:
    from apiary.agent.cli import _socket

    return _socket(argparse.Namespace(socket=getattr(args, "socket", None), node=args.node, lab_root=args.lab_root))


def _target(args) -> str:
    if args.server and args.node:
        raise UserError("--server and --node: give one of them")
    if args.server:
        return args.server
    if args.node:
        return _node_socket(args)
    from apiary.observe.relay import DEFAULT_SOCKET

    if os.path.exists(DEFAULT_SOCKET):
        return DEFAULT_SOCKET
    found = _lab_socket(args.lab_root, "hubble-relay.sock")
    if found:
        return found
    raise UserError("no hubble relay found (%s is missing and no lab node has hubble-relay.sock): "
                    "is hubble_relay enabled? Use --server PATH|HOST:PORT or --node NAME" % DEFAULT_SOCKET)


def _tls(args):
    given = [args.tls_ca, args.tls_cert, args.tls_key]
    if not any(given):
        return None
    if not args.tls_ca:
        raise UserError("--tls-ca: needed with --tls-cert/--tls-key (the CA that signed the server's certificate)")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise UserError("--tls-cert and --tls-key: give both")
    for flag, path in (("--tls-ca", args.tls_ca), ("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key)):
        if path and not os.path.isfile(path):
            raise UserError("%s %r: no such file" % (flag, path))
    return {"ca": args.tls_ca, "cert": args.tls_cert, "key": args.tls_key}


def build_query(args) -> filters.Query:
    params = {key: getattr(args, key) for key in _FILTER_ARGS if getattr(args, key)}
    for key in ("since", "until", "last", "first"):
        if getattr(args, key) is not None:
            params[key] = [getattr(args, key)]
    if args.follow:
        params["follow"] = ["1"]
    if not (args.follow or args.last or args.first or args.since):
        params["last"] = [str(DEFAULT_LAST)]
    return filters.parse(params)


def _observe(args) -> int:
    query = build_query(args)       # bad filters fail here, before any connection
    target = _target(args)
    tls = _tls(args)
    if tls and server.is_unix_target(target):
        raise UserError("--tls-*: only for a HOST:PORT --server, not the unix socket %s" % target)
    fmt = args.output
    rows = []
    status = 0
    try:
        for rec in server.get_stream(target, "/v1/flows?" + query.query_string(), tls,
                                     timeout=30, follow_timeout=None if query.follow else 60):
            if fmt == "json" or fmt == "jsonpb":
                if "flow" in rec or "error" not in rec:
                    print(printer.json_line(rec), flush=query.follow)
            if "flow" in rec:
                flow = rec["flow"]
                if fmt == "compact":
                    print(printer.compact(flow), flush=query.follow)
                elif fmt == "dict":
                    print(printer.as_dict(flow), flush=query.follow)
                elif fmt == "table":
                    if query.follow:
                        if not rows:
                            rows.append(True)
                            print("   ".join(printer.TABLE_HEADERS))
                        print("   ".join(printer.table_row(flow)), flush=True)
                    else:
                        rows.append(printer.table_row(flow))
            elif "lost_events" in rec and fmt != "json":
                print(printer.lost(rec["lost_events"]), file=sys.stderr)
            elif "node_status" in rec and fmt != "json":
                print(printer.node_status(rec["node_status"]), file=sys.stderr)
            elif "error" in rec:
                print("apiary: the server ended the stream: %s" % rec["error"], file=sys.stderr)
                status = 1
    except server.StreamError as exc:
        raise UserError("%s: %s" % (target, exc)) from exc
    except KeyboardInterrupt:
        return 0
    except (OSError, ValueError) as exc:
        raise UserError("%s: %s" % (target, exc)) from exc
    if fmt == "table" and not query.follow:
        output.table(rows, printer.TABLE_HEADERS)
    return status


def _monitor(args) -> int:
    target = _node_socket(args)
    query = "&".join("type=%s" % t for t in args.type or [])
    if args.output != "json":
        print("Listening for events on %s. Press Ctrl-C to quit" % target, file=sys.stderr)
    try:
        for rec in server.get_stream(target, "/v1/monitor?" + query, timeout=30, follow_timeout=None):
            if args.output == "json":
                print(printer.json_line(rec), flush=True)
            elif "lost_events" in rec:
                print("Lost %d events (%s)" % (rec["lost_events"]["num_events_lost"], rec["lost_events"]["source"]),
                      flush=True)
            elif "error" in rec:
                print("apiary: the agent ended the stream: %s" % rec["error"], file=sys.stderr)
                return 1
            else:
                print(printer.monitor_line(rec), flush=True)
    except server.StreamError as exc:
        raise UserError("%s: %s" % (target, exc)) from exc
    except KeyboardInterrupt:
        return 0
    except OSError as exc:
        raise UserError("agent at %s: %s" % (target, exc)) from exc
    return 0


def _relay(args) -> int:
    from apiary.observe import relay

    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return relay.run(relay.load_config(args.config))


def _quiet(func):
    """Ctrl-C and a closed pipe (| head) end the command quietly."""
    def run(args):
        try:
            return func(args)
        except KeyboardInterrupt:
            return 0
        except BrokenPipeError:
            sys.stderr.close()
            return 0
    return run


def register(sub) -> None:
    p = sub.add_parser("observe", help="flows of the cluster (like hubble observe), through the relay")
    add = p.add_argument
    add("--pod", action="append", help="[namespace/]pod name prefix, either side")
    add("--from-pod", action="append")
    add("--to-pod", action="append")
    add("-n", "--namespace", action="append", help="namespace, either side")
    add("--verdict", action="append", help=", ".join(filters.VERDICTS))
    add("-t", "--type", action="append", help="drop, trace[:to-endpoint...], policy-verdict, trace-sock, l7")
    add("--protocol", action="append", help="tcp, udp, icmp, sctp")
    add("--port", action="append", help="L4 port, either side")
    add("--ip", action="append", help="IP or CIDR, either side")
    add("--from-ip", action="append")
    add("--to-ip", action="append")
    add("-l", "--label", action="append", help="key=value (k8s: optional), either side")
    add("--from-label", action="append")
    add("--to-label", action="append")
    add("--node-name", action="append", help="observing node (glob)")
    add("--since", help="a duration (1m, 30s, 2h) or an RFC 3339 time")
    add("--until", help="a duration or an RFC 3339 time")
    add("--last", help="the last N flows (default %d without --since/--follow)" % DEFAULT_LAST)
    add("--first", help="the first N flows")
    add("-f", "--follow", action="store_true", help="keep streaming flows as they come")
    add("-o", "--output", choices=["compact", "json", "jsonpb", "table", "dict"], default="compact")
    add("--server", help="relay or flow server: a unix socket path or HOST:PORT")
    add("--tls-ca")
    add("--tls-cert")
    add("--tls-key")
    add("--node", help="ask this lab node's agent (its flows only) instead of the relay")
    add("--lab-root", default=lab_nodes.DEFAULT_LAB_ROOT)
    p.set_defaults(func=_quiet(_observe))

    p = sub.add_parser("monitor", help="one node's raw datapath events (like cilium monitor)")
    p.add_argument("-t", "--type", action="append", choices=list(server.MONITOR_TYPES))
    p.add_argument("--node", help="a lab node's agent")
    p.add_argument("--socket", help="the agent's unix socket")
    p.add_argument("--lab-root", default=lab_nodes.DEFAULT_LAB_ROOT)
    p.add_argument("-o", "--output", choices=["text", "json"], default="text")
    p.set_defaults(func=_quiet(_monitor))

    p = sub.add_parser("hubble-relay", help="run the hubble relay (cluster-wide flows, UI)")
    p.add_argument("--config", required=True, help="the relay's JSON configuration")
    p.add_argument("--debug", action="store_true")
    p.set_defaults(func=_relay)
