"""Verify the node role on lab nodes: bpffs, sysctls (in the node's namespace), runtime, report."""
import json
import os

import testinfra.utils.ansible_runner

testinfra_hosts = testinfra.utils.ansible_runner.AnsibleRunner(
    os.environ["MOLECULE_INVENTORY_FILE"]).get_hosts("k8s_cluster")


def test_bpffs_is_mounted_and_the_pin_folder_exists(host):
    assert host.mount_point("/sys/fs/bpf").filesystem == "bpf"
    pin_dir = host.file("/sys/fs/bpf/apiary/%s" % host.backend.get_hostname())
    assert pin_dir.is_directory
    assert pin_dir.mode == 0o700


def test_sysctls_are_set_in_the_node_and_persisted(host):
    assert host.sysctl("net.ipv4.ip_forward") == 1
    assert host.sysctl("net.ipv4.conf.all.rp_filter") == 0
    conf = host.file("/var/lib/apiary-lab/%s/sysctl.d/99-apiary.conf" % host.backend.get_hostname())
    assert "net.ipv4.ip_forward=1" in conf.content_string


def test_runtime_is_installed_and_on_path(host):
    assert host.file("/usr/local/bin/apiary").is_symlink
    assert host.check_output("/usr/local/bin/apiary version").startswith("apiary 0.1.0")


def test_node_report(host):
    name = host.backend.get_hostname()
    report = json.loads(host.file("/var/lib/apiary-lab/%s/node.json" % name).content_string)
    assert report["name"] == name
    assert report["ip"] == "10.77.101.1%s" % name[-1]
    assert report["runtime_version"] == "0.1.0"
    assert report["preflight"] and all(report["preflight"].values())
