"""Endpoint selectors: Kubernetes label selectors over Cilium's `source:key=value` labels.

A selector key carries a source: `k8s:role` only matches labels of the k8s source, `any:role`
matches a `role` label of any source. A key written without a source (`role`) means `any:role`,
which is how Cilium reads policies and how `cilium policy get` prints them. Labels are strings
`source:key=value` (`reserved:host` has an empty value). Checking what users write is
apiary.policy.rules' job; this module only models and matches selectors.
"""
from __future__ import annotations

ANY = "any"
OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


def split_key(key: str, default_source: str = ANY) -> tuple:
    """(source, key) of a selector key; the source is what comes before the first ':'."""
    source, sep, rest = key.partition(":")
    return (source, rest) if sep else (default_source, key)


def full_key(key: str, default_source: str = ANY) -> str:
    """`role` -> `any:role`; keys that have a source are kept."""
    return "%s:%s" % split_key(key, default_source)


def parse_label(label: str) -> tuple:
    """(source, key, value) of `source:key=value`; no source means `unspec`, as in Cilium."""
    source, sep, rest = label.partition(":")
    if not sep:
        source, rest = "unspec", label
    key, _, value = rest.partition("=")
    return source, key, value


class LabelSet:
    """A set of labels prepared for matching (selectors are matched against many identities)."""

    __slots__ = ("by_source", "by_key")

    def __init__(self, labels):
        self.by_source = {}
        self.by_key = {}
        # Cilium looks an `any:` key up in the (sorted) label array and takes the first hit.
        for label in sorted(labels):
            source, key, value = parse_label(label)
            self.by_source.setdefault((source, key), value)
            self.by_key.setdefault(key, value)

    def get(self, source: str, key: str):
        """The label's value, or None when there is no such label."""
        if source == ANY:
            return self.by_key.get(key)
        return self.by_source.get((source, key))


class EndpointSelector:
    """matchLabels and matchExpressions, with full (`source:key`) keys."""

    def __init__(self, match_labels: dict | None = None, match_expressions: list | None = None,
                 default_source: str = ANY):
        self.match_labels = {full_key(k, default_source): v for k, v in (match_labels or {}).items()}
        self.match_expressions = []
        for expr in match_expressions or []:
            self.add_expression(full_key(expr["key"], default_source), expr["operator"], expr.get("values") or [])

    @classmethod
    def from_json(cls, obj: dict | None, default_source: str = ANY) -> "EndpointSelector":
        """From a selector as policies write it ({matchLabels, matchExpressions})."""
        obj = obj or {}
        return cls(obj.get("matchLabels"), obj.get("matchExpressions"), default_source)

    def add_match(self, key: str, value: str) -> None:
        self.match_labels[key] = value

    def add_expression(self, key: str, operator: str, values=()) -> None:
        if operator not in OPERATORS:
            raise ValueError("unknown selector operator %r" % operator)
        self.match_expressions.append((key, operator, tuple(values)))

    def keys(self) -> list:
        return list(self.match_labels) + [key for key, _, _ in self.match_expressions]

    def has_key(self, key: str) -> bool:
        return key in self.keys()

    def has_key_prefix(self, prefix: str) -> bool:
        return any(key.startswith(prefix) for key in self.keys())

    def is_wildcard(self) -> bool:
        """No requirement at all: selects every identity (Cilium's wildcard selector)."""
        return not self.match_labels and not self.match_expressions

    def matches(self, labels) -> bool:
        """Whether labels (strings, or a LabelSet) satisfy every requirement."""
        if not isinstance(labels, LabelSet):
            labels = LabelSet(labels)
        for key, value in self.match_labels.items():
            if labels.get(*split_key(key)) != value:
                return False
        for key, operator, values in self.match_expressions:
            found = labels.get(*split_key(key))
            if operator == "In" and (found is None or found not in values):
                return False
            if operator == "NotIn" and found is not None and found in values:
                return False
            if operator == "Exists" and found is None:
                return False
            if operator == "DoesNotExist" and found is not None:
                return False
        return True

    def to_json(self) -> dict:
        """Cilium's JSON shape (what `cilium policy get` prints); empty parts are left out."""
        out = {}
        if self.match_labels:
            out["matchLabels"] = dict(sorted(self.match_labels.items()))
        if self.match_expressions:
            exprs = []
            for key, operator, values in self.match_expressions:
                expr = {"key": key, "operator": operator}
                if values:
                    expr["values"] = list(values)
                exprs.append(expr)
            out["matchExpressions"] = exprs
        return out

    def __eq__(self, other) -> bool:
        return isinstance(other, EndpointSelector) and self.to_json() == other.to_json()

    def __repr__(self) -> str:
        return "EndpointSelector(%r)" % (self.to_json(),)
