"""`apiary lab ...`: the embedded lab cluster on this machine.

    apiary lab get nodes
    apiary lab apply -f FILE [-n NAMESPACE]                 (FILE `-` is stdin)
    apiary lab get pods|deployments|namespaces [NAME...] [-n NS | -A] [-o wide|json|jsonpath=...]
    apiary lab delete -f FILE | pod|deployment|namespace NAME... [-n NS] [--ignore-not-found]
    apiary lab exec [-n NS] POD [-c CONTAINER] -- CMD...
    apiary lab logs [-n NS] POD [-c CONTAINER]

Workload commands talk to the store from inside the lab's etcd node (see apiary.lab.store).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import sys

from apiary import output
from apiary.errors import UserError
from apiary.lab import images, kubelet, objects, store, workloads
from apiary.lab import nodes as lab_nodes

KIND_ALIASES = {
    "pods": "Pod", "pod": "Pod", "po": "Pod",
    "deployments": "Deployment", "deployment": "Deployment", "deploy": "Deployment",
    "deployments.apps": "Deployment", "deployment.apps": "Deployment",
    "namespaces": "Namespace", "namespace": "Namespace", "ns": "Namespace",
    "ciliumnetworkpolicies": "CiliumNetworkPolicy", "ciliumnetworkpolicy": "CiliumNetworkPolicy", "cnp": "CiliumNetworkPolicy",
    "ciliumclusterwidenetworkpolicies": "CiliumClusterwideNetworkPolicy",
    "ciliumclusterwidenetworkpolicy": "CiliumClusterwideNetworkPolicy", "ccnp": "CiliumClusterwideNetworkPolicy",
    "networkpolicies": "NetworkPolicy", "networkpolicy": "NetworkPolicy", "netpol": "NetworkPolicy",
    "services": "Service", "service": "Service", "svc": "Service",
}


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


# --- plumbing -----------------------------------------------------------------------------------

def _cluster(args) -> workloads.Cluster:
    if os.geteuid() != 0:
        raise UserError("apiary lab %s needs root (it works in the lab's network namespaces)" % args.lab_command)
    lab = lab_nodes.load_lab(args.lab_root)
    return workloads.Cluster(lab, args.lab_root, store.connect(lab))


def _store_errors(func):
    """Turn the store's errors into messages for the user."""
    def run(args):
        from apiary.store.etcd import EtcdError
        try:
            return func(args)
        except EtcdError as exc:
            raise UserError("the lab's store is not reachable: %s" % exc) from None
    return run


def _namespace(args) -> str:
    return args.namespace or "default"


# --- apply / delete ----------------------------------------------------------------------------

@_store_errors
def _apply(args) -> int:
    docs = []
    for path in args.filename:
        docs += objects.read_file(path)
    cluster = _cluster(args)
    with cluster.lock():
        return cluster.apply(docs, _namespace(args), namespace_flag=args.namespace is not None)


@_store_errors
def _delete(args) -> int:
    if args.filename and args.target:
        raise UserError("give either -f FILE or KIND NAME..., not both")
    if args.filename:
        docs = []
        for path in args.filename:
            docs += objects.read_file(path)
        cluster = _cluster(args)
        with cluster.lock():
            return cluster.delete_file(docs, _namespace(args), args.namespace is not None, args.ignore_not_found)
    if not args.target:
        raise UserError("say what to delete: -f FILE, or pod|deployment|namespace NAME...")
    kinds, names = _kind_and_names(args.target)
    if not names:
        raise UserError("resource(s) were provided, but no name was specified")
    cluster = _cluster(args)
    ok = True
    with cluster.lock():
        for kind, name in zip(kinds, names):
            ok = cluster.delete(kind, _namespace(args), name, args.ignore_not_found) and ok
    return 0 if ok else 1


def _kind_and_names(target: list):
    """`pod a b` or `pod/a deployment/b` -> ([Pod, Pod], [a, b])."""
    if "/" in target[0]:
        kinds, names = [], []
        for item in target:
            kind, _, name = item.partition("/")
            kinds.append(_kind(kind))
            names.append(name)
        return kinds, names
    kind = _kind(target[0])
    return [kind] * (len(target) - 1), target[1:]


def _kind(word: str) -> str:
    kind = KIND_ALIASES.get(word.lower())
    if kind is None:
        raise UserError('the server doesn\'t have a resource type "%s" (the lab has: pods, deployments, '
                        'namespaces, services, nodes, ciliumnetworkpolicies, ciliumclusterwidenetworkpolicies, '
                        'networkpolicies)' % word)
    return kind


# --- get -------------------------------------------------------------------------------------------

def age(timestamp: str | None, now: datetime.datetime | None = None) -> str:
    """kubectl's HumanDuration of the time since timestamp."""
    if not timestamp:
        return "<unknown>"
    try:
        then = datetime.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        return "<unknown>"
    now = now or datetime.datetime.now(datetime.timezone.utc)
    seconds = int((now - then).total_seconds())
    if seconds < -1:
        return "<invalid>"
    seconds = max(seconds, 0)
    minutes, hours = seconds // 60, seconds // 3600
    if seconds < 120:
        return "%ds" % seconds
    if minutes < 10:
        return "%dm%ds" % (minutes, seconds % 60) if seconds % 60 else "%dm" % minutes
    if minutes < 180:
        return "%dm" % minutes
    if hours < 8:
        return "%dh%dm" % (hours, minutes % 60) if minutes % 60 else "%dh" % hours
    if hours < 48:
        return "%dh" % hours
    if hours < 24 * 8:
        return "%dd%dh" % (hours // 24, hours % 24) if hours % 24 else "%dd" % (hours // 24)
    if hours < 24 * 365 * 2:
        return "%dd" % (hours // 24)
    years = hours // (24 * 365)
    if years < 8:
        return "%dy%dd" % (years, (hours // 24) % 365)
    return "%dy" % years


def pod_status_text(pod: dict) -> tuple:
    """(READY, STATUS, RESTARTS) as kubectl prints them for the pod (its live status)."""
    status = pod.get("status") or {}
    containers = pod["spec"].get("containers") or []
    reason = status.get("reason") or status.get("phase") or "Pending"
    ready = restarts = 0
    has_running = False
    for cs in reversed(status.get("containerStatuses") or []):
        restarts += int(cs.get("restartCount", 0))
        state = cs.get("state") or {}
        if state.get("waiting", {}).get("reason"):
            reason = state["waiting"]["reason"]
        elif "terminated" in state:
            term = state["terminated"]
            reason = term.get("reason") or ("Signal:%d" % term["signal"] if term.get("signal")
                                            else "ExitCode:%d" % term.get("exitCode", 0))
        elif "running" in state and cs.get("ready"):
            has_running = True
            ready += 1
    if reason == "Completed" and has_running:
        reason = "NotReady"
    if not status.get("reason") and has_running and ready == len(containers):
        reason = "Running"
    elif reason == "Running" and ready < len(containers):
        reason = "NotReady"
    return "%d/%d" % (ready, len(containers)), reason, str(restarts)


def _jsonpath(template: str, data) -> str:
    """A small part of kubectl's JSONPath: `{.a.b}`, `{.items[*].a}`, `{.a[0].b}`, literal text."""
    def walk(values, path):
        for part in re.findall(r"\.([^.\[\]]+)|\[(\*|-?\d+)\]", path):
            name, index = part
            nxt = []
            for value in values:
                if name:
                    if isinstance(value, dict) and name in value:
                        nxt.append(value[name])
                elif index == "*":
                    nxt.extend(value if isinstance(value, list) else list(value.values()) if isinstance(value, dict) else [])
                elif isinstance(value, list):
                    try:
                        nxt.append(value[int(index)])
                    except IndexError:
                        pass
            values = nxt
        return values

    def text(value):
        return value if isinstance(value, str) else json.dumps(value)

    out = []
    for literal, expr in re.findall(r"([^{]*)(?:\{([^}]*)\})?", template):
        out.append(literal.replace("\\n", "\n").replace("\\t", "\t"))
        if expr:
            expr = expr.strip()
            if expr in ("", "."):
                out.append(text(data))
            else:
                out.append(" ".join(text(v) for v in walk([data], expr if expr.startswith(".") else "." + expr)))
    return "".join(out)


@_store_errors
def _get(args) -> int:
    kind_word = args.kind.lower()
    if kind_word in ("nodes", "node", "no"):
        if args.names or args.all_namespaces or args.namespace:
            raise UserError("get nodes takes no names or namespaces")
        if args.output not in ("table", "json"):
            raise UserError("get nodes: -o must be table or json")
        return _get_nodes(args)
    kind = _kind(kind_word)
    if args.output not in ("table", "wide", "json", "name") and not args.output.startswith("jsonpath="):
        raise UserError("unknown output format %r (table, wide, json, name, jsonpath=TEMPLATE)" % args.output)
    if args.all_namespaces and args.names:
        raise UserError("a resource cannot be retrieved by name across all namespaces")
    cluster = _cluster(args)
    namespaced = objects.KINDS[kind][2]
    ns = None if args.all_namespaces or not namespaced else _namespace(args)
    if args.names:
        items, missing = [], []
        for name in args.names:
            obj = cluster.store.get(kind, ns, name)
            (items.append(obj) if obj else missing.append(name))
    else:
        items, missing = cluster.store.list(kind, ns), []
    if kind == "Pod":
        items = [cluster.pod_view(p) for p in items]
    elif kind == "Deployment":
        items = [cluster.deployment_view(d) for d in items]
    _print_objects(kind, items, args, all_namespaces=args.all_namespaces and namespaced,
                   single=len(args.names) == 1)
    for name in missing:
        print(workloads._not_found(kind, name), file=sys.stderr)
    if not items and not missing and args.output in ("table", "wide"):
        where = " in %s namespace" % ns if ns else ""
        print("No resources found%s." % where, file=sys.stderr)
    return 1 if missing else 0


def _print_objects(kind: str, items: list, args, all_namespaces: bool, single: bool) -> None:
    fmt = args.output
    if fmt == "json" or fmt.startswith("jsonpath="):
        data = items[0] if single and items else {"apiVersion": "v1", "kind": "List", "items": items,
                                                   "metadata": {"resourceVersion": ""}}
        if fmt == "json":
            output.as_json(data)
        else:
            sys.stdout.write(_jsonpath(fmt[len("jsonpath="):], data))
            sys.stdout.flush()
        return
    if fmt == "name":
        for obj in items:
            print("%s/%s" % (objects.resource(kind), obj["metadata"]["name"]))
        return
    if not items:
        return
    wide = fmt == "wide"
    rows = []
    if kind == "Pod":
        headers = ["NAME", "READY", "STATUS", "RESTARTS", "AGE"] + (["IP", "NODE"] if wide else [])
        for pod in items:
            ready, status, restarts = pod_status_text(pod)
            row = [pod["metadata"]["name"], ready, status, restarts, age(pod["metadata"].get("creationTimestamp"))]
            if wide:
                row += [pod["status"].get("podIP") or "<none>", pod["spec"].get("nodeName") or "<none>"]
            rows.append(row)
    elif kind == "Deployment":
        headers = ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"] + (["CONTAINERS", "IMAGES", "SELECTOR"] if wide else [])
        for dep in items:
            st, spec = dep["status"], dep["spec"]
            row = [dep["metadata"]["name"], "%d/%d" % (st["readyReplicas"], spec["replicas"]),
                   str(st["updatedReplicas"]), str(st["availableReplicas"]), age(dep["metadata"].get("creationTimestamp"))]
            if wide:
                containers = spec["template"]["spec"]["containers"]
                row += [",".join(c["name"] for c in containers), ",".join(c["image"] for c in containers),
                        ",".join("%s=%s" % kv for kv in sorted(spec["selector"]["matchLabels"].items()))]
            rows.append(row)
    elif kind == "Service":
        headers = ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"] + (["SELECTOR"] if wide else [])
        for svc in items:
            spec = svc["spec"]
            external = ([spec["loadBalancerIP"]] if spec.get("loadBalancerIP") else []) + (spec.get("externalIPs") or [])
            ports = ",".join("%d%s/%s" % (p["port"], ":%d" % p["nodePort"] if p.get("nodePort") else "", p["protocol"])
                             for p in spec["ports"])
            row = [svc["metadata"]["name"], spec["type"], spec["clusterIP"],
                   ",".join(external) or ("<pending>" if spec["type"] == "LoadBalancer" else "<none>"), ports,
                   age(svc["metadata"].get("creationTimestamp"))]
            if wide:
                row.append(",".join("%s=%s" % kv for kv in sorted((spec.get("selector") or {}).items())) or "<none>")
            rows.append(row)
    elif kind in objects.POLICY_KINDS:
        headers = ["NAME", "AGE"]
        rows = [[obj["metadata"]["name"], age(obj["metadata"].get("creationTimestamp"))] for obj in items]
    else:
        headers = ["NAME", "STATUS", "AGE"]
        for ns in items:
            rows.append([ns["metadata"]["name"], (ns.get("status") or {}).get("phase", "Active"),
                         age(ns["metadata"].get("creationTimestamp"))])
    if all_namespaces:
        headers = ["NAMESPACE"] + headers
        rows = [[obj["metadata"].get("namespace", "")] + row for obj, row in zip(items, rows)]
    output.table(rows, headers)


# --- exec / logs ---------------------------------------------------------------------------------

def _pod_and_container(cluster, args):
    ns = _namespace(args)
    pod = cluster.store.get("Pod", ns, args.pod)
    if pod is None:
        raise UserError('pods "%s" not found in namespace %s' % (args.pod, ns))
    containers = pod["spec"]["containers"]
    if args.container:
        matches = [c for c in containers if c["name"] == args.container]
        if not matches:
            raise UserError('container %s is not valid for pod %s (containers: %s)'
                            % (args.container, args.pod, ", ".join(c["name"] for c in containers)))
        container = matches[0]
    else:
        container = containers[0]
        if len(containers) > 1:
            print('Defaulted container "%s" out of: %s' % (container["name"], ", ".join(c["name"] for c in containers)),
                  file=sys.stderr)
    return pod, container


def _exec_options(args, rest: list) -> list:
    """Options given after the pod name (`exec POD -c C -n NS -- CMD`, as kubectl allows) go into
    args; returns the command (what follows `--`)."""
    if "--" not in rest:
        return rest
    head, command = rest[: rest.index("--")], rest[rest.index("--") + 1:]
    while head:
        word = head.pop(0)
        if word in ("-c", "--container", "-n", "--namespace") and head:
            setattr(args, "container" if word in ("-c", "--container") else "namespace", head.pop(0))
        elif word.startswith(("--container=", "--namespace=")):
            name, _, value = word[2:].partition("=")
            setattr(args, name, value)
        elif word in ("-i", "-t", "-it", "-ti", "--stdin", "--tty"):
            continue
        else:
            raise UserError("exec: unexpected %r before '--' (usage: exec [-n NS] POD [-c CONTAINER] -- CMD...)"
                            % word)
    return command


@_store_errors
def _exec(args) -> int:
    command = _exec_options(args, list(args.cmd))
    if not command:
        raise UserError("you must specify at least one command for the container (… -- CMD ...)")
    cluster = _cluster(args)
    pod, container = _pod_and_container(cluster, args)
    live = cluster.kubelet.live_status(pod)
    cs = next((c for c in live.get("containerStatuses") or [] if c["name"] == container["name"]), None)
    if cs is None or "running" not in (cs.get("state") or {}):
        _, status, _ = pod_status_text(dict(pod, status=live))
        raise UserError("cannot exec into container %s in pod %s: it is not running (pod status %s)"
                        % (container["name"], args.pod, status))
    directory = kubelet.pod_dir(args.lab_root, pod["metadata"]["uid"])
    env = images.environment(container, pod, directory)
    for name in ("TERM", "LANG", "LC_ALL"):
        if name in os.environ:
            env.setdefault(name, os.environ[name])
    # Into the container's cgroup as well, as `kubectl exec` runs in the container's: the node's
    # socket load-balancing programs then see this command's connects too.
    kubelet.join_cgroup(kubelet.cgroup_of(cs["pid"]))
    nsenter = shutil.which("nsenter") or "/usr/bin/nsenter"
    argv = [nsenter, "-t", str(cs["pid"]), "-n", "-m", "-u"]
    if container.get("workingDir"):
        argv.append("--wd=" + container["workingDir"])
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(nsenter, argv + ["--"] + command, env)
    return 0  # not reached


@_store_errors
def _logs(args) -> int:
    cluster = _cluster(args)
    pod, container = _pod_and_container(cluster, args)
    path = os.path.join(kubelet.pod_dir(args.lab_root, pod["metadata"]["uid"]), container["name"] + ".log")
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise UserError("no log for container %s in pod %s (it never started?)" % (container["name"], args.pod))
    if args.tail is not None and args.tail >= 0:
        data = b"".join(data.splitlines(keepends=True)[-args.tail:]) if args.tail else b""
    sys.stdout.buffer.write(data)
    return 0


# --- the parser ------------------------------------------------------------------------------------

def register(sub) -> None:
    lab = sub.add_parser("lab", help="the lab cluster on this machine")
    lab.add_argument("--lab-root", default=lab_nodes.DEFAULT_LAB_ROOT)
    lab_sub = lab.add_subparsers(dest="lab_command", required=True)

    get = lab_sub.add_parser("get", help="show lab nodes, pods, deployments, namespaces")
    get.add_argument("kind", help="nodes, pods (po), deployments (deploy), namespaces (ns)")
    get.add_argument("names", nargs="*", metavar="NAME")
    get.add_argument("-n", "--namespace")
    get.add_argument("-A", "--all-namespaces", action="store_true")
    get.add_argument("-o", "--output", default="table", help="table, wide, json, name, jsonpath=TEMPLATE")
    get.set_defaults(func=_get)

    apply = lab_sub.add_parser("apply", help="create or update Namespaces, Pods, Deployments from a file")
    apply.add_argument("-f", "--filename", action="append", required=True, help="YAML or JSON file, - for stdin")
    apply.add_argument("-n", "--namespace", help="namespace for objects that name none (default: default)")
    apply.set_defaults(func=_apply)

    delete = lab_sub.add_parser("delete", help="delete objects (a Namespace deletes what is in it)")
    delete.add_argument("target", nargs="*", metavar="KIND NAME", help="e.g. pod backend, or deployment/frontend")
    delete.add_argument("-f", "--filename", action="append")
    delete.add_argument("-n", "--namespace")
    delete.add_argument("--ignore-not-found", action="store_true")
    delete.set_defaults(func=_delete)

    exec_ = lab_sub.add_parser("exec", help="run a command in a pod's container: exec POD -- CMD...")
    exec_.add_argument("-n", "--namespace")
    exec_.add_argument("-c", "--container")
    exec_.add_argument("-i", "--stdin", action="store_true", help="accepted (stdin always passes through)")
    exec_.add_argument("-t", "--tty", action="store_true", help="accepted (the terminal is passed through)")
    exec_.add_argument("pod")
    exec_.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD")
    exec_.set_defaults(func=_exec)

    logs = lab_sub.add_parser("logs", help="a container's stdout and stderr")
    logs.add_argument("-n", "--namespace")
    logs.add_argument("-c", "--container")
    logs.add_argument("--tail", type=int)
    logs.add_argument("pod")
    logs.set_defaults(func=_logs)
