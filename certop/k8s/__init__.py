"""Cluster mode: kopf handlers (thin) and Kubernetes API helpers around the pure core."""
