"""``permgate demo``: a sample insurance API behind the gateway, on seeded data."""
