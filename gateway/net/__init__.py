"""IO and nothing else: the epoll reactor, timers, loop pool, acceptor, connections, UDP endpoint, ring, slab pool."""
