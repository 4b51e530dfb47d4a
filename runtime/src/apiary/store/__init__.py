"""The cluster store: etcd v3 through its JSON gateway (see docs/datapath.md, "The store")."""
from .etcd import KV, EtcdClient, EtcdCompacted, EtcdError, Event, prefix_end

__all__ = ["KV", "EtcdClient", "EtcdCompacted", "EtcdError", "Event", "prefix_end"]
