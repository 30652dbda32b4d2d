"""ACME challenge solvers: the interface and its HTTP-01 (and later DNS-01) implementations."""
