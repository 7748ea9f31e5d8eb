"""The test kit: what tests, benchmarks and the reliability suite share to run the real stack.

Not part of the product (it is not installed with the wheel): it starts Triton, the core and
the facade as processes on free loopback ports (:mod:`.stack`), serves clips over RTSP
(:mod:`.rtsp_server`), builds and caches the clips themselves (:mod:`.clips`) and talks to the
stream API (:mod:`.streams`).

This package must stay importable by Debian's ``/usr/bin/python3`` (no third-party imports
here): :mod:`.rtsp_server` runs under it as ``python3 -m lva_testkit.rtsp_server``.
"""
