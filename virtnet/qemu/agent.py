"""A small client of the QEMU guest agent (qemu-ga), over the unix socket of the domain's
<channel type='unix'> whose target is virtio 'org.qemu.guest_agent.0'.

The agent speaks QMP-style JSON, one message per line, with no greeting. A reply may be left on the
line from an earlier client that gave up, so every session starts with `guest-sync-delimited`: the
agent answers it with a 0xFF byte and then the reply carrying our random id, and everything before
that byte is thrown away (what libvirt does).
"""

import json
import random

from virtnet.errors import HostError
from virtnet.qemu.jsonlines import JsonLinesClient, abbreviated

AGENT_CHANNEL = "org.qemu.guest_agent.0"
DELIMITER = 0xFF


class AgentError(HostError):
    """The agent did not answer, or answered with an error."""


class AgentClient(JsonLinesClient):
    """One connection to a guest agent; TIMEOUT bounds each command (the agent answers nothing
    while the guest has not started it)."""

    max_message = 16 << 20  # a guest is not trusted to bound its answers

    def __init__(self, path, timeout=5.0):
        super().__init__(path, timeout)

    def connect(self):
        try:
            self._open_socket()
        except OSError as e:
            raise AgentError(f"cannot connect to the guest agent's socket {self.path}: {e.strerror or e}") from None
        try:
            self.sync()
        except BaseException:
            self.close()
            raise
        return self

    def sync(self):
        """guest-sync-delimited with a fresh id: what comes before its 0xFF is a stale reply."""
        ident = random.randrange(1, 1 << 31)
        deadline = self._send_request({"execute": "guest-sync-delimited", "arguments": {"id": ident}})
        while True:
            marker = self._buffer.find(bytes([DELIMITER]))
            if marker >= 0:
                del self._buffer[:marker + 1]
                break
            self._buffer.clear()
            self._buffer += self._recv(deadline, "guest-sync-delimited")
        reply = self._reply(deadline, "guest-sync-delimited")
        if reply.get("return") != ident:
            raise AgentError(f"the guest agent answered guest-sync-delimited with {abbreviated(reply)}, "
                             f"not id {ident}")

    def execute(self, command, arguments=None):
        """Run one agent command; its `return` value. An error reply raises AgentError."""
        request = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        deadline = self._send_request(request)
        reply = self._reply(deadline, command)
        if "error" in reply:
            error = reply["error"]
            raise AgentError(f"the guest agent refused {command}: {error.get('desc', error)}")
        if "return" not in reply:
            raise AgentError(f"the guest agent answered {command} with {abbreviated(reply)}")
        return reply["return"]

    def _send_request(self, request):
        """Send REQUEST; the deadline for its answer."""
        deadline = self._deadline()
        self._send(json.dumps(request).encode() + b"\n", deadline, request["execute"])
        return deadline

    def _reply(self, deadline, what):
        reply = self._read_message(deadline, what)
        if not isinstance(reply, dict):
            raise AgentError(f"the guest agent sent {abbreviated(reply)} instead of a reply")
        return reply

    def _send_error(self, what, exc):
        return AgentError(f"cannot send {what} to the guest agent ({self.path}): {exc.strerror or exc}")

    def _not_json_error(self, line):
        return AgentError(f"the guest agent sent what is not JSON: {line.strip()[:100]!r}")

    def _too_long_error(self, what):
        return AgentError(f"the guest agent's answer to {what} is over {self.max_message >> 20} MiB")

    def _no_answer_error(self, what):
        return AgentError(f"the guest agent did not answer {what} within {self.timeout:g} s (is qemu-ga running "
                          "in the guest?)")

    def _recv_error(self, what, exc):
        return AgentError(f"reading the guest agent's answer to {what}: {exc.strerror or exc}")

    def _closed_error(self, what):
        return AgentError(f"QEMU closed the guest agent's socket {self.path} before it answered {what}")
