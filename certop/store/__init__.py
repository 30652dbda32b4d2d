"""Where certificates, keys, ACME accounts and in-flight orders are kept: ports and adapters."""
