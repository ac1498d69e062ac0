"""`virtnet console NAME`: attach the terminal to a running guest's serial console, as `virsh console`.

The console is found over QMP: query-chardev gives the host side of the character device (a pty's
/dev/pts/N, which only QEMU knows, or a unix socket QEMU listens on). By default it is the domain's
first serial port (what a serial <console> also uses), else its first virtio console; --devname
names another by alias (serial1, console0, channel0, a ua- alias). The bytes are relayed both ways
unchanged; Ctrl+] (byte 0x1d) typed on standard input ends the session (ESCAPE), as in virsh. On a
terminal, standard input is put in raw mode for the session (so Ctrl+C, Ctrl+D and the arrow keys
reach the guest) and restored afterwards; otherwise (a pipe, a file) the bytes are relayed as they
come and the end of standard input also ends the session.

One session at a time: a lock in the domain's runtime directory (console.lock) refuses a second.
Nothing here needs privileges: the owner of a domain can open its pty (QEMU created it as that
user) and connect to its sockets.
"""

import contextlib
import errno
import fcntl
import os
import select
import socket
import sys
from pathlib import Path

from virtnet.errors import HostError

ESCAPE = 0x1D  # Ctrl+]
ESCAPE_NAME = "^] (Ctrl + ])"
_CHUNK = 65536
_MAX_PENDING = 1 << 20  # bytes typed but not yet taken by the guest before stdin is no longer read


class Console:
    """Where a domain's console is: ALIAS (serial0, …), LABEL (QEMU's chardev id), KIND ('pty' or
    'unix') and PATH; RUNTIME_DIR: the domain's runtime folder (its session lock lives there)."""

    def __init__(self, alias, label, kind, path, runtime_dir):
        self.alias, self.label, self.kind, self.path = alias, label, kind, path
        self.runtime_dir = runtime_dir


def _candidates(domain):
    """[(alias, chardev)] of the character devices a console can attach to, the default first: the
    serial ports, then the virtio consoles, then the channels (named with --devname only). QEMU's
    id of each chardev is 'char' + alias."""
    from virtnet.qemu.chardevs import chardev_aliases

    serials, channels, consoles = chardev_aliases(domain)
    return serials + consoles + channels


def _choose(name, domain, devname):
    candidates = _candidates(domain)
    if devname is None:
        usable = [(alias, c) for alias, c in candidates if c.kind != "channel"]
        if not usable:
            raise HostError(f"domain '{name}' has no console: give it a <serial type='pty'> (a <console "
                            "type='pty'> goes with it)")
        return usable[0]
    for alias, chardev in candidates:
        if devname in (alias, "char" + alias):
            return alias, chardev
    names = ", ".join(alias for alias, _ in candidates) or "none"
    raise HostError(f"domain '{name}' has no character device '{devname}' (it has: {names})")


def find(store, name, devname=None):
    """The Console of running domain NAME (--devname DEVNAME, else its first console)."""
    from virtnet import livestate, runner

    with store.lock():
        state = runner.require_running(store, name, "attach to its console")
        domain = livestate.live_domain(store, name)
    alias, chardev = _choose(name, domain, devname)
    what = f"<{chardev.kind} type='{chardev.type}'> ({alias})"
    if chardev.type == "file":
        raise HostError(f"domain '{name}': {what} writes to the file {chardev.source_path}; read it there "
                        f"(e.g. `tail -f {chardev.source_path}`), or use <{chardev.kind} type='pty'> to attach")
    if chardev.type == "unix" and chardev.source_mode != "bind" and chardev.source_path:
        raise HostError(f"domain '{name}': QEMU connects to {chardev.source_path} itself for {what}; attach to "
                        "the program listening there, or use <source mode='bind'> to attach with virtnet")
    if chardev.type not in ("pty", "unix"):
        raise HostError(f"domain '{name}': {what} cannot be attached to; use <{chardev.kind} type='pty'>")
    label = "char" + alias
    with runner.monitor(name, state) as qmp:
        devices = qmp.execute("query-chardev")
    filename = next((d.get("filename", "") for d in devices if d.get("label") == label), None)
    if filename is None:
        raise HostError(f"domain '{name}': QEMU has no character device '{label}' (was it started by another "
                        "virtnet?)")
    if chardev.type == "pty":
        if not filename.startswith("pty:"):
            raise HostError(f"domain '{name}': QEMU reports '{filename}' for {label}, not a pty")
        return Console(alias, label, "pty", filename[len("pty:"):], state.runtime_dir)
    return Console(alias, label, "unix", chardev.source_path or _unix_path(filename), state.runtime_dir)


def _unix_path(filename):
    # QEMU 7.2 reports a listening unix socket as "unix:PATH,server=on".
    return filename[len("unix:"):].split(",server", 1)[0] if filename.startswith("unix:") else filename


def _open(name, console):
    """A non-blocking descriptor on the console's host side."""
    if console.kind == "pty":
        try:
            fd = os.open(console.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            raise HostError(f"domain '{name}': cannot open its console {console.path}: {e.strerror}") from None
        if not os.isatty(fd):
            os.close(fd)
            raise HostError(f"domain '{name}': its console {console.path} is not a terminal")
        _make_raw(fd)  # as QEMU leaves it; undo what an earlier program may have set
        return fd, None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.connect(console.path)
    except OSError as e:
        sock.close()
        raise HostError(f"domain '{name}': cannot connect to its console {console.path}: {e.strerror}") from None
    sock.setblocking(False)
    return sock.fileno(), sock


def _make_raw(fd):
    import termios
    import tty

    with contextlib.suppress(termios.error):
        tty.setraw(fd)


@contextlib.contextmanager
def _session_lock(name, runtime_dir):
    """Hold the domain's console lock; refuse when another session holds it."""
    path = Path(runtime_dir) / "console.lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise HostError(f"domain '{name}': cannot open {path}: {e.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            by = f" (virtnet pid {holder})" if holder.isdigit() else ""
            raise HostError(f"the console of domain '{name}' is already in use by another session{by}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def _raw_terminal(fd):
    """Standard input in raw mode while the block runs, when it is a terminal."""
    import termios
    import tty

    if not os.isatty(fd):
        yield False
        return
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@contextlib.contextmanager
def _signals_end_session():
    """SIGTERM and SIGHUP end the session through the normal exit path, so the terminal is restored."""
    import signal

    def end(signum, frame):
        raise SystemExit(128 + signum)

    saved = {sig: signal.signal(sig, end) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def relay(device, stdin=0, stdout=1, escape=ESCAPE):
    """Copy DEVICE (a non-blocking descriptor) to STDOUT and STDIN to DEVICE until ESCAPE is read on
    STDIN ('escape'), STDIN ends ('eof') or DEVICE closes ('closed', e.g. QEMU exited)."""
    pending = bytearray()  # typed, not yet taken by the device
    stdin_open = True
    poller = select.poll()
    while True:
        poller.register(device, select.POLLIN | (select.POLLOUT if pending else 0))
        if stdin_open and len(pending) < _MAX_PENDING:
            poller.register(stdin, select.POLLIN)
        else:
            with contextlib.suppress(KeyError):
                poller.unregister(stdin)
        events = dict(poller.poll())
        if device in events:
            flags = events[device]
            if flags & (select.POLLIN | select.POLLHUP | select.POLLERR):
                data = _read(device)
                if data is None:
                    return "closed"
                _write_all(stdout, data)
            if flags & select.POLLOUT and pending:
                try:
                    del pending[:os.write(device, pending)]
                except BlockingIOError:
                    pass
                except OSError:
                    return "closed"
        if stdin in events:
            data = os.read(stdin, _CHUNK)
            if not data:
                stdin_open = False
                if not pending:
                    return "eof"
                continue
            cut = data.find(bytes([escape]))
            if cut >= 0:
                pending += data[:cut]
                _drain(device, pending)
                return "escape"
            pending += data
        if not stdin_open and not pending:
            return "eof"


def _read(fd):
    """Bytes available on FD, b'' when none right now, None once the other side closed."""
    try:
        data = os.read(fd, _CHUNK)
    except BlockingIOError:
        return b""
    except OSError as e:
        if e.errno in (errno.EIO, errno.ECONNRESET):  # a pty whose master (QEMU) is gone
            return None
        raise
    return data if data else None


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            select.select([], [fd], [])


def _drain(fd, pending, timeout=1.0):
    """Hand what was typed before the escape to the device, for at most TIMEOUT seconds."""
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    while pending and poller.poll(timeout * 1000):
        try:
            del pending[:os.write(fd, pending)]
        except BlockingIOError:
            continue
        except OSError:
            return


def attach(store, name, devname=None):
    """The `console` verb: find, lock, open, relay. Returns the exit status."""
    console = find(store, name, devname)
    with _session_lock(name, console.runtime_dir):
        fd, sock = _open(name, console)
        try:
            sys.stderr.write(f"Connected to domain '{name}' ({console.alias}, {console.path})\n"
                             f"Escape character is {ESCAPE_NAME}\n")
            sys.stderr.flush()
            sys.stdout.flush()
            stdin = sys.stdin.fileno()
            with _raw_terminal(stdin) as raw, _signals_end_session():
                outcome = relay(fd, stdin, sys.stdout.fileno())
            if raw:
                sys.stderr.write("\n")
            if outcome == "closed":
                sys.stderr.write(f"Disconnected from domain '{name}': its console closed (has the domain "
                                 "stopped?)\n")
        finally:
            if sock is not None:
                sock.close()
            else:
                os.close(fd)
    return 0

