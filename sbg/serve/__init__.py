"""Serving: the registry of shared monitors and sessions, the HTTP API, update pacing. Never imports the UI."""
