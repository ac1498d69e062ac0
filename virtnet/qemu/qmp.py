"""A small synchronous QMP client over a unix socket.

QMP speaks one JSON object per line. Replies to our commands may be preceded by asynchronous
events (SHUTDOWN before the reply to `quit`, RESET before the reply to `system_reset`), so a
reply is the first message carrying our command id; events are kept in `events` for callers who
care and otherwise skipped.
"""

import collections
import json
import socket
import time

from virtnet.errors import HostError
from virtnet.qemu.jsonlines import JsonLinesClient, abbreviated


class QMPClient(JsonLinesClient):
    """One QMP connection. Not thread safe; QEMU serves a single client per monitor socket."""

    def __init__(self, path, timeout=10.0):
        super().__init__(path, timeout)
        self.greeting = None
        self.events = collections.deque(maxlen=256)
        self._next_id = 0

    def connect(self):
        """Connect, read the greeting and leave capabilities negotiation mode."""
        deadline = self._deadline()
        self._open_socket()
        try:
            greeting = self._read_message(deadline, "the greeting")
            if "QMP" not in greeting:
                raise HostError(f"QMP {self.path}: expected a greeting, got {abbreviated(greeting)}")
            self.greeting = greeting
            self.execute("qmp_capabilities")
        except BaseException:
            self.close()
            raise
        return self

    def execute(self, command, arguments=None, fds=()):
        """Run one command and return its `return` value; an error reply raises HostError. FDS are
        passed along with the command (SCM_RIGHTS), as `getfd` wants its descriptor."""
        if self._sock is None:
            raise HostError(f"QMP {self.path}: not connected")
        self._next_id += 1
        request_id = f"virtnet-{self._next_id}"
        request = {"execute": command, "id": request_id}
        if arguments:
            request["arguments"] = arguments
        deadline = self._deadline()
        self._send(json.dumps(request).encode() + b"\n", deadline, command, fds)
        while True:
            reply = self._read_message(deadline, f"the reply to {command!r}")
            if "event" in reply:
                self.events.append(reply)
                continue
            # A reply without our id answers an earlier command that timed out; drop it.
            if reply.get("id") != request_id:
                continue
            if "error" in reply:
                error = reply["error"]
                exc = HostError(f"QMP {command}: {error.get('desc', error)}")
                exc.qmp_class = error.get("class")
                raise exc
            if "return" not in reply:
                raise HostError(f"QMP {command}: unexpected reply {abbreviated(reply)}")
            return reply["return"]

    def wait_event(self, name, match, timeout):
        """The first event NAME whose data MATCH(data) accepts, among those already received and
        those arriving within TIMEOUT seconds; None when none came in time."""
        for event in list(self.events):
            if event.get("event") == name and match(event.get("data") or {}):
                self.events.remove(event)
                return event
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                message = self._read_message(deadline, f"the event {name}")
            except HostError:
                if time.monotonic() >= deadline:
                    return None
                raise
            if "event" not in message:
                continue  # a late reply to a command that timed out
            if message["event"] == name and match(message.get("data") or {}):
                return message
            self.events.append(message)
        return None

    def _send_error(self, what, exc):
        if isinstance(exc, socket.timeout):
            return HostError(f"QMP {self.path}: timed out sending {what!r}")
        return HostError(f"QMP {self.path}: cannot send {what!r}: {exc.strerror or exc}")

    def _not_json_error(self, line):
        return HostError(f"QMP {self.path}: not JSON: {line[:200]!r}")

    def _no_answer_error(self, what):
        return HostError(f"QMP {self.path}: no answer within {self.timeout:g}s waiting for {what}")

    def _recv_error(self, what, exc):
        return HostError(f"QMP {self.path}: {exc.strerror or exc} waiting for {what}")

    def _closed_error(self, what):
        return HostError(f"QMP {self.path}: QEMU closed the connection before {what}")
