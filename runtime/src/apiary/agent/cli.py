"""Agent commands, shaped like cilium-dbg's: `apiary agent`, `status`, `endpoint list|get|health`,
`identity list`, `map list|get`, `policy get|validate|import|delete`, `bpf policy get`, `service list`. Each talks to one node's agent: this host's by default,
`--node NAME` for a lab node, `--socket PATH` for any."""
from __future__ import annotations

import json
import logging
import os
import sys

from apiary import output
from apiary.agent.client import DEFAULT_SOCKET, AgentClient, AgentError, AgentUnreachable
from apiary.errors import UserError
from apiary.k8s import validation
from apiary.lab import nodes as lab_nodes
from apiary.policy import rules


def _socket(args) -> str:
    if args.socket:
        return args.socket
    if args.node:
        for node in lab_nodes.load_lab(args.lab_root)["nodes"]:
            if node["name"] == args.node:
                return os.path.join(node["run_dir"], "apiary.sock")
        raise UserError("--node: no lab node called %r" % args.node)
    return DEFAULT_SOCKET


def _get(args, path):
    return _call(args, "GET", path)


def _call(args, method, path, body=None):
    try:
        return AgentClient(_socket(args)).request(method, path, body)
    except (AgentUnreachable, AgentError) as exc:
        raise UserError(str(exc)) from exc


def _emit(args, data, render) -> int:
    if getattr(args, "output", None) == "json":
        output.as_json(data)
    else:
        render(data)
    return 0


# --- renderers ---------------------------------------------------------------------------------
def _render_status(s) -> None:
    dp = s["datapath"]
    rows = [
        ("KVStore", "%s   %s" % (s["kvstore"]["state"], s["kvstore"]["message"])),
        ("Kubernetes", "%s   %s" % (s["kubernetes"]["state"], s["kubernetes"]["message"])),
        ("Node", "%s   %s" % (s["node"], s["node_ip"])),
        ("Routing", "Network: %s%s   Host: BPF" % (s["routing_mode"].capitalize(),
                                                  " (%s)" % s["tunnel_protocol"] if s["tunnel_protocol"] else "")),
        ("IPAM", "IPv4: %d/%d allocated from %s" % (s["ipam"]["allocated"], s["ipam"]["capacity"], s["pod_cidr"])),
        ("Router IP", s["router_ip"]),
        ("Endpoints", "%d" % s["endpoints"]),
        ("Datapath", "%s   programs: %s" % (dp["state"], ", ".join(
            "%s on %s" % (p["program"], p["device"]) for p in dp["attached"]) or "none")),
        ("Cluster nodes", "%d   %s" % (len(s["cluster_nodes"]), ", ".join(s["cluster_nodes"]))),
        ("Store sync", "%s   %d error(s) since start" % ("Ok" if s["synced"] else "Syncing", s["sync_errors"])),
    ] + _hubble_rows(s.get("hubble") or {"state": "Disabled"})
    width = max(len(k) for k, _ in rows) + 2
    for key, value in rows:
        print(("%s:" % key).ljust(width) + value)


def _hubble_rows(h) -> list:
    if h["state"] != "Ok":
        return [("Hubble", h["state"])]
    obs = h["observer"]
    lost = sum(obs["lost_events"].values())
    rows = [("Hubble", "Ok   Current/Max Flows: %d/%d, Flows seen: %d, Events lost: %d%s" % (
        obs["num_flows"], obs["max_flows"], obs["seen_flows"], lost,
        "   Server: %s%s" % (h["listen_address"], " (mTLS)" if h["tls"] else "") if h["listen_address"] else ""))]
    if h["metrics_address"]:
        unsupported = ", ".join(h["metrics_unsupported"])
        rows.append(("Hubble metrics", "%s   %s%s" % (h["metrics_address"], ", ".join(h["metrics"]) or "agent only",
                                                       "   (no data for: %s)" % unsupported if unsupported else "")))
    kd = h["kernel_drops"]
    rows.append(("Kernel drops", "%s   %s" % (kd["state"], kd.get("message", ""))))
    return rows


def _render_endpoints(eps) -> None:
    rows = []
    for ep in eps:
        labels = ep["labels"] or [""]
        rows.append([ep["id"], ep["policy_ingress"], ep["policy_egress"], ep["identity"], labels[0], "",
                     ep["ip"] or "", ep["status"]])
        rows += [["", "", "", "", label, "", "", ""] for label in labels[1:]]
    output.table(rows, ["ENDPOINT", "POLICY (ingress)", "POLICY (egress)", "IDENTITY", "LABELS (source:key[=value])",
                        "IPv6", "IPv4", "STATUS"])


def _render_endpoint(ep) -> None:
    for key in ("id", "identity", "ip", "mac", "host_ifname", "host_ifindex", "host_mac", "pod_namespace",
                "pod_name", "container_id", "netns", "status"):
        print("%-14s %s" % (key + ":", ep[key]))
    print("labels:")
    for label in ep["labels"]:
        print("  " + label)


def _render_health(h) -> None:
    print("Overall Health:   %s" % h["overall"])
    print("BPF Health:       %s" % h["bpf"])
    print("Policy Health:    %s" % h["policy"])
    print("Connected:        %s" % ("yes" if h["connected"] else "no"))
    for problem in h["problems"]:
        print("Problem:          %s" % problem)


def _render_identities(ids) -> None:
    rows = []
    for ident in ids:
        labels = ident["labels"] or [""]
        rows.append([ident["id"], labels[0]])
        rows += [["", label] for label in labels[1:]]
    output.table(rows, ["ID", "LABELS"])


def _render_map(entries) -> None:
    output.table([[e["key"], e["value"], e.get("state", "sync"), e.get("error", "")] for e in entries],
                 ["Key", "Value", "State", "Error"])


def _render_policy(data) -> None:
    print(json.dumps(data["policy"], indent=2))
    print("Revision: %d" % data["revision"])


def _render_bpf_policy(endpoints) -> None:
    for ep in endpoints:
        print("%s:" % ep["path"])
        rows = []
        for entry in ep["entries"]:
            labels = entry["labels"] or [""]
            rows.append([entry["policy"], entry["direction"], entry["identity"], labels[0], entry["port"],
                         entry["bytes"], entry["packets"]])
            rows += [["", "", "", label, "", "", ""] for label in labels[1:]]
        output.table(rows, ["POLICY", "DIRECTION", "IDENTITY", "LABELS (source:key[=value])", "PORT/PROTO",
                            "BYTES", "PACKETS"])


def _render_services(services) -> None:
    """As `cilium service list`: one row per frontend, then one per further backend."""
    rows = []
    for svc in services:
        backends = ["%d => %s (%s)" % (n, b["address"], b.get("state", "active"))
                    for n, b in enumerate(svc["backends"], 1)] or [""]
        rows.append([svc["id"], svc["frontend"], svc["type"], backends[0]])
        rows += [["", "", "", backend] for backend in backends[1:]]
    output.table(rows, ["ID", "Frontend", "Service Type", "Backend"])


def _render_policy_change(result) -> None:
    for item in result["results"]:
        print("%s %s" % (item["object"], item["action"]))
    print("Revision: %d%s" % (result["revision"], "" if result["enforced"] else
                              " (not yet in this node's datapath after 10 s)"))


# --- commands ----------------------------------------------------------------------------------
def _agent(args) -> int:
    from apiary.agent.config import AgentConfig
    from apiary.agent.daemon import Agent

    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return Agent(AgentConfig.load(args.config)).run()


def _policy_files(args) -> list:
    return [doc for path in args.filename for doc in validation.read_file(path)]


def _policy_validate(args) -> int:
    docs = _policy_files(args)
    found, problems = validation.check_documents(docs, args.namespace or "default", rules.CHECKERS)
    if problems:
        raise UserError("%d problem%s:\n  %s" % (len(problems), "s" if len(problems) > 1 else "",
                                                  "\n  ".join(problems)))
    for obj in found:
        print("%s: valid" % validation.describe(obj))
    print("All policies are valid")
    return 0


def _policy_change(args, method) -> int:
    body = {"objects": _policy_files(args), "namespace": args.namespace, "check": args.check}
    return _emit(args, _call(args, method, "/v1/policy", body), _render_policy_change)


def _endpoint_id(value: str) -> int:
    if not value.isdigit():
        raise UserError("endpoint: %r is not an endpoint ID (see `apiary endpoint list`)" % value)
    return int(value)


def register(sub) -> None:
    def target(parser, data=True):
        parser.add_argument("--node", help="a lab node's agent")
        parser.add_argument("--socket", help="the agent's unix socket (default %s)" % DEFAULT_SOCKET)
        parser.add_argument("--lab-root", default=lab_nodes.DEFAULT_LAB_ROOT)
        if data:
            parser.add_argument("-o", "--output", choices=["table", "json"], default="table")

    agent = sub.add_parser("agent", help="run the node agent")
    agent.add_argument("--config", required=True, help="the agent's JSON configuration")
    agent.add_argument("--debug", action="store_true")
    agent.set_defaults(func=_agent)

    status = sub.add_parser("status", help="the agent's state")
    target(status)
    status.set_defaults(func=lambda a: _emit(a, _get(a, "/v1/status"), _render_status))

    endpoint = sub.add_parser("endpoint", help="endpoints (pods) on the node").add_subparsers(dest="sub", required=True)
    p = endpoint.add_parser("list")
    target(p)
    p.set_defaults(func=lambda a: _emit(a, _get(a, "/v1/endpoints"), _render_endpoints))
    p = endpoint.add_parser("get")
    p.add_argument("id")
    target(p)
    p.set_defaults(func=lambda a: _emit(a, _get(a, "/v1/endpoints/%d" % _endpoint_id(a.id)), _render_endpoint))
    p = endpoint.add_parser("health")
    p.add_argument("id")
    target(p)
    p.set_defaults(func=lambda a: _health(a))

    identity = sub.add_parser("identity", help="security identities").add_subparsers(dest="sub", required=True)
    p = identity.add_parser("list")
    target(p)
    p.set_defaults(func=lambda a: _emit(a, _get(a, "/v1/identities"), _render_identities))

    maps = sub.add_parser("map", help="the node's BPF maps").add_subparsers(dest="sub", required=True)
    p = maps.add_parser("list")
    target(p)
    p.set_defaults(func=lambda a: _emit(a, _get(a, "/v1/map"), lambda m: output.table(
        [[x["name"], x["entries"], x["path"]] for x in m], ["Name", "Num entries", "Pin"])))
    p = maps.add_parser("get")
    p.add_argument("name", help="ipcache, lxc or metrics (apiary_ and cilium_ prefixes are accepted)")
    target(p)
    p.set_defaults(func=lambda a: _emit(a, _get(a, "/v1/map/%s" % a.name), _render_map))


    policy = sub.add_parser("policy", help="network policy: the cluster's rules as this node's agent has them") \
        .add_subparsers(dest="sub", required=True)
    p = policy.add_parser("get", help="every rule, as Cilium's internal rules, and the policy revision")
    target(p)
    p.set_defaults(func=lambda a: _emit(a, _get(a, "/v1/policy"), _render_policy))
    p = policy.add_parser("validate", help="check policy files without applying them")
    p.add_argument("-f", "--filename", action="append", required=True)
    p.add_argument("-n", "--namespace")
    p.set_defaults(func=_policy_validate)
    for verb, method, text in (("import", "PUT", "validate and store policies (all or nothing)"),
                               ("delete", "DELETE", "delete the policies a file names")):
        p = policy.add_parser(verb, help=text)
        p.add_argument("-f", "--filename", action="append", required=True)
        p.add_argument("-n", "--namespace")
        p.add_argument("--check", action="store_true", help="change nothing, say what would change")
        target(p)
        p.set_defaults(func=lambda a, m=method: _policy_change(a, m))

    service = sub.add_parser("service", help="services as this node's datapath balances them") \
        .add_subparsers(dest="sub", required=True)
    p = service.add_parser("list", help="frontends and their backends (apiary_lb4_services)")
    target(p)
    p.set_defaults(func=lambda a: _emit(a, _get(a, "/v1/service"), _render_services))

    bpf = sub.add_parser("bpf", help="the datapath's BPF state").add_subparsers(dest="sub", required=True)
    bpf_policy = bpf.add_parser("policy", help="apiary_policy").add_subparsers(dest="verb", required=True)
    p = bpf_policy.add_parser("get", help="an endpoint's policy entries with their counters")
    p.add_argument("endpoint", nargs="?")
    p.add_argument("--all", action="store_true", help="every endpoint of the node")
    target(p)
    p.set_defaults(func=_bpf_policy_get)


def _bpf_policy_get(args) -> int:
    if bool(args.all) == bool(args.endpoint):
        raise UserError("bpf policy get: name one endpoint ID, or --all")
    path = "/v1/bpf/policy" if args.all else "/v1/bpf/policy/%d" % _endpoint_id(args.endpoint)
    return _emit(args, _get(args, path), _render_bpf_policy)


def _health(args) -> int:
    health = _get(args, "/v1/endpoints/%d/health" % _endpoint_id(args.id))
    _emit(args, health, _render_health)
    return 0 if health["overall"] == "OK" else 1
