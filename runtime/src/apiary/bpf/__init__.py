"""eBPF from Python: libbpf through ctypes (`libbpf`) and the datapath's maps (`maps`)."""
