"""The node agent: owns the node's BPF maps, its endpoints and IPAM, and keeps them in sync with
the store. One per node (`apiary agent`)."""
