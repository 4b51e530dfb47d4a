"""Network policy, pure Python (no I/O, no kernel), in Cilium's model.

- selector: endpoint selectors over `source:key=value` labels.
- rules: CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy and NetworkPolicy: `check()` (every
  problem, naming the object and the field) and `to_rules()` (the rules `cilium policy get` prints).
- compute: one endpoint's policy map entries from every rule of the cluster (`compute()`), with
  `selected()`, `cidr_prefixes()` and `cidr_identity_labels()` for the agent.

docs/policy.md describes what is accepted, how it maps to entries and what is refused.
"""
from apiary.policy.compute import (EndpointPolicy, PolicyKey, PolicyValue, cidr_identity_labels, cidr_prefixes,
                                   compute, port_blocks, selected)
from apiary.policy.rules import KINDS, check, to_rules
from apiary.policy.selector import EndpointSelector

__all__ = ["EndpointPolicy", "EndpointSelector", "KINDS", "PolicyKey", "PolicyValue", "check", "cidr_identity_labels",
           "cidr_prefixes", "compute", "port_blocks", "selected", "to_rules"]
