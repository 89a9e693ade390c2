"""The delivery-contract proof suite: guarantees G1-G8 of /work/shared/CONTRACT.md under faults.

Each scenario injects faults (a TCP proxy, server restarts, kill -9, a hostile server, store
faults), then checks the oracle of :mod:`tests.contract.oracle` and prints its figures.
"""
