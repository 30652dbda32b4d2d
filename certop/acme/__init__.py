"""ACME driver over certbot's `acme` + josepy: network, accounts, orders, error mapping.

Blocking by nature (`requests`): the shells run it in worker threads, never in the event loop.
"""
