"""Organiser-side iTIP processing (being written)."""
