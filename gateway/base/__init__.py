"""Base utilities: asynchronous logging and atomic-style counters and flags. No IO, no project imports."""
