"""A channel that fails is tried again with exponential backoff, a bounded number of times, and
every try is recorded (log and ``alerts.jsonl``); a settings problem is not retried.

Real HTTP: a local receiver that answers 503 to its first N posts, through the HTTP
provider's real notifier. The waits between tries go to an injected recorder, so the test
never sleeps and does not depend on the clock.
"""

from __future__ import annotations

import logging
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Airflow's home is the session's throwaway one (tests/conftest.py), set before any import.
# Airflow sets up its logging when first imported: before caplog's handlers, not mid-test.
import airflow.providers.http.notifications.http  # noqa: E402, F401
import pytest

from lockstep.core import alerts  # noqa: E402
from lockstep.core.config import MAX_ALERT_RETRY_DELAY, AlertSettings  # noqa: E402
from lockstep.core.errors import ConfigurationError  # noqa: E402

MESSAGE = "v7 rolled back: error rate 4.1 % above the 2 % gate"
DETAILS = {"version": "7", "reason": "error rate above the gate"}


class FlakyReceiver:
    """An HTTP receiver on 127.0.0.1 that answers 503 to its first ``failures`` POSTs, then 200."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.statuses: list[int] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's hook name)
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status = 503 if len(receiver.statuses) < receiver.failures else 200
                receiver.statuses.append(status)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="flaky-receiver")
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=30)


@pytest.fixture
def alert_env(lockstep_home, monkeypatch):
    """No alert setting from the machine leaks in."""
    for name in list(os.environ):
        if name.startswith(("LOCKSTEP_ALERT_", "AIRFLOW_CONN_")):
            monkeypatch.delenv(name)
    return monkeypatch


@pytest.fixture
def flaky(request):
    receiver = FlakyReceiver(failures=request.param)
    yield receiver
    receiver.stop()


class Waits(list):
    """Records the waits ``alert`` asks for instead of sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.mark.parametrize("flaky", [2], indirect=True)
def test_a_channel_that_fails_twice_then_succeeds_is_delivered_on_the_third_try(alert_env, flaky, caplog):
    alert_env.setenv("LOCKSTEP_ALERT_CHANNEL", "log,webhook")
    alert_env.setenv("LOCKSTEP_ALERT_WEBHOOK_URL", flaky.url)
    waits = Waits()

    with caplog.at_level(logging.WARNING, logger="lockstep.alerts"):
        entry = alerts.alert("rollback", MESSAGE, DETAILS, sleep=waits)

    assert flaky.statuses == [503, 503, 200]
    assert waits == [1.0, 2.0]  # the default first delay, doubled
    assert entry["delivery"] == {"log": "sent", "webhook": "sent"}
    outcomes = [a["outcome"] for a in entry["attempts"]["webhook"]]
    assert outcomes[2] == "sent" and all(o.startswith("failed: ") and "503" in o for o in outcomes[:2])
    assert "log" not in entry["attempts"]  # the log channel cannot fail: nothing to record
    assert alerts.recent_alerts()[-1]["attempts"] == entry["attempts"]  # recorded where the UI page reads it
    lines = [r.getMessage() for r in caplog.records]
    assert sum("channel 'webhook' try" in line and "trying again" in line for line in lines) == 2
    assert any("was delivered by channel 'webhook' at try 3" in line for line in lines)
    assert not any("was not delivered" in line for line in lines)


@pytest.mark.parametrize("flaky", [99], indirect=True)
def test_a_channel_that_keeps_failing_is_tried_a_bounded_number_of_times_with_growing_waits(alert_env, flaky, caplog):
    alert_env.setenv("LOCKSTEP_ALERT_CHANNEL", "webhook")
    alert_env.setenv("LOCKSTEP_ALERT_WEBHOOK_URL", flaky.url)
    alert_env.setenv("LOCKSTEP_ALERT_ATTEMPTS", "4")
    alert_env.setenv("LOCKSTEP_ALERT_RETRY_DELAY", "0.5")
    waits = Waits()

    with caplog.at_level(logging.WARNING, logger="lockstep.alerts"):
        entry = alerts.alert("rollback", MESSAGE, DETAILS, sleep=waits)

    assert flaky.statuses == [503] * 4
    assert waits == [0.5, 1.0, 2.0]  # no wait after the last try
    assert entry["delivery"]["webhook"].startswith("failed: ") and "503" in entry["delivery"]["webhook"]
    assert len(entry["attempts"]["webhook"]) == 4
    final = [r.getMessage() for r in caplog.records if "was not delivered" in r.getMessage()]
    assert len(final) == 1 and "(4 tries)" in final[0]


def test_a_settings_problem_is_not_retried(alert_env):
    alert_env.setenv("LOCKSTEP_ALERT_CHANNEL", "smtp,pager")  # no recipients; no such channel
    waits = Waits()

    entry = alerts.alert("promoted", "v3 promoted to 100 %", {"version": "3"}, sleep=waits)

    assert waits == []
    assert "LOCKSTEP_ALERT_SMTP_TO is empty" in entry["delivery"]["smtp"]
    assert "unknown alert channel 'pager'" in entry["delivery"]["pager"]
    assert [len(entry["attempts"][c]) for c in ("smtp", "pager")] == [1, 1]


def test_the_backoff_doubles_and_is_capped():
    cfg = AlertSettings.from_env({"LOCKSTEP_ALERT_RETRY_DELAY": "2"})
    assert [cfg.retry_delay(n) for n in (1, 2, 3, 4)] == [2.0, 4.0, 8.0, 16.0]
    assert cfg.retry_delay(30) == MAX_ALERT_RETRY_DELAY
    assert AlertSettings.from_env({}).attempts == 3


@pytest.mark.parametrize(("name", "raw", "problem"), [
    ("LOCKSTEP_ALERT_ATTEMPTS", "0", "LOCKSTEP_ALERT_ATTEMPTS='0' must be a whole number from 1 to 10"),
    ("LOCKSTEP_ALERT_ATTEMPTS", "11", "from 1 to 10"),
    ("LOCKSTEP_ALERT_ATTEMPTS", "three", "LOCKSTEP_ALERT_ATTEMPTS='three'"),
    ("LOCKSTEP_ALERT_RETRY_DELAY", "-1", "LOCKSTEP_ALERT_RETRY_DELAY='-1' is not a number of seconds"),
])
def test_a_bad_retry_setting_is_refused_naming_it(name, raw, problem):
    with pytest.raises(ConfigurationError) as refused:
        AlertSettings.from_env({name: raw})
    assert problem in str(refused.value)
