"""The alarm history store: SQLite (embedded default) or MySQL/MariaDB through a pooled connection."""
