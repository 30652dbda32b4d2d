"""DNS-01: TXT records at `_acme-challenge.<name>` through DNS providers (`provider`)."""
