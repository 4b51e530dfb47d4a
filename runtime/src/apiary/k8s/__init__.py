"""The node runtime's Kubernetes layer: one way to reach the API server (client), list+watch with a
cache (watch), Cilium's policy CRDs (crds), reporting back on objects (events), and the object model
with its validation (validation: names, labels, metadata, manifest files, per-kind checkers).

It imports only base modules (apiary.errors), the standard library, `kubernetes` and `yaml`, never
the agent, the lab, policy or observe. Objects are plain dicts, as the API server sends them.
"""
