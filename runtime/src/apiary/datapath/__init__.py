"""The node's datapath: loading the BPF objects, attaching them, and the VXLAN device (`loader`)."""
