"""Turning scores into alerts: the rules, their engine, and the alert log."""
