"""certop: automatic HTTPS for Kubernetes Ingress and plain machines."""

__version__ = "0.1.0"
