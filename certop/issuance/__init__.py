"""The issuance pipeline's shared parts, used by both modes: one account registry and one
renewal-information cache (the per-certificate lifecycle around them lives in
`standalone.runner` and `k8s.certificates`, over the same `core.renewal` policy)."""
