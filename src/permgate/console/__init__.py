"""The console: a server-rendered web UI for the access model, on the admin listener.

Mounted at ``/console/`` next to the admin API (``admin_app.add_subapp("/console/",
create_console(...))``). It signs principals in with a password or an auth token,
keeps the session in the store, and does everything through the admin API's rules and
the model service, so a principal sees and changes in a browser exactly what its
permissions allow through the API.
"""

from __future__ import annotations

from permgate.console.app import create_console
from permgate.console.decisions import RecentDecisions

__all__ = ["RecentDecisions", "create_console"]
