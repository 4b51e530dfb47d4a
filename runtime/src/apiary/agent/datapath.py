"""The agent's handle on the node's datapath: the pinned maps it owns and program attachment.

The programs are loaded and pinned by `apiary datapath apply` (module bpf_datapath); the agent
only opens what is pinned, so it can restart at any time without reloading anything.
"""
from __future__ import annotations

import os

from apiary import ip
from apiary.bpf import maps
from apiary.datapath import loader
from apiary.errors import UserError

# `apiary map get NAME`: our names, with Cilium's as aliases (cilium_ipcache, cilium_lxc, ...).
DUMPABLE = ("ipcache", "lxc", "metrics")


class Datapath:
    def __init__(self, pin_dir: str, uplink: str):
        if not os.path.exists(os.path.join(pin_dir, "apiary_lxc")):
            raise UserError("the datapath is not loaded: %s has no apiary_lxc (run cluster.yml, or "
                            "`apiary datapath apply`)" % pin_dir)
        self.pin_dir, self.uplink = pin_dir, uplink
        self.endpoints = maps.EndpointMap(pin_dir)
        self.ipcache = maps.IpcacheMap(pin_dir)
        self.metrics = maps.MetricsMap(pin_dir)
        self.policy = maps.PolicyMap(pin_dir)

    def attach_endpoint(self, ifindex: int) -> None:
        loader.attach_endpoint(self.pin_dir, ifindex)

    def endpoint_attached(self, ifindex: int) -> bool:
        return loader.endpoint_attached(self.pin_dir, ifindex)

    def status(self) -> dict:
        attached = []
        for device, point, program in loader.expected_attachments(self.pin_dir, self.uplink):
            if program in dict(map(reversed, loader.ENDPOINT_HOOKS)):
                continue  # counted per endpoint below
            link = ip.link(device)
            if link is not None and loader.attached(self.pin_dir, link["ifindex"], point, program):
                attached.append({"device": device, "program": program, "point": point})
        endpoints = self.endpoints.list()
        lxc_ok = sum(1 for e in endpoints if self.endpoint_attached(e["ifindex"]))
        return {"state": "Ok", "attached": attached, "endpoints_attached": lxc_ok, "endpoints": len(endpoints)}

    def map_names(self) -> list:
        out = []
        for name in sorted(maps.LAYOUTS):
            path = os.path.join(self.pin_dir, name)
            if os.path.exists(path):
                with maps.Map.open(self.pin_dir, name) as pinned:
                    out.append({"name": name, "entries": sum(1 for _ in pinned.keys()), "path": path})
        return out

    def dump(self, name: str) -> list:
        """Entries as Cilium's `map get` shows them: key, value, state."""
        short = name
        for prefix in ("cilium_", "apiary_"):
            if short.startswith(prefix):
                short = short[len(prefix):]
        if short == "ipcache":
            return [{**e, "encrypt_key": e["key"], "key": e["prefix"],
                     "value": "identity=%d encryptkey=0 tunnelendpoint=%s nodeid=%d"
                              % (e["identity"], e["tunnel_endpoint"] or "0.0.0.0", e["node_id"]),
                     "state": "sync"} for e in self.ipcache.list()]
        if short == "lxc":
            return [{**e, "key": e["ip"],
                     "value": "id=%d ifindex=%d identity=%d mac=%s nodemac=%s"
                              % (e["lxc_id"], e["ifindex"], e["identity"], e["mac"], e["node_mac"]),
                     "state": "sync"} for e in self.endpoints.list()]
        if short == "metrics":
            return [{**e, "key": "reason=%s direction=%s" % (e["reason_name"], e["direction"]),
                     "value": "packets=%d bytes=%d" % (e["count"], e["bytes"]), "state": "sync"}
                    for e in self.metrics.list()]
        raise UserError("map %r: not one of %s" % (name, ", ".join(DUMPABLE)))


