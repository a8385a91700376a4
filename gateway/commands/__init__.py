"""Operator commands: select before operate with feedback (engine, no IO), its settings and its audit journal."""
