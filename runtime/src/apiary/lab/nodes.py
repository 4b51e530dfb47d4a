"""What `apiary lab get nodes` shows: each lab node's state, checked live.

The lab role writes <lab root>/lab.json (the topology); the node role writes each node's
<state dir>/node.json (its report). Liveness is checked from inside each node's namespace.
"""
from __future__ import annotations

import json
import os
import subprocess
import urllib.request

from apiary import netns
from apiary.errors import UserError
from apiary.store.etcd import tls_context

DEFAULT_LAB_ROOT = "/var/lib/apiary-lab"


class LabNotFound(UserError):
    pass


def load_lab(lab_root: str = DEFAULT_LAB_ROOT) -> dict:
    path = os.path.join(lab_root, "lab.json")
    try:
        with open(path) as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise LabNotFound("no lab found (%s is missing): bring it up with scripts/lab-up.sh" % path)


def _underlay_address(ns: str) -> str | None:
    out = subprocess.run(["ip", "-n", ns, "-j", "-4", "addr", "show", "dev", "eth0"],
                         capture_output=True, text=True)
    if out.returncode != 0:
        return None
    for link in json.loads(out.stdout or "[]"):
        if link.get("operstate") not in ("UP", "UNKNOWN"):
            return None
        for addr in link.get("addr_info", []):
            return addr["local"]
    return None


def _etcd_healthy(ip: str, tls: dict) -> bool:
    """etcd answers over TLS, to a client certificate (lab.json's etcd_tls)."""
    try:
        with urllib.request.urlopen("https://%s:2379/health" % ip, timeout=2,
                                    context=tls_context(tls["ca_file"], tls["cert_file"], tls["key_file"])) as resp:
            return json.load(resp).get("health") in ("true", True)
    except (OSError, ValueError, KeyError):
        return False


def node_status(node: dict, etcd_tls: dict | None = None) -> dict:
    """Live status of one lab node: namespace, underlay address, its report, etcd if a member."""
    status = {
        "name": node["name"],
        "netns": node["netns"],
        "roles": [g for g in node.get("groups", []) if g in ("kube_control_plane", "kube_node", "etcd")],
        "internal_ip": node["ip"],
        "problems": [],
    }
    if not netns.exists(node["netns"]):
        status["problems"].append("network namespace %s is missing" % node["netns"])
    elif _underlay_address(node["netns"]) != node["ip"]:
        status["problems"].append("eth0 is down or lacks %s" % node["ip"])

    report_path = os.path.join(node["state_dir"], "node.json")
    try:
        with open(report_path) as handle:
            report = json.load(handle)
    except (OSError, ValueError):
        report = {}
        status["problems"].append("not provisioned yet (%s missing)" % report_path)
    status["kernel"] = report.get("kernel", "")
    status["runtime"] = report.get("runtime_version", "")
    status["routing_mode"] = report.get("routing_mode", "")
    failed = [name for name, ok in report.get("preflight", {}).items() if not ok]
    if failed:
        status["problems"].append("preflight failed: " + ", ".join(sorted(failed)))
    if report and not os.path.isdir(node.get("bpf_pin_dir", "")):
        status["problems"].append("bpffs pin folder %s is missing" % node.get("bpf_pin_dir"))

    if "etcd" in node.get("groups", []) and not status["problems"]:
        healthy = netns.call_in(node["netns"], _etcd_healthy, node["ip"], etcd_tls or {})
        status["etcd"] = "healthy" if healthy else "unhealthy"
        if status["etcd"] != "healthy":
            status["problems"].append("etcd on %s is not healthy" % node["ip"])
    else:
        status["etcd"] = "-" if "etcd" not in node.get("groups", []) else "unknown"
    status["status"] = "Ready" if not status["problems"] else "NotReady"
    return status


def get_nodes(lab_root: str = DEFAULT_LAB_ROOT) -> list[dict]:
    lab = load_lab(lab_root)
    return [node_status(node, lab.get("etcd_tls")) for node in lab["nodes"]]
