"""What `apiary lab apply` accepts: the lab's kinds checked as the API server would (names, labels,
metadata and reading files are apiary.k8s.validation's; the policy kinds apiary.policy's).

Kinds: Namespace (v1), Pod (v1), Deployment (apps/v1), Service (v1, its spec checked by
apiary.service), and the policy kinds (checked by
apiary.policy.rules: CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy, NetworkPolicy). Names and labels follow Kubernetes' rules
(DNS-1123, qualified names). Every problem names the object and the field path, e.g.

    Pod network-policy-test/backend: metadata.labels["bad key!"]: invalid label key ...

`check_documents()` checks a whole file and returns every problem, so that nothing is applied
when anything is wrong. A checked object is *normalized*: defaults filled in (namespace,
protocol TCP, replicas 1, ...) and fields the lab does not keep (status, uid, ...) dropped, so two
applies of the same file compare equal.
"""
from __future__ import annotations

import functools
import json
import re

from apiary import service
from apiary.k8s import validation
from apiary.k8s.validation import (  # noqa: F401 (the lab's modules and tests use them from here)
    IANA_SVC_NAME, KINDS, POLICY_KINDS, Checker, Problems, check_dns_label, check_dns_subdomain, check_label_key, check_label_value,
    check_labels, describe, desired_part, identities, identity, metadata, parse_manifests, plural, read_file,
    resource, selector_matches)
from apiary.lab import images
from apiary.policy import rules

_POD_SPEC_FIELDS = ("containers", "nodeName", "restartPolicy", "terminationGracePeriodSeconds")
_CONTAINER_FIELDS = ("name", "image", "command", "args", "ports", "env", "workingDir", "imagePullPolicy")


def _pod_spec(c: Checker, spec, path: str, lab_nodes) -> dict:
    spec = c.fields(spec, path, _POD_SPEC_FIELDS, required=("containers",))
    out = {}
    containers = spec.get("containers")
    if containers is not None and (not isinstance(containers, list) or not containers):
        c.bad(path + ".containers", "must be a non-empty list of containers")
        containers = []
    seen = set()
    out_containers = []
    for i, container in enumerate(containers or []):
        cpath = "%s.containers[%d]" % (path, i)
        container = c.fields(container, cpath, _CONTAINER_FIELDS, required=("name", "image"))
        item = {}
        name = container.get("name")
        if name is not None:
            msg = check_dns_label(name, "container name")
            if msg:
                c.bad(cpath + ".name", msg)
            elif name in seen:
                c.bad(cpath + ".name", "duplicate container name %r" % name)
            seen.add(name)
            item["name"] = name
        image = container.get("image")
        if image is not None:
            if not isinstance(image, str) or images.image_kind(image) is None:
                c.bad(cpath + ".image", "unknown image %s: the lab runs Debian programs for these images "
                      "only: %s" % (json.dumps(image), images.KNOWN))
            item["image"] = image
        for field in ("command", "args"):
            value = c.string_list(container.get(field), "%s.%s" % (cpath, field))
            if value is not None:
                item[field] = value
        ports = container.get("ports")
        if ports is not None:
            if not isinstance(ports, list):
                c.bad(cpath + ".ports", "must be a list")
                ports = []
            item["ports"] = []
            for j, port in enumerate(ports):
                ppath = "%s.ports[%d]" % (cpath, j)
                port = c.fields(port, ppath, ("containerPort", "protocol", "name"), required=("containerPort",))
                entry = {}
                number = c.integer(port.get("containerPort"), ppath + ".containerPort", 1, 65535)
                if number is not None:
                    entry["containerPort"] = number
                protocol = port.get("protocol", "TCP")
                if protocol not in ("TCP", "UDP", "SCTP"):
                    c.bad(ppath + ".protocol", "unsupported value %s: supported values: \"TCP\", \"UDP\", "
                          "\"SCTP\"" % json.dumps(protocol))
                entry["protocol"] = protocol
                if port.get("name") is not None:
                    pname = port["name"]
                    if not isinstance(pname, str) or len(pname) > 15 or not IANA_SVC_NAME.match(pname) \
                            or not re.search("[a-z]", pname):
                        c.bad(ppath + ".name", "must be an IANA_SVC_NAME: at most 15 lowercase letters, digits "
                              "and '-', with at least one letter (got %s)" % json.dumps(pname))
                    entry["name"] = pname
                item["ports"].append(entry)
        env = container.get("env")
        if env is not None:
            if not isinstance(env, list):
                c.bad(cpath + ".env", "must be a list of {name, value}")
                env = []
            item["env"] = []
            for j, var in enumerate(env):
                epath = "%s.env[%d]" % (cpath, j)
                var = c.fields(var, epath, ("name", "value"), required=("name",))
                if var.get("name") is not None and (not isinstance(var["name"], str)
                                                    or not re.match(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$", var["name"])):
                    c.bad(epath + ".name", "must be a C identifier-like name (letters, digits, '_', '-', '.', "
                          "not starting with a digit)")
                if var.get("value") is not None and not isinstance(var["value"], str):
                    c.bad(epath + ".value", "must be a string (quote it in YAML)")
                item["env"].append({"name": var.get("name"), "value": var.get("value") or ""})
        if container.get("workingDir") is not None:
            if not isinstance(container["workingDir"], str) or not container["workingDir"].startswith("/"):
                c.bad(cpath + ".workingDir", "must be an absolute path")
            item["workingDir"] = container["workingDir"]
        pull = container.get("imagePullPolicy")
        if pull is not None:
            if pull not in ("Always", "IfNotPresent", "Never"):
                c.bad(cpath + ".imagePullPolicy", "unsupported value %s: supported values: \"Always\", "
                      "\"IfNotPresent\", \"Never\" (the lab's images are local programs)" % json.dumps(pull))
            item["imagePullPolicy"] = pull
        out_containers.append(item)
    out["containers"] = out_containers
    node = spec.get("nodeName")
    if node is not None:
        if not isinstance(node, str) or node not in lab_nodes:
            c.bad(path + ".nodeName", "%s is not a lab node (lab nodes: %s)"
                  % (json.dumps(node), ", ".join(lab_nodes) or "none"))
        out["nodeName"] = node
    restart = spec.get("restartPolicy", "Always")
    if restart not in ("Always", "OnFailure", "Never"):
        c.bad(path + ".restartPolicy", "unsupported value %s: supported values: \"Always\", \"OnFailure\", "
              "\"Never\"" % json.dumps(restart))
    out["restartPolicy"] = restart
    grace = c.integer(spec.get("terminationGracePeriodSeconds"), path + ".terminationGracePeriodSeconds", 0)
    out["terminationGracePeriodSeconds"] = 30 if grace is None else grace
    return out


def check_lab_kind(obj: dict, ns: str | None, who: str, lab_nodes=()) -> tuple:
    """The checker of the lab's kinds (Namespace, Pod, Deployment, Service) for check_documents."""
    kind = obj["kind"]
    api_version, _, namespaced, _ = KINDS[kind]
    c = Checker(who)
    if obj.get("apiVersion") != api_version:
        c.bad("apiVersion", "%s is not served for %s (use %s)" % (json.dumps(obj.get("apiVersion")), kind,
                                                                 api_version))
    c.fields(obj, "", ("apiVersion", "kind", "metadata", "spec", "status"),
             required=("metadata",) if kind == "Namespace" else ("metadata", "spec"))
    name_rule = check_dns_label if kind == "Namespace" else check_dns_subdomain
    out = {"apiVersion": api_version, "kind": kind, "metadata": metadata(c, obj, namespaced, name_rule)}
    if namespaced:
        out["metadata"]["namespace"] = ns
        msg = check_dns_label(ns, "namespace")
        if msg:
            c.bad("metadata.namespace", msg)
    if kind == "Namespace":
        spec = c.fields(obj.get("spec"), "spec", ("finalizers",))
        if spec.get("finalizers") not in (None, ["kubernetes"]):
            c.bad("spec.finalizers", "only [\"kubernetes\"] is supported")
    elif kind == "Pod":
        out["spec"] = _pod_spec(c, obj.get("spec"), "spec", lab_nodes)
    elif kind == "Deployment":
        out["spec"] = _deployment_spec(c, obj.get("spec"), lab_nodes)
    elif kind == "Service":
        out["spec"] = service.check_spec(c, obj.get("spec"))
    return (out if not c.problems else None), c.problems


def lab_checkers(lab_nodes=()) -> dict:
    """kind -> checker: the lab's kinds here, the policy kinds apiary.policy's."""
    checkers = {kind: functools.partial(check_lab_kind, lab_nodes=lab_nodes) for kind in KINDS
                if kind not in POLICY_KINDS}
    checkers.update(rules.CHECKERS)
    return checkers


def check_documents(docs: list, default_namespace: str, lab_nodes=(), namespace_flag: bool = False):
    """validation.check_documents with the lab's kinds and the policy kinds."""
    return validation.check_documents(docs, default_namespace, lab_checkers(lab_nodes), namespace_flag)


def _deployment_spec(c: Checker, spec, lab_nodes) -> dict:
    spec = c.fields(spec, "spec", ("replicas", "selector", "template", "strategy", "revisionHistoryLimit",
                                   "progressDeadlineSeconds", "minReadySeconds", "paused"),
                    required=("selector", "template"))
    out = {}
    replicas = c.integer(spec.get("replicas"), "spec.replicas", 0, 1000)
    out["replicas"] = 1 if replicas is None else replicas
    selector = c.fields(spec.get("selector"), "spec.selector", ("matchLabels",), required=("matchLabels",))
    problems = []
    match = check_labels(selector.get("matchLabels"), "spec.selector.matchLabels", problems)
    for p in problems:
        c.problems.append("%s: %s" % (c.who, p))
    if spec.get("selector") is not None and selector.get("matchLabels") is not None and not match:
        c.bad("spec.selector.matchLabels", "must not be empty (an empty selector would select every pod)")
    out["selector"] = {"matchLabels": match}
    template = c.fields(spec.get("template"), "spec.template", ("metadata", "spec"), required=("spec",))
    tmeta = c.fields(template.get("metadata"), "spec.template.metadata", ("labels", "annotations", "name"))
    problems = []
    labels = check_labels(tmeta.get("labels"), "spec.template.metadata.labels", problems)
    for p in problems:
        c.problems.append("%s: %s" % (c.who, p))
    if "pod-template-hash" in labels:
        c.bad('spec.template.metadata.labels["pod-template-hash"]', "is set by the lab, leave it out")
    if match and not problems and not selector_matches(match, labels):
        c.bad("spec.selector.matchLabels", "does not match spec.template.metadata.labels (selector %s, "
              "template labels %s)" % (json.dumps(match, sort_keys=True), json.dumps(labels, sort_keys=True)))
    tm = {"labels": labels}
    if isinstance(tmeta.get("annotations"), dict) and tmeta["annotations"]:
        tm["annotations"] = dict(tmeta["annotations"])
    out["template"] = {"metadata": tm, "spec": _pod_spec(c, template.get("spec"), "spec.template.spec", lab_nodes)}
    strategy = c.fields(spec.get("strategy"), "spec.strategy", ("type", "rollingUpdate"))
    stype = strategy.get("type", "RollingUpdate")
    if stype not in ("RollingUpdate", "Recreate"):
        c.bad("spec.strategy.type", "unsupported value %s: supported values: \"Recreate\", \"RollingUpdate\""
              % json.dumps(stype))
    out["strategy"] = {"type": stype}
    for field in ("revisionHistoryLimit", "progressDeadlineSeconds", "minReadySeconds"):
        c.integer(spec.get(field), "spec." + field, 0)
    if spec.get("paused"):
        c.bad("spec.paused", "pausing a Deployment is not supported in the lab")
    return out


