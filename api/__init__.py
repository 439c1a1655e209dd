"""soundtag HTTP API and visualization page."""
