"""The admin API, served under ``/v1`` on the admin listener.

Mount it with ``admin_app.add_subapp("/v1", create_admin_api(...))``.
"""

from __future__ import annotations

from permgate.admin.api import ADMIN_MAP, create_admin_api

__all__ = ["ADMIN_MAP", "create_admin_api"]
