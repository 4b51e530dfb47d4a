"""Calling a CNI plugin chain the way containerd does through libcni (CNI spec 1.0).

- The network list is the first `*.conflist` (by name) in the node's CNI config dir.
- ADD runs the plugins in order; each gets its plugin object plus the list's `name` and
  `cniVersion`, and `prevResult` = the previous plugin's result (none for the first). The last
  result is the list's result and is cached (libcni's `cniCacheV1` file format) in the pod dir.
- CHECK runs them in order, DEL in reverse order, each with the cached result as `prevResult`.
- Each plugin runs in the node's network namespace (`nsenter --net=/run/netns/<node>`) with
  CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME, CNI_ARGS, CNI_PATH in its environment and
  the config on stdin. A non-zero exit is an error; its stdout is the CNI error object
  `{cniVersion, code, msg, details}`.
"""
from __future__ import annotations

import base64
import glob
import json
import os
import subprocess

from apiary import netns

TIMEOUT = 60


class CNIError(Exception):
    """A plugin failed (or the config is unusable). `code` is the CNI error code when a plugin
    reported one."""

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        self.code = code


class RuntimeConf:
    def __init__(self, container_id: str, netns_path: str, ifname: str, args: list):
        self.container_id = container_id
        self.netns_path = netns_path
        self.ifname = ifname
        self.args = args  # [(key, value)], in CNI_ARGS order

    def cni_args(self) -> str:
        return ";".join("%s=%s" % kv for kv in self.args)


def find_conflist(conf_dir: str) -> str:
    found = sorted(glob.glob(os.path.join(conf_dir, "*.conflist")))
    if not found:
        raise CNIError("no CNI network list (*.conflist) in %s: is the node's CNI installed?" % conf_dir)
    return found[0]


class NetworkList:
    def __init__(self, path: str, cni_path: list, node_netns: str):
        self.path = path
        self.cni_path = list(cni_path)
        self.node_netns = node_netns
        with open(path, "rb") as handle:
            self.raw = handle.read()
        try:
            self.conf = json.loads(self.raw)
        except ValueError as exc:
            raise CNIError("%s is not valid JSON: %s" % (path, exc)) from None
        for field in ("name", "cniVersion", "plugins"):
            if not self.conf.get(field):
                raise CNIError("%s: %s is missing" % (path, field))
        if not isinstance(self.conf["plugins"], list) or not all(
                isinstance(p, dict) and p.get("type") for p in self.conf["plugins"]):
            raise CNIError("%s: plugins must be a list of objects each with a type" % path)
        self.name = self.conf["name"]
        self.version = self.conf["cniVersion"]
        self.plugins = self.conf["plugins"]

    # --- the three operations -------------------------------------------------------------------

    def add(self, rt: RuntimeConf, cache_dir: str) -> dict:
        prev = None
        for plugin in self.plugins:
            prev = self._exec("ADD", plugin, prev, rt)
        if prev is None:
            raise CNIError("the CNI chain %s returned no result" % self.name)
        self._cache_write(cache_dir, rt, prev)
        return prev

    def check(self, rt: RuntimeConf, cache_dir: str) -> None:
        if self.conf.get("disableCheck"):
            return
        cached = self.cached_result(cache_dir, rt)
        if cached is None:
            raise CNIError("no cached result for %s: CHECK needs the ADD result" % rt.container_id)
        for plugin in self.plugins:
            self._exec("CHECK", plugin, cached, rt)

    def delete(self, rt: RuntimeConf, cache_dir: str) -> list:
        """DEL in reverse order; every plugin is called even when one fails (so one broken plugin
        does not leak the others' state). Returns the failures' messages; the cache is removed."""
        cached = self.cached_result(cache_dir, rt)
        errors = []
        for plugin in reversed(self.plugins):
            try:
                self._exec("DEL", plugin, cached, rt)
            except CNIError as exc:
                errors.append(str(exc))
        try:
            os.unlink(self._cache_path(cache_dir, rt))
        except FileNotFoundError:
            pass
        return errors

    # --- internals ---------------------------------------------------------------------------------

    def plugin_config(self, plugin: dict, prev_result) -> bytes:
        conf = dict(plugin)
        conf["name"] = self.name
        conf["cniVersion"] = self.version
        if prev_result is not None:
            conf["prevResult"] = prev_result
        else:
            conf.pop("prevResult", None)
        return json.dumps(conf).encode()

    def find_plugin(self, plugin_type: str) -> str:
        for directory in self.cni_path:
            candidate = os.path.join(directory, plugin_type)
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                return candidate
        raise CNIError("failed to find plugin %s in path [%s]" % (json.dumps(plugin_type), " ".join(self.cni_path)))

    def _exec(self, command: str, plugin: dict, prev_result, rt: RuntimeConf):
        binary = self.find_plugin(plugin["type"])
        env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
        env.update({
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": rt.container_id,
            "CNI_NETNS": rt.netns_path,
            "CNI_IFNAME": rt.ifname,
            "CNI_ARGS": rt.cni_args(),
            "CNI_PATH": ":".join(self.cni_path),
        })
        env.setdefault("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        argv = ["nsenter", "--net=" + netns.path(self.node_netns), binary]
        try:
            proc = subprocess.run(argv, input=self.plugin_config(plugin, prev_result), env=env,
                                  capture_output=True, timeout=TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            raise CNIError("plugin type=%s %s timed out after %d s" % (json.dumps(plugin["type"]), command, TIMEOUT))
        if proc.returncode != 0:
            raise self._error(command, plugin["type"], proc)
        if command != "ADD":
            return None
        try:
            return json.loads(proc.stdout)
        except ValueError:
            raise CNIError("plugin type=%s ADD returned no valid result: %r"
                           % (json.dumps(plugin["type"]), proc.stdout[:300])) from None

    @staticmethod
    def _error(command: str, plugin_type: str, proc) -> CNIError:
        where = "plugin type=%s failed (%s)" % (json.dumps(plugin_type), command.lower())
        try:
            doc = json.loads(proc.stdout)
        except ValueError:
            doc = None
        if isinstance(doc, dict) and ("msg" in doc or "code" in doc):
            message = doc.get("msg") or "error"
            if doc.get("details"):
                message += ": " + str(doc["details"])
            return CNIError("%s: %s (code %s)" % (where, message, doc.get("code")), doc.get("code"))
        text = (proc.stderr or proc.stdout or b"").decode(errors="replace").strip()
        return CNIError("%s: exit status %d%s" % (where, proc.returncode, ": " + text[-500:] if text else ""))

    def _cache_path(self, cache_dir: str, rt: RuntimeConf) -> str:
        return os.path.join(cache_dir, "%s-%s-%s" % (self.name, rt.container_id, rt.ifname))

    def _cache_write(self, cache_dir: str, rt: RuntimeConf, result: dict) -> None:
        os.makedirs(cache_dir, exist_ok=True)
        doc = {
            "kind": "cniCacheV1",
            "containerId": rt.container_id,
            "config": base64.b64encode(self.raw).decode(),
            "ifName": rt.ifname,
            "networkName": self.name,
            "cniArgs": [list(kv) for kv in rt.args],
            "result": result,
        }
        path = self._cache_path(cache_dir, rt)
        with open(path + ".tmp", "w") as handle:
            json.dump(doc, handle)
        os.replace(path + ".tmp", path)

    def cached_result(self, cache_dir: str, rt: RuntimeConf):
        try:
            with open(self._cache_path(cache_dir, rt)) as handle:
                return json.load(handle).get("result")
        except (OSError, ValueError):
            return None


def pod_ips(result: dict) -> list:
    """The pod's addresses (without prefix length) from an ADD result (0.3.0 and later; 0.2.0's
    ip4/ip6 too), sandbox interfaces first."""
    if not isinstance(result, dict):
        return []
    ips = []
    interfaces = result.get("interfaces") or []
    for entry in result.get("ips") or []:
        address = (entry.get("address") or "").split("/")[0]
        if not address:
            continue
        idx = entry.get("interface")
        in_sandbox = isinstance(idx, int) and 0 <= idx < len(interfaces) and interfaces[idx].get("sandbox")
        ips.append((0 if in_sandbox else 1, address))
    for family in ("ip4", "ip6"):
        if isinstance(result.get(family), dict) and result[family].get("ip"):
            ips.append((0, result[family]["ip"].split("/")[0]))
    ordered = [a for _, a in sorted(ips, key=lambda x: x[0])]
    # IPv4 first, as Kubernetes' podIP is the first of podIPs and the lab is IPv4 first.
    return [a for a in ordered if ":" not in a] + [a for a in ordered if ":" in a]
