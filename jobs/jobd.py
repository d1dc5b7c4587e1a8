"""jobd.py — write an `exec` handler in a few lines, standard library only.

    #!/usr/bin/env python3
    import jobd

    def run(args, ctx):
        ctx.progress(0.5, "resized")
        return {"width": 64}

    jobd.serve(run)

`serve` runs `run(args, ctx)` for each job and sends what it returns as the
job's result (any JSON value). The same file works both ways jobd runs a
handler:

- one-shot (the default): one job, its args read from stdin, the result
  printed on stdout, exit 0; `Retry` exits 75 (retried with backoff), any
  other exception exits 1 with its message on stderr (retried while
  attempts are left);
- persistent (`[exec.handlers.NAME] mode = "persistent"` in jobd's
  config): jobs arrive one JSON line at a time on stdin and each outcome
  leaves as one JSON line on stdout (docs/reference.md, "Warm handlers").
  Imports and set-up above `serve` then run once, not once per job. While
  `run` runs, `print` goes to stderr, so it cannot break the protocol.

`ctx` has the job's `id`, `attempt`, `queue`, `deadline_ms` (epoch ms) and
`inputs` (a flow's parents or batch counts, else None), and:

- `ctx.progress(fraction, note="")`: how far along the job is, 0 to 1
  (shown by `jobd show` and the dashboard; persistent handlers only);
- `ctx.log(text)`: a `job.log` line in jobd's log (persistent handlers;
  one-shot ones write to stderr).

Raise `Snooze(seconds)` to run the job again later without using an
attempt (persistent handlers; a one-shot one exits 75, a retry), `Retry("why")` for a failure worth retrying and `Fail("why")` for
one retrying cannot fix: a persistent handler's job then goes `dead` at
once; a one-shot handler can only exit 1, which jobd retries while the
job's attempts last.
"""

import json
import os
import sys
import time

__all__ = ["serve", "Fail", "Retry", "Snooze", "Context"]


class Fail(Exception):
    """The job failed for good (persistent: dead at once; one-shot: exit 1)."""


class Retry(Exception):
    """The job failed but may succeed later: jobd retries it with backoff."""


class Snooze(Exception):
    """Not now: run the job again in `seconds`, the attempt not counted
    (persistent handlers; at most `retry.max_snoozes` times)."""

    def __init__(self, seconds):
        super().__init__(f"snooze for {seconds} s")
        self.seconds = seconds


class Context:
    """What a handler knows about the job it runs."""

    def __init__(self, job, send):
        self.id = job.get("id")
        self.attempt = job.get("attempt")
        self.queue = job.get("queue")
        self.deadline_ms = job.get("deadline_ms")
        self.inputs = job.get("inputs")
        self._send = send

    def progress(self, fraction, note=""):
        """Reports how far along the job is (0 to 1) and what it is doing."""
        fraction = min(max(float(fraction), 0.0), 1.0)
        self._send({"progress": fraction, "note": str(note)})

    def log(self, text):
        """A line for jobd's log (a `job.log` event)."""
        self._send({"log": str(text)})

    def remaining(self):
        """Seconds left before the job's deadline (None when unknown)."""
        if self.deadline_ms is None:
            return None
        return max(0.0, self.deadline_ms / 1000.0 - time.time())


def serve(run):
    """Runs `run(args, ctx)` for every job jobd hands this process."""
    if os.environ.get("JOBD_HANDLER_MODE") == "persistent":
        _persistent(run)
    else:
        _one_shot(run)


def _one_shot(run):
    def to_stderr(message):
        if "log" in message:
            print(message["log"], file=sys.stderr, flush=True)

    job = {
        "id": _int(os.environ.get("JOBD_JOB_ID")),
        "attempt": _int(os.environ.get("JOBD_ATTEMPT")),
        "queue": os.environ.get("JOBD_QUEUE"),
    }
    fd = os.environ.get("JOBD_INPUTS_FD")
    if fd:
        with os.fdopen(int(fd)) as inputs:
            job["inputs"] = json.load(inputs)
    text = sys.stdin.read()
    args = json.loads(text) if text.strip() else None
    try:
        result = run(args, Context(job, to_stderr))
    except (Retry, Snooze) as e:
        # A one-shot handler cannot put a job off: it asks for a retry.
        print(str(e), file=sys.stderr)
        sys.exit(75)
    except Fail as e:
        print(str(e), file=sys.stderr)
        sys.exit(1)
    print(json.dumps(result))


def _persistent(run):
    protocol = sys.stdout
    # What the handler prints goes to stderr; only jobd.py writes the protocol.
    sys.stdout = sys.stderr

    def send(message):
        try:
            line = json.dumps(message)
        except (TypeError, ValueError) as e:
            line = json.dumps(
                {"error": f"the result is not JSON: {e}", "retry": False, "id": message.get("id")}
            )
        protocol.write(line + "\n")
        protocol.flush()

    for line in sys.stdin:
        if not line.strip():
            continue
        job = json.loads(line)
        try:
            result = run(job.get("args"), Context(job, send))
            outcome = {"result": result}
        except Snooze as e:
            outcome = {"snooze_ms": max(0, int(e.seconds * 1000))}
        except Fail as e:
            outcome = {"error": str(e) or type(e).__name__, "retry": False}
        except Exception as e:  # noqa: BLE001 — any other failure is retried
            outcome = {"error": f"{type(e).__name__}: {e}", "retry": True}
        # Naming the job lets jobd catch a handler that answers out of step.
        outcome["id"] = job.get("id")
        send(outcome)


def _int(text):
    try:
        return int(text)
    except (TypeError, ValueError):
        return None
