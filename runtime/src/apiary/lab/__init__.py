"""The lab: a cluster of network-namespace nodes on one machine (see inventory/lab)."""
