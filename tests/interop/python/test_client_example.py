"""client-examples/python/watch_session.py, run as a user would run it,
against a real herald while the test plays a document-processing session.

The test publishes each step once the previous one has shown up in the
script's output, like a backend whose steps take time: the stock sync client
runs each handler in a thread of its own, so events published in the same
instant may print in any order (the script says so in its header)."""

import os
import queue
import subprocess
import sys
import threading
import time
import uuid

import pytest

from conftest import REPO_ROOT, new_session_id, progress_payload

SCRIPT = REPO_ROOT / "client-examples" / "python" / "watch_session.py"
START_TIMEOUT = 15.0
STEP_TIMEOUT = 5.0
EXIT_TIMEOUT = 10.0


def _prompts(completed, processing, failed=0, total=3):
    return {"total": total, "completed": completed, "processing": processing,
            "pending": total - completed - processing - failed, "failed": failed}


CLARIFICATION_ID = str(uuid.uuid4())

# (event, data, the line that shows the step arrived)
STEPS = [
    ("progress", {"status": "ACTIVE", "progress": 0, "prompts": _prompts(0, 0),
                  "hasClarifications": False, "clarificationCount": 0},
     "Progress: 0%"),
    ("progress", {"status": "PROCESSING", "progress": 10, "prompts": _prompts(0, 3),
                  "hasClarifications": False, "clarificationCount": 0},
     "Progress: 10%"),
    ("model_result", {"modelName": "llama3.1:8b", "provider": "ollama",
                      "duration": 1834, "status": "completed",
                      "result": "Invoice total: 1,250.00 EUR, due 2024-07-01."},
     "Model llama3.1:8b: completed"),
    ("model_result", {"modelName": "gpt-4o-mini", "provider": "openai",
                      "duration": 2410, "status": "completed",
                      "result": "Total 1250 EUR; payment due July 1st 2024."},
     "Model gpt-4o-mini: completed"),
    ("model_result", {"modelName": "mistral:7b", "provider": "ollama",
                      "duration": 30000, "status": "failed", "result": "",
                      "error": "model timed out after 30000ms"},
     "Model mistral:7b: failed"),
    ("clarification", {"clarificationId": CLARIFICATION_ID,
                       "question": "Two models disagree on the currency format; "
                                   "which should be used?",
                       "status": "pending"},
     "Clarification needed:"),
    ("progress", {"status": "PROCESSING", "progress": 75,
                  "prompts": _prompts(2, 0, 1), "hasClarifications": True,
                  "clarificationCount": 1},
     "Progress: 75%"),
    ("completed", {"result": {"total": 1250, "currency": "EUR",
                              "dueDate": "2024-07-01", "models": 3,
                              "failedModels": 1}},
     "Session completed!"),
]

# Every line the script should print for the session, in order.
EXPECTED_LINES = [
    "Subscribed to session: {sid}",
    "Progress: 0%", "Status: ACTIVE",
    "Progress: 10%", "Status: PROCESSING",
    "Model llama3.1:8b: completed",
    "Result: Invoice total: 1,250.00 EUR, due 2024-07-01.",
    "Model gpt-4o-mini: completed",
    "Result: Total 1250 EUR; payment due July 1st 2024.",
    "Model mistral:7b: failed",
    "Error: model timed out after 30000ms",
    "Clarification needed:",
    "Question: Two models disagree on the currency format; which should be used?",
    f"Clarification ID: {CLARIFICATION_ID}",
    "Progress: 75%", "Status: PROCESSING",
    "Session completed!",
    'Result: {"total": 1250, "currency": "EUR", "dueDate": "2024-07-01", '
    '"models": 3, "failedModels": 1}',
    "Disconnected from WebSocket",
]


class Script:
    """The example running as a subprocess, its stdout read line by line."""

    def __init__(self, herald_url, args=(), env_extra=None):
        env = dict(os.environ)
        env.pop("SESSION_ID", None)
        env.update({"HERALD_URL": herald_url, "PYTHONUNBUFFERED": "1"})
        env.update(env_extra or {})
        self.proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env=env, cwd=str(SCRIPT.parent))
        self.lines = []
        self._queue = queue.Queue()
        self.stderr = ""
        threading.Thread(target=self._read, daemon=True).start()
        self._err_thread = threading.Thread(target=self._read_err, daemon=True)
        self._err_thread.start()

    def _read(self):
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def _read_err(self):
        self.stderr = self.proc.stderr.read()

    def wait_line(self, wanted, timeout):
        deadline = time.monotonic() + timeout
        while True:
            if wanted in self.lines:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
        self.kill()
        pytest.fail(f"watch_session.py never printed {wanted!r} within {timeout}s "
                    f"(exit code {self.proc.poll()}).\nstdout:\n"
                    + "\n".join(self.lines) + f"\nstderr:\n{self.stderr}",
                    pytrace=False)

    def finish(self, timeout):
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"watch_session.py did not exit within {timeout}s; stdout:\n"
                        + "\n".join(self.lines), pytrace=False)
        while True:  # drain what is left of stdout
            try:
                line = self._queue.get(timeout=2)
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
        self._err_thread.join(timeout=2)
        return code

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)


@pytest.fixture
def run_script(herald):
    started = []

    def _run(args=(), env_extra=None):
        s = Script(herald.url, args, env_extra)
        started.append(s)
        return s

    yield _run
    for s in started:
        s.kill()


def _assert_output(lines, expected):
    """The script printed exactly `expected`, in this order."""
    assert lines == expected, (
        "output differs from the session's steps in order\n--- got:\n"
        + "\n".join(lines) + "\n--- expected:\n" + "\n".join(expected))


@pytest.mark.parametrize("how", ["argv", "env"])
def test_watch_session_follows_a_document_session(herald, run_script, how):
    sid = new_session_id("example")
    script = (run_script([sid]) if how == "argv"
              else run_script([], {"SESSION_ID": sid}))
    script.wait_line(f"Subscribed to session: {sid}", START_TIMEOUT)
    assert herald.session(sid)["subscribers"] == 1

    for event, data, shows_as in STEPS:
        herald.publish(sid, event, data)
        script.wait_line(shows_as, STEP_TIMEOUT)

    code = script.finish(EXIT_TIMEOUT)
    assert code == 0, (f"exit code {code}\nstdout:\n" + "\n".join(script.lines)
                       + f"\nstderr:\n{script.stderr}")
    assert script.lines[0].startswith("Connected to WebSocket: "), script.lines
    _assert_output(script.lines[1:],
                   [line.replace("{sid}", sid) for line in EXPECTED_LINES])
    # It unsubscribed and disconnected on `completed`.
    assert herald.session(sid)["subscribers"] == 0
    assert herald.session(sid)["completed"] is True


def test_watch_session_exits_1_on_a_session_error(herald, run_script):
    sid = new_session_id("example-err")
    script = run_script([sid])
    script.wait_line(f"Subscribed to session: {sid}", START_TIMEOUT)
    herald.publish(sid, "progress", progress_payload(30))
    script.wait_line("Progress: 30%", STEP_TIMEOUT)
    herald.publish(sid, "error", {"error": "OCR service unavailable"})
    script.wait_line("Session error: OCR service unavailable", STEP_TIMEOUT)
    assert script.finish(EXIT_TIMEOUT) == 1, script.lines


def test_watch_session_exits_2_when_the_id_is_refused(herald, run_script):
    script = run_script(["not a valid id"])
    script.wait_line("Disconnected from WebSocket", START_TIMEOUT)
    assert script.finish(EXIT_TIMEOUT) == 2, script.lines
    refused = [line for line in script.lines if line.startswith("Subscribe refused")]
    assert refused and "INVALID_SESSION_ID" in refused[0], script.lines


def test_watch_session_needs_a_session_id(herald, run_script):
    script = run_script([])
    code = script.finish(EXIT_TIMEOUT)
    assert code == 2
    assert "usage" in script.stderr
