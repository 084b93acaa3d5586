"""A papermill engine whose client cannot miss a kernel message it already holds.

Root cause of the "papermill waits forever on an idle kernel" hang, seen once here in
``docs/build.py`` (notebook 01, the sliders cell, load average about 4): the kernel had run the
cell (its state showed the callback's update) and gone idle; nbclient was awaiting
``kc.shell_channel.get_msg(timeout=<the whole cell timeout>)``; the client's shell DEALER socket
reported ``ZMQ_EVENTS & POLLIN`` (the ``execute_reply`` was sitting in it, unread), but pyzmq's
asyncio poll never woke. ZeroMQ's ``ZMQ_FD`` is edge-triggered: once its wake-up is lost (which
operation consumed it was not pinned down) nothing repeats it, and the poll, registered once for
the whole cell timeout, waits for an edge that does not come. Reading ``ZMQ_EVENTS`` through the
asyncio socket (which reschedules pending events) released it at once and the notebook finished.
The kernel had done its part (replied and gone idle); that the cell was a widget cell may or
may not matter (one occurrence).

The fix here: every wait on the shell and iopub channels is cut into slices of ``SLICE_S``
seconds; each new poll first reads ``ZMQ_EVENTS``, so a message stranded in the socket is
picked up within one slice, and the caller's timeout is still honoured. Use it with
``papermill.execute_notebook(..., engine_name=register())``.
"""

from __future__ import annotations

from queue import Empty
from time import monotonic

ENGINE = "mls-sliced-poll"
SLICE_S = 1.0


def _sliced(get_msg, slice_s: float = SLICE_S):
    """Wrap an async ``get_msg(timeout)`` so that no single poll outlasts ``slice_s``."""

    async def get_msg_sliced(timeout: float | None = None, **kwargs):
        deadline = None if timeout is None else monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - monotonic())
            step = slice_s if left is None else min(slice_s, left)
            try:
                return await get_msg(timeout=step, **kwargs)
            except Empty:
                if left is not None and left <= slice_s:
                    raise

    return get_msg_sliced


def register() -> str:
    """Register the engine with papermill (idempotent); return its name."""
    from nbclient.util import run_sync
    from papermill.clientwrap import PapermillNotebookClient
    from papermill.engines import NBClientEngine, papermill_engines
    from papermill.log import logger

    class SlicedPollClient(PapermillNotebookClient):
        async def async_start_new_kernel_client(self):
            kc = await super().async_start_new_kernel_client()
            for channel in (kc.shell_channel, kc.iopub_channel):
                channel.get_msg = _sliced(channel.get_msg)
            return kc

        start_new_kernel_client = run_sync(async_start_new_kernel_client)

    class SlicedPollEngine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, log_output=False,
                                     stdout_file=None, stderr_file=None, start_timeout=60,
                                     execution_timeout=None, **kwargs):  # fmt: skip
            """papermill's NBClientEngine.execute_managed_notebook, with the client above."""
            timeout = execution_timeout or kwargs.get("timeout")
            for name in ("input_path", "timeout", "startup_timeout"):
                kwargs.pop(name, None)
            client = SlicedPollClient(
                nb_man, **kwargs, timeout=timeout, startup_timeout=start_timeout,
                kernel_name=kernel_name, log=logger, log_output=log_output,
                stdout_file=stdout_file, stderr_file=stderr_file,
            )  # fmt: skip
            return client.execute()

    papermill_engines.register(ENGINE, SlicedPollEngine)
    return ENGINE


def execute(input_path, output_path, *, on_retry=None, **kwargs) -> None:
    """``papermill.execute_notebook`` on this engine; a run whose cell outlives
    ``execution_timeout`` is retried once in a fresh kernel (a guard only: the sliced poll is
    the fix). ``on_retry()`` is called before the retry."""
    import papermill

    for attempt in (1, 2):
        try:
            papermill.execute_notebook(
                str(input_path), str(output_path), engine_name=register(), **kwargs
            )
            return
        except Exception as err:
            timed_out = isinstance(err, TimeoutError) or "timeout" in type(err).__name__.lower()
            if attempt == 2 or not timed_out:
                raise
            if on_retry is not None:
                on_retry()
