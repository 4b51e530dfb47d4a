"""A thin ctypes binding of libbpf.so.1 (libbpf 1.x), just what the datapath loader and the map tools use.

Objects are opened with a pin root so that maps declared with LIBBPF_PIN_BY_NAME are shared through
bpffs; programs are attached with libbpf's tc API (clsact qdisc, direct-action cls_bpf filters) or to
a cgroup (socket hooks).
Every failure raises LibbpfError: an OSError whose errno is the kernel's and whose message names the
call and its object (a path, an ifindex, a program).
"""
from __future__ import annotations

import collections
import ctypes
import errno as errno_mod
import os
import select

BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2

BPF_TC_INGRESS = 1 << 0
BPF_TC_EGRESS = 1 << 1
BPF_TC_F_REPLACE = 1 << 0
ATTACH_POINTS = {"ingress": BPF_TC_INGRESS, "egress": BPF_TC_EGRESS}
# enum bpf_attach_type values of the cgroup socket address hooks (linux/bpf.h).
CGROUP_ATTACH_TYPES = {"connect4": 10, "sendmsg4": 14, "recvmsg4": 19, "getpeername4": 29}
BPF_MAP_TYPE_ARRAY = 2
BPF_F_INNER_MAP = 1 << 12

BPF_OBJ_NAME_LEN = 16
BPF_TAG_SIZE = 8
# Room for the verifier's log when a load fails (libbpf retries the load with logging into it).
KERNEL_LOG_SIZE = 4 << 20


class LibbpfError(OSError):
    """A libbpf call failed: errno from the kernel, `what` says which call on which object."""

    def __init__(self, err: int, what: str, detail: str = ""):
        name = errno_mod.errorcode.get(err, str(err))
        message = "%s: %s (%s)" % (what, os.strerror(err), name)
        if detail:
            message += "\n" + detail
        super().__init__(err, message)
        self.what = what

    def __str__(self) -> str:
        return self.strerror


class _OpenOpts(ctypes.Structure):
    # struct bpf_object_open_opts as of libbpf 1.1 (sz tells newer libbpfs which fields we know).
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("object_name", ctypes.c_char_p),
        ("relaxed_maps", ctypes.c_bool),
        ("pin_root_path", ctypes.c_char_p),
        ("_attach_prog_fd", ctypes.c_uint32),
        ("kconfig", ctypes.c_char_p),
        ("btf_custom_path", ctypes.c_char_p),
        ("kernel_log_buf", ctypes.c_void_p),
        ("kernel_log_size", ctypes.c_size_t),
        ("kernel_log_level", ctypes.c_uint32),
    ]


class _TcHook(ctypes.Structure):
    _fields_ = [("sz", ctypes.c_size_t), ("ifindex", ctypes.c_int), ("attach_point", ctypes.c_int),
                ("parent", ctypes.c_uint32)]


class _TcOpts(ctypes.Structure):
    _fields_ = [("sz", ctypes.c_size_t), ("prog_fd", ctypes.c_int), ("flags", ctypes.c_uint32),
                ("prog_id", ctypes.c_uint32), ("handle", ctypes.c_uint32), ("priority", ctypes.c_uint32)]


class _MapCreateOpts(ctypes.Structure):
    _fields_ = [("sz", ctypes.c_size_t), ("btf_fd", ctypes.c_uint32), ("btf_key_type_id", ctypes.c_uint32),
                ("btf_value_type_id", ctypes.c_uint32), ("btf_vmlinux_value_type_id", ctypes.c_uint32),
                ("inner_map_fd", ctypes.c_uint32), ("map_flags", ctypes.c_uint32), ("map_extra", ctypes.c_uint64),
                ("numa_node", ctypes.c_uint32), ("map_ifindex", ctypes.c_uint32)]


class _ProgInfo(ctypes.Structure):
    # The head of struct bpf_prog_info: the kernel fills only as much as info_len asks for.
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("tag", ctypes.c_uint8 * BPF_TAG_SIZE),
                ("jited_prog_len", ctypes.c_uint32), ("xlated_prog_len", ctypes.c_uint32),
                ("jited_prog_insns", ctypes.c_uint64), ("xlated_prog_insns", ctypes.c_uint64),
                ("load_time", ctypes.c_uint64), ("created_by_uid", ctypes.c_uint32),
                ("nr_map_ids", ctypes.c_uint32), ("map_ids", ctypes.c_uint64),
                ("name", ctypes.c_char * BPF_OBJ_NAME_LEN)]


class _MapInfo(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("key_size", ctypes.c_uint32),
                ("value_size", ctypes.c_uint32), ("max_entries", ctypes.c_uint32),
                ("map_flags", ctypes.c_uint32), ("name", ctypes.c_char * BPF_OBJ_NAME_LEN)]


_P = ctypes.c_void_p
_SIGNATURES = {
    "bpf_object__open_file": (_P, [ctypes.c_char_p, ctypes.POINTER(_OpenOpts)]),
    "bpf_object__load": (ctypes.c_int, [_P]),
    "bpf_object__close": (None, [_P]),
    "bpf_object__next_program": (_P, [_P, _P]),
    "bpf_object__next_map": (_P, [_P, _P]),
    "bpf_object__find_program_by_name": (_P, [_P, ctypes.c_char_p]),
    "bpf_object__find_map_by_name": (_P, [_P, ctypes.c_char_p]),
    "bpf_program__name": (ctypes.c_char_p, [_P]),
    "bpf_program__fd": (ctypes.c_int, [_P]),
    "bpf_map__name": (ctypes.c_char_p, [_P]),
    "bpf_map__fd": (ctypes.c_int, [_P]),
    "bpf_obj_pin": (ctypes.c_int, [ctypes.c_int, ctypes.c_char_p]),
    "bpf_obj_get": (ctypes.c_int, [ctypes.c_char_p]),
    "bpf_obj_get_info_by_fd": (ctypes.c_int, [ctypes.c_int, _P, ctypes.POINTER(ctypes.c_uint32)]),
    "bpf_map_lookup_elem": (ctypes.c_int, [ctypes.c_int, _P, _P]),
    "bpf_map_update_elem": (ctypes.c_int, [ctypes.c_int, _P, _P, ctypes.c_uint64]),
    "bpf_map_delete_elem": (ctypes.c_int, [ctypes.c_int, _P]),
    "bpf_map_get_next_key": (ctypes.c_int, [ctypes.c_int, _P, _P]),
    "bpf_map_update_batch": (ctypes.c_int, [ctypes.c_int, _P, _P, ctypes.POINTER(ctypes.c_uint32), _P]),
    "bpf_map_create": (ctypes.c_int, [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32, ctypes.c_uint32,
                                      ctypes.c_uint32, ctypes.POINTER(_MapCreateOpts)]),
    "bpf_map_get_fd_by_id": (ctypes.c_int, [ctypes.c_uint32]),
    "bpf_prog_get_fd_by_id": (ctypes.c_int, [ctypes.c_uint32]),
    "bpf_prog_attach": (ctypes.c_int, [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_uint]),
    "bpf_prog_detach": (ctypes.c_int, [ctypes.c_int, ctypes.c_int]),
    "bpf_prog_query": (ctypes.c_int, [ctypes.c_int, ctypes.c_int, ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32),
                                      ctypes.POINTER(ctypes.c_uint32), ctypes.POINTER(ctypes.c_uint32)]),
    "bpf_tc_hook_create": (ctypes.c_int, [ctypes.POINTER(_TcHook)]),
    "bpf_tc_attach": (ctypes.c_int, [ctypes.POINTER(_TcHook), ctypes.POINTER(_TcOpts)]),
    "bpf_tc_detach": (ctypes.c_int, [ctypes.POINTER(_TcHook), ctypes.POINTER(_TcOpts)]),
    "bpf_tc_query": (ctypes.c_int, [ctypes.POINTER(_TcHook), ctypes.POINTER(_TcOpts)]),
    "libbpf_num_possible_cpus": (ctypes.c_int, []),
    "ring_buffer__new": (_P, [ctypes.c_int, _P, _P, _P]),
    "ring_buffer__poll": (ctypes.c_int, [_P, ctypes.c_int]),
    "ring_buffer__free": (None, [_P]),
}
_lib = None

# libbpf's messages (warnings such as "Kernel error message: ..." or "couldn't reuse pinned map") are
# kept here instead of going to stderr, and added to the LibbpfError of the call that logged them.
_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
LIBBPF_INFO = 1
_messages: collections.deque = collections.deque(maxlen=40)
_libc = ctypes.CDLL(None)
_libc.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]


def _on_print(level, fmt, args):
    if level <= LIBBPF_INFO:
        buf = ctypes.create_string_buffer(1024)
        _libc.vsnprintf(buf, len(buf), fmt, args)
        _messages.append(buf.value.decode(errors="replace").rstrip())
    return 0


_print_callback = _PRINT_FN(_on_print)


def lib() -> ctypes.CDLL:
    """libbpf.so.1, loaded on first use (the node role installs the libbpf1 package)."""
    global _lib
    if _lib is None:
        try:
            handle = ctypes.CDLL("libbpf.so.1", use_errno=True)
        except OSError as exc:
            raise LibbpfError(errno_mod.ENOENT, "load libbpf.so.1 (install the libbpf1 package)") from exc
        for name, (restype, argtypes) in _SIGNATURES.items():
            func = getattr(handle, name)
            func.restype, func.argtypes = restype, argtypes
        handle.libbpf_set_print.restype = ctypes.c_void_p
        handle.libbpf_set_print.argtypes = [_PRINT_FN]
        handle.libbpf_set_print(_print_callback)
        _lib = handle
    return _lib


def _call(what: str, func, *args, ok: tuple = ()) -> int:
    """Run a libbpf function that returns -errno (libbpf 1.x); raise with what libbpf logged meanwhile,
    unless the errno is one of `ok` (then -errno is returned)."""
    _messages.clear()
    ret = func(*args)
    if ret < 0 and -ret not in ok:
        raise LibbpfError(-ret, what, _logged())
    return ret


def _logged() -> str:
    return "\n".join(_messages)


def _ref(obj):
    """The address of a ctypes object (NULL for None), for the void * parameters."""
    return ctypes.addressof(obj) if obj is not None else None


# --- objects ----------------------------------------------------------------------------------
class Closable:
    """Something holding kernel references: close() at the end of a with block, or when collected."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        self.close()


class BpfObject(Closable):
    """An ELF object opened by libbpf. Maps with LIBBPF_PIN_BY_NAME are reused from (or pinned to)
    `pin_root_path`/<map name> when the object is loaded. Close it when done: programs and maps live
    on only through pins, attachments and other open fds."""

    def __init__(self, path: str, pin_root_path: str | None = None):
        self.path = path
        self._log = ctypes.create_string_buffer(KERNEL_LOG_SIZE)
        self._pin_root = pin_root_path.encode() if pin_root_path else None
        opts = _OpenOpts(sz=ctypes.sizeof(_OpenOpts), pin_root_path=self._pin_root,
                         kernel_log_buf=ctypes.cast(self._log, ctypes.c_void_p), kernel_log_size=KERNEL_LOG_SIZE)
        _messages.clear()
        self._obj = lib().bpf_object__open_file(path.encode(), ctypes.byref(opts))
        if not self._obj:
            raise LibbpfError(ctypes.get_errno() or errno_mod.EINVAL, "bpf_object__open_file(%s)" % path, _logged())

    def load(self) -> None:
        _messages.clear()
        ret = lib().bpf_object__load(self._obj)
        if ret < 0:
            log = self._log.value.decode(errors="replace").strip()
            tail = "\n".join(log.splitlines()[-30:])
            detail = _logged() + ("\nkernel log (tail):\n" + tail if tail else "")
            raise LibbpfError(-ret, "bpf_object__load(%s)" % self.path, detail.strip())

    def _iterate(self, next_func, name_func) -> list[str]:
        names, item = [], None
        while True:
            item = next_func(self._obj, item)
            if not item:
                return names
            names.append(name_func(item).decode())

    def program_names(self) -> list[str]:
        return self._iterate(lib().bpf_object__next_program, lib().bpf_program__name)

    def map_names(self) -> list[str]:
        return self._iterate(lib().bpf_object__next_map, lib().bpf_map__name)

    def program_fd(self, name: str) -> int:
        prog = lib().bpf_object__find_program_by_name(self._obj, name.encode())
        if not prog:
            raise LibbpfError(errno_mod.ENOENT, "program %s in %s" % (name, self.path))
        return _call("bpf_program__fd(%s in %s)" % (name, self.path), lib().bpf_program__fd, prog)

    def map_fd(self, name: str) -> int:
        found = lib().bpf_object__find_map_by_name(self._obj, name.encode())
        if not found:
            raise LibbpfError(errno_mod.ENOENT, "map %s in %s" % (name, self.path))
        return _call("bpf_map__fd(%s in %s)" % (name, self.path), lib().bpf_map__fd, found)

    def close(self) -> None:
        if getattr(self, "_obj", None):
            lib().bpf_object__close(self._obj)
            self._obj = None


# --- pins and info ----------------------------------------------------------------------------------
def obj_get(path: str) -> int:
    """An fd for the program or map pinned at `path` (close it with os.close)."""
    return _call("bpf_obj_get(%s)" % path, lib().bpf_obj_get, path.encode())


def obj_pin(fd: int, path: str) -> None:
    _call("bpf_obj_pin(%s)" % path, lib().bpf_obj_pin, fd, path.encode())


def _info(fd: int, info, what: str):
    size = ctypes.c_uint32(ctypes.sizeof(info))
    _call(what, lib().bpf_obj_get_info_by_fd, fd, _ref(info), ctypes.byref(size))
    return info


def prog_info(fd: int) -> dict:
    """{id, name, tag, type} of a loaded program (tag: the kernel's hash of its instructions)."""
    info = _info(fd, _ProgInfo(), "bpf_obj_get_info_by_fd(program fd %d)" % fd)
    return {"id": info.id, "name": info.name.decode(), "tag": bytes(info.tag).hex(), "type": info.type}


def map_info(fd: int) -> dict:
    info = _info(fd, _MapInfo(), "bpf_obj_get_info_by_fd(map fd %d)" % fd)
    return {"id": info.id, "name": info.name.decode(), "type": info.type, "key_size": info.key_size,
            "value_size": info.value_size, "max_entries": info.max_entries, "map_flags": info.map_flags}


def num_possible_cpus() -> int:
    return _call("libbpf_num_possible_cpus()", lib().libbpf_num_possible_cpus)


# --- map elements (key and value are ctypes objects or buffers of the map's sizes) --------------------
ENOENT = errno_mod.ENOENT


def map_lookup(fd: int, key, value) -> bool:
    """Fill `value` from the element at `key`; False when there is none."""
    what = "bpf_map_lookup_elem(map fd %d)" % fd
    return _call(what, lib().bpf_map_lookup_elem, fd, _ref(key), _ref(value), ok=(ENOENT,)) == 0


def map_update(fd: int, key, value, flags: int = BPF_ANY) -> None:
    _call("bpf_map_update_elem(map fd %d)" % fd, lib().bpf_map_update_elem, fd, _ref(key), _ref(value), flags)


def map_delete(fd: int, key) -> bool:
    """False when there was no such element."""
    return _call("bpf_map_delete_elem(map fd %d)" % fd, lib().bpf_map_delete_elem, fd, _ref(key), ok=(ENOENT,)) == 0


def map_get_next_key(fd: int, key, next_key) -> bool:
    """Fill `next_key` with the key after `key` (the first with key=None); False at the end."""
    what = "bpf_map_get_next_key(map fd %d)" % fd
    return _call(what, lib().bpf_map_get_next_key, fd, _ref(key), _ref(next_key), ok=(ENOENT,)) == 0


def map_update_batch(fd: int, keys, values, count: int) -> None:
    """Write `count` elements at once (keys and values: ctypes arrays of the map's key and value types)."""
    n = ctypes.c_uint32(count)
    _call("bpf_map_update_batch(map fd %d, %d elements)" % (fd, count), lib().bpf_map_update_batch, fd, _ref(keys),
          _ref(values), ctypes.byref(n), None)


def array_map_create(name: str, value_size: int, max_entries: int, inner: bool = False) -> int:
    """A new, unpinned array map (u32 keys); `inner` makes it fit an outer map whose template has
    BPF_F_INNER_MAP (any size). Returns its fd (close it with os.close)."""
    opts = _MapCreateOpts(sz=ctypes.sizeof(_MapCreateOpts), map_flags=BPF_F_INNER_MAP if inner else 0)
    return _call("bpf_map_create(%s, %d entries)" % (name, max_entries), lib().bpf_map_create, BPF_MAP_TYPE_ARRAY,
                 name.encode(), 4, value_size, max_entries, ctypes.byref(opts))


def map_fd_by_id(map_id: int) -> int:
    """An fd for the map with this id (an inner map: outer maps hold ids), to close with os.close."""
    return _call("bpf_map_get_fd_by_id(%d)" % map_id, lib().bpf_map_get_fd_by_id, map_id)


def prog_fd_by_id(prog_id: int) -> int:
    return _call("bpf_prog_get_fd_by_id(%d)" % prog_id, lib().bpf_prog_get_fd_by_id, prog_id)


# --- cgroup socket hooks (one program per hook and cgroup: a new attach replaces it atomically) --------
def _cgroup_type(hook: str) -> int:
    if hook not in CGROUP_ATTACH_TYPES:
        raise ValueError("cgroup hook must be one of %s, not %r" % (", ".join(CGROUP_ATTACH_TYPES), hook))
    return CGROUP_ATTACH_TYPES[hook]


def cgroup_attach(cgroup_fd: int, hook: str, prog_fd: int) -> None:
    """Attach the program to the cgroup's hook without BPF_F_ALLOW_MULTI or _OVERRIDE: the program
    already there is replaced in one step, as with tc's BPF_TC_F_REPLACE."""
    _call("bpf_prog_attach(cgroup fd %d %s)" % (cgroup_fd, hook), lib().bpf_prog_attach, prog_fd, cgroup_fd,
          _cgroup_type(hook), 0)


def cgroup_query(cgroup_fd: int, hook: str) -> list[int]:
    """The ids of the programs attached to the cgroup's hook (this cgroup's own, not inherited)."""
    ids = (ctypes.c_uint32 * 64)()
    count, flags = ctypes.c_uint32(len(ids)), ctypes.c_uint32()
    _call("bpf_prog_query(cgroup fd %d %s)" % (cgroup_fd, hook), lib().bpf_prog_query, cgroup_fd,
          _cgroup_type(hook), 0, ctypes.byref(flags), ids, ctypes.byref(count))
    return list(ids[:count.value])


def cgroup_detach(cgroup_fd: int, hook: str) -> bool:
    """Detach the cgroup's program from the hook; False when there was none."""
    ret = _call("bpf_prog_detach(cgroup fd %d %s)" % (cgroup_fd, hook), lib().bpf_prog_detach, cgroup_fd,
                _cgroup_type(hook), ok=(ENOENT,))
    return ret == 0


# --- tc (clsact + direct-action cls_bpf) --------------------------------------------------------------
def _hook(ifindex: int, point: str):
    if point not in ATTACH_POINTS:
        raise ValueError("attach point must be ingress or egress, not %r" % point)
    return ctypes.byref(_TcHook(sz=ctypes.sizeof(_TcHook), ifindex=ifindex, attach_point=ATTACH_POINTS[point]))


def _filter(ifindex: int, point: str, handle: int, priority: int) -> str:
    return "ifindex %d %s handle %d priority %d" % (ifindex, point, handle, priority)


def tc_hook_create(ifindex: int, point: str) -> bool:
    """Make sure the device has a clsact qdisc; False when it had one already."""
    what = "bpf_tc_hook_create(ifindex %d %s)" % (ifindex, point)
    return _call(what, lib().bpf_tc_hook_create, _hook(ifindex, point), ok=(errno_mod.EEXIST,)) == 0


def tc_attach(ifindex: int, point: str, prog_fd: int, handle: int = 1, priority: int = 1,
              replace: bool = True) -> int:
    """Attach the program as the filter (handle, priority); with `replace`, a filter already there is
    swapped for it atomically (every packet sees the old or the new program). Returns the program id."""
    opts = _TcOpts(sz=ctypes.sizeof(_TcOpts), prog_fd=prog_fd, handle=handle, priority=priority,
                   flags=BPF_TC_F_REPLACE if replace else 0)
    _call("bpf_tc_attach(%s)" % _filter(ifindex, point, handle, priority), lib().bpf_tc_attach,
          _hook(ifindex, point), ctypes.byref(opts))
    return opts.prog_id


def tc_query(ifindex: int, point: str, handle: int = 1, priority: int = 1) -> int | None:
    """The id of the program attached as filter (handle, priority); None when there is no such filter
    (or no clsact qdisc at all)."""
    opts = _TcOpts(sz=ctypes.sizeof(_TcOpts), handle=handle, priority=priority)
    ret = _call("bpf_tc_query(%s)" % _filter(ifindex, point, handle, priority), lib().bpf_tc_query,
                _hook(ifindex, point), ctypes.byref(opts), ok=(ENOENT, errno_mod.EINVAL))
    return opts.prog_id if ret == 0 else None


def tc_detach(ifindex: int, point: str, handle: int = 1, priority: int = 1) -> bool:
    """Remove the filter (handle, priority); False when it was not there (or the device is gone)."""
    opts = _TcOpts(sz=ctypes.sizeof(_TcOpts), handle=handle, priority=priority)
    ret = _call("bpf_tc_detach(%s)" % _filter(ifindex, point, handle, priority), lib().bpf_tc_detach,
                _hook(ifindex, point), ctypes.byref(opts), ok=(ENOENT, errno_mod.EINVAL, errno_mod.ENODEV))
    return ret == 0


# --- ring buffers -----------------------------------------------------------------------------
_SAMPLE_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
_consume_fn = None
_BATCH_FULL = -errno_mod.ENOBUFS    # what _sample returns to end a ring_buffer__consume early


def _consume():
    """ring_buffer__consume through ctypes.PyDLL: the call keeps the GIL. Through CDLL it would release
    it, and each record's callback would have to take it back: with another Python thread busy (a flow
    server) that costs a GIL hand-over per record and the reader falls behind."""
    global _consume_fn
    if _consume_fn is None:
        lib()   # loaded and its print callback set
        func = ctypes.PyDLL("libbpf.so.1").ring_buffer__consume
        func.restype, func.argtypes = ctypes.c_int, [_P]
        _consume_fn = func
    return _consume_fn


class RingBuffer(Closable):
    """A consumer of a BPF_MAP_TYPE_RINGBUF map: poll() returns the records that arrived (bytes each, at
    most `batch`), waiting up to timeout_ms for the first."""

    def __init__(self, map_fd: int, batch: int = 4096):
        self._rb = None
        self._records: list = []
        self.batch = batch
        self._callback = _SAMPLE_FN(self._sample)  # kept alive as long as the ring buffer
        ctypes.set_errno(0)
        self._rb = lib().ring_buffer__new(map_fd, ctypes.cast(self._callback, ctypes.c_void_p), None, None)
        if not self._rb:
            raise LibbpfError(ctypes.get_errno() or errno_mod.EINVAL, "ring_buffer__new(map fd %d)" % map_fd,
                              _logged())
        self._waiter = select.poll()
        self._waiter.register(map_fd, select.POLLIN)
        self._consume = _consume()

    def _sample(self, _ctx, data, size):
        records = self._records
        records.append(ctypes.string_at(data, size))
        # Stop after a batch (the record is consumed all the same): the GIL is held meanwhile.
        return _BATCH_FULL if len(records) >= self.batch else 0

    def _take(self) -> list:
        ret = self._consume(self._rb)
        if ret < 0 and ret != _BATCH_FULL and -ret != errno_mod.EINTR:
            raise LibbpfError(-ret, "ring_buffer__consume")
        records, self._records = self._records, []
        return records

    def poll(self, timeout_ms: int) -> list:
        records = self._take()
        if not records:
            # Wait without the GIL; the ring's fd is readable while it holds records (and libbpf's
            # consume sees the records that arrive between the two calls).
            self._waiter.poll(max(0, timeout_ms))
            records = self._take()
        return records

    def close(self) -> None:
        if self._rb:
            lib().ring_buffer__free(self._rb)
            self._rb = None
