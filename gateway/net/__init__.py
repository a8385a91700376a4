"""IO and nothing else: the epoll reactor, timers, loop pool, acceptor, connections, UDP endpoint (with
its receive arena), ring, object pool."""
