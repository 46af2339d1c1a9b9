"""The process: configuration, listening sockets, TLS, and the runtime that wires
the layers together.
"""
