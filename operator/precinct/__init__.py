"""Precinct: run untrusted chat-bot plugins behind hard boundaries."""

__version__ = "0.1.0"
