"""A per-thread on/off switch set for the duration of a `with` block."""

import contextlib
import threading


class ThreadFlag:
    """`flag.active` is false until `with flag.on():` sets it, in this thread only.

    Nested blocks restore the previous value on exit.
    """

    def __init__(self):
        self._local = threading.local()

    @property
    def active(self):
        return getattr(self._local, "active", False)

    @contextlib.contextmanager
    def on(self, active=True):
        previous = self.active
        self._local.active = active
        try:
            yield
        finally:
            self._local.active = previous
