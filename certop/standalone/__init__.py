"""Standalone mode: Ingress YAML in, certificates on disk, the built-in proxy serving them."""
