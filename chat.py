"""Typed chat messages."""

MAX_MESSAGE_CHARS = 1000
