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
  Imports and set-up above `serve` then run once, not once per job.

Either way `serve` first moves jobd's stdin and stdout to private
descriptors and points descriptor 0 at /dev/null and 1 at stderr, so
nothing the handler does (a `print`, a C library writing to its stdout, a
child process it starts, a read of stdin) can reach or take the protocol.
A result JSON cannot hold (NaN, an object) fails the job, as `Fail` does.

`ctx` has the job's `id`, `attempt`, `queue`, `deadline_ms` (epoch ms) and
`inputs` (a flow's parents or batch counts, else None), and:

- `ctx.progress(fraction, note="")`: how far along the job is, 0 to 1
  (shown by `jobd show` and the dashboard);
- `ctx.log(text)`: a `job.log` line in jobd's log.

A one-shot handler sends those on jobd's messages descriptor
(`JOBD_MESSAGES_FD`), apart from its result on stdout.

Raise `Snooze(seconds)` to run the job again later without using an
attempt (persistent handlers; a one-shot one exits 75, a retry), `Retry("why")` for a failure worth retrying and `Fail("why")` for
one retrying cannot fix: a persistent handler's job then goes `dead` at
once; a one-shot handler can only exit 1, which jobd retries while the
job's attempts last.
"""

import json
import math
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
        fraction = float(fraction)
        if math.isnan(fraction):
            raise ValueError("progress is NaN, not a number from 0 to 1")
        fraction = min(max(fraction, 0.0), 1.0)
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
    jobs, answers = _private_protocol()
    if os.environ.get("JOBD_HANDLER_MODE") == "persistent":
        _persistent(run, jobs, answers)
    else:
        _one_shot(run, jobs, answers)


def _private_protocol():
    """Moves jobd's stdin and stdout to descriptors of their own (not
    inherited by child processes) and points 0 at /dev/null and 1 at
    stderr: `sys.stdout` swapped alone would leave a C library, `os.write`
    and every child process writing into the protocol."""
    sys.stdout.flush()
    jobs = os.fdopen(os.dup(0), "r", encoding="utf-8")
    answers = os.fdopen(os.dup(1), "w", encoding="utf-8")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    # Now writing to stderr: keep its lines in step with stderr's own.
    sys.stdout.reconfigure(line_buffering=True)
    return jobs, answers


def _json(value):
    """The value as JSON, refusing what JSON cannot hold (NaN, infinity)
    instead of writing it anyway as Python's json module would."""
    return json.dumps(value, allow_nan=False)


def _messages():
    """How a one-shot handler sends progress and log lines: on jobd's
    messages descriptor, moved to one of its own so that child processes do
    not hold it open; log lines go to stderr under a jobd without one."""
    fd = os.environ.get("JOBD_MESSAGES_FD")
    if not fd:
        def to_stderr(message):
            if "log" in message:
                print(message["log"], file=sys.stderr, flush=True)

        return to_stderr
    private = os.dup(int(fd))
    os.close(int(fd))
    out = os.fdopen(private, "w", encoding="utf-8")

    def send(message):
        out.write(_json(message) + "\n")
        out.flush()

    return send


def _one_shot(run, jobs, answers):
    send = _messages()
    job = {
        "id": _int(os.environ.get("JOBD_JOB_ID")),
        "attempt": _int(os.environ.get("JOBD_ATTEMPT")),
        "queue": os.environ.get("JOBD_QUEUE"),
    }
    fd = os.environ.get("JOBD_INPUTS_FD")
    if fd:
        with os.fdopen(int(fd)) as inputs:
            job["inputs"] = json.load(inputs)
    text = jobs.read()
    args = json.loads(text) if text.strip() else None
    try:
        result = run(args, Context(job, send))
    except (Retry, Snooze) as e:
        # A one-shot handler cannot put a job off: it asks for a retry.
        print(str(e), file=sys.stderr)
        sys.exit(75)
    except Fail as e:
        print(str(e), file=sys.stderr)
        sys.exit(1)
    try:
        line = _json(result)
    except (TypeError, ValueError) as e:
        print(f"the result is not JSON: {e}", file=sys.stderr)
        sys.exit(1)
    answers.write(line + "\n")
    answers.flush()


def _persistent(run, jobs, answers):
    def send(message):
        answers.write(_json(message) + "\n")
        answers.flush()

    for line in jobs:
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
        try:
            send(outcome)
        except (TypeError, ValueError) as e:
            send({"error": f"the result is not JSON: {e}", "retry": False, "id": job.get("id")})


def _int(text):
    try:
        return int(text)
    except (TypeError, ValueError):
        return None
