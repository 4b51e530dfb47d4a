"""Verify preflight on lab nodes: the probes ran in the kernel, and nothing was changed."""
import os

import testinfra.utils.ansible_runner

testinfra_hosts = testinfra.utils.ansible_runner.AnsibleRunner(
    os.environ["MOLECULE_INVENTORY_FILE"]).get_hosts("k8s_cluster")


def test_probe_facts_report_the_datapath_needs(host):
    facts = host.ansible("apiary.cluster.bpf_probe", check=False)["ansible_facts"]["apiary_bpf_features"]
    assert facts["btf"]["present"] is True
    assert facts["program_types"]["sched_cls"] is True
    assert facts["map_types"]["lpm_trie"] is True
    assert facts["tc_direct_action"]["supported"] is True


def test_preflight_changed_nothing_on_the_node(host):
    # The node role has not run: no report, no pin folder, no sysctl file.
    name = host.backend.get_hostname()
    assert not host.file("/var/lib/apiary-lab/%s/node.json" % name).exists
    assert not host.file("/sys/fs/bpf/apiary/%s" % name).exists
    assert not host.file("/var/lib/apiary-lab/%s/sysctl.d/99-apiary.conf" % name).exists


def test_runs_inside_the_node_namespace(host):
    # The connection plugin puts commands in the node's namespace: eth0 has the node's address.
    name = host.backend.get_hostname()
    addresses = host.check_output("ip -4 -o addr show dev eth0")
    assert "10.77.101.1%s/24" % name[-1] in addresses
