"""The served pages, as files ``panel serve`` runs once per session (``sbg serve`` points it here).

They live in the package so that ``sbg serve`` works from an installed wheel.
"""
