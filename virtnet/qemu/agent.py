"""A small client of the QEMU guest agent (qemu-ga), over the unix socket of the domain's
<channel type='unix'> whose target is virtio 'org.qemu.guest_agent.0'.

The agent speaks QMP-style JSON, one message per line, with no greeting. A reply may be left on the
line from an earlier client that gave up, so every session starts with `guest-sync-delimited`: the
agent answers it with a 0xFF byte and then the reply carrying our random id, and everything before
that byte is thrown away (what libvirt does).
"""

import json
import random
import socket
import time

from virtnet.errors import HostError

AGENT_CHANNEL = "org.qemu.guest_agent.0"
DELIMITER = 0xFF
_RECV_SIZE = 65536
_MAX_REPLY = 16 << 20  # a guest is not trusted to bound its answers


class AgentError(HostError):
    """The agent did not answer, or answered with an error."""


class AgentClient:
    """One connection to a guest agent; TIMEOUT bounds each command (the agent answers nothing
    while the guest has not started it)."""

    def __init__(self, path, timeout=5.0):
        self.path, self.timeout = path, timeout
        self._sock = None
        self._buffer = bytearray()

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.path)
        except OSError as e:
            sock.close()
            raise AgentError(f"cannot connect to the guest agent's socket {self.path}: {e.strerror or e}") from None
        self._sock = sock
        try:
            self.sync()
        except BaseException:
            self.close()
            raise
        return self

    def close(self):
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self):
        if self._sock is None:
            self.connect()
        return self

    def __exit__(self, *exc_info):
        self.close()

    def sync(self):
        """guest-sync-delimited with a fresh id: what comes before its 0xFF is a stale reply."""
        ident = random.randrange(1, 1 << 31)
        deadline = self._send({"execute": "guest-sync-delimited", "arguments": {"id": ident}})
        while True:
            marker = self._buffer.find(bytes([DELIMITER]))
            if marker >= 0:
                del self._buffer[:marker + 1]
                break
            self._buffer.clear()
            self._buffer += self._recv(deadline, "guest-sync-delimited")
        reply = self._reply(deadline, "guest-sync-delimited")
        if reply.get("return") != ident:
            raise AgentError(f"the guest agent answered guest-sync-delimited with {_short(reply)}, not id {ident}")

    def execute(self, command, arguments=None):
        """Run one agent command; its `return` value. An error reply raises AgentError."""
        request = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        deadline = self._send(request)
        reply = self._reply(deadline, command)
        if "error" in reply:
            error = reply["error"]
            raise AgentError(f"the guest agent refused {command}: {error.get('desc', error)}")
        if "return" not in reply:
            raise AgentError(f"the guest agent answered {command} with {_short(reply)}")
        return reply["return"]

    def _send(self, request):
        deadline = time.monotonic() + self.timeout
        try:
            self._sock.settimeout(self.timeout)
            self._sock.sendall(json.dumps(request).encode() + b"\n")
        except OSError as e:
            raise AgentError(f"cannot send {request['execute']} to the guest agent ({self.path}): "
                             f"{e.strerror or e}") from None
        return deadline

    def _reply(self, deadline, what):
        while True:
            newline = self._buffer.find(b"\n")
            if newline >= 0:
                line = bytes(self._buffer[:newline]).strip()
                del self._buffer[:newline + 1]
                if not line:
                    continue
                try:
                    reply = json.loads(line)
                except ValueError:
                    raise AgentError(f"the guest agent sent what is not JSON: {line[:100]!r}") from None
                if not isinstance(reply, dict):
                    raise AgentError(f"the guest agent sent {_short(reply)} instead of a reply")
                return reply
            if len(self._buffer) > _MAX_REPLY:
                raise AgentError(f"the guest agent's answer to {what} is over {_MAX_REPLY >> 20} MiB")
            self._buffer += self._recv(deadline, what)

    def _recv(self, deadline, what):
        try:
            self._sock.settimeout(max(deadline - time.monotonic(), 0.001))
            chunk = self._sock.recv(_RECV_SIZE)
        except socket.timeout:
            raise AgentError(f"the guest agent did not answer {what} within {self.timeout:g} s (is qemu-ga running "
                             "in the guest?)") from None
        except OSError as e:
            raise AgentError(f"reading the guest agent's answer to {what}: {e.strerror or e}") from None
        if not chunk:
            raise AgentError(f"QEMU closed the guest agent's socket {self.path} before it answered {what}")
        return chunk


def _short(message):
    text = json.dumps(message)
    return text if len(text) <= 200 else text[:200] + "..."
