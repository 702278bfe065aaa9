"""Work is enqueued by task name: importing the app builds no broker, and the names the API
sends are the actors the worker declares."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from dramatiq.common import dq_name

from backinstock import tasks
from backinstock.config import Settings

# Counts every Dramatiq broker constructed (each broker class calls Broker.__init__), imports
# the app and builds one; then builds the process's broker, to show that the count works.
_APP_PROBE = """
import json, sys
import dramatiq.broker

built = []
original = dramatiq.broker.Broker.__init__

def counting(self, *args, **kwargs):
    built.append(type(self).__name__)
    original(self, *args, **kwargs)

dramatiq.broker.Broker.__init__ = counting

from backinstock.main import create_app

create_app()
report = {
    "built_by_app": list(built),
    "global_broker_set": dramatiq.broker.global_broker is not None,
    "worker_imported": "backinstock.worker" in sys.modules,
}
from backinstock import tasks

broker = tasks.broker()
report["built_on_first_use"] = built[len(report["built_by_app"]):]
report["is_the_global_broker"] = dramatiq.broker.global_broker is broker
print(json.dumps(report))
"""

# In a fresh process with the in-process broker: a wake-up sent before any worker module is
# imported waits in its queue, and importing the worker declares the actor that takes it.
_EARLY_MESSAGE_PROBE = """
import json, uuid
from dramatiq import Message
from backinstock import tasks

wave = uuid.uuid4()
tasks.wake_wave(wave)
waiting = [Message.decode(m) for m in tasks.broker().queues[tasks.RUN_WAVE.queue].queue]
from backinstock import worker

print(json.dumps({
    "waiting": [[m.actor_name, list(m.args)] for m in waiting],
    "actor": worker.broker.get_actor(waiting[0].actor_name).fn.__name__,
    "wave": str(wave),
}))
"""


def _run(code: str, **env: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_importing_the_app_builds_no_broker() -> None:
    report = _run(_APP_PROBE)
    assert report["built_by_app"] == []
    assert report["global_broker_set"] is False
    assert report["worker_imported"] is False
    kind = "PolledRedisBroker" if os.environ.get("BACKINSTOCK_REDIS_URL") else "StubBroker"
    assert report["built_on_first_use"] == [kind]
    assert report["is_the_global_broker"] is True


def test_a_wake_up_sent_before_the_worker_exists_waits_for_its_actor() -> None:
    report = _run(_EARLY_MESSAGE_PROBE, BACKINSTOCK_REDIS_URL="")
    assert report["waiting"] == [["waves.run", [report["wave"]]]]
    assert report["actor"] == "run_wave"


def test_the_task_names_are_the_workers_actors() -> None:
    from backinstock import worker

    declared = {
        name: worker.broker.get_actor(name).queue_name
        for name in worker.broker.get_declared_actors()
    }
    assert declared == {task.name: task.queue for task in tasks.TASKS}
    assert worker.broker is tasks.broker()


def test_delay_queues_are_polled_less_often_than_their_queues(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only retries go through the delay queues: their idle consumers look at most every
    DELAY_QUEUE_POLL_MS, while the queues keep the worker's ``--poll-ms``."""
    monkeypatch.setenv("BACKINSTOCK_REDIS_URL", "redis://127.0.0.1:6379/15")
    broker = tasks.make_broker(Settings.from_env())  # builds no connection

    def polled_every(queue_name: str, poll_ms: int) -> int:
        # As Dramatiq's consumer threads ask for a consumer (dramatiq.worker.ConsumerThread)
        consumer = broker.consume(queue_name=queue_name, prefetch=16, timeout=poll_ms)
        return int(consumer.timeout)  # type: ignore[attr-defined]

    for task in tasks.TASKS:
        assert polled_every(task.queue, 100) == 100
        assert polled_every(dq_name(task.queue), 100) == tasks.DELAY_QUEUE_POLL_MS
        assert polled_every(dq_name(task.queue), 5000) == 5000  # never more often than asked
