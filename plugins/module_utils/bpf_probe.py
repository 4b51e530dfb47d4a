# -*- coding: utf-8 -*-
# Copyright: Apiary contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Probe what the running kernel offers for eBPF, with nothing but the Python stdlib.

Preflight runs before anything is installed on a node, so this talks to the kernel directly:
the raw bpf(2) syscall through ctypes and rtnetlink through a socket (no libbpf, no bcc, no tc).
Every probe really loads into the kernel and closes its fd at once; the probes that need a
namespace (bpffs mount, tc attach) run in a forked child that unshares it, so nothing is left
behind on the node. Works on Python 3.9+.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ctypes
import difflib
import errno
import json
import os
import platform
import re
import resource
import socket
import struct
import tempfile
import time

# --- Names and numbers, from include/uapi/linux/bpf.h (Linux 6.1) ---------------------------
# These enums are kernel ABI and only ever appended to, so the position in each list is the
# number. A kernel older than the list simply answers EINVAL for the newer entries.


def _numbered(names):
    return dict((name, number) for number, name in enumerate(names.split()))


PROG_TYPES = _numbered("""
    unspec socket_filter kprobe sched_cls sched_act tracepoint xdp perf_event cgroup_skb cgroup_sock
    lwt_in lwt_out lwt_xmit sock_ops sk_skb cgroup_device sk_msg raw_tracepoint cgroup_sock_addr
    lwt_seg6local lirc_mode2 sk_reuseport flow_dissector cgroup_sysctl raw_tracepoint_writable
    cgroup_sockopt tracing struct_ops ext lsm sk_lookup syscall
""")

MAP_TYPES = _numbered("""
    unspec hash array prog_array perf_event_array percpu_hash percpu_array stack_trace cgroup_array
    lru_hash lru_percpu_hash lpm_trie array_of_maps hash_of_maps devmap sockmap cpumap xskmap
    sockhash cgroup_storage reuseport_sockarray percpu_cgroup_storage queue stack sk_storage
    devmap_hash struct_ops ringbuf inode_storage task_storage bloom_filter user_ringbuf
""")

ATTACH_TYPES = _numbered("""
    cgroup_inet_ingress cgroup_inet_egress cgroup_inet_sock_create cgroup_sock_ops
    sk_skb_stream_parser sk_skb_stream_verdict cgroup_device sk_msg_verdict cgroup_inet4_bind
    cgroup_inet6_bind cgroup_inet4_connect cgroup_inet6_connect cgroup_inet4_post_bind
    cgroup_inet6_post_bind cgroup_udp4_sendmsg cgroup_udp6_sendmsg lirc_mode2 flow_dissector
    cgroup_sysctl cgroup_udp4_recvmsg cgroup_udp6_recvmsg cgroup_getsockopt cgroup_setsockopt
    trace_raw_tp trace_fentry trace_fexit modify_return lsm_mac trace_iter cgroup_inet4_getpeername
    cgroup_inet6_getpeername cgroup_inet4_getsockname cgroup_inet6_getsockname xdp_devmap
    cgroup_inet_sock_release xdp_cpumap sk_lookup xdp sk_skb_verdict sk_reuseport_select
    sk_reuseport_select_or_migrate perf_event trace_kprobe_multi lsm_cgroup
""")

# __BPF_FUNC_MAPPER: helper IDs.
HELPERS = _numbered("""
    unspec map_lookup_elem map_update_elem map_delete_elem probe_read ktime_get_ns trace_printk
    get_prandom_u32 get_smp_processor_id skb_store_bytes l3_csum_replace l4_csum_replace tail_call
    clone_redirect get_current_pid_tgid get_current_uid_gid get_current_comm get_cgroup_classid
    skb_vlan_push skb_vlan_pop skb_get_tunnel_key skb_set_tunnel_key perf_event_read redirect
    get_route_realm perf_event_output skb_load_bytes get_stackid csum_diff skb_get_tunnel_opt
    skb_set_tunnel_opt skb_change_proto skb_change_type skb_under_cgroup get_hash_recalc
    get_current_task probe_write_user current_task_under_cgroup skb_change_tail skb_pull_data
    csum_update set_hash_invalid get_numa_node_id skb_change_head xdp_adjust_head probe_read_str
    get_socket_cookie get_socket_uid set_hash setsockopt skb_adjust_room redirect_map
    sk_redirect_map sock_map_update xdp_adjust_meta perf_event_read_value perf_prog_read_value
    getsockopt override_return sock_ops_cb_flags_set msg_redirect_map msg_apply_bytes msg_cork_bytes
    msg_pull_data bind xdp_adjust_tail skb_get_xfrm_state get_stack skb_load_bytes_relative
    fib_lookup sock_hash_update msg_redirect_hash sk_redirect_hash lwt_push_encap
    lwt_seg6_store_bytes lwt_seg6_adjust_srh lwt_seg6_action rc_repeat rc_keydown skb_cgroup_id
    get_current_cgroup_id get_local_storage sk_select_reuseport skb_ancestor_cgroup_id sk_lookup_tcp
    sk_lookup_udp sk_release map_push_elem map_pop_elem map_peek_elem msg_push_data msg_pop_data
    rc_pointer_rel spin_lock spin_unlock sk_fullsock tcp_sock skb_ecn_set_ce get_listener_sock
    skc_lookup_tcp tcp_check_syncookie sysctl_get_name sysctl_get_current_value sysctl_get_new_value
    sysctl_set_new_value strtol strtoul sk_storage_get sk_storage_delete send_signal
    tcp_gen_syncookie skb_output probe_read_user probe_read_kernel probe_read_user_str
    probe_read_kernel_str tcp_send_ack send_signal_thread jiffies64 read_branch_records
    get_ns_current_pid_tgid xdp_output get_netns_cookie get_current_ancestor_cgroup_id sk_assign
    ktime_get_boot_ns seq_printf seq_write sk_cgroup_id sk_ancestor_cgroup_id ringbuf_output
    ringbuf_reserve ringbuf_submit ringbuf_discard ringbuf_query csum_level skc_to_tcp6_sock
    skc_to_tcp_sock skc_to_tcp_timewait_sock skc_to_tcp_request_sock skc_to_udp6_sock get_task_stack
    load_hdr_opt store_hdr_opt reserve_hdr_opt inode_storage_get inode_storage_delete d_path
    copy_from_user snprintf_btf seq_printf_btf skb_cgroup_classid redirect_neigh per_cpu_ptr
    this_cpu_ptr redirect_peer task_storage_get task_storage_delete get_current_task_btf
    bprm_opts_set ktime_get_coarse_ns ima_inode_hash sock_from_file check_mtu for_each_map_elem
    snprintf sys_bpf btf_find_by_name_kind sys_close timer_init timer_set_callback timer_start
    timer_cancel get_func_ip get_attach_cookie task_pt_regs get_branch_snapshot trace_vprintk
    skc_to_unix_sock kallsyms_lookup_name find_vma loop strncmp get_func_arg get_func_ret
    get_func_arg_cnt get_retval set_retval xdp_get_buff_len xdp_load_bytes xdp_store_bytes
    copy_from_user_task skb_set_tstamp ima_file_hash kptr_xchg map_lookup_percpu_elem
    skc_to_mptcp_sock dynptr_from_mem ringbuf_reserve_dynptr ringbuf_submit_dynptr
    ringbuf_discard_dynptr dynptr_read dynptr_write dynptr_data tcp_raw_gen_syncookie_ipv4
    tcp_raw_gen_syncookie_ipv6 tcp_raw_check_syncookie_ipv4 tcp_raw_check_syncookie_ipv6
    ktime_get_tai_ns user_ringbuf_drain
""")

# Program types the kernel refuses to load without a matching expected_attach_type.
DEFAULT_ATTACH_TYPE = {
    "cgroup_sock_addr": "cgroup_inet4_connect",
    "cgroup_sock": "cgroup_inet_sock_create",
    "cgroup_sockopt": "cgroup_getsockopt",
    "sk_lookup": "sk_lookup",
}

# What a node can be asked about when nothing is said (the module's defaults).
DEFAULT_PROG_TYPES = ["sched_cls", "sched_act", "cgroup_sock_addr", "cgroup_sock", "cgroup_skb",
                      "xdp", "socket_filter", "tracepoint"]
DEFAULT_MAP_TYPES = ["hash", "array", "percpu_array", "lru_hash", "lpm_trie", "ringbuf",
                     "perf_event_array", "prog_array"]
DEFAULT_HELPERS = [
    ("sched_cls", h) for h in (
        "map_lookup_elem", "map_update_elem", "redirect", "redirect_peer", "redirect_neigh",
        "skb_store_bytes", "l3_csum_replace", "l4_csum_replace", "fib_lookup", "ringbuf_output",
        "ktime_get_ns", "skb_change_head", "skb_adjust_room", "get_hash_recalc",
        "skb_set_tunnel_key", "skb_get_tunnel_key")
] + [("cgroup_sock_addr", "get_socket_cookie")]

# --- The syscall ------------------------------------------------------------------------------

_BPF_SYSCALL = {"x86_64": 321, "aarch64": 280}
BPF_MAP_CREATE = 0
BPF_PROG_LOAD = 5
BPF_PROG_GET_FD_BY_ID = 13
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_F_NO_PREALLOC = 1
BPF_FS_MAGIC = 0xCAFE4A11
BTF_MAGIC = 0xEB9F
CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MNT_DETACH = 2
# The verifier's words for "this helper does not exist / is not for this program type"
# (what libbpf's libbpf_probe_bpf_helper() looks for).
_HELPER_MISSING = ("invalid func ", "unknown func ", "program of this type cannot use helper ")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class BpfProbeError(Exception):
    """A probe could not even be asked (unknown name, unsupported architecture)."""


class _ProgLoadAttr(ctypes.Structure):
    # union bpf_attr, BPF_PROG_LOAD part, up to expected_attach_type (Linux 4.17+).
    _fields_ = [
        ("prog_type", ctypes.c_uint32), ("insn_cnt", ctypes.c_uint32),
        ("insns", ctypes.c_uint64), ("license", ctypes.c_uint64),
        ("log_level", ctypes.c_uint32), ("log_size", ctypes.c_uint32), ("log_buf", ctypes.c_uint64),
        ("kern_version", ctypes.c_uint32), ("prog_flags", ctypes.c_uint32),
        ("prog_name", ctypes.c_char * 16), ("prog_ifindex", ctypes.c_uint32),
        ("expected_attach_type", ctypes.c_uint32),
    ]


class _MapCreateAttr(ctypes.Structure):
    # union bpf_attr, BPF_MAP_CREATE part, up to map_name (Linux 4.15+).
    _fields_ = [
        ("map_type", ctypes.c_uint32), ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32), ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32), ("inner_map_fd", ctypes.c_uint32),
        ("numa_node", ctypes.c_uint32), ("map_name", ctypes.c_char * 16),
    ]


def _lookup(table, kind, name):
    if isinstance(name, int):
        return name
    try:
        return table[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), table, n=5, cutoff=0.7)
        hint = ("did you mean: %s" % ", ".join(close)) if close else (
            "known: %s" % ", ".join(sorted(table)) if len(table) < 50 else "see include/uapi/linux/bpf.h")
        raise BpfProbeError("unknown %s %r (%s)" % (kind, name, hint))


_KERNEL_ONLY_ERRNO = {524: ("ENOTSUPP", "Operation is not supported")}  # leaks out of bpf(2)


def _describe(err):
    if err in _KERNEL_ONLY_ERRNO:
        return "%s: %s" % _KERNEL_ONLY_ERRNO[err]
    return "%s: %s" % (errno.errorcode.get(err, "E%d" % err), os.strerror(err))


def _bpf(cmd, attr):
    """bpf(2); returns the new fd, or -errno."""
    nr = _BPF_SYSCALL.get(platform.machine())
    if nr is None:
        raise BpfProbeError("no bpf(2) syscall number known for architecture %s" % platform.machine())
    ret = _libc.syscall(ctypes.c_long(nr), ctypes.c_int(cmd), ctypes.byref(attr),
                        ctypes.c_uint(ctypes.sizeof(attr)))
    return ret if ret >= 0 else -ctypes.get_errno()


def _raise_memlock():
    # Kernels before 5.11 charge BPF objects to RLIMIT_MEMLOCK (often 64 KiB on SSH sessions).
    # Raising it only affects this short-lived process; libbpf and bpftool do the same.
    try:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    except (ValueError, OSError):
        pass


class _IdAttr(ctypes.Structure):
    # union bpf_attr, BPF_PROG_GET_FD_BY_ID part.
    _fields_ = [("id", ctypes.c_uint32), ("next_id", ctypes.c_uint32), ("open_flags", ctypes.c_uint32)]


class _InfoAttr(ctypes.Structure):
    # union bpf_attr, BPF_OBJ_GET_INFO_BY_FD part.
    _fields_ = [("bpf_fd", ctypes.c_uint32), ("info_len", ctypes.c_uint32), ("info", ctypes.c_uint64)]


def prog_id(fd):
    """The kernel's id of a loaded program (struct bpf_prog_info: type, then id)."""
    info = (ctypes.c_uint32 * 2)()
    attr = _InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info))
    return info[1] if _bpf(BPF_OBJ_GET_INFO_BY_FD, attr) == 0 else None


def wait_prog_gone(ident, timeout=5.0):
    """Wait until the kernel has freed program `ident` (it frees asynchronously); True if gone."""
    deadline = time.monotonic() + timeout
    while True:
        fd = _bpf(BPF_PROG_GET_FD_BY_ID, _IdAttr(id=ident))
        if fd < 0:
            return True
        os.close(fd)
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)


def _insn(code, dst=0, src=0, off=0, imm=0):
    # struct bpf_insn, little-endian register nibbles (x86_64 and aarch64).
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


MOV64_R0_0 = _insn(0xB7)   # BPF_ALU64 | BPF_MOV | BPF_K: r0 = 0
EXIT = _insn(0x95)         # BPF_JMP | BPF_EXIT


def call(helper_id):
    return _insn(0x85, imm=helper_id)  # BPF_JMP | BPF_CALL


def load_program(prog_type, insns, expected_attach_type=0, log=False):
    """BPF_PROG_LOAD; returns (fd or -errno, verifier log). The caller closes the fd."""
    code = ctypes.create_string_buffer(insns, len(insns))
    license = ctypes.create_string_buffer(b"GPL")
    attr = _ProgLoadAttr(prog_type=prog_type, insn_cnt=len(insns) // 8,
                         insns=ctypes.addressof(code), license=ctypes.addressof(license),
                         prog_name=b"apiary_probe", expected_attach_type=expected_attach_type)
    # kern_version only matters to kprobe programs on kernels before 5.0.
    attr.kern_version = _version_code(parse_kernel_version(os.uname().release))
    log_buf = None
    if log:
        log_buf = ctypes.create_string_buffer(64 * 1024)
        attr.log_level, attr.log_size, attr.log_buf = 1, len(log_buf), ctypes.addressof(log_buf)
    fd = _bpf(BPF_PROG_LOAD, attr)
    return fd, (log_buf.value.decode("utf-8", "replace") if log_buf is not None else "")


def create_map(map_type, key_size, value_size, max_entries, flags=0, inner_map_fd=0):
    """BPF_MAP_CREATE; returns the fd or -errno. The caller closes the fd."""
    attr = _MapCreateAttr(map_type=map_type, key_size=key_size, value_size=value_size,
                          max_entries=max_entries, map_flags=flags, inner_map_fd=inner_map_fd,
                          map_name=b"apiary_probe")
    return _bpf(BPF_MAP_CREATE, attr)


def _closed(fd, error=None):
    """Turn a probe's fd into (supported, error) and close it right away."""
    if fd >= 0:
        os.close(fd)
        return True, None
    return False, error or _describe(-fd)


def _log_tail(log, lines=2):
    """The verifier's last words, without its statistics line."""
    words = [line for line in log.strip().splitlines() if line and not line.startswith("processed ")]
    return " | ".join(words[-lines:])


# --- Program types, map types, helpers ------------------------------------------------------

def probe_prog_type(prog_type, expected_attach_type=None):
    """Load `r0 = 0; exit` as prog_type (a name or a raw number)."""
    if expected_attach_type is None and not isinstance(prog_type, int):
        expected_attach_type = DEFAULT_ATTACH_TYPE.get(prog_type)
    ptype = _lookup(PROG_TYPES, "program type", prog_type)
    attach = _lookup(ATTACH_TYPES, "attach type", expected_attach_type) if expected_attach_type else 0
    fd, log = load_program(ptype, MOV64_R0_0 + EXIT, attach, log=True)
    if fd < 0 and _log_tail(log):
        return False, "%s: %s" % (_describe(-fd), _log_tail(log))
    return _closed(fd)


def _map_params(name, page_size):
    """(key_size, value_size, max_entries, flags) the kernel accepts for a map of this type."""
    if name == "lpm_trie":
        return 8, 8, 1, BPF_F_NO_PREALLOC  # key: u32 prefixlen + IPv4 address
    if name in ("ringbuf", "user_ringbuf"):
        return 0, 0, page_size, 0  # a page-multiple power of two
    if name in ("queue", "stack", "bloom_filter"):
        return 0, 4, 1, 0
    if name in ("cgroup_storage", "percpu_cgroup_storage"):
        return 16, 8, 0, 0  # struct bpf_cgroup_storage_key
    if name in ("prog_array", "perf_event_array", "cgroup_array", "devmap", "devmap_hash", "sockmap",
                "sockhash", "cpumap", "xskmap", "reuseport_sockarray", "array_of_maps", "hash_of_maps"):
        return 4, 4, 1, 0  # values are fds / ifindexes / queue sizes
    return 4, 8, 1, 0


# These map types only exist with BTF type info (a struct or a local-storage value type).
_NEEDS_BTF = ("struct_ops", "sk_storage", "inode_storage", "task_storage")


def probe_map_type(map_type):
    mtype = _lookup(MAP_TYPES, "map type", map_type)
    if map_type in _NEEDS_BTF:
        return False, "map type %s needs BTF type info and is not probed" % map_type
    key, value, entries, flags = _map_params(map_type, resource.getpagesize())
    inner = -1
    if map_type in ("array_of_maps", "hash_of_maps"):
        inner = create_map(MAP_TYPES["array"], 4, 4, 1)
        if inner < 0:
            return False, "inner array map: " + _describe(-inner)
    try:
        return _closed(create_map(mtype, key, value, entries, flags, max(inner, 0)))
    finally:
        if inner >= 0:
            os.close(inner)


def probe_helper(prog_type, helper):
    """Load `call helper; r0 = 0; exit` as prog_type and read the verifier's verdict."""
    ptype = _lookup(PROG_TYPES, "program type", prog_type)
    hid = _lookup(HELPERS, "helper", helper)
    attach = DEFAULT_ATTACH_TYPE.get(prog_type)
    fd, log = load_program(ptype, call(hid) + MOV64_R0_0 + EXIT,
                           ATTACH_TYPES[attach] if attach else 0, log=True)
    if fd >= 0:
        os.close(fd)
        return True, None
    for line in log.splitlines():
        if any(word in line for word in _HELPER_MISSING):
            return False, line.strip()
    if not log.strip():
        # No verifier run at all: the program type itself was refused.
        return False, "program type %s: %s" % (prog_type, _describe(-fd))
    # The verifier accepted the call and failed later (on the helper's arguments): it exists.
    return True, None


# --- Kernel, BTF, bpffs, cgroup2 ------------------------------------------------------------

def parse_kernel_version(release):
    """'6.1.0-28-amd64' -> (6, 1, 0); '6.18.44-fc-v657' -> (6, 18, 44)."""
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", release)
    if not match:
        raise BpfProbeError("cannot parse kernel release %r" % release)
    return tuple(int(part or 0) for part in match.groups())


def _version_code(version):
    return (version[0] << 16) + (version[1] << 8) + min(version[2], 255)


def probe_btf(path):
    try:
        with open(path, "rb") as handle:
            head = handle.read(2)
    except (IOError, OSError) as exc:
        return False, "%s: %s" % (path, exc.strerror)
    if len(head) < 2 or BTF_MAGIC not in (struct.unpack("<H", head)[0], struct.unpack(">H", head)[0]):
        return False, "%s does not start with the BTF magic 0xeb9f" % path
    return True, None


def mounts():
    """[(mount point, fstype)] of this process's mount namespace."""
    result = []
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            fields = line.split()
            sep = fields.index("-")
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            result.append((point, fields[sep + 1]))
    return result


def _statfs_type(path):
    buf = ctypes.create_string_buffer(256)  # struct statfs; f_type is its first word
    if _libc.statfs(path.encode(), buf) != 0:
        return None
    return ctypes.c_ulong.from_buffer(buf).value & 0xFFFFFFFF


def _check(ret):
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, _describe(err))


def _in_child(probe):
    """Run probe() in a forked child (so it may unshare namespaces) and return its JSON answer."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into the caller's code
        status = 0
        try:
            os.close(read_end)
            try:
                answer = probe()
            except Exception as exc:  # everything becomes the probe's error message
                answer = {"ok": False, "error": str(exc)}
            os.write(write_end, json.dumps(answer).encode())
        except BaseException:
            status = 1
        finally:
            os._exit(status)
    os.close(write_end)
    chunks = []
    while True:
        chunk = os.read(read_end, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(read_end)
    os.waitpid(pid, 0)
    if not chunks:
        return {"ok": False, "error": "probe child exited without an answer"}
    return json.loads(b"".join(chunks).decode())


def _mount_bpffs_privately(target):
    """In a child: private mount namespace, mount bpffs on target, unmount."""
    _check(_libc.unshare(CLONE_NEWNS))
    # Without rprivate the mount would propagate back into the node's namespace.
    _check(_libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None))
    made = None
    if not os.path.isdir(target):
        made = target = tempfile.mkdtemp(prefix="apiary-bpffs-probe-")
    try:
        _check(_libc.mount(b"bpf", target.encode(), b"bpf", 0, None))
        ok = _statfs_type(target) == BPF_FS_MAGIC
        _check(_libc.umount2(target.encode(), MNT_DETACH))
        return {"ok": ok, "error": None if ok else "mounted, but statfs does not show bpffs"}
    finally:
        if made:
            os.rmdir(made)


def probe_bpffs(path):
    """{mounted, mountable, path, error}: mountable is only probed when it is not mounted."""
    mounted = _statfs_type(path) == BPF_FS_MAGIC
    if mounted:
        return {"mounted": True, "mountable": True, "path": path, "error": None}
    answer = _in_child(lambda: _mount_bpffs_privately(path))
    return {"mounted": False, "mountable": answer["ok"], "path": path, "error": answer["error"]}


def probe_cgroup2():
    points = [point for point, fstype in mounts() if fstype == "cgroup2"]
    # Prefer the unified root of a pure v2 system over hybrid sub-mounts.
    points.sort(key=lambda p: (p != "/sys/fs/cgroup", p != "/sys/fs/cgroup/unified", p))
    return {"present": bool(points), "path": points[0] if points else None}


# --- tc: clsact + cls_bpf in direct-action mode, over rtnetlink ------------------------------

RTM_NEWQDISC, RTM_NEWTFILTER = 36, 44
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
NLMSG_ERROR = 2
NLM_F_ACK_TLVS = 0x200
SOL_NETLINK, NETLINK_CAP_ACK, NETLINK_EXT_ACK = 270, 10, 11
TCA_KIND, TCA_OPTIONS = 1, 2
TCA_BPF_FD, TCA_BPF_NAME, TCA_BPF_FLAGS = 6, 7, 8
TCA_BPF_FLAG_ACT_DIRECT = 1
TC_H_CLSACT = 0xFFFFFFF1
TC_H_MIN_INGRESS = 0xFFF2
ETH_P_ALL = 0x0003


def _nlattr(kind, payload):
    size = 4 + len(payload)
    return struct.pack("=HH", size, kind) + payload + b"\0" * ((4 - size % 4) % 4)


def _tc_request(sock, msg_type, ifindex, handle, parent, info, attrs):
    """Send one tc request (struct tcmsg + attributes) and return None or the kernel's error."""
    body = struct.pack("=BBHiIII", socket.AF_UNSPEC, 0, 0, ifindex, handle, parent, info) + attrs
    flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    sock.send(struct.pack("=IHHII", 16 + len(body), msg_type, flags, 1, 0) + body)
    reply = sock.recv(65536)
    _, rtype, rflags, _, _ = struct.unpack("=IHHII", reply[:16])
    if rtype != NLMSG_ERROR:
        return "unexpected netlink reply type %d" % rtype
    code = struct.unpack("=i", reply[16:20])[0]
    if code == 0:
        return None
    message = _describe(-code)
    # Extended ack (NETLINK_CAP_ACK: only the request's header is echoed back, then TLVs).
    offset = 20 + 16
    while rflags & NLM_F_ACK_TLVS and offset + 4 <= len(reply):
        size, kind = struct.unpack("=HH", reply[offset:offset + 4])
        if size < 4:
            break
        if kind == 1:  # NLMSGERR_ATTR_MSG
            message += ": " + reply[offset + 4:offset + size].rstrip(b"\0").decode("utf-8", "replace")
        offset += (size + 3) & ~3
    return message


def _tc_attach_in_new_netns():
    """In a child: fresh netns, clsact on lo, sched_cls program as a direct-action filter."""
    _check(_libc.unshare(CLONE_NEWNET))
    fd, log = load_program(PROG_TYPES["sched_cls"], MOV64_R0_0 + EXIT, log=True)
    if fd < 0:
        return {"ok": False, "error": "loading a sched_cls program: " + _describe(-fd)}
    ifindex = socket.if_nametoindex("lo")
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)  # NETLINK_ROUTE
    for option in (NETLINK_CAP_ACK, NETLINK_EXT_ACK):
        try:
            sock.setsockopt(SOL_NETLINK, option, 1)
        except OSError:
            pass  # older kernels: plain errno only
    try:
        error = _tc_request(sock, RTM_NEWQDISC, ifindex, 0xFFFF0000, TC_H_CLSACT, 0,
                            _nlattr(TCA_KIND, b"clsact\0"))
        if error:
            return {"ok": False, "error": "adding the clsact qdisc: " + error}
        options = (_nlattr(TCA_BPF_FD, struct.pack("=I", fd))
                   + _nlattr(TCA_BPF_NAME, b"apiary_probe\0")
                   + _nlattr(TCA_BPF_FLAGS, struct.pack("=I", TCA_BPF_FLAG_ACT_DIRECT)))
        parent = (TC_H_CLSACT & 0xFFFF0000) | TC_H_MIN_INGRESS
        error = _tc_request(sock, RTM_NEWTFILTER, ifindex, 0, parent,
                            (1 << 16) | socket.htons(ETH_P_ALL),
                            _nlattr(TCA_KIND, b"bpf\0") + _nlattr(TCA_OPTIONS, options))
        if error:
            return {"ok": False, "error": "attaching a direct-action bpf filter: " + error}
        return {"ok": True, "error": None, "prog_id": prog_id(fd)}
    finally:
        sock.close()
        os.close(fd)


def probe_tc_direct_action():
    """{supported, error}: the netns, qdisc and program vanish with the child."""
    answer = _in_child(_tc_attach_in_new_netns)
    if answer.get("prog_id"):
        # The dead netns lets go of the filter's program a moment later: wait, leave no trace.
        wait_prog_gone(answer["prog_id"])
    return {"supported": answer["ok"], "error": answer["error"]}


# --- Everything at once -----------------------------------------------------------------------

def probe_all(program_types=None, map_types=None, helpers=None,
              btf_path="/sys/kernel/btf/vmlinux", bpffs_path="/sys/fs/bpf"):
    """The apiary_bpf_features fact. Unknown names raise BpfProbeError before any probe runs."""
    program_types = DEFAULT_PROG_TYPES if program_types is None else program_types
    map_types = DEFAULT_MAP_TYPES if map_types is None else map_types
    helpers = DEFAULT_HELPERS if helpers is None else helpers
    for name in program_types:
        _lookup(PROG_TYPES, "program type", name)
    for name in map_types:
        _lookup(MAP_TYPES, "map type", name)
    for prog_type, helper in helpers:
        _lookup(PROG_TYPES, "program type", prog_type)
        _lookup(HELPERS, "helper", helper)

    _raise_memlock()
    release = os.uname().release
    errors = {}

    def record(group, key, result):
        supported, error = result
        if error:
            errors["%s/%s" % (group, key)] = error
        return supported

    btf_present, btf_error = probe_btf(btf_path)
    if btf_error:
        errors["btf"] = btf_error
    bpffs = probe_bpffs(bpffs_path)
    bpffs_error = bpffs.pop("error")
    if bpffs_error:
        errors["bpffs"] = bpffs_error
    tc = probe_tc_direct_action()
    if tc["error"]:
        errors["tc_direct_action"] = tc["error"]
    return {
        "kernel": {"release": release, "version": list(parse_kernel_version(release))},
        "btf": {"present": btf_present, "path": btf_path},
        "bpffs": bpffs,
        "cgroup2": probe_cgroup2(),
        "program_types": dict((n, record("program_types", n, probe_prog_type(n))) for n in program_types),
        "map_types": dict((n, record("map_types", n, probe_map_type(n))) for n in map_types),
        "helpers": dict(("%s/%s" % (p, h), record("helpers", "%s/%s" % (p, h), probe_helper(p, h)))
                        for p, h in helpers),
        "tc_direct_action": tc,
        "errors": errors,
    }
