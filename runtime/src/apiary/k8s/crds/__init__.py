"""Cilium's policy CustomResourceDefinitions (YAML package data), and ensure_crds() to install them.

    written = ensure_crds(api)   # at the agent's start, as Cilium's agent/operator does

Creates a missing CRD, updates one whose spec differs from ours, leaves an equal one alone (no write),
then waits until the API server has Established every one of them.
"""
from __future__ import annotations

import importlib.resources
import json
import time

import kubernetes.client
import yaml
from kubernetes.client.exceptions import ApiException

from apiary.errors import UserError
from apiary.k8s.client import error_message

FILES = ("ciliumnetworkpolicies.yaml", "ciliumclusterwidenetworkpolicies.yaml")
ATTEMPTS = 5  # another agent may write the same CRD at the same time (409): read again and compare


def definitions() -> list[dict]:
    folder = importlib.resources.files(__name__)
    return [yaml.safe_load((folder / name).read_text()) for name in FILES]


def contains(actual, wanted) -> bool:
    """Everything `wanted` says is also in `actual` (which may have more: the API server's defaults,
    labels someone else added)."""
    if isinstance(wanted, dict):
        return isinstance(actual, dict) and all(k in actual and contains(actual[k], v) for k, v in wanted.items())
    if isinstance(wanted, list):
        return (isinstance(actual, list) and len(actual) == len(wanted)
                and all(contains(a, w) for a, w in zip(actual, wanted)))
    return actual == wanted


def _read(ext, name: str) -> dict | None:
    try:
        return json.loads(ext.read_custom_resource_definition(name, _preload_content=False).data)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _ensure(ext, crd: dict) -> bool:
    """Make the CRD hold `crd`'s spec and labels; True when something was written."""
    name = crd["metadata"]["name"]
    for _ in range(ATTEMPTS):
        current = _read(ext, name)
        try:
            if current is None:
                ext.create_custom_resource_definition(crd, _preload_content=False)
                return True
            labels = current["metadata"].get("labels") or {}
            if contains(current["spec"], crd["spec"]) and contains(labels, crd["metadata"].get("labels") or {}):
                return False
            body = dict(crd, metadata=dict(current["metadata"], labels={**labels, **crd["metadata"].get("labels", {})}))
            ext.replace_custom_resource_definition(name, body, _preload_content=False)  # resourceVersion: no lost update
            return True
        except ApiException as exc:
            if exc.status != 409:
                raise UserError("cannot install CRD %s: %s" % (name, error_message(exc))) from exc
    raise UserError("cannot install CRD %s: it kept changing under us (%d conflicts)" % (name, ATTEMPTS))


def _condition(crd: dict, kind: str) -> dict:
    for condition in (crd.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind:
            return condition
    return {}


def wait_established(ext, names, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    for name in names:
        while True:
            crd = _read(ext, name) or {}
            if _condition(crd, "Established").get("status") == "True":
                break
            names_accepted = _condition(crd, "NamesAccepted")
            if names_accepted.get("status") == "False":  # e.g. a short name another CRD has
                raise UserError("CRD %s: names not accepted: %s" % (name, names_accepted.get("message")))
            if time.monotonic() > deadline:
                raise UserError("CRD %s is not Established after %.0f s" % (name, timeout))
            time.sleep(0.2)


def ensure_crds(api, timeout: float = 60.0) -> list[str]:
    """Install or update Cilium's policy CRDs; returns the names written (empty: all were equal)."""
    ext = kubernetes.client.ApiextensionsV1Api(api)
    crds = definitions()
    written = [crd["metadata"]["name"] for crd in crds if _ensure(ext, crd)]
    wait_established(ext, [crd["metadata"]["name"] for crd in crds], timeout)
    return written
