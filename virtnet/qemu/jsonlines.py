"""The part QMP and the guest agent share: a unix stream socket carrying one JSON message per line,
each exchange bounded by a deadline. What is their own (QMP's greeting and events, the agent's
guest-sync-delimited) stays in their modules, and so does the wording of their errors."""

import json
import socket
import time

_RECV_SIZE = 65536


class JsonLinesClient:
    """One connection to PATH; TIMEOUT bounds each exchange. Not thread safe. A client returns the
    exception to raise from _send_error, _not_json_error, _no_answer_error, _recv_error and
    _closed_error."""

    max_message = None  # a bound on one message's bytes; a client that sets it words _too_long_error

    def __init__(self, path, timeout):
        self.path, self.timeout = path, timeout
        self._sock = None
        self._buffer = bytearray()

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

    def _deadline(self):
        """When an exchange that starts now must be over."""
        return time.monotonic() + self.timeout

    def _open_socket(self):
        """Connect to PATH; a failure raises what socket.connect raised."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.path)
        except BaseException:
            sock.close()
            raise
        self._sock = sock

    def _send(self, data, deadline, what, fds=()):
        try:
            self._sock.settimeout(_remaining(deadline))
            if fds:  # the descriptors ride on the first byte; the rest follows as usual
                sent = socket.send_fds(self._sock, [data], list(fds))
                data = data[sent:]
            self._sock.sendall(data)
        except OSError as exc:
            raise self._send_error(what, exc) from None

    def _read_message(self, deadline, what):
        """The next JSON message, reading as many chunks as it takes."""
        while True:
            newline = self._buffer.find(b"\n")
            if newline >= 0:
                line = bytes(self._buffer[:newline])
                del self._buffer[:newline + 1]
                if not line.strip():
                    continue
                try:
                    return json.loads(line)
                except ValueError:
                    raise self._not_json_error(line) from None
            if self.max_message is not None and len(self._buffer) > self.max_message:
                raise self._too_long_error(what)
            self._buffer += self._recv(deadline, what)

    def _recv(self, deadline, what):
        try:
            self._sock.settimeout(_remaining(deadline))
            chunk = self._sock.recv(_RECV_SIZE)
        except socket.timeout:
            raise self._no_answer_error(what) from None
        except OSError as exc:
            raise self._recv_error(what, exc) from None
        if not chunk:
            raise self._closed_error(what)
        return chunk


def _remaining(deadline):
    # settimeout(0) would mean non-blocking; keep a tiny positive floor so expiry reads as timeout.
    return max(deadline - time.monotonic(), 0.001)


def abbreviated(message):
    """MESSAGE as JSON, cut to fit in an error message."""
    text = json.dumps(message)
    return text if len(text) <= 200 else text[:200] + "..."
