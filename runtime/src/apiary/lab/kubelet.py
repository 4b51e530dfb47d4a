"""The lab's kubelet: a pod's sandbox (network namespace + CNI) and its containers (processes).

Per pod (uid U, sandbox id S = sha256(U), 64 hex):
- network namespace `apiary-pod-<S[:12]>` (the lab reset removes every `apiary-pod-*`), lo up;
- pod dir `<lab root>/pods/U/`: hosts, resolv.conf, sandbox.json (what teardown needs), cni/
  (the CNI result cache, libcni's format), containers/<name>/ (image files, exit.json),
  <container>.log (stdout and stderr);
- the node's CNI chain is called for it (see apiary.lab.cni) with CNI_CONTAINERID=S.

A container is a process in the pod's network namespace with its own mount and UTS namespaces:
hostname = pod name, /etc/hosts and /etc/resolv.conf bind-mounted from the pod dir (mount
propagation private, so nothing leaks to the host). It runs in its own session (setsid) under a
small "shim" (a fork of this CLI, like containerd-shim) that waits for it and records its exit
status in containers/<name>/exit.json; both pids are recorded in the pod's status.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

from apiary import netns
from apiary.lab import cni, images
from apiary.lab.store import now

POD_NETNS_PREFIX = "apiary-pod-"
CLUSTER_DOMAIN = "cluster.local"

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_BIND = 0x1000

_libc = ctypes.CDLL(None, use_errno=True)


class PodFailed(Exception):
    """Setting a pod up failed; everything done for it was undone. `reason` is the Kubernetes-style
    reason shown in STATUS (FailedCreatePodSandBox, StartError)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


def sandbox_id(uid: str) -> str:
    return hashlib.sha256(uid.encode()).hexdigest()


def pod_netns(uid: str) -> str:
    return POD_NETNS_PREFIX + sandbox_id(uid)[:12]


def pod_dir(lab_root: str, uid: str) -> str:
    return os.path.join(lab_root, "pods", uid)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, "%s: %s" % (what, os.strerror(err)))


# --- processes ----------------------------------------------------------------------------------

def proc_start(pid: int) -> int | None:
    """The process's start time (clock ticks since boot), to tell it from a later one with the same pid."""
    try:
        with open("/proc/%d/stat" % pid) as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def alive(pid, start) -> bool:
    return bool(pid) and proc_start(int(pid)) is not None and (start is None or proc_start(int(pid)) == start)


def netns_pids(name: str) -> list:
    """Processes whose network namespace is `name` (what `ip netns pids` says)."""
    try:
        target = os.stat(netns.path(name))
    except OSError:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat("/proc/%s/ns/net" % entry)
        except OSError:
            continue
        if (st.st_ino, st.st_dev) == (target.st_ino, target.st_dev):
            pids.append(int(entry))
    return pids


# --- cgroups: where the node's socket load-balancing programs see the pods' connects --------------

def cgroup_dir(node: dict) -> str | None:
    """The node's cgroup (lab.json gives it relative to the cgroup2 mount); None for an older lab.json."""
    from apiary.datapath.loader import cgroup2_mount

    return os.path.join(cgroup2_mount(), node["cgroup"]) if node.get("cgroup") else None


def join_cgroup(directory: str | None, pid: int = 0) -> None:
    """Move process `pid` (0: the caller) into the cgroup `directory`; its children are born there."""
    if directory:
        with open(os.path.join(directory, "cgroup.procs"), "w") as procs:
            procs.write(str(pid or os.getpid()))


def cgroup_of(pid: int) -> str | None:
    """The cgroup v2 folder of a running process (None when it is gone)."""
    from apiary.datapath.loader import cgroup2_mount

    try:
        with open("/proc/%d/cgroup" % pid) as handle:
            for line in handle:
                if line.startswith("0::"):
                    return os.path.join(cgroup2_mount(), line[3:].strip().lstrip("/"))
    except OSError:
        return None
    return None


# --- the kubelet --------------------------------------------------------------------------------

class Kubelet:
    def __init__(self, lab: dict, lab_root: str):
        self.lab = lab
        self.lab_root = lab_root

    def node(self, name: str) -> dict:
        for node in self.lab.get("nodes", []):
            if node["name"] == name:
                return node
        raise PodFailed("NodeLost", "node %s is not in lab.json" % name)

    def _network(self, node: dict) -> cni.NetworkList:
        conf_dir = node.get("cni_conf_dir")
        if not conf_dir:
            raise cni.CNIError("lab.json gives node %s no cni_conf_dir" % node["name"])
        cni_path = self.lab.get("cni_path") or []
        if isinstance(cni_path, str):
            cni_path = cni_path.split(":")
        if not cni_path:
            raise cni.CNIError("lab.json has no cni_path (the directories holding CNI plugins)")
        return cni.NetworkList(cni.find_conflist(conf_dir), cni_path, node["netns"])

    @staticmethod
    def _runtime_conf(pod: dict) -> cni.RuntimeConf:
        meta = pod["metadata"]
        sid = sandbox_id(meta["uid"])
        return cni.RuntimeConf(sid, netns.path(pod_netns(meta["uid"])), "eth0", [
            ("IgnoreUnknown", "1"),
            ("K8S_POD_NAMESPACE", meta["namespace"]),
            ("K8S_POD_NAME", meta["name"]),
            ("K8S_POD_INFRA_CONTAINER_ID", sid),
            ("K8S_POD_UID", meta["uid"]),
        ])

    # --- start --------------------------------------------------------------------------------

    def run_pod(self, pod: dict, save) -> dict:
        """Set the pod up on its node (pod.spec.nodeName). `save(pod)` writes it to the store: once
        before CNI is called (the node agent reads the pod's labels from there) and once running.
        On failure everything is undone, the pod is saved as phase Failed with the reason, and
        PodFailed is raised."""
        meta = pod["metadata"]
        uid = meta["uid"]
        node = self.node(pod["spec"]["nodeName"])
        directory = pod_dir(self.lab_root, uid)
        ns = pod_netns(uid)
        pod["status"] = {"phase": "Pending", "hostIP": node["ip"], "nodeName": node["name"], "netns": ns,
                         "sandboxID": sandbox_id(uid),
                         "podDir": directory, "conditions": [], "containerStatuses": []}
        save(pod)
        reason = "FailedCreatePodSandBox"
        statuses = []
        try:
            os.makedirs(directory, exist_ok=True)
            with open(os.path.join(directory, "sandbox.json"), "w") as handle:
                json.dump({"uid": uid, "namespace": meta["namespace"], "name": meta["name"], "netns": ns,
                           "sandboxID": sandbox_id(uid), "node": node["name"], "nodeNetns": node["netns"]},
                          handle, indent=2)
            if not netns.exists(ns):
                subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
            subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True, capture_output=True)
            network = self._network(node)
            result = network.add(self._runtime_conf(pod), os.path.join(directory, "cni"))
            ips = cni.pod_ips(result)
            if not ips:
                raise cni.CNIError("the CNI result of %s gives the pod no IP address" % network.name)
            self._write_etc(pod, directory, ips[0])
            reason = "StartError"
            for container in pod["spec"]["containers"]:
                images.prepare(container, directory)
                statuses.append(start_container(pod, container, directory, ns, cgroup_dir(node)))
        except Exception as exc:  # noqa: BLE001 - whatever went wrong, the pod is undone and marked Failed
            message = _message(exc)
            pod["status"]["containerStatuses"] = statuses
            self.teardown(pod, grace=0)
            pod["status"] = {"phase": "Failed", "reason": reason, "message": message, "hostIP": node["ip"],
                             "nodeName": node["name"], "conditions": [], "containerStatuses": []}
            save(pod)
            raise PodFailed(reason, message) from None
        pod["status"].update({
            "phase": "Running", "podIP": ips[0], "podIPs": [{"ip": ip} for ip in ips],
            "startTime": now(), "containerStatuses": statuses,
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now()}],
        })
        save(pod)
        return pod

    def _write_etc(self, pod: dict, directory: str, ip: str) -> None:
        name = images.hostname(pod)
        with open(os.path.join(directory, "hosts"), "w") as handle:
            handle.write("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n"
                         "::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\n"
                         "fe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n"
                         "%s\t%s\n" % (ip, name))
        ns = pod["metadata"]["namespace"]
        lines = ["search %s.svc.%s svc.%s %s" % (ns, CLUSTER_DOMAIN, CLUSTER_DOMAIN, CLUSTER_DOMAIN)]
        dns = self.lab.get("cluster_dns")
        for server in ([dns] if isinstance(dns, str) else dns or []):
            lines.append("nameserver %s" % server)
        lines.append("options ndots:5")
        with open(os.path.join(directory, "resolv.conf"), "w") as handle:
            handle.write("\n".join(lines) + "\n")

    # --- stop ---------------------------------------------------------------------------------

    def teardown(self, pod: dict, grace: int | None = None) -> list:
        """Stop the pod's processes (TERM, then KILL after the grace period), CNI DEL (reverse
        order, cached result as prevResult), delete its netns and dir. Idempotent; returns
        warnings (e.g. a plugin's DEL failed)."""
        meta = pod["metadata"]
        uid = meta.get("uid")
        if not uid:
            return []
        warnings = []
        status = pod.get("status") or {}
        ns = pod_netns(uid)
        directory = pod_dir(self.lab_root, uid)
        if grace is None:
            grace = int(pod.get("spec", {}).get("terminationGracePeriodSeconds", 30))
        running = [(cs.get("pid"), cs.get("procStart")) for cs in status.get("containerStatuses") or []
                   if alive(cs.get("pid"), cs.get("procStart"))]
        for pid, _ in running:
            for kill in (os.killpg, os.kill):
                try:
                    kill(int(pid), signal.SIGTERM)
                except OSError:
                    pass
        deadline = time.monotonic() + grace
        while running and time.monotonic() < deadline:
            running = [(p, s) for p, s in running if alive(p, s)]
            if running:
                time.sleep(0.05)
        for pid, start in running:
            try:
                os.killpg(int(pid), signal.SIGKILL)
            except OSError:
                pass
        for pid in netns_pids(ns):  # anything left in the pod (shims, forked children)
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        node_name = (pod.get("spec") or {}).get("nodeName")
        if node_name and (os.path.isdir(os.path.join(directory, "cni")) or netns.exists(ns)):
            try:
                node = self.node(node_name)
                warnings += self._network(node).delete(self._runtime_conf(pod), os.path.join(directory, "cni"))
            except (cni.CNIError, PodFailed, OSError) as exc:
                warnings.append(_message(exc))
        if netns.exists(ns):
            for _ in range(50):
                if not netns_pids(ns):
                    break
                time.sleep(0.02)
            proc = subprocess.run(["ip", "netns", "del", ns], capture_output=True, text=True)
            if proc.returncode != 0:
                warnings.append("ip netns del %s: %s" % (ns, proc.stderr.strip()))
        shutil.rmtree(directory, ignore_errors=True)
        return warnings

    # --- status -------------------------------------------------------------------------------

    def live_status(self, pod: dict) -> dict:
        """The pod's status with each container's state checked now (running / terminated)."""
        status = dict(pod.get("status") or {})
        if status.get("phase") in (None, "Pending") or status.get("reason"):
            return status
        directory = pod_dir(self.lab_root, pod["metadata"]["uid"])
        statuses, running, failed = [], 0, 0
        for cs in status.get("containerStatuses") or []:
            cs = dict(cs)
            if alive(cs.get("pid"), cs.get("procStart")):
                cs["state"] = {"running": {"startedAt": cs.get("startedAt")}}
                cs["ready"] = True
                running += 1
            else:
                exit_info = _read_exit(directory, cs["name"])
                code = exit_info.get("exitCode", 137 if not exit_info else 0)
                term = {"exitCode": code, "startedAt": cs.get("startedAt"),
                        "finishedAt": exit_info.get("finishedAt"),
                        "reason": "Completed" if code == 0 and exit_info else "Error"}
                if exit_info.get("signal"):
                    term["signal"] = exit_info["signal"]
                cs["state"] = {"terminated": term}
                cs["ready"] = False
                failed += code != 0 or not exit_info
            statuses.append(cs)
        status["containerStatuses"] = statuses
        if statuses and running == 0:
            status["phase"] = "Failed" if failed else "Succeeded"
        ready = bool(statuses) and running == len(statuses)
        status["conditions"] = [{"type": "Ready", "status": "True" if ready else "False"}]
        return status


def _read_exit(directory: str, name: str) -> dict:
    try:
        with open(os.path.join(directory, "containers", name, "exit.json")) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return {}


def _message(exc) -> str:
    if isinstance(exc, subprocess.CalledProcessError):
        out = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        return "%s: %s" % (" ".join(exc.cmd), out.strip() or "exit status %d" % exc.returncode)
    return str(exc)


# --- containers ---------------------------------------------------------------------------------

class ContainerStartError(Exception):
    pass


def start_container(pod: dict, container: dict, directory: str, ns: str, cgroup: str | None = None) -> dict:
    """Start one container under its shim; returns its containerStatus (with pid, shimPid,
    procStart). Raises ContainerStartError when it could not be started (e.g. no such command)."""
    argv = images.argv(container, directory)
    env = images.environment(container, pod, directory)
    cdir = images.container_dir(directory, container)
    os.makedirs(cdir, exist_ok=True)
    exit_path = os.path.join(cdir, "exit.json")
    if os.path.exists(exit_path):
        os.unlink(exit_path)
    log_path = os.path.join(directory, container["name"] + ".log")
    spec = {"argv": argv, "env": env, "cwd": container.get("workingDir") or "/", "log": log_path,
            "exit": exit_path, "netns": ns, "cgroup": cgroup, "hostname": images.hostname(pod),
            "hosts": os.path.join(directory, "hosts"), "resolv": os.path.join(directory, "resolv.conf")}
    sys.stdout.flush()
    sys.stderr.flush()
    read_fd, write_fd = os.pipe()
    first = os.fork()
    if first == 0:
        os.close(read_fd)
        _first_child(spec, write_fd)  # never returns
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        report = pipe.read().decode(errors="replace")
    os.waitpid(first, 0)
    info = {}
    for line in report.splitlines():
        word, _, rest = line.partition(" ")
        info.setdefault(word, rest)
    if "error" in info or "pid" not in info:
        raise ContainerStartError("container %s: %s" % (container["name"], info.get("error") or "did not start"))
    pid = int(info["pid"])
    return {"name": container["name"], "image": container["image"], "pid": pid, "shimPid": int(info["shim"]),
            "procStart": proc_start(pid), "startedAt": now(), "restartCount": 0, "ready": True,
            "containerID": "apiary://%s/%d" % (ns, pid), "started": True,
            "state": {"running": {"startedAt": now()}}}


def _first_child(spec: dict, out: int) -> None:
    """Runs in a forked child: becomes the shim (orphaned at once, so the CLI need not reap it),
    enters the pod's namespaces and starts the container. Reports `shim PID`, `pid PID` or
    `error MESSAGE` lines on `out`."""
    try:
        os.setsid()
        if os.fork():
            os._exit(0)
        shim_pid = os.getpid()
        os.write(out, b"shim %d\n" % shim_pid)
        join_cgroup(spec["cgroup"])  # the node's: its socket programs translate the pod's connects
        netns.enter(spec["netns"])
        _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWUTS), "unshare(mount, uts)")
        _check(_libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "mount --make-rprivate /")
        name = spec["hostname"].encode()
        _check(_libc.sethostname(name, len(name)), "sethostname")
        for source, target in ((spec["hosts"], "/etc/hosts"), (spec["resolv"], "/etc/resolv.conf")):
            _check(_libc.mount(source.encode(), target.encode(), None, MS_BIND, None),
                   "mount --bind %s %s" % (source, target))
        log = os.open(spec["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        null = os.open(os.devnull, os.O_RDWR)
        child = os.fork()
        if child == 0:
            try:
                os.setsid()
                os.dup2(null, 0)
                os.dup2(log, 1)
                os.dup2(log, 2)
                os.chdir(spec["cwd"])
                signal.signal(signal.SIGPIPE, signal.SIG_DFL)
                os.execvpe(spec["argv"][0], spec["argv"], spec["env"])
            except BaseException as exc:  # noqa: BLE001 - reported to the CLI, then exit 127
                try:
                    os.write(out, ("error cannot run %s: %s\n" % (json.dumps(spec["argv"]), _message(exc))).encode())
                finally:
                    os._exit(127)
        os.write(out, b"pid %d\n" % child)
        os.close(out)
        # The shim: nothing open but what it needs, then wait for the container and record its end.
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.dup2(null, 2)
        os.closerange(3, 65536)
        for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_IGN)
        while True:
            try:
                _, status = os.waitpid(child, 0)
                break
            except ChildProcessError:
                status = None
                break
            except InterruptedError:
                continue
        record = {"finishedAt": now()}
        if status is None:
            record["exitCode"] = 255
        elif os.WIFSIGNALED(status):
            record["exitCode"] = 128 + os.WTERMSIG(status)
            record["signal"] = os.WTERMSIG(status)
        else:
            record["exitCode"] = os.WEXITSTATUS(status)
        try:
            with open(spec["exit"] + ".tmp", "w") as handle:
                json.dump(record, handle)
            os.replace(spec["exit"] + ".tmp", spec["exit"])
        except OSError:
            pass
        os._exit(0)
    except BaseException as exc:  # noqa: BLE001
        try:
            os.write(out, ("error %s\n" % _message(exc)).encode())
        finally:
            os._exit(1)
