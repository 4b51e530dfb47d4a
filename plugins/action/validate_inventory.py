# -*- coding: utf-8 -*-
# Copyright: Apiary developers
# Apache-2.0
"""Validate the inventory on the controller before anything touches a host.

Runs for every host of the play without connecting to it: templates the Apiary variables
(and the Kubespray variables read as aliases), checks them, and publishes the normalised
settings as facts, so every later role sees typed, resolved values.
"""
from __future__ import annotations

from ansible.errors import AnsibleUndefinedVariable
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

from ansible_collections.apiary.cluster.plugins.module_utils.inventory import (
    VARIABLES,
    validate_cluster,
    validate_host,
)

display = Display()


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        host = task_vars["inventory_hostname"]
        hostvars = task_vars["hostvars"]

        own = {}
        for name in VARIABLES:
            if name in task_vars:
                try:
                    own[name] = self._templar.template(task_vars[name])
                except AnsibleUndefinedVariable as exc:
                    result.update(failed=True, msg="%s: %s: %s" % (host, name, exc))
                    return result

        checked = validate_host(host, own, task_vars.get("group_names", []))
        # Cross-host: the addresses of every host in the play must be distinct.
        node_ips = {}
        for other in task_vars.get("ansible_play_hosts_all", [host]):
            if other == host:
                node_ips[other] = own.get("ip")
            elif "ip" in hostvars[other]:
                node_ips[other] = hostvars[other]["ip"]
        errors = checked.errors + [e for e in validate_cluster(node_ips) if e.startswith(host + ":")]

        for line in checked.notices:
            display.warning(line)
        result["notices"] = checked.notices
        if errors:
            result.update(failed=True, msg="Invalid inventory: " + "; ".join(errors), errors=errors)
            return result
        result.update(changed=False, ansible_facts=checked.settings)
        return result
