"""The supervisor: one process per run and node that owns the run's ranks, socket, telemetry and history.

Torch-free: it starts the ranks under torchrun and talks to them over the socket.
"""
