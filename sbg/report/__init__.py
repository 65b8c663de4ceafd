"""The self-contained HTML report of a run, and the look it shares with the dashboard."""
