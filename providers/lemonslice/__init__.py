"""LemonSlice: a wire client (api) and the avatar session built on it (avatar)."""
