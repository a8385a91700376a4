"""Device and train simulators for railgate (asyncio, one thread): see ``runner.py`` and ``cli.py``."""
