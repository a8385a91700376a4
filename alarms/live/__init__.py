"""The live alarm table in Redis: one hash per gateway prefix, updated from the journal."""
