"""Reporting on objects (apiary.k8s.events): Events and the Valid condition of Cilium policies,
written to a real API server and read back."""
from __future__ import annotations

import json

import kubernetes.client
import pytest

from apiary.k8s.events import EventRecorder, set_policy_condition

RULE = {"endpointSelector": {}, "egress": [{"toFQDNs": [{"matchName": "example.com"}]}]}
NOT_ENFORCED = "spec.egress[0].toFQDNs: DNS-based rules (toFQDNs) are not supported by Apiary yet"


def create_policy(api, name: str, namespace: str | None = None) -> dict:
    custom = kubernetes.client.CustomObjectsApi(api)
    kind = "CiliumNetworkPolicy" if namespace else "CiliumClusterwideNetworkPolicy"
    body = {"apiVersion": "cilium.io/v2", "kind": kind, "metadata": {"name": name}, "spec": RULE}
    if namespace:
        resp = custom.create_namespaced_custom_object("cilium.io", "v2", namespace, "ciliumnetworkpolicies", body,
                                                      _preload_content=False)
    else:
        resp = custom.create_cluster_custom_object("cilium.io", "v2", "ciliumclusterwidenetworkpolicies", body,
                                                   _preload_content=False)
    return json.loads(resp.data)


def read_policy(api, policy: dict) -> dict:
    custom = kubernetes.client.CustomObjectsApi(api)
    meta = policy["metadata"]
    if meta.get("namespace"):
        resp = custom.get_namespaced_custom_object("cilium.io", "v2", meta["namespace"], "ciliumnetworkpolicies",
                                                   meta["name"], _preload_content=False)
    else:
        resp = custom.get_cluster_custom_object("cilium.io", "v2", "ciliumclusterwidenetworkpolicies", meta["name"],
                                                _preload_content=False)
    return json.loads(resp.data)


def events_about(api, namespace: str, obj: dict) -> list:
    resp = kubernetes.client.CoreV1Api(api).list_namespaced_event(
        namespace, field_selector="involvedObject.uid=" + obj["metadata"]["uid"], _preload_content=False)
    return json.loads(resp.data)["items"]


def test_an_event_is_recorded_and_a_repeat_is_counted(api, namespace):
    policy = create_policy(api, "no-fqdn", namespace)
    recorder = EventRecorder(api, host="node1")
    first = recorder.record(policy, "PolicyNotEnforced", NOT_ENFORCED)
    again = recorder.record(policy, "PolicyNotEnforced", NOT_ENFORCED)
    assert again["metadata"]["name"] == first["metadata"]["name"]
    [event] = events_about(api, namespace, policy)
    assert (event["type"], event["reason"], event["message"], event["count"]) == \
        ("Warning", "PolicyNotEnforced", NOT_ENFORCED, 2)
    involved = event["involvedObject"]
    assert (involved["kind"], involved["apiVersion"], involved["name"], involved["namespace"]) == \
        ("CiliumNetworkPolicy", "cilium.io/v2", "no-fqdn", namespace)
    assert event["source"] == {"component": "apiary-agent", "host": "node1"}
    recorder.record(policy, "PolicyEnforced", "enforced on 2 endpoints", type="Normal")  # something else: a new one
    assert sorted((e["reason"], e["count"]) for e in events_about(api, namespace, policy)) == \
        [("PolicyEnforced", 1), ("PolicyNotEnforced", 2)]
    with pytest.raises(ValueError, match="Normal or Warning"):
        recorder.record(policy, "X", "y", type="Error")


def test_events_of_cluster_scoped_objects_are_in_default(api, namespace):
    policy = create_policy(api, "cluster-" + namespace)
    EventRecorder(api).record(policy, "PolicyNotEnforced", NOT_ENFORCED)
    [event] = events_about(api, "default", policy)
    assert event["involvedObject"]["kind"] == "CiliumClusterwideNetworkPolicy"
    assert "namespace" not in event["involvedObject"]


@pytest.mark.parametrize("scope", ["namespaced", "cluster"])
def test_the_valid_condition_is_set_through_the_status_subresource(api, namespace, scope):
    policy = create_policy(api, "cond-" + namespace, namespace if scope == "namespaced" else None)
    assert set_policy_condition(api, policy, False, "NotEnforceable", NOT_ENFORCED) is True
    got = read_policy(api, policy)
    [condition] = got["status"]["conditions"]
    assert {k: condition[k] for k in ("type", "status", "reason", "message")} == \
        {"type": "Valid", "status": "False", "reason": "NotEnforceable", "message": NOT_ENFORCED}
    assert condition["lastTransitionTime"]
    assert got["spec"] == RULE and got["metadata"]["generation"] == policy["metadata"]["generation"]
    # The same again: nothing written.
    assert set_policy_condition(api, policy, False, "NotEnforceable", NOT_ENFORCED) is False
    assert read_policy(api, policy)["metadata"]["resourceVersion"] == got["metadata"]["resourceVersion"]
    # A condition someone else set is kept when ours changes.
    custom = kubernetes.client.CustomObjectsApi(api)
    others = {"status": {"conditions": got["status"]["conditions"] + [{"type": "Audited", "status": "True"}]}}
    if scope == "namespaced":
        custom.patch_namespaced_custom_object_status("cilium.io", "v2", namespace, "ciliumnetworkpolicies",
                                                     policy["metadata"]["name"], others, _preload_content=False)
    else:
        custom.patch_cluster_custom_object_status("cilium.io", "v2", "ciliumclusterwidenetworkpolicies",
                                                  policy["metadata"]["name"], others, _preload_content=False)
    assert set_policy_condition(api, policy, True, "Enforced", "enforced on 2 endpoints") is True
    conditions = {c["type"]: (c["status"], c.get("message")) for c in read_policy(api, policy)["status"]["conditions"]}
    assert conditions == {"Audited": ("True", None), "Valid": ("True", "enforced on 2 endpoints")}


def test_kubectl_shows_the_condition_and_the_event(inside, api, namespace):
    policy = create_policy(api, "shown", namespace)
    set_policy_condition(api, policy, False, "NotEnforceable", NOT_ENFORCED)
    EventRecorder(api, host="node1").record(policy, "PolicyNotEnforced", NOT_ENFORCED)
    out = inside.kubectl("get", "cnp", "shown", "-n", namespace)
    assert out.stdout.splitlines()[1].split()[-1] == "False", out.stdout + out.stderr
    out = inside.kubectl("describe", "cnp", "shown", "-n", namespace)
    assert "PolicyNotEnforced" in out.stdout and "toFQDNs" in out.stdout, out.stdout + out.stderr
