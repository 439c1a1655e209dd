"""soundtag core: decode → features → model → store."""

__version__ = "0.2.0"
