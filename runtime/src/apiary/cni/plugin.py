"""`apiary-cni`: the CNI plugin (spec 1.0.0; results for 0.3.x/0.4.0 too).

Like cilium-cni, it does the per-pod plumbing itself and asks the node's agent for the rest:
ADD takes an IP from the agent's IPAM, creates the veth pair (`lxc<hash>` on the node, CNI_IFNAME
in the pod), gives the pod its /32, a link route to its gateway (the node's router IP) and a
default route, adds the node's /32 route to the pod, then registers the endpoint with the agent
(identity, BPF maps, program attach). Any failure undoes what was done. DEL removes whatever of
that is still there and succeeds when nothing is. CHECK verifies all of it against prevResult.

Errors are printed as CNI error JSON on stdout with the spec's codes (1-11) or ours (100+).
"""
from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import sys

from apiary import ip
from apiary.agent.client import DEFAULT_SOCKET, AgentClient, AgentError, AgentUnreachable

SUPPORTED_VERSIONS = ["0.3.0", "0.3.1", "0.4.0", "1.0.0"]
PLUGIN_TYPE = "apiary-cni"
# The node's /32 routes to its pods carry this protocol number (the agent's own are 101).
ENDPOINT_ROUTE_PROTO = "102"

# The spec's error codes.
E_INCOMPATIBLE_VERSION = 1
E_UNSUPPORTED_FIELD = 2
E_UNKNOWN_CONTAINER = 3
E_INVALID_ENV = 4
E_IO = 5
E_DECODE = 6
E_INVALID_CONFIG = 7
E_TRY_AGAIN = 11
# Ours (plugin-specific codes start at 100).
E_POOL_EXHAUSTED = 100
E_CHECK_FAILED = 101
E_AGENT_REJECTED = 102

CONTAINER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


class CniError(Exception):
    def __init__(self, code: int, msg: str, details: str = ""):
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details


def host_ifname(container_id: str, ifname: str) -> str:
    """The node side of the pod's veth: `lxc` + 11 hex digits, like Cilium's."""
    return "lxc" + hashlib.sha256(("%s/%s" % (container_id, ifname)).encode()).hexdigest()[:11]


# --- input -----------------------------------------------------------------------------------
def parse_env(environ) -> dict:
    command = environ.get("CNI_COMMAND", "")
    if command not in ("ADD", "DEL", "CHECK", "VERSION"):
        raise CniError(E_INVALID_ENV, "CNI_COMMAND: %r is not one of ADD, DEL, CHECK, VERSION" % command)
    env = {"command": command}
    if command == "VERSION":
        return env
    env["container_id"] = environ.get("CNI_CONTAINERID", "")
    env["ifname"] = environ.get("CNI_IFNAME", "")
    env["netns"] = environ.get("CNI_NETNS", "")
    if not CONTAINER_ID_RE.match(env["container_id"]):
        raise CniError(E_INVALID_ENV, "CNI_CONTAINERID: %r is missing or not a valid container ID" % env["container_id"])
    if not env["ifname"] or len(env["ifname"]) > 15 or env["ifname"] in (".", "..") \
            or re.search(r"[/:\s]", env["ifname"]):
        raise CniError(E_INVALID_ENV, "CNI_IFNAME: %r is missing or not a valid interface name" % env["ifname"])
    if command in ("ADD", "CHECK") and not env["netns"]:
        raise CniError(E_INVALID_ENV, "CNI_NETNS: required for %s" % command)
    args = {}
    for item in filter(None, environ.get("CNI_ARGS", "").split(";")):
        key, sep, value = item.partition("=")
        if not sep:
            raise CniError(E_INVALID_ENV, "CNI_ARGS: %r is not KEY=VALUE" % item)
        args[key] = value
    env["pod_namespace"] = args.get("K8S_POD_NAMESPACE", "")
    env["pod_name"] = args.get("K8S_POD_NAME", "")
    return env


def parse_config(raw: str, command: str) -> dict:
    try:
        conf = json.loads(raw) if raw.strip() else {}
    except ValueError as exc:
        raise CniError(E_DECODE, "network configuration: not valid JSON: %s" % exc)
    if not isinstance(conf, dict):
        raise CniError(E_DECODE, "network configuration: not a JSON object")
    if command == "VERSION":
        return conf
    version = conf.get("cniVersion")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(E_INCOMPATIBLE_VERSION, "cniVersion: %r is not supported" % (version,),
                       "supported: %s" % ", ".join(SUPPORTED_VERSIONS))
    if not isinstance(conf.get("name"), str) or not conf["name"]:
        raise CniError(E_INVALID_CONFIG, "name: a network name is required")
    if conf.get("type") != PLUGIN_TYPE:
        raise CniError(E_INVALID_CONFIG, "type: %r is not %s" % (conf.get("type"), PLUGIN_TYPE))
    socket_path = conf.get("agent-socket", DEFAULT_SOCKET)
    if not isinstance(socket_path, str) or not socket_path.startswith("/"):
        raise CniError(E_INVALID_CONFIG, "agent-socket: %r is not an absolute path" % (socket_path,))
    if "ipam" in conf and conf["ipam"]:
        raise CniError(E_UNSUPPORTED_FIELD, "ipam: apiary-cni takes addresses from the agent; remove the ipam section")
    if command == "CHECK" and not isinstance(conf.get("prevResult"), dict):
        raise CniError(E_INVALID_CONFIG, "prevResult: CHECK needs the result of ADD")
    return conf


# --- commands ----------------------------------------------------------------------------------
def cmd_version(conf: dict) -> dict:
    return {"cniVersion": conf.get("cniVersion", "1.0.0") if conf.get("cniVersion") in SUPPORTED_VERSIONS
            else "1.0.0", "supportedVersions": SUPPORTED_VERSIONS}


def _agent(conf) -> AgentClient:
    return AgentClient(conf.get("agent-socket", DEFAULT_SOCKET))


def _call(agent: AgentClient, method: str, path: str, body=None):
    try:
        return agent.request(method, path, body)
    except AgentUnreachable as exc:
        raise CniError(E_TRY_AGAIN, "the apiary agent is not reachable", str(exc))
    except AgentError as exc:
        code = E_POOL_EXHAUSTED if exc.status == 507 else E_AGENT_REJECTED
        raise CniError(code, str(exc))


def _owner(env) -> str:
    return "%s/%s" % (env["container_id"], env["ifname"])


def cmd_add(env: dict, conf: dict) -> dict:
    if not os.path.exists(env["netns"]):
        raise CniError(E_INVALID_ENV, "CNI_NETNS: %s does not exist" % env["netns"])
    host_if, pod_if, netns = host_ifname(env["container_id"], env["ifname"]), env["ifname"], env["netns"]
    # Before anything is taken: a second ADD must not touch (or release) the first one's resources.
    if ip.link(host_if) is not None:
        raise CniError(E_INVALID_CONFIG, "interface %s already exists: container %s %s was added before"
                       % (host_if, env["container_id"], pod_if))
    agent = _agent(conf)
    lease = _call(agent, "POST", "/v1/ipam", {"owner": _owner(env)})
    pod_ip, gateway, mtu = lease["ip"], lease["gateway"], int(conf.get("mtu", lease["mtu"]))
    created = False
    try:
        try:
            ip.run(["link", "add", host_if, "mtu", str(mtu), "type", "veth", "peer", "name", pod_if,
                    "mtu", str(mtu), "netns", netns])
            created = True
            ip.batch(["link set lo up", "link set %s up" % pod_if, "addr add %s/32 dev %s" % (pod_ip, pod_if),
                      "route add %s dev %s scope link" % (gateway, pod_if),
                      "route add default via %s dev %s" % (gateway, pod_if)], netns)
            ip.batch(["link set %s up" % host_if,
                      "route replace %s/32 dev %s src %s proto %s" % (pod_ip, host_if, gateway, ENDPOINT_ROUTE_PROTO)])
            pod_link, host_link = ip.link(pod_if, netns), ip.link(host_if)
        except ip.IpError as exc:
            raise CniError(E_IO, "setting up %s in %s failed" % (pod_if, netns), str(exc))
        _call(agent, "PUT", "/v1/endpoints", {
            "container_id": env["container_id"], "ifname": pod_if, "netns": netns, "host_ifname": host_if,
            "ip": pod_ip, "mac": pod_link["address"], "pod_namespace": env["pod_namespace"],
            "pod_name": env["pod_name"]})
    except BaseException:
        if created:
            ip.run(["link", "del", host_if], check=False)
        try:
            _call(agent, "DELETE", "/v1/ipam/" + AgentClient.quote(_owner(env)))
        except CniError:
            pass  # the first error is the one to report
        raise
    return result(conf["cniVersion"], host_if, host_link["address"], pod_if, pod_link["address"], netns,
                  pod_ip, gateway)


def result(version, host_if, host_mac, pod_if, pod_mac, netns, pod_ip, gateway) -> dict:
    address = {"address": "%s/32" % pod_ip, "gateway": gateway, "interface": 1}
    if version != "1.0.0":
        address["version"] = "4"
    return {"cniVersion": version,
           "interfaces": [{"name": host_if, "mac": host_mac}, {"name": pod_if, "mac": pod_mac, "sandbox": netns}],
           "ips": [address],
           "routes": [{"dst": "0.0.0.0/0", "gw": gateway}],
           "dns": {}}


def cmd_del(env: dict, conf: dict) -> None:
    agent = _agent(conf)
    _call(agent, "DELETE", "/v1/endpoints/%s/%s" % (AgentClient.quote(env["container_id"]),
                                                     AgentClient.quote(env["ifname"])))
    host_if = host_ifname(env["container_id"], env["ifname"])
    if ip.link(host_if) is not None:
        ip.run(["link", "del", host_if], check=False)  # takes the pod's side and the /32 route with it
    _call(agent, "DELETE", "/v1/ipam/" + AgentClient.quote(_owner(env)))


def cmd_check(env: dict, conf: dict) -> None:
    prev = conf["prevResult"]
    host_if, pod_if, netns = host_ifname(env["container_id"], env["ifname"]), env["ifname"], env["netns"]
    try:
        pod_ip = str(ipaddress.ip_interface(prev["ips"][0]["address"]).ip)
        gateway = prev["ips"][0]["gateway"]
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise CniError(E_INVALID_CONFIG, "prevResult.ips[0]: %s" % exc)
    problems = []
    host = ip.link(host_if)
    if host is None or "UP" not in host.get("flags", []):
        problems.append("node interface %s is missing or down" % host_if)
    if not os.path.exists(netns):
        problems.append("netns %s does not exist" % netns)
    else:
        pod = ip.link(pod_if, netns)
        if pod is None or "UP" not in pod.get("flags", []):
            problems.append("%s is missing or down in %s" % (pod_if, netns))
        else:
            addrs = [a["local"] for a in ip.query(["-4", "addr", "show", "dev", pod_if], netns)[0].get("addr_info", [])]
            if pod_ip not in addrs:
                problems.append("%s has %s, not %s" % (pod_if, addrs, pod_ip))
            routes = ip.query(["-4", "route", "show", "default"], netns)
            if not any(r.get("gateway") == gateway and r.get("dev") == pod_if for r in routes):
                problems.append("no default route via %s on %s" % (gateway, pod_if))
    if not any(r.get("dev") == host_if for r in ip.query(["-4", "route", "show", "%s/32" % pod_ip])):
        problems.append("the node has no route to %s via %s" % (pod_ip, host_if))
    agent = _agent(conf)
    endpoints = [e for e in _call(agent, "GET", "/v1/endpoints")
                 if e["container_id"] == env["container_id"] and e["ifname"] == pod_if]
    if not endpoints:
        raise CniError(E_UNKNOWN_CONTAINER, "the agent has no endpoint for container %s %s"
                       % (env["container_id"], pod_if), "; ".join(problems))
    health = _call(agent, "GET", "/v1/endpoints/%d/health" % endpoints[0]["id"])
    problems += health.get("problems", [])
    if endpoints[0]["ip"] != pod_ip:
        problems.append("the agent's endpoint has %s, prevResult %s" % (endpoints[0]["ip"], pod_ip))
    if problems:
        raise CniError(E_CHECK_FAILED, "container %s %s: %s" % (env["container_id"], pod_if, problems[0]),
                       "; ".join(problems))


# --- entry point -------------------------------------------------------------------------------
def run(environ, stdin_text: str):
    """-> (exit code, JSON to print or None)."""
    version = "1.0.0"
    try:
        env = parse_env(environ)
        conf = parse_config(stdin_text, env["command"])
        version = conf.get("cniVersion") if conf.get("cniVersion") in SUPPORTED_VERSIONS else version
        if env["command"] == "VERSION":
            return 0, cmd_version(conf)
        if env["command"] == "ADD":
            return 0, cmd_add(env, conf)
        if env["command"] == "DEL":
            cmd_del(env, conf)
            return 0, None
        cmd_check(env, conf)
        return 0, None
    except CniError as exc:
        error = {"cniVersion": version, "code": exc.code, "msg": exc.msg}
        if exc.details:
            error["details"] = exc.details
        return 1, error


def main() -> int:
    code, out = run(os.environ, "" if sys.stdin.isatty() else sys.stdin.read())
    if out is not None:
        json.dump(out, sys.stdout)
        sys.stdout.write("\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
