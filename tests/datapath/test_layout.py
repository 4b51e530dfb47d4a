"""The ctypes mirrors in apiary.bpf.maps match bpf/lib/maps.h byte for byte (read from the BTF that
clang puts in the objects), and the typed maps convert values both ways."""
import ctypes
import json
import os
import shutil
import subprocess

import pytest

from apiary.bpf import maps
from apiary.observe import events


def _btf_structs(obj_path):
    if not shutil.which("bpftool"):
        pytest.skip("needs bpftool")
    out = subprocess.run(["bpftool", "-j", "btf", "dump", "file", obj_path], check=True, capture_output=True,
                         text=True).stdout
    types = {t["id"]: t for t in json.loads(out)["types"]}

    def size(type_id):
        t = types[type_id]
        if t["kind"] in ("TYPEDEF", "CONST", "VOLATILE"):
            return size(t["type_id"])
        if t["kind"] == "ARRAY":
            return t["nr_elems"] * size(t["type_id"])
        return t["size"]

    structs = {}
    for t in types.values():
        if t["kind"] in ("STRUCT", "UNION") and t.get("name") in maps.STRUCTS:
            structs[t["name"]] = {"size": t["size"], "members": [
                (m["name"], m["bits_offset"] // 8, size(m["type_id"])) for m in t["members"]]}
    return structs


def _ctypes_layout(cls):
    return {"size": ctypes.sizeof(cls), "members": [
        (name, getattr(cls, name).offset, getattr(cls, name).size) for name, *_ in cls._fields_]}


# Structs that only the ring buffer carries are in no map definition, so clang leaves them out of the
# objects' BTF: a probe object that takes them as parameters has them.
RECORD_STRUCTS = ("flow_event",)
PROBE = """
#include "lib/common.h"
#include "lib/maps.h"
__attribute__((noinline)) int probe(struct flow_event *event) { return event->type; }
APIARY_LICENSE();
"""


@pytest.mark.parametrize("obj", ["bpf_lxc.o", "bpf_host.o", "bpf_overlay.o", "bpf_sock.o"])
def test_structs_match_the_objects_btf(objects_dir, obj):
    btf = _btf_structs("%s/%s" % (objects_dir, obj))
    for name, cls in maps.STRUCTS.items():
        if name in RECORD_STRUCTS:
            continue
        assert name in btf, "struct %s is not in %s's BTF" % (name, obj)
        assert _ctypes_layout(cls) == btf[name], name


def test_ring_buffer_records_match(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    (tmp_path / "probe.c").write_text(PROBE)
    multiarch = subprocess.run(["clang", "-print-multiarch"], capture_output=True, text=True).stdout.strip()
    subprocess.run(["clang", "-O2", "-g", "-target", "bpf", "-I", os.path.join(root, "bpf"), "-idirafter",
                    "/usr/include/%s" % multiarch, "-c", str(tmp_path / "probe.c"), "-o", str(tmp_path / "probe.o")],
                   check=True)
    btf = _btf_structs(str(tmp_path / "probe.o"))
    for name in RECORD_STRUCTS:
        assert _ctypes_layout(maps.STRUCTS[name]) == btf[name], name
    assert events.RECORD.size == ctypes.sizeof(maps.FlowEvent)


def test_map_definitions_match_the_layouts(objects_dir):
    """Each map's key and value sizes (from the object's map definitions) are the mirrors' sizes."""
    if not shutil.which("bpftool"):
        pytest.skip("needs bpftool")
    out = subprocess.run(["bpftool", "-j", "btf", "dump", "file", "%s/bpf_lxc.o" % objects_dir], check=True,
                         capture_output=True, text=True).stdout
    types = {t["id"]: t for t in json.loads(out)["types"]}
    datasec = next(t for t in types.values() if t["kind"] == "DATASEC" and t["name"] == ".maps")
    names = sorted(types[v["type_id"]]["name"] for v in datasec["vars"])
    assert names == sorted(maps.MAP_NAMES)


def test_sizes_from_the_contract():
    # docs/datapath.md: the shapes the agent, the CLI and later issues rely on.
    assert ctypes.sizeof(maps.EndpointKey) == 20
    assert ctypes.sizeof(maps.EndpointInfo) == 28
    assert ctypes.sizeof(maps.IpcacheKey) == 24
    assert ctypes.sizeof(maps.RemoteEndpointInfo) == 12
    assert ctypes.sizeof(maps.Ipv4CtTuple) == 14  # packed
    assert ctypes.sizeof(maps.MetricsKey) == 4
    # Services: Cilium's lb4 shapes.
    assert ctypes.sizeof(maps.Lb4Key) == 12
    assert ctypes.sizeof(maps.Lb4Service) == 12
    assert ctypes.sizeof(maps.Lb4Backend) == 8
    assert ctypes.sizeof(maps.Lb4AffinityKey) == 16
    assert ctypes.sizeof(maps.Lb4ReverseSkKey) == 16
    assert ctypes.sizeof(maps.Lb4NatEntry) == 20


def test_service_keys_hold_addresses_and_ports_in_network_order():
    key = maps.ServiceMap.key("10.96.0.10", 80, "UDP", slot=2, scope=1)
    assert bytes(key.address) == bytes([10, 96, 0, 10]) and bytes(key.dport) == b"\x00\x50"
    assert (key.backend_slot, key.proto, key.scope) == (2, 17, 1)
    assert maps.MaglevMap.key(7, 1).value == 0x10007


def test_keys_hold_addresses_in_network_order():
    key = maps.EndpointMap.key("10.233.65.4")
    assert bytes(key.addr.ip4) == bytes([10, 233, 65, 4]) and key.family == maps.ENDPOINT_KEY_IPV4
    key = maps.IpcacheMap.key("10.233.65.0/24")
    assert key.prefixlen == 32 + 24 and bytes(key.addr.ip4) == bytes([10, 233, 65, 0])
    assert maps.IpcacheMap.key("10.233.65.4").prefixlen == 64
    assert maps.ip4_str(maps.ip4_be("192.0.2.7")) == "192.0.2.7" and maps.ip4_str(maps.ip4_be(None)) is None
    assert maps.mac_str(maps.mac_bytes("02:00:0A:e9:41:04")) == "02:00:0a:e9:41:04"


@pytest.mark.parametrize("bad", ["10.0.0.1/33", "10.0.0.1/24", "nonsense"])
def test_bad_prefixes_are_user_errors(bad):
    from apiary.errors import UserError
    with pytest.raises(UserError):
        maps.IpcacheMap.key(bad)
