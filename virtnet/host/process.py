"""Stopping a process virtnet started and does not parent (a daemonised passt or dnsmasq)."""

import os
import select
import signal

from virtnet.errors import HostError


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
