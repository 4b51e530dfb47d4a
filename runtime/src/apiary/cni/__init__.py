"""The CNI plugin `apiary-cni`."""
