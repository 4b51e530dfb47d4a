"""What `apiary lab apply` refuses: every problem names the object and the field; nothing is applied."""
import io
import json

import pytest
import yaml

from apiary.errors import UserError
from apiary.lab import objects, workloads
from apiary.lab.store import ObjectStore
from tests.lab import manifests
from tests.lab.fakes import FakeKubelet, MemoryEtcd

LAB = {"nodes": [{"name": "node1", "ip": "10.77.101.11", "groups": ["kube_control_plane", "kube_node", "etcd"]},
                 {"name": "node2", "ip": "10.77.101.12", "groups": ["kube_node"]}],
       "service_cidr": "10.233.0.0/18"}


def cluster():
    etcd = MemoryEtcd()
    return workloads.Cluster(LAB, "/nonexistent", ObjectStore(etcd), out=io.StringIO(), err=io.StringIO(),
                             kubelet=FakeKubelet()), etcd


def docs(text):
    return objects.parse_manifests(text)


def refused(text, namespace="network-policy-test", flag=False):
    c, etcd = cluster()
    with pytest.raises(UserError) as info:
        c.apply(docs(text), namespace, flag)
    assert etcd.data == {}, "something was applied"
    assert c.kubelet.started == []
    assert "nothing was applied" in str(info.value)
    return str(info.value)


def seed_with(**changes):
    """The seed file (namespace, frontend, backend, netpod) with one document changed."""
    items = docs(manifests.seed())
    for index, change in changes.items():
        change(items[int(index[1:])])
    return yaml.safe_dump_all(items)


def test_the_seed_is_accepted():
    objs, problems = objects.check_documents(docs(manifests.seed()), "network-policy-test", ["node1"])
    assert problems == []
    assert [o["kind"] for o in objs] == ["Namespace", "Deployment", "Pod", "Pod"]
    assert objs[2]["metadata"] == {"name": "backend", "namespace": "network-policy-test",
                                   "labels": {"role": "backend"}}


def test_bad_label_key_names_object_and_field():
    text = seed_with(d2=lambda o: o["metadata"]["labels"].update({"bad key!": "x"}))
    msg = refused(text)
    assert 'Pod network-policy-test/backend: metadata.labels["bad key!"]: invalid label key' in msg


@pytest.mark.parametrize("key,ok", [
    ("role", True), ("app.kubernetes.io/name", True), ("a" * 63, True), ("a" * 64, False),
    ("example.com/" + "a" * 63, True), ("Example.com/x", False), ("/x", False), ("x/", False),
    ("-x", False), ("x_", False), ("x_y.z-1", True), ("a/b/c", False), ("a" * 254 + "/x", False),
])
def test_label_keys(key, ok):
    assert (objects.check_label_key(key) is None) == ok


@pytest.mark.parametrize("value,ok", [("", True), ("frontend", True), ("a" * 64, False), ("a b", False),
                                      ("-a", False), (1, False), (True, False), ("A.b_c-1", True)])
def test_label_values(value, ok):
    assert (objects.check_label_value(value) is None) == ok


def test_label_value_not_a_string():
    msg = refused(seed_with(d2=lambda o: o["metadata"]["labels"].update({"version": 1})))
    assert 'Pod network-policy-test/backend: metadata.labels["version"]: invalid label value 1: must be a string' in msg


def test_unknown_kind():
    msg = refused(manifests.seed() + "---\napiVersion: v1\nkind: Foo\nmetadata: {name: x}\n")
    assert 'document 5: kind: unknown kind "Foo" (supported: Namespace, Pod, Deployment, Service, CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy, NetworkPolicy)' in msg


def test_selector_must_match_template():
    def change(o):
        o["spec"]["selector"]["matchLabels"] = {"role": "web"}
    msg = refused(seed_with(d1=change))
    assert ("Deployment network-policy-test/frontend: spec.selector.matchLabels: does not match "
            "spec.template.metadata.labels") in msg


@pytest.mark.parametrize("name", ["Backend", "back_end", "-backend", "a" * 254, ""])
def test_bad_pod_names(name):
    msg = refused(seed_with(d2=lambda o: o["metadata"].update({"name": name})))
    assert "metadata.name" in msg


def test_namespace_name_is_a_dns_label():
    msg = refused(manifests.NAMESPACE.format(ns="a.b"))
    assert "Namespace a.b: metadata.name: name 'a.b' must be a DNS-1123 label" in msg


def test_unknown_image_lists_known_ones():
    msg = refused(seed_with(d2=lambda o: o["spec"]["containers"][0].update({"image": "redis:7"})))
    assert ('Pod network-policy-test/backend: spec.containers[0].image: unknown image "redis:7"' in msg
            and "nginx*, busybox*, nicolaka/netshoot*" in msg)


def test_deployment_template_fields_have_full_paths():
    def change(o):
        o["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = 70000
    msg = refused(seed_with(d1=change))
    assert ("Deployment network-policy-test/frontend: spec.template.spec.containers[0].ports[0].containerPort: "
            "must be between 1 and 65535") in msg


def test_node_name_must_be_a_lab_node():
    msg = refused(manifests.seed(node="test-server-agent"))
    assert ('Pod network-policy-test/netpod: spec.nodeName: "test-server-agent" is not a lab node '
            "(lab nodes: node1, node2)") in msg


def test_namespace_must_exist():
    text = "---\n".join([manifests.BACKEND])
    msg = refused(text, namespace="nowhere")
    assert 'Pod nowhere/backend: metadata.namespace: namespaces "nowhere" not found' in msg


def test_unknown_field_and_command_type():
    def change(o):
        o["spec"]["containers"][0]["volumeMounts"] = []
        o["spec"]["containers"][0]["command"] = ["sleep", 3600]
    msg = refused(seed_with(d2=change))
    assert "spec.containers[0].volumeMounts: unknown or unsupported field" in msg
    assert "spec.containers[0].command: must be a list of strings" in msg


def test_every_problem_is_reported_at_once():
    def change(o):
        o["metadata"]["labels"]["bad key!"] = "x"
        o["spec"]["containers"][0]["image"] = "redis"
    msg = refused(seed_with(d2=change) + "---\napiVersion: v1\nkind: Foo\n")
    assert msg.startswith("3 problems in the file, nothing was applied")


def test_namespace_flag_must_match_the_object():
    msg = refused(manifests.SERVICE.replace("Service", "Pod"), namespace="other", flag=True)
    assert "does not match the namespace" in msg


def test_api_version_is_checked():
    msg = refused(manifests.seed().replace("apps/v1", "apps/v1beta1"))
    assert 'Deployment network-policy-test/frontend: apiVersion: "apps/v1beta1" is not served for Deployment' in msg


def test_same_object_twice():
    msg = refused(manifests.seed() + "---\n" + manifests.BACKEND)
    assert "Pod network-policy-test/backend: appears twice in the file (documents 3 and 5)" in msg


def test_not_yaml():
    with pytest.raises(ValueError, match="not valid YAML or JSON"):
        objects.parse_manifests("a: [b\n", "x.yaml")


def test_json_and_list_documents():
    obj = docs(manifests.BACKEND)[0]
    assert docs(json.dumps(obj)) == [obj]
    assert docs(json.dumps({"apiVersion": "v1", "kind": "List", "items": [obj, obj]})) == [obj, obj]


def test_pod_spec_cannot_change():
    c, etcd = cluster()
    c.apply(docs(manifests.seed()), "network-policy-test")
    before = dict(etcd.data)
    changed = manifests.BACKEND.replace("sleep 3600", "sleep 60")
    with pytest.raises(UserError, match="Pod network-policy-test/backend: spec: Forbidden"):
        c.apply(docs(changed), "network-policy-test")
    assert etcd.data == before
