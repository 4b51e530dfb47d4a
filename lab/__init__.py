"""Controller-side tooling for the lab (pod images, their registry). Not part of the node runtime wheel."""
