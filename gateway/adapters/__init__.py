"""Adapters at the edge: the HTTP admin API and the Redis / in-process switch-zone locks."""
