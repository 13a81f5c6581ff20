"""How the model's CPU threads are shared out among engine workers (lpt_server.threads)."""
import pytest

from lpt_server.threads import MAX_AUTO_WORKERS, ThreadPlan, plan


@pytest.mark.parametrize("threads, workers, device, environ, cores, expected", [
    (0, 0, "cpu", {}, 2, ThreadPlan(2, 1, 2)),                            # one one-thread worker per core
    (0, 0, "cpu", {"OMP_NUM_THREADS": "1"}, 2, ThreadPlan(1, 1, 1)),      # OMP_NUM_THREADS is the budget
    (0, 0, "cpu", {"OMP_NUM_THREADS": "3"}, 16, ThreadPlan(3, 1, 3)),
    (0, 0, "cpu", {"OMP_NUM_THREADS": "many"}, 4, ThreadPlan(4, 1, 4)),   # not a number: the cores
    (0, 0, "cpu", {"OMP_NUM_THREADS": "0"}, 4, ThreadPlan(4, 1, 4)),
    (4, 0, "cpu", {"OMP_NUM_THREADS": "1"}, 2, ThreadPlan(4, 1, 4)),      # the setting wins over the env
    (32, 0, "cpu", {}, 2, ThreadPlan(MAX_AUTO_WORKERS, 32 // MAX_AUTO_WORKERS, 32)),
    (2, 1, "cpu", {}, 2, ThreadPlan(1, 2, 2)),                            # one worker gets every thread
    (3, 2, "cpu", {}, 8, ThreadPlan(2, 1, 3)),                            # never more threads than the budget
    (1, 4, "cpu", {}, 8, ThreadPlan(4, 1, 1)),                            # workers asked for: at least one thread each
    (0, 0, "cuda", {}, 16, ThreadPlan(1, 16, 16)),                        # a GPU: one worker feeds it
    (0, 3, "cuda:1", {}, 16, ThreadPlan(3, 16, 16)),
])
def test_plan(threads, workers, device, environ, cores, expected):
    assert plan(threads, workers, device, environ=environ, cores=cores) == expected
