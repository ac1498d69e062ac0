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

_RECV_SIZE = 65536


class QMPClient:
    """One QMP connection. Not thread safe; QEMU serves a single client per monitor socket."""

    def __init__(self, path, timeout=10.0):
        self.path = path
        self.timeout = timeout
        self.greeting = None
        self.events = collections.deque(maxlen=256)
        self._sock = None
        self._buffer = bytearray()
        self._next_id = 0

    def connect(self):
        """Connect, read the greeting and leave capabilities negotiation mode."""
        deadline = time.monotonic() + self.timeout
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.path)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        try:
            greeting = self._read_message(deadline, "the greeting")
            if "QMP" not in greeting:
                raise HostError(f"QMP {self.path}: expected a greeting, got {_short(greeting)}")
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
        deadline = time.monotonic() + self.timeout
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
                raise HostError(f"QMP {command}: unexpected reply {_short(reply)}")
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

    def close(self):
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._buffer.clear()

    def __enter__(self):
        if self._sock is None:
            self.connect()
        return self

    def __exit__(self, *exc_info):
        self.close()

    def _send(self, data, deadline, what, fds=()):
        try:
            self._sock.settimeout(_remaining(deadline))
            if fds:  # the descriptors ride on the first byte; the rest follows as usual
                sent = socket.send_fds(self._sock, [data], list(fds))
                data = data[sent:]
            self._sock.sendall(data)
        except socket.timeout:
            raise HostError(f"QMP {self.path}: timed out sending {what!r}") from None
        except OSError as exc:
            raise HostError(f"QMP {self.path}: cannot send {what!r}: {exc.strerror or exc}") from None

    def _read_message(self, deadline, what):
        """Return the next complete JSON line, reading as many chunks as it takes."""
        while True:
            newline = self._buffer.find(b"\n")
            if newline >= 0:
                line = bytes(self._buffer[:newline])
                del self._buffer[: newline + 1]
                if not line.strip():
                    continue
                try:
                    return json.loads(line)
                except ValueError:
                    raise HostError(f"QMP {self.path}: not JSON: {line[:200]!r}") from None
            self._buffer += self._recv(deadline, what)

    def _recv(self, deadline, what):
        try:
            self._sock.settimeout(_remaining(deadline))
            chunk = self._sock.recv(_RECV_SIZE)
        except socket.timeout:
            raise HostError(
                f"QMP {self.path}: no answer within {self.timeout:g}s waiting for {what}"
            ) from None
        except OSError as exc:
            raise HostError(f"QMP {self.path}: {exc.strerror or exc} waiting for {what}") from None
        if not chunk:
            raise HostError(f"QMP {self.path}: QEMU closed the connection before {what}")
        return chunk


def _remaining(deadline):
    # settimeout(0) would mean non-blocking; keep a tiny positive floor so expiry reads as timeout.
    return max(deadline - time.monotonic(), 0.001)


def _short(message):
    text = json.dumps(message)
    return text if len(text) <= 200 else text[:200] + "..."
