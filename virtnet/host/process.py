"""Processes virtnet started and does not parent (QEMU, a daemonised passt or dnsmasq): what /proc
says about them, and stopping them."""

import os
import select
import signal

from virtnet.errors import HostError


def process_state(pid):
    """The one-letter state of process PID (R, S, Z, ...), or None if there is no such process."""
    fields = _stat_fields(pid)
    return fields[0].decode() if fields else None


def is_alive(pid):
    """True if process PID exists and has not exited (a zombie has)."""
    state = process_state(pid)
    return state is not None and state not in "ZX"


def start_time(pid):
    """When process PID started, in clock ticks since boot, or None if there is no such process."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields and len(fields) > 19 else None


def command_line(pid):
    """The arguments process PID runs with, as bytes, or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return None


def _stat_fields(pid):
    """The fields of /proc/PID/stat after the command name (the state first), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read()
    except OSError:
        return None
    # The command name, in parentheses, may itself hold spaces and ')': it ends at the last one.
    _, closing, rest = text.rpartition(b")")
    return rest.split() if closing else None


def terminate(pid, timeout, what):
    """SIGTERM, then SIGKILL, to process PID (WHAT names it in the error), each given TIMEOUT
    seconds. A pidfd pins the process, so a pid reused meanwhile never gets a signal; an exited
    process (a zombie nobody reaps counts) is done."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                signal.pidfd_send_signal(pidfd, sig)
            except ProcessLookupError:
                return
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)  # readable once the process has exited
            if poller.poll(timeout * 1000):
                return
        raise HostError(f"{what} pid {pid} survived SIGKILL for {timeout:g}s")
    finally:
        os.close(pidfd)
