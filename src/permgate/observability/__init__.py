"""Metrics, audit events and endpoint map reload: called by the pipeline, never calling it.

Import the submodules directly (``permgate.observability.metrics`` …): this package
root stays empty so that importing one of them does not pull in the others.
"""

from __future__ import annotations
