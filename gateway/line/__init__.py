"""The line's state without IO: objects, devices and reachability, conditions, the link protocol."""
