"""Hubble-style observability: datapath events, flows, the observer, metrics, the relay and its page
(docs/hubble.md)."""
