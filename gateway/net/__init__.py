"""IO and nothing else: the epoll reactor, timers, loop pool, acceptor, connections (and their receive
buffers), UDP endpoint (with its receive arena), the link-buffer pool."""
