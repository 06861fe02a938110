"""Attendee-side iTIP processing (being written)."""
