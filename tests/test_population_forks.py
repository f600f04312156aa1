"""Work spread over forked workers gives what the same work gives here, in order."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import time

import pytest

from rmsprop_lightning.app.jobs import available_cores
from rmsprop_lightning.population.forks import deferred_signals, fork_map, shared


def pid_and_square(item: int) -> tuple[int, int]:
    return os.getpid(), item * item + shared["offset"]


def test_fork_map_keeps_the_order_shares_state_and_runs_meanwhile_here():
    shared["offset"] = 1
    ran = []
    results = fork_map(pid_and_square, list(range(40)), meanwhile=lambda: ran.append(os.getpid()))
    assert [value for _, value in results] == [i * i + 1 for i in range(40)]
    assert ran == [os.getpid()]
    if (os.cpu_count() or 1) > 1:
        assert os.getpid() not in {pid for pid, _ in results}


def test_a_few_items_run_here():
    shared["offset"] = 0
    assert fork_map(pid_and_square, [1, 2, 3]) == [(os.getpid(), 1), (os.getpid(), 4), (os.getpid(), 9)]


def square_terminated_at_three(item: int) -> int:
    if item == 3 and os.getpid() != shared["parent"]:  # as a SIGTERM to the whole process group would
        os.kill(os.getpid(), signal.SIGTERM)
    return item * item


@pytest.mark.skipif(available_cores() < 2, reason="needs two workers")
def test_a_sigterm_to_a_worker_busy_with_an_item_loses_no_item():
    shared["parent"] = os.getpid()

    def waited_too_long(signum, frame):
        raise TimeoutError("fork_map waits for an item a killed worker lost")

    previous = signal.signal(signal.SIGALRM, waited_too_long)
    signal.alarm(60)
    try:
        assert fork_map(square_terminated_at_three, list(range(16))) == [i * i for i in range(16)]
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def ctrl_c_twice_at_three(item: int) -> int:
    if item == 3:  # as a user pressing Ctrl-C twice while the workers are busy
        os.kill(shared["parent"], signal.SIGINT)
        time.sleep(0.2)
        os.kill(shared["parent"], signal.SIGINT)
    time.sleep(0.05)
    return item


@pytest.mark.skipif(available_cores() < 2, reason="needs two workers")
def test_a_second_ctrl_c_while_the_workers_are_busy_stops_at_once():
    shared["parent"] = os.getpid()

    def waited_too_long(signum, frame):
        for worker in multiprocessing.active_children():  # else the pool's own end waits on them too
            worker.kill()
        raise TimeoutError("the pool waits for workers that ignore its SIGTERM amid an item")

    previous = signal.signal(signal.SIGALRM, waited_too_long)
    signal.alarm(30)
    start = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt), deferred_signals("testing the workers' items first"):
            fork_map(ctrl_c_twice_at_three, list(range(64)))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert time.monotonic() - start < 20 and not multiprocessing.active_children()


def slow_square(item: int) -> int:
    time.sleep(0.002)
    return item * item


@pytest.mark.skipif(available_cores() < 2, reason="needs two workers")
def test_sigterms_to_the_workers_amid_the_items_lose_none_and_stop_none():
    # as SIGTERM to the process group: a worker it ended while waiting for an item held the queue's lock
    def waited_too_long(signum, frame):
        for worker in multiprocessing.active_children():
            worker.kill()
        raise TimeoutError("a worker ended by SIGTERM left the pool waiting")

    def terminate_the_workers() -> None:
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            for worker in multiprocessing.active_children():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGTERM)
            time.sleep(0.001)

    previous = signal.signal(signal.SIGALRM, waited_too_long)
    signal.alarm(60)
    try:
        results = fork_map(slow_square, list(range(400)), meanwhile=terminate_the_workers)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert results == [i * i for i in range(400)] and not multiprocessing.active_children()
