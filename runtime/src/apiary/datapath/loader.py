"""Load the datapath on a node and attach it (docs/datapath.md).

Everything happens in the calling process's network namespace (the node's): the uplink, the lxc
devices of the endpoints and apiary_vxlan are looked up there. Maps are pinned by name in the pin dir
(libbpf reuses them on every load, so endpoints and ipcache survive a reload), programs under
`<pin dir>/progs/<name>`. What was loaded from which object (sha256) is kept in a state file (bpffs
holds no regular files), by default `datapath.json` beside the objects folder.

apply() is idempotent: the same objects with every attachment in place changes nothing. New objects
are loaded first, then each filter is swapped with BPF_TC_F_REPLACE on the same handle and priority
(every packet sees the old or the new program, so connections never notice), then re-pinned.

The socket load-balancing programs (bpf_sock.o) go to a cgroup v2 directory given to apply(): every
process in it or below (pods, the node's own) gets its service connects translated. One program per
hook in that cgroup, replaced in one step by a new attach. Never the cgroup2 root: that would
translate the connects of everything on the machine.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import hashlib
import json
import os
import socket

from apiary import ip
from apiary.bpf import libbpf, maps
from apiary.errors import UserError

# Object file -> the programs in it.
OBJECTS = {
    "bpf_lxc.o": ("from_container", "to_container"),
    "bpf_host.o": ("from_netdev",),
    "bpf_overlay.o": ("from_overlay", "to_overlay"),
    "bpf_sock.o": ("sock4_connect", "sock4_sendmsg", "sock4_recvmsg", "sock4_getpeername"),
}
PROGRAMS = {prog: obj for obj, progs in OBJECTS.items() for prog in progs}
# The programs on every endpoint's lxc device: what the pod sends, and what it receives.
ENDPOINT_HOOKS = (("ingress", "from_container"), ("egress", "to_container"))
# The socket programs on the cgroup's hooks.
CGROUP_HOOKS = (("connect4", "sock4_connect"), ("sendmsg4", "sock4_sendmsg"), ("recvmsg4", "sock4_recvmsg"),
                ("getpeername4", "sock4_getpeername"))
ROUTING_MODES = ("native", "tunnel")
VXLAN_DEVICE = "apiary_vxlan"
VXLAN_PORT = 8472
VXLAN_OVERHEAD = 50  # outer IPv4 + UDP + VXLAN + inner Ethernet
# Every Apiary filter is the cls_bpf filter with this handle and priority on its hook.
TC_HANDLE = 1
TC_PRIORITY = 1
BPF_FS_MAGIC = 0xCAFE4A11
STATE_FILE_NAME = "datapath.json"

_libc = ctypes.CDLL(None, use_errno=True)


def default_state_file(objects_dir: str) -> str:
    """`datapath.json` beside the objects folder (e.g. /var/lib/apiary/datapath.json)."""
    return os.path.join(os.path.dirname(os.path.abspath(objects_dir.rstrip("/"))), STATE_FILE_NAME)


# --- the node ---------------------------------------------------------------------------------------
def _ifindex(name: str) -> int | None:
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return None


def _ifname(ifindex: int) -> str | None:
    try:
        return socket.if_indextoname(ifindex)
    except OSError:
        return None


def _on_bpffs(path: str) -> bool:
    """Whether `path` (or, while it does not exist, its nearest existing parent) is on a bpf filesystem."""
    while not os.path.exists(path):
        path = os.path.dirname(path)
    buf = ctypes.create_string_buffer(256)  # struct statfs; f_type is its first field (a long)
    if _libc.statfs(path.encode(), buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "statfs(%s): %s" % (path, os.strerror(err)))
    return ctypes.c_long.from_buffer(buf).value == BPF_FS_MAGIC


@contextlib.contextmanager
def _locked(pin_dir: str):
    """One loader at a time per pin dir (apply, remove and the agent's attach_endpoint)."""
    if not os.path.isdir(pin_dir):
        yield
        return
    fd = os.open(pin_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# --- pins ------------------------------------------------------------------------------------------
def _prog_pin(pin_dir: str, name: str) -> str:
    return os.path.join(pin_dir, "progs", name)


def _pinned_programs(pin_dir: str) -> dict:
    """{program: {id, tag}} of the programs pinned under the pin dir."""
    found = {}
    for name in PROGRAMS:
        if os.path.exists(_prog_pin(pin_dir, name)):
            fd = libbpf.obj_get(_prog_pin(pin_dir, name))
            try:
                info = libbpf.prog_info(fd)
            finally:
                os.close(fd)
            found[name] = {"id": info["id"], "tag": info["tag"]}
    return found


def _pin_replacing(fd: int, path: str) -> None:
    """Pin under a temporary name, then rename over the old pin: the path always holds a program."""
    tmp = path + "-new"  # bpffs allows no "." in names
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    libbpf.obj_pin(fd, tmp)
    os.rename(tmp, path)


def _endpoint_ifindexes(pin_dir: str) -> list[int]:
    """The lxc devices of the endpoints in apiary_lxc (none while the map is not pinned)."""
    if not os.path.exists(os.path.join(pin_dir, maps.EndpointMap.NAME)):
        return []
    with maps.EndpointMap(pin_dir) as endpoints:
        return sorted({info.ifindex for _, info in endpoints.items()})


def _read_state(path: str) -> dict:
    try:
        with open(path) as handle:
            return json.load(handle)
    except FileNotFoundError:
        return {}
    except ValueError:
        return {}  # a damaged state file only costs a reload


def _write_state(path: str, state: dict) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as handle:
        json.dump(state, handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.rename(tmp, path)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


# --- the VXLAN device --------------------------------------------------------------------------------
def _plan_vxlan(routing_mode: str, mtu: int) -> tuple[list[str], str | None]:
    """Human lines and what to do with apiary_vxlan: None, "create", "recreate", "configure", "delete"."""
    link = ip.link(VXLAN_DEVICE, details=True)
    if routing_mode != "tunnel":
        return (["delete %s (routing mode native)" % VXLAN_DEVICE], "delete") if link else ([], None)
    spec = "VXLAN external, UDP %d, NOARP, MTU %d" % (VXLAN_PORT, mtu)
    if link is None:
        return ["create %s (%s)" % (VXLAN_DEVICE, spec)], "create"
    info = link.get("linkinfo", {})
    data = info.get("info_data", {})
    if info.get("info_kind") != "vxlan" or not data.get("external") or data.get("port") != VXLAN_PORT:
        return ["recreate %s as %s (it is %s, port %s, external %s)" % (
            VXLAN_DEVICE, spec, info.get("info_kind"), data.get("port"), bool(data.get("external")))], "recreate"
    flags = link.get("flags", [])
    if link.get("mtu") != mtu or "NOARP" not in flags or "UP" not in flags:
        return ["configure %s: %s, up" % (VXLAN_DEVICE, spec)], "configure"
    return [], None


def _do_vxlan(todo: str | None, mtu: int) -> None:
    if todo in ("delete", "recreate"):
        ip.run(["link", "del", "dev", VXLAN_DEVICE])
    if todo in ("create", "recreate"):
        ip.run(["link", "add", VXLAN_DEVICE, "type", "vxlan", "external", "dstport", str(VXLAN_PORT)])
    if todo in ("create", "recreate", "configure"):
        ip.run(["link", "set", "dev", VXLAN_DEVICE, "arp", "off", "mtu", str(mtu), "up"])


# --- attachments ----------------------------------------------------------------------------------
def expected_attachments(pin_dir: str, uplink: str = "eth0", routing_mode: str | None = None) -> list:
    """(device, attach point, program) for every hook of the routing mode (None: tunnel when
    apiary_vxlan exists), with the lxc device of every endpoint in apiary_lxc that still exists."""
    if routing_mode is None:
        routing_mode = "tunnel" if _ifindex(VXLAN_DEVICE) is not None else "native"
    hooks = [(uplink, "ingress", "from_netdev")]
    if routing_mode == "tunnel":
        hooks += [(VXLAN_DEVICE, "ingress", "from_overlay"), (VXLAN_DEVICE, "egress", "to_overlay")]
    for ifindex in _endpoint_ifindexes(pin_dir):
        name = _ifname(ifindex)
        if name is not None:  # an endpoint whose device is gone has nothing to attach to
            hooks += [(name, point, program) for point, program in ENDPOINT_HOOKS]
    return hooks


def _attached(device: str, point: str) -> int | None:
    ifindex = _ifindex(device)
    return None if ifindex is None else libbpf.tc_query(ifindex, point, TC_HANDLE, TC_PRIORITY)


def _attach(device: str, point: str, prog_fd: int) -> int:
    ifindex = _ifindex(device)
    if ifindex is None:
        raise UserError("cannot attach to %s: no such device" % device)
    libbpf.tc_hook_create(ifindex, point)
    return libbpf.tc_attach(ifindex, point, prog_fd, TC_HANDLE, TC_PRIORITY, replace=True)


# --- the cgroup of the socket programs -----------------------------------------------------------------
def cgroup2_mount() -> str:
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or /sys/fs/cgroup/unified on a hybrid
    systemd host), from /proc/mounts."""
    with open("/proc/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) > 2 and fields[2] == "cgroup2":
                return fields[1]
    raise UserError("no cgroup2 filesystem is mounted (mount -t cgroup2 none /sys/fs/cgroup)")


def _check_cgroup(cgroup: str) -> str:
    """The cgroup's real path: a directory inside the cgroup2 mount (a relative path is taken from the
    mount, e.g. kubepods.slice), never its root."""
    mount = os.path.realpath(cgroup2_mount())
    path = os.path.realpath(os.path.join(mount, cgroup))
    if os.path.commonpath([mount, path]) != mount or not os.path.isdir(path):
        raise UserError("cgroup %s is not a directory of the cgroup2 mount %s" % (cgroup, mount))
    if path == mount:
        raise UserError("cgroup %s is the root of the cgroup2 hierarchy: the socket programs would translate "
                        "the connects of every process on the machine; give a cgroup of the node" % cgroup)
    return path


@contextlib.contextmanager
def _cgroup_fd(path: str):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield fd
    finally:
        os.close(fd)


def _cgroup_attached(path: str) -> dict:
    """{hook: id of the program attached in the cgroup itself, or None}; all None when the cgroup is gone."""
    if not os.path.isdir(path):
        return {hook: None for hook, _ in CGROUP_HOOKS}
    with _cgroup_fd(path) as fd:
        return {hook: next(iter(libbpf.cgroup_query(fd, hook)), None) for hook, _ in CGROUP_HOOKS}


def detach_cgroup(pin_dir: str, cgroup: str, check: bool = False) -> list[str]:
    """Detach the socket programs (those pinned under the pin dir, or previously pinned: any program
    of that name) from the cgroup; the human lines of what was (or would be) done."""
    if not os.path.isdir(cgroup):
        return []
    pinned = _pinned_programs(pin_dir) if os.path.isdir(pin_dir) else {}
    actions = []
    with _cgroup_fd(cgroup) as fd:
        for hook, program in CGROUP_HOOKS:
            for prog_id in libbpf.cgroup_query(fd, hook):
                if prog_id == pinned.get(program, {}).get("id") or _prog_name(prog_id) == program[:15]:
                    actions.append("detach %s from cgroup %s %s" % (program, cgroup, hook))
                    if not check:
                        libbpf.cgroup_detach(fd, hook)
    return actions


def _prog_name(prog_id: int) -> str | None:
    try:
        fd = libbpf.prog_fd_by_id(prog_id)
    except libbpf.LibbpfError:
        return None
    try:
        return libbpf.prog_info(fd)["name"]
    finally:
        os.close(fd)


def _check_inputs(pin_dir: str) -> None:
    if not _on_bpffs(pin_dir):
        raise UserError("pin dir %s is not on a bpf filesystem (mount -t bpf bpffs /sys/fs/bpf)" % pin_dir)


# --- the public API --------------------------------------------------------------------------------
def apply(objects_dir: str, pin_dir: str, uplink: str, routing_mode: str, check: bool = False,
          state_file: str | None = None, cgroup: str | None = None) -> dict:
    """Make the node's datapath what the objects and the routing mode say; with `cgroup` (a cgroup v2
    directory, not the root) the socket programs are attached there too.

    Returns {changed, actions: [human lines], programs: {name: {id, tag}}, previous_programs, objects:
    {file: sha256}}. With check=True nothing is changed; the actions say what would be done, and
    programs that would be reloaded have id and tag None.
    """
    if routing_mode not in ROUTING_MODES:
        raise UserError("routing mode must be one of %s, not %r" % (", ".join(ROUTING_MODES), routing_mode))
    paths = {obj: os.path.join(objects_dir, obj) for obj in OBJECTS}
    missing = sorted(obj for obj, path in paths.items() if not os.path.isfile(path))
    if missing:
        raise UserError("%s: missing %s (build them with `make bpf`)" % (objects_dir, ", ".join(missing)))
    if _ifindex(uplink) is None:
        raise UserError("uplink %s: no such device in this network namespace" % uplink)
    _check_inputs(pin_dir)
    if cgroup is not None:
        cgroup = _check_cgroup(cgroup)
    state_file = state_file or default_state_file(objects_dir)
    digests = {obj: _sha256(path) for obj, path in paths.items()}
    if not check:
        os.makedirs(os.path.join(pin_dir, "progs"), mode=0o700, exist_ok=True)

    with _locked(pin_dir):
        state = _read_state(state_file)
        before = _pinned_programs(pin_dir)
        recorded = state.get("programs", {})
        stale = [obj for obj in OBJECTS
                 if digests[obj] != state.get("objects", {}).get(obj)
                 or any(prog not in before or before[prog]["id"] != recorded.get(prog, {}).get("id")
                        for prog in OBJECTS[obj])]
        reload = {prog for obj in stale for prog in OBJECTS[obj]}
        mtu = int(ip.link(uplink)["mtu"]) - VXLAN_OVERHEAD
        actions, vxlan_todo = _plan_vxlan(routing_mode, mtu)
        actions += ["load %s (sha256 %s)" % (obj, digests[obj][:12]) for obj in stale]

        # An uplink that was renamed in the inventory keeps no filter of ours.
        old_uplink = state.get("uplink")
        if old_uplink and old_uplink != uplink and "from_netdev" in before and \
                _attached(old_uplink, "ingress") == before["from_netdev"]["id"]:
            actions.append("detach from_netdev from %s ingress (the uplink is now %s)" % (old_uplink, uplink))
        else:
            old_uplink = None
        hooks = expected_attachments(pin_dir, uplink, routing_mode)
        # A device about to be (re)created has no filters.
        current = {(dev, point): None if dev == VXLAN_DEVICE and vxlan_todo in ("create", "recreate")
                   else _attached(dev, point) for dev, point, _ in hooks}
        todo = [(dev, point, prog) for dev, point, prog in hooks
                if prog in reload or current[(dev, point)] != before[prog]["id"]]
        for dev, point, prog in todo:
            verb = "replace" if current[(dev, point)] else "attach"
            actions.append("%s %s on %s %s" % (verb, prog, dev, point))
        # The socket programs: on the cgroup given, and off one given before.
        old_cgroup = state.get("cgroup")
        if old_cgroup and old_cgroup != cgroup:
            actions += detach_cgroup(pin_dir, old_cgroup, check=True)
        in_cgroup = _cgroup_attached(cgroup) if cgroup else {}
        cgroup_todo = [(hook, prog) for hook, prog in CGROUP_HOOKS if cgroup and (
            prog in reload or in_cgroup[hook] != before.get(prog, {}).get("id"))]
        for hook, prog in cgroup_todo:
            verb = "replace" if in_cgroup[hook] else "attach"
            actions.append("%s %s on cgroup %s %s" % (verb, prog, cgroup, hook))

        result = {"changed": bool(actions), "actions": actions, "objects": digests,
                  "previous_programs": before, "routing_mode": routing_mode, "uplink": uplink}
        if check:
            result["programs"] = {p: before[p] if p in before and p not in reload else {"id": None, "tag": None}
                                  for p in PROGRAMS}
            return result

        with contextlib.ExitStack() as cleanup:
            fds = {}
            for obj in stale:  # load everything before touching any hook
                loaded = cleanup.enter_context(libbpf.BpfObject(paths[obj], pin_root_path=pin_dir))
                loaded.load()
                fds.update({prog: loaded.program_fd(prog) for prog in OBJECTS[obj]})
            for prog in set(PROGRAMS) - set(fds):
                fds[prog] = libbpf.obj_get(_prog_pin(pin_dir, prog))
                cleanup.callback(os.close, fds[prog])
            _do_vxlan(vxlan_todo, mtu)
            if old_uplink:
                libbpf.tc_detach(_ifindex(old_uplink), "ingress", TC_HANDLE, TC_PRIORITY)
            for dev, point, prog in todo:
                _attach(dev, point, fds[prog])
            if old_cgroup and old_cgroup != cgroup:
                detach_cgroup(pin_dir, old_cgroup)
            if cgroup_todo:
                with _cgroup_fd(cgroup) as cgroup_fd:
                    for hook, prog in cgroup_todo:
                        libbpf.cgroup_attach(cgroup_fd, hook, fds[prog])
            for prog in sorted(reload):
                _pin_replacing(fds[prog], _prog_pin(pin_dir, prog))
        result["programs"] = _pinned_programs(pin_dir)
        _write_state(state_file, {"objects": digests, "programs": result["programs"], "routing_mode": routing_mode,
                                  "uplink": uplink, "pin_dir": pin_dir, "cgroup": cgroup})
    return result


def attach_endpoint(pin_dir: str, ifindex: int) -> bool:
    """Attach the endpoint programs to an endpoint's lxc device; False when they already were."""
    changed = False
    with _locked(pin_dir):
        for point, program in ENDPOINT_HOOKS:
            try:
                fd = libbpf.obj_get(_prog_pin(pin_dir, program))
            except libbpf.LibbpfError as exc:
                if exc.errno != errno.ENOENT:
                    raise
                raise UserError("%s is not pinned under %s (run `apiary datapath apply` first)"
                                % (program, pin_dir)) from None
            try:
                if libbpf.tc_query(ifindex, point, TC_HANDLE, TC_PRIORITY) == libbpf.prog_info(fd)["id"]:
                    continue
                libbpf.tc_hook_create(ifindex, point)
                libbpf.tc_attach(ifindex, point, fd, TC_HANDLE, TC_PRIORITY, replace=True)
                changed = True
            finally:
                os.close(fd)
    return changed


def attached(pin_dir: str, ifindex: int, point: str, program: str) -> bool:
    """Whether the device's Apiary filter on `point` runs the pinned `program`."""
    pinned = _pinned_programs(pin_dir).get(program)
    if pinned is None or _ifname(ifindex) is None:
        return False
    return libbpf.tc_query(ifindex, point, TC_HANDLE, TC_PRIORITY) == pinned["id"]


def endpoint_attached(pin_dir: str, ifindex: int) -> bool:
    return all(attached(pin_dir, ifindex, point, program) for point, program in ENDPOINT_HOOKS)


def detach_endpoint(ifindex: int) -> bool:
    """Detach the endpoint programs from an endpoint's device; False when none was attached (or it is gone)."""
    return any([libbpf.tc_detach(ifindex, point, TC_HANDLE, TC_PRIORITY) for point, _ in ENDPOINT_HOOKS])


def remove(pin_dir: str, uplink: str, check: bool = False, state_file: str | None = None,
           cgroup: str | None = None) -> dict:
    """Detach everything apply() attached (the socket programs from `cgroup`, by default the cgroup
    the state file names), delete apiary_vxlan, unpin programs and maps, forget the state.

    Returns {changed, actions, previous_programs}. A node with nothing left is not an error.
    """
    actions = []
    with _locked(pin_dir):
        before = _pinned_programs(pin_dir) if os.path.isdir(pin_dir) else {}
        hooks = [(uplink, "ingress"), (VXLAN_DEVICE, "ingress"), (VXLAN_DEVICE, "egress")]
        hooks += [(name, point) for name in map(_ifname, _endpoint_ifindexes(pin_dir)) if name
                  for point, _ in ENDPOINT_HOOKS]
        # Only filters running one of our programs: the same handle on the uplink may be someone else's.
        ours = {info["id"] for info in before.values()}
        attached = [(dev, point) for dev, point in hooks
                    if dev != VXLAN_DEVICE and _attached(dev, point) in ours]
        actions += ["detach %s %s" % hook for hook in attached]
        cgroup = cgroup or (_read_state(state_file).get("cgroup") if state_file else None)
        if cgroup:
            actions += detach_cgroup(pin_dir, cgroup, check=True)
        vxlan = ip.link(VXLAN_DEVICE, details=True) is not None
        if vxlan:
            actions.append("delete %s" % VXLAN_DEVICE)
        programs = [path for path in map(functools.partial(_prog_pin, pin_dir), PROGRAMS) if os.path.exists(path)]
        pinned_maps = [path for path in (os.path.join(pin_dir, m) for m in maps.MAP_NAMES) if os.path.exists(path)]
        if programs or pinned_maps:
            actions.append("unpin %d programs and %d maps from %s" % (len(programs), len(pinned_maps), pin_dir))
        if state_file and os.path.exists(state_file):
            actions.append("delete %s" % state_file)
        if not check:
            for dev, point in attached:
                libbpf.tc_detach(_ifindex(dev), point, TC_HANDLE, TC_PRIORITY)
            if cgroup:
                detach_cgroup(pin_dir, cgroup)
            if vxlan:
                ip.run(["link", "del", "dev", VXLAN_DEVICE])
            for path in programs + pinned_maps:
                os.unlink(path)
            if state_file and os.path.exists(state_file):
                os.unlink(state_file)
    if not check:
        for folder in (os.path.join(pin_dir, "progs"), pin_dir):
            with contextlib.suppress(FileNotFoundError, OSError):
                os.rmdir(folder)  # only when empty: anything else pinned there is not ours
    return {"changed": bool(actions), "actions": actions, "previous_programs": before}
