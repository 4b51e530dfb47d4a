"""EndpointSelector: sources in keys, the four operators, Cilium's JSON shape."""
from apiary.policy import EndpointSelector

POD = ["k8s:role=frontend", "k8s:io.kubernetes.pod.namespace=x", "container:tier=web"]


def test_keys_without_source_are_any_and_match_every_source():
    sel = EndpointSelector({"role": "frontend", "tier": "web"})
    assert sel.to_json() == {"matchLabels": {"any:role": "frontend", "any:tier": "web"}}
    assert sel.matches(POD)
    assert not sel.matches(["k8s:role=frontend"])


def test_a_source_in_the_key_matches_that_source_only():
    assert EndpointSelector({"k8s:role": "frontend"}).matches(POD)
    assert not EndpointSelector({"k8s:tier": "web"}).matches(POD)
    assert EndpointSelector({"container:tier": "web"}).matches(POD)
    assert EndpointSelector({"reserved:host": ""}).matches(["reserved:host"])
    assert not EndpointSelector({"reserved:host": ""}).matches(["reserved:world"])
    assert EndpointSelector({"host": ""}).matches(["reserved:host"])  # any: matches reserved: too, as in Cilium


def test_operators():
    def sel(op, values=()):
        return EndpointSelector(match_expressions=[{"key": "role", "operator": op, "values": list(values)}])
    assert sel("In", ["frontend", "x"]).matches(POD)
    assert not sel("In", ["backend"]).matches(POD)
    assert not sel("In", ["frontend"]).matches(["k8s:app=x"])
    assert sel("NotIn", ["backend"]).matches(POD)
    assert not sel("NotIn", ["frontend"]).matches(POD)
    assert sel("NotIn", ["frontend"]).matches(["k8s:app=x"])  # NotIn matches a missing key
    assert sel("Exists").matches(POD)
    assert not sel("Exists").matches(["k8s:app=x"])
    assert sel("DoesNotExist").matches(["k8s:app=x"])
    assert not sel("DoesNotExist").matches(POD)
    assert sel("Exists").to_json() == {"matchExpressions": [{"key": "any:role", "operator": "Exists"}]}


def test_all_requirements_must_hold_and_empty_is_wildcard():
    sel = EndpointSelector({"role": "frontend"}, [{"key": "k8s:io.kubernetes.pod.namespace", "operator": "In",
                                                   "values": ["y"]}])
    assert not sel.matches(POD)
    assert EndpointSelector().is_wildcard() and EndpointSelector().matches([]) and EndpointSelector().to_json() == {}
    assert not sel.is_wildcard()


def test_default_source_and_helpers():
    sel = EndpointSelector.from_json({"matchLabels": {"app": "a"}}, default_source="k8s")
    assert sel.to_json() == {"matchLabels": {"k8s:app": "a"}}
    sel.add_match("k8s:io.kubernetes.pod.namespace", "x")
    assert sel.has_key("k8s:app") and sel.has_key_prefix("k8s:io.kubernetes") and not sel.has_key("any:app")
    assert EndpointSelector.from_json(sel.to_json()) == sel
