"""The endpoint map: its grammar and loader, hot reload, and OpenAPI import."""
