"""apply/delete/get logic against an in-memory store and a fake kubelet (no namespaces needed)."""
import io
import json

from apiary.lab import cli, objects, workloads
from apiary.lab.store import ObjectStore
from tests.lab import manifests
from tests.lab.fakes import FakeKubelet, MemoryEtcd
from tests.lab.test_validation import LAB

NS = "network-policy-test"


def make(fail=None):
    etcd = MemoryEtcd()
    return workloads.Cluster(LAB, "/nonexistent", ObjectStore(etcd), out=io.StringIO(), err=io.StringIO(),
                             kubelet=FakeKubelet(fail)), etcd


def apply(c, text, ns=NS):
    c.out.seek(0)
    c.out.truncate()
    rc = c.apply(objects.parse_manifests(text), ns)
    return rc, c.out.getvalue().splitlines()


def pods(c, ns=NS):
    return sorted(p["metadata"]["name"] for p in c.store.list("Pod", ns))


def test_apply_outputs_like_kubectl_and_keys():
    c, etcd = make()
    rc, lines = apply(c, manifests.seed())
    assert rc == 0
    assert lines == ["namespace/%s created" % NS, "deployment.apps/frontend created", "pod/backend created",
                     "pod/netpod created"]
    keys = sorted(etcd.data)
    assert "/apiary/objects/namespaces/_/%s" % NS in keys
    assert "/apiary/objects/deployments/%s/frontend" % NS in keys
    assert "/apiary/objects/pods/%s/backend" % NS in keys
    frontend = [k for k in keys if k.startswith("/apiary/objects/pods/%s/frontend-" % NS)]
    assert len(frontend) == 2
    pod = json.loads(etcd.data[frontend[0]].value)
    name = pod["metadata"]["name"]
    thash = pod["metadata"]["labels"]["pod-template-hash"]
    assert len(thash) == 10 and name.startswith("frontend-%s-" % thash) and len(name.split("-")[-1]) == 5
    assert pod["metadata"]["labels"]["role"] == "frontend"
    ns = json.loads(etcd.data["/apiary/objects/namespaces/_/%s" % NS].value)
    assert ns["metadata"]["labels"]["kubernetes.io/metadata.name"] == NS


def test_reapply_is_unchanged_and_labels_configure():
    c, _ = make()
    apply(c, manifests.seed())
    started = list(c.kubelet.started)
    rc, lines = apply(c, manifests.seed())
    assert lines == ["namespace/%s unchanged" % NS, "deployment.apps/frontend unchanged", "pod/backend unchanged",
                     "pod/netpod unchanged"]
    assert c.kubelet.started == started
    rc, lines = apply(c, manifests.BACKEND.replace("role: backend", "role: db"))
    assert lines == ["pod/backend configured"]
    assert c.store.get("Pod", NS, "backend")["metadata"]["labels"] == {"role": "db"}


def test_scheduler_spreads_over_kube_nodes_and_honours_node_name():
    c, _ = make()
    apply(c, manifests.seed(node="node2"))
    nodes = {p["metadata"]["name"]: p["spec"]["nodeName"] for p in c.store.list("Pod", NS)}
    assert nodes["netpod"] == "node2"
    assert sorted(nodes.values()).count("node1") == 2 and sorted(nodes.values()).count("node2") == 2


def test_scale_up_down_and_template_change():
    c, _ = make()
    apply(c, manifests.seed())
    two = [p for p in pods(c) if p.startswith("frontend-")]
    rc, lines = apply(c, manifests.FRONTEND.format(replicas=3))
    assert lines == ["deployment.apps/frontend configured"]
    three = [p for p in pods(c) if p.startswith("frontend-")]
    assert len(three) == 3 and set(two) < set(three)
    apply(c, manifests.FRONTEND.format(replicas=1))
    one = [p for p in pods(c) if p.startswith("frontend-")]
    assert len(one) == 1 and set(one) < set(three)
    apply(c, manifests.FRONTEND.format(replicas=1).replace("image: nginx", "image: nginx:1.25"))
    new = [p for p in pods(c) if p.startswith("frontend-")]
    assert len(new) == 1 and new != one and one[0] in c.kubelet.stopped
    assert new[0].split("-")[1] != one[0].split("-")[1]


def test_failed_pod_is_kept_failed_and_retried():
    c, _ = make(fail={"backend"})
    rc, lines = apply(c, manifests.seed())
    assert rc == 1 and "pod/backend created" in lines
    assert "pod/backend in namespace %s failed (FailedCreatePodSandBox): boom" % NS in c.err.getvalue()
    pod = c.store.get("Pod", NS, "backend")
    assert pod["status"]["phase"] == "Failed" and pod["status"]["reason"] == "FailedCreatePodSandBox"
    assert cli.pod_status_text(pod)[1] == "FailedCreatePodSandBox"
    c.kubelet.fail.clear()
    c.failures.clear()
    rc, lines = apply(c, manifests.BACKEND)
    assert rc == 0 and lines == ["pod/backend unchanged"]
    assert c.store.get("Pod", NS, "backend")["status"]["phase"] == "Running"


def test_delete_pod_of_a_deployment_is_replaced_and_namespace_deletes_all():
    c, etcd = make()
    apply(c, manifests.seed())
    victim = [p for p in pods(c) if p.startswith("frontend-")][0]
    assert c.delete("Pod", NS, victim)
    after = [p for p in pods(c) if p.startswith("frontend-")]
    assert victim not in after and len(after) == 2
    assert c.delete("Namespace", None, NS)
    assert c.out.getvalue().splitlines()[-1] == 'namespace "%s" deleted' % NS
    assert [k for k in etcd.data if NS in k] == []
    assert set(c.kubelet.stopped) >= {"backend", "netpod", victim}


def test_delete_not_found_and_ignore():
    c, _ = make()
    assert c.delete("Pod", "default", "nope") is False
    assert c.err.getvalue().strip() == 'Error from server (NotFound): pods "nope" not found'
    assert c.delete("Deployment", "default", "nope", ignore_not_found=True) is True


def test_delete_file_rejects_unknown_kinds_and_deletes_nothing():
    c, _ = make()
    apply(c, manifests.seed())
    try:
        c.delete_file(objects.parse_manifests(manifests.seed() + "---\napiVersion: v1\nkind: Foo\nmetadata: {name: x}\n"),
                      NS, False, False)
    except Exception as exc:
        assert 'kind: unknown kind "Foo"' in str(exc)
    else:
        raise AssertionError("no error")
    assert len(pods(c)) == 4
    assert c.delete_file(objects.parse_manifests(manifests.seed()), NS, False, False) == 0


def test_status_text_like_kubectl():
    def pod(*states):
        return {"spec": {"containers": [{}] * len(states)},
                "status": {"phase": "Running", "containerStatuses": [
                    {"ready": s == "running", "state": {s: {"reason": r} if r else {}} if s == "terminated"
                     else {s: {}}} for s, r in states]}}
    assert cli.pod_status_text(pod(("running", None))) == ("1/1", "Running", "0")
    assert cli.pod_status_text(pod(("terminated", "Completed")))[1] == "Completed"
    assert cli.pod_status_text(pod(("terminated", "Error")))[1] == "Error"
    assert cli.pod_status_text(pod(("running", None), ("terminated", "Completed")))[1] == "NotReady"
    assert cli.pod_status_text({"spec": {"containers": [{}]}, "status": {"phase": "Pending"}})[1] == "Pending"


def test_age_and_jsonpath():
    import datetime
    now = datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    assert cli.age("2024-01-02T03:04:00Z", now) == "5s"
    assert cli.age("2024-01-02T02:59:00Z", now) == "5m5s"
    assert cli.age("2024-01-01T03:04:05Z", now) == "24h"
    data = {"items": [{"status": {"podIP": "1.2.3.4"}}, {"status": {"podIP": "5.6.7.8"}}]}
    assert cli._jsonpath("{.items[*].status.podIP}", data) == "1.2.3.4 5.6.7.8"
    assert cli._jsonpath("{.status.podIP}", data["items"][0]) == "1.2.3.4"


def test_exec_options_after_the_pod_name():
    from apiary.cli import build_parser
    parser = build_parser()
    args = parser.parse_args(["lab", "exec", "-it", "-n", "x", "backend", "--", "wget", "-qO-", "http://a"])
    assert (cli._exec_options(args, args.cmd), args.namespace, args.pod) == (["wget", "-qO-", "http://a"], "x", "backend")
    args = parser.parse_args(["lab", "exec", "backend", "-c", "c", "-n", "y", "--", "ls", "--", "-l"])
    assert (cli._exec_options(args, args.cmd), args.namespace, args.container) == (["ls", "--", "-l"], "y", "c")


def test_interrupted_setup_is_redone_on_apply():
    c, _ = make()
    apply(c, manifests.seed())
    pod = c.store.get("Pod", NS, "backend")
    pod["status"] = {"phase": "Pending"}  # as an apply killed between the store write and CNI leaves it
    c.store.put(pod)
    rc, lines = apply(c, manifests.BACKEND)
    assert rc == 0 and lines == ["pod/backend unchanged"]
    assert c.kubelet.stopped == ["backend"] and c.kubelet.started.count("backend") == 2
    assert c.store.get("Pod", NS, "backend")["status"]["phase"] == "Running"
