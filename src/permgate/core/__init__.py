"""The pure core: the access model, the permission grammar and the decision.

Imports nothing from the web, store, gateway or CLI layers.
"""
