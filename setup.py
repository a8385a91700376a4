"""Builds the compiled fast path (Cython) when railgate is installed; everything else is in pyproject.toml.

``pip install .`` (or ``-e .``) compiles four extension modules from their ``.pyx`` sources:

* ``railcodecs._core``: CRC-32, HMAC-SHA256, the frame scanner, the sequence window, the object
  table and the per-link drain (decode + receiver checks + apply) of the steady path, and the
  per-batch step of the trains' datagrams (``codecs/_train_state.pxi`` and ``_train_batch.pxi``, included);
* ``gateway.net._udp_batch``: ``recvmmsg`` of train datagrams straight into the UDP endpoint's receive arena;
* ``gateway.net._reactor``: ``epoll_wait`` + dispatch, a device link's read into its ring
  followed by the FastLink, without a Python frame per read, and its steady heartbeat tick (the
  HEARTBEAT encoded and sent in C, with ``codecs/include/icd_hash.h``'s CRC-32 and HMAC).
* ``gateway.net._timers``: the loop's timer queue, a min-heap of C structs sifted in C, the twin of
  ``gateway/net/timer_queue.py``'s ``TimerQueue`` (the reference).

Cython and a C compiler are build requirements only (``[build-system] requires``). When the
build fails (no compiler), the install goes on without the extensions and warns: the pure-Python
implementation is the reference and the fallback (``railcodecs.implementation()`` says which one
runs; ``RAILGATE_PURE=1`` forces the pure one). ``RAILGATE_REQUIRE_EXT=1`` turns the warning into
an error (CI and the Dockerfile's build stage set it: a release must carry the fast path).
"""
import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

EXTENSIONS = [
    Extension("railcodecs._core", ["codecs/_core.pyx"], include_dirs=["codecs/include"],
              extra_compile_args=["-O2"]),
    Extension("gateway.net._udp_batch", ["gateway/net/_udp_batch.pyx"], extra_compile_args=["-O2"]),
    Extension("gateway.net._reactor", ["gateway/net/_reactor.pyx"], include_dirs=["codecs/include"],
              extra_compile_args=["-O2"]),
    Extension("gateway.net._timers", ["gateway/net/_timers.pyx"], extra_compile_args=["-O2"]),
]


class OptionalBuildExt(build_ext):
    """Build the extensions; without a compiler, warn and install the pure-Python implementation."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any build failure means "no fast path"
            self._give_up(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            self._give_up(exc, ext.name)

    @staticmethod
    def _give_up(exc, name="the extensions"):
        if os.environ.get("RAILGATE_REQUIRE_EXT") == "1":
            raise exc
        print(f"railgate: WARNING: could not build {name} ({exc}); the pure-Python implementation "
              "will run", file=sys.stderr)


def _cythonize(exts):
    from Cython.Build import cythonize
    return cythonize(exts, language_level=3, compiler_directives={
        "boundscheck": False, "wraparound": False, "cdivision": True, "initializedcheck": False})


setup(ext_modules=_cythonize(EXTENSIONS), cmdclass={"build_ext": OptionalBuildExt})
