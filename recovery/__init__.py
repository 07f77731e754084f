"""A worker's death is not the call's death: the room remembers its job, a watcher brings the agent back."""
