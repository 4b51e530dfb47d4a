# -*- coding: utf-8 -*-
# Copyright: Apiary developers
# Apache-2.0
# The work is done on the controller by plugins/action/validate_inventory.py; this file carries
# the module's documentation, as Ansible expects for action-only plugins (like ansible.builtin.debug).
from __future__ import annotations

DOCUMENTATION = r"""
---
module: validate_inventory
short_description: Validate and normalise Apiary's inventory variables
description:
  - Checks the host's groups, routing mode, pod pool, service range, node address, feature
    switches, Hubble metrics and MetalLB configuration, on the controller, without connecting
    to the host.
  - Kubespray's variables (C(cilium_enable_hubble), C(kube_pods_subnet), ...) are read as
    Apiary's, with a one-line notice; a conflicting pair is an error.
  - Fails naming the host and variable; publishes the normalised values as facts.
options: {}
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
author: Apiary developers
"""

EXAMPLES = r"""
- name: Validate the inventory
  apiary.cluster.validate_inventory:
"""

RETURN = r"""
ansible_facts:
  description: The normalised settings (apiary_routing_mode, apiary_cluster_pool_ipv4_cidr, ...).
  returned: success
  type: dict
notices:
  description: One line per Kubespray alias in use or setting without effect yet.
  returned: always
  type: list
"""
