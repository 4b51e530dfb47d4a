# -*- coding: utf-8 -*-
# Copyright (c) Apiary developers
# Apache-2.0 (see galaxy.yml)
"""The `flags` filter: a mapping of flag names to values as a command line's arguments.

    {{ {'data-dir': '/var/lib/etcd', 'client-cert-auth': true} | apiary.cluster.flags }}
    -> ['--data-dir=/var/lib/etcd', '--client-cert-auth=true']

Every upstream component (etcd, kube-apiserver, the kubelet, ...) is started from such a mapping, so
settings are written by name once and their command lines are built the same way everywhere.
Booleans are written as Go's flag package reads them (true/false).
"""
from __future__ import annotations


def flags(mapping):
    args = []
    for name, value in mapping.items():
        if isinstance(value, bool):
            value = "true" if value else "false"
        args.append("--%s=%s" % (name, value))
    return args


class FilterModule(object):
    def filters(self):
        return {"flags": flags}
