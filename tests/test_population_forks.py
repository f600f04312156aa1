"""Work spread over forked workers gives what the same work gives here, in order."""

from __future__ import annotations

import os

from rmsprop_lightning.population.forks import fork_map, shared


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
