"""Start QEMU detached from virtnet, wait for its QMP monitor, and stop it again.

QEMU runs in its own session so it outlives the `virtnet start` process; later commands find it
again by pid and QMP socket path. Observed with QEMU 7.2: QEMU replaces whatever file sits at
the socket path when it binds, and removes the socket when it exits through `quit` or SIGTERM.
After SIGKILL the socket file stays behind, so stop() and a failed launch() remove it.
"""

import errno
import os
import select
import signal
import socket
import stat
import subprocess
import time
from dataclasses import dataclass, field

from virtnet.errors import HostError
from virtnet.host.process import command_line, is_alive, process_state
from virtnet.qemu.machine import qmp_chardev_value
from virtnet.qemu.qmp import QMPClient

_POLL_INTERVAL = 0.01
_MAX_POLL_INTERVAL = 0.05


@dataclass
class Launched:
    pid: int
    qmp: QMPClient
    # Held so Python neither warns about nor reaps the child behind stop()'s back.
    process: subprocess.Popen = field(default=None, repr=False)


def launch(argv, *, pass_fds, qmp_path, log_path, timeout=15.0, env=None):
    """Start QEMU (argv already holds qmp_options) and return once QMP is ready. ENV: variables set
    in QEMU's environment on top of this process's own (<qemu:env>, a clock's TZ).

    Raises HostError if QEMU exits first (quoting its own error lines from log_path) or does
    not answer within timeout; no QEMU is left running when it raises.
    """
    if _socket_answers(qmp_path):
        raise HostError(f"QMP socket {qmp_path} is already served by a running process")
    log_offset = _file_size(log_path)
    deadline = time.monotonic() + timeout
    try:
        with open(log_path, "ab") as log, open(os.devnull, "rb") as devnull:
            process = subprocess.Popen(
                argv,
                stdin=devnull,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=tuple(pass_fds),
                close_fds=True,
                env={**os.environ, **env} if env else None,
                start_new_session=True,
            )
    except OSError as exc:
        raise HostError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None

    try:
        qmp = _wait_for_qmp(process, qmp_path, deadline, timeout, log_path, log_offset)
    except BaseException:
        _kill_child(process)
        _remove_stale_socket(qmp_path)
        raise
    return Launched(pid=process.pid, qmp=qmp, process=process)


def _wait_for_qmp(process, qmp_path, deadline, timeout, log_path, log_offset):
    interval = _POLL_INTERVAL
    while True:
        if process.poll() is not None:
            raise _exited_error(process, log_path, log_offset)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise HostError(
                f"QEMU did not answer on {qmp_path} within {timeout:g}s; killed it (log: {log_path})"
            )
        client = QMPClient(qmp_path, timeout=remaining)
        try:
            client.connect()
            client.timeout = timeout
            return client
        except OSError as exc:
            # The socket is not bound yet (or a stale one from an earlier run): retry.
            if exc.errno not in (errno.ENOENT, errno.ECONNREFUSED):
                raise HostError(f"cannot connect to QMP {qmp_path}: {exc.strerror or exc}") from None
        except HostError as exc:
            # QEMU accepted and then died or stalled mid-handshake; prefer its own words.
            try:
                process.wait(0.5)
            except subprocess.TimeoutExpired:
                raise HostError(
                    f"QEMU did not complete the QMP handshake on {qmp_path} ({exc.message}); killed it"
                ) from None
            raise _exited_error(process, log_path, log_offset) from None
        time.sleep(interval)
        interval = min(interval * 1.5, _MAX_POLL_INTERVAL)


def _exited_error(process, log_path, log_offset):
    status = process.returncode
    if status < 0:
        how = f"was killed by {signal.Signals(-status).name}"
    else:
        how = f"exited with status {status}"
    reason = _qemu_error_lines(log_path, log_offset, os.path.basename(process.args[0]))
    if not reason:
        reason = f"no message (log: {log_path})"
    return HostError(f"QEMU {how} before QMP was ready: {reason}")


def _qemu_error_lines(log_path, log_offset, program):
    """This run's lines from the log; QEMU prefixes its errors with its program name."""
    try:
        with open(log_path, "rb") as log:
            log.seek(log_offset)
            text = log.read(65536).decode(errors="replace")
    except OSError:
        return ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    own = [line for line in lines if line.startswith(program + ":")]
    return "; ".join(own or lines[-3:])


def find(qmp_path):
    """The pid of the QEMU serving QMP_PATH, found by its command line, or None. For a start that
    was killed before it could record QEMU's pid: the QMP socket path names the domain's QEMU."""
    wanted = qmp_chardev_value(qmp_path).encode()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and wanted in (command_line(entry) or ()):
            return int(entry)
    return None


def stop(pid, qmp_path, *, timeout=5.0):
    """Stop QEMU: QMP quit, then SIGTERM, then SIGKILL, each given `timeout` seconds.

    Returns once the process has exited with all its threads, so its fds (taps) are closed; our
    own child is also reaped. A pid that no longer belongs to this QEMU is left alone; with PID
    None, the QEMU is looked up by its QMP socket path. Raises HostError only if the process
    survives SIGKILL.
    """
    if pid is None:
        pid = find(qmp_path)
        if pid is None:
            _remove_stale_socket(qmp_path)
            return
    # A pidfd pins the process we checked, so a recycled pid can never receive our signals.
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        pidfd = None
    if pidfd is not None:
        try:
            if is_running(pid, qmp_path):
                _quit_then_signal(pidfd, pid, qmp_path, timeout)
            elif process_state(pid) == "Z":
                _exited(pidfd, timeout)  # already dying: let its other threads finish
        finally:
            os.close(pidfd)
    _reap(pid)
    _remove_stale_socket(qmp_path)


def _quit_then_signal(pidfd, pid, qmp_path, timeout):
    if _quit_over_qmp(qmp_path, timeout) and _exited(pidfd, timeout):
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            signal.pidfd_send_signal(pidfd, sig)
        except ProcessLookupError:
            pass  # exited meanwhile
        if _exited(pidfd, timeout):
            return
    raise HostError(f"QEMU pid {pid} survived SIGKILL for {timeout:g}s")


def _exited(pidfd, timeout):
    """True once the process and all its threads have exited (the pidfd turns readable)."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(timeout * 1000))


def _quit_over_qmp(qmp_path, timeout):
    """Ask QEMU to quit; True once the command went out (QEMU may close before replying).

    False when the monitor does not greet us, e.g. because another client holds it: QEMU serves
    one client at a time, so callers should close their own connection before stop().
    """
    try:
        qmp = QMPClient(qmp_path, timeout=timeout).connect()
    except (OSError, HostError):
        return False
    try:
        qmp.execute("quit")
    except HostError:
        pass
    finally:
        qmp.close()
    return True


def is_running(pid, qmp_path):
    """True if pid is alive (not a zombie) and is the QEMU serving qmp_path."""
    if not is_alive(pid):
        return False
    # Compare whole arguments: a substring test would match /run/x.sock against /run/x.sock2.
    return qmp_chardev_value(qmp_path).encode() in (command_line(pid) or ())


def _reap(pid):
    """Collect pid's exit status if it is our exited child, so it stops being a zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass  # not our child (started by an earlier virtnet) or already reaped


def _kill_child(process):
    if process.poll() is None:
        process.kill()
    process.wait()


def _socket_answers(path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(1.0)
        sock.connect(path)
        return True
    except OSError:
        return False
    finally:
        sock.close()


def _remove_stale_socket(path):
    """Remove a socket file that nobody listens on any more (left behind by SIGKILL)."""
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            return
    except FileNotFoundError:
        return
    if not _socket_answers(path):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _file_size(path):
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0
