"""The request path: hygiene, authentication, the one evaluation, the decision
cache, the upstream transports and the doors (inline gateway, decision service).
"""
