"""The sliced poll behind ``mls_tutorial/notebook_engine.py``: no single wait outlasts a slice, a message
is returned as soon as a slice sees it, and the caller's timeout is still honoured."""

from __future__ import annotations

import asyncio
import time
from queue import Empty

import pytest

from mls_tutorial.notebook_engine import _sliced


class FakeChannel:
    """``get_msg(timeout)`` that raises Empty (after sleeping the timeout) until ``ready_at``."""

    def __init__(self, ready_at: float):
        self.ready_at, self.timeouts = ready_at, []

    async def get_msg(self, timeout=None):
        self.timeouts.append(timeout)
        if time.monotonic() >= self.ready_at:
            return {"msg_type": "execute_reply"}
        await asyncio.sleep(timeout)
        raise Empty


def test_a_stranded_message_is_picked_up_by_a_later_slice():
    channel = FakeChannel(ready_at=time.monotonic() + 0.25)
    msg = asyncio.run(_sliced(channel.get_msg, slice_s=0.1)(timeout=None))
    assert msg == {"msg_type": "execute_reply"}
    assert len(channel.timeouts) >= 3 and max(channel.timeouts) <= 0.1


def test_the_callers_timeout_still_raises_empty():
    channel = FakeChannel(ready_at=float("inf"))
    start = time.monotonic()
    with pytest.raises(Empty):
        asyncio.run(_sliced(channel.get_msg, slice_s=0.1)(timeout=0.35))
    assert 0.35 <= time.monotonic() - start < 2.0  # not before the deadline
    assert len(channel.timeouts) >= 4 and max(channel.timeouts) <= 0.1
