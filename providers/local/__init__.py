"""The `local` avatar provider: an in-process avatar participant that needs no account."""

from .participant import LocalAvatarOptions, LocalAvatarParticipant, LocalAvatarStats

__all__ = ["LocalAvatarOptions", "LocalAvatarParticipant", "LocalAvatarStats"]
