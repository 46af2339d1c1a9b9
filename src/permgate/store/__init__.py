"""Where the access model lives: SQLite (embedded default) or PostgreSQL (fleets)."""
