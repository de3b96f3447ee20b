"""Forked helpers of the data commands: frames in order, a failing child, no fork beside threads, clean-up."""

import threading
import time

import pytest

from conftest import no_child_left, stop_other_threads
from rejection_align.data.forked import Forked


def start(work) -> Forked:
    stop_other_threads()
    child = Forked.start(work)
    assert child is not None, "this test process must be able to fork (no other thread running)"
    return child


def test_frames_arrive_in_the_order_the_child_sent_them():
    payloads = [b"", b"x", bytes(range(256)) * 5000, b"last"]  # one larger than the pipe and the queue's frames

    def work(send):
        for payload in payloads:
            send(payload)

    child = start(work)
    assert [child.receive() for _ in payloads] == payloads
    assert child.receive() is None  # then the end
    child.close()
    assert no_child_left()


def test_a_child_that_fails_half_way_gives_the_frames_it_sent_then_none():
    def work(send):
        send(b"one")
        send(b"two")
        raise ValueError("a bad record")

    child = start(work)
    assert (child.receive(), child.receive(), child.receive()) == (b"one", b"two", None)
    child.close()
    assert no_child_left()


def test_the_child_sees_the_parents_memory_as_it_was_at_the_fork():
    data = {"ids": [str(i) for i in range(1000)]}
    child = start(lambda send: send(",".join(data["ids"]).encode()))
    data["ids"] = []  # the child's copy is unchanged
    assert child.receive() == ",".join(str(i) for i in range(1000)).encode()
    child.close()


def test_no_child_is_forked_while_another_thread_runs():
    stop_other_threads()
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        assert Forked.start(lambda send: send(b"x")) is None
    finally:
        stop.set()
        thread.join()
    assert no_child_left()


def test_close_stops_and_reaps_a_child_that_is_still_working():
    child = start(lambda send: time.sleep(60))
    started = time.monotonic()
    child.close()
    assert time.monotonic() - started < 30
    assert no_child_left()
    assert child.receive() is None
    child.close()  # idempotent


@pytest.mark.parametrize("frames", [0, 3])
def test_a_parent_that_stops_reading_early_leaves_no_child_behind(frames):
    child = start(lambda send: [send(b"y" * 100_000) for _ in range(1000)])
    for _ in range(frames):
        assert child.receive() == b"y" * 100_000
    child.close()
    assert no_child_left()
