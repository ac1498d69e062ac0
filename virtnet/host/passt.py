"""passt, the user-mode network backend: its command line, starting it before QEMU, stopping it.

`<interface type='user'><backend type='passt'/>` (and the vhost-user flavour, `type='vhostuser'`
with `<backend type='passt'/>`) is served by one passt process per interface, started before
QEMU, listening on a unix socket in the domain's runtime dir; QEMU connects to it as a client
(`-netdev stream`, or a vhost-user chardev). The argv follows libvirt's:

    passt [--vhost-user] --one-off --socket SOCK --pid PIDFILE [--mtu N] [--interface IF]
          [--log-file PATH] [--address A [--netmask PREFIXLEN]]... [--tcp-ports|--udp-ports SPEC]...

Facts about passt that shape this module, true of Debian 12's (0.0~git20230309) and of a current
one (Debian 13's, 0.0~git20250503) unless said otherwise; the tests run both:

- It daemonises itself: the process we start exits 0 once the socket is bound and the pid file
  written, and its stderr carries the reason when it fails. Outside a terminal Debian 12's also
  complains about syslog on every line ("Failed to send N bytes to syslog"); those lines are
  dropped.
- Started as root (we never pass --runas) it ends up as user nobody, and it drops every
  capability but a few (CAP_DAC_OVERRIDE among those dropped) at once. The two differ in what
  they do before changing user: Debian 12's changes to nobody *before* it binds the socket and
  writes the pid file; a current one binds and writes them first, as root without
  CAP_DAC_OVERRIDE, so only the permission bits for uid 0 / gid 0 count. Both open --log-file as
  that capability-less root. Hence the socket and pid file live in a directory of their own
  (DomainPaths.passt_dir) that both identities may write (prepare_dir), and every directory
  above it must be searchable by both (by others, in practice).
- Debian 12's refuses to start without an interface that has an address and a default route in
  its network namespace ("No external routable interface"), unless <source dev> names one; a
  current one only warns.
- Debian 12's has no --vhost-user (passt added it in 2024); that flavour fails with passt's
  message there, and works with a current passt.
- On SIGTERM it leaves its socket and pid file behind; stop() removes them. With --one-off it
  exits by itself when QEMU closes the connection.
- A current passt with --vhost-user also listens on SOCK.repair (for passt-repair, used in
  migration), which it leaves behind as well; start() and stop() remove it like the socket.

Standard library only: xml2argv --standalone uses passt_argv() to print the command to run.
"""

import ipaddress
import os
import pwd
import re
import shlex
import shutil
import stat
import subprocess
import tempfile
import time

from virtnet.errors import HostError
from virtnet.host import process

PASST = "passt"
DEBIAN_PACKAGE = "passt"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 3.0
RUNAS_WHEN_ROOT = "nobody"  # passt's own choice when started as root without --runas
ROOT_GID = 0
_SYSLOG_NOISE = re.compile(r"^Failed to send \d+ bytes to syslog$")


# --- the command line (pure) ------------------------------------------------------------------

def _address(text):
    """An address as libvirt formats it (virSocketAddrFormat): canonical, IPv6 compressed."""
    return str(ipaddress.ip_address(text))


def port_spec(forward):
    """passt's SPEC for one <portForward>, in libvirt's grammar.

    `[ADDR][%DEV]/` prefix when an address or device is given, then `all` (no ranges) or a comma
    list of `[~]START[-END][:TO[-(END+TO-START)]]`.
    """
    spec = ""
    if forward.address:
        spec += _address(forward.address)
    if forward.dev:
        spec += f"%{forward.dev}"
    if spec:
        spec += "/"
    if not forward.ranges:
        return spec + "all"
    items = []
    for r in forward.ranges:
        item = ("~" if r.exclude else "") + str(r.start)
        if r.end:
            item += f"-{r.end}"
        if r.to:
            item += f":{r.to}"
            if r.end:
                item += f"-{r.end + r.to - r.start}"
        items.append(item)
    return spec + ",".join(items)


def passt_argv(iface, socket_path, pid_path, binary=PASST):
    """passt's argv for IFACE (a user or vhostuser interface with <backend type='passt'/>)."""
    argv = [binary]
    if iface.type == "vhostuser":
        argv.append("--vhost-user")
    argv += ["--one-off", "--socket", str(socket_path), "--pid", str(pid_path)]
    if iface.mtu:
        argv += ["--mtu", str(iface.mtu)]
    source_dev = iface.source.dev if iface.type == "user" and iface.source is not None else None
    if source_dev:
        argv += ["--interface", source_dev]
    if iface.backend_logfile:
        argv += ["--log-file", iface.backend_logfile]
    for ip in iface.guest_ips:
        argv += ["--address", _address(ip.address)]
        if ip.prefix and ipaddress.ip_address(ip.address).version == 4:
            argv += ["--netmask", str(ip.prefix)]  # IPv6 takes no prefix (checked on input)
    for forward in iface.port_forwards:
        argv += ["--tcp-ports" if forward.proto == "tcp" else "--udp-ports", port_spec(forward)]
    return argv


def standalone_lines(domain, paths):
    """`# run first: ...` lines for xml2argv --standalone: the passt commands QEMU's line needs."""
    lines = []
    for iface in domain.interfaces:
        if not iface.uses_passt:
            continue
        alias = iface.ids.alias
        argv = passt_argv(iface, paths.passt_socket(alias), paths.passt_pid(alias))
        line = f"mkdir -p {shlex.quote(str(paths.passt_dir))} && {shlex.join(argv)}"
        # A comment ends at a newline: a value holding one would run as its own command. Validation
        # refuses control characters; this guard keeps the comment a comment whatever the caller.
        if any(ord(c) < 0x20 or 0x7f <= ord(c) <= 0x9f for c in line):
            from virtnet.errors import XMLInputError

            raise XMLInputError(f"<interface> {alias}: the passt command line holds a control character "
                                "and cannot be printed as a comment")
        lines.append(f"# run first: {line}\n")
    return lines


# --- running passt ------------------------------------------------------------------------------

def find_passt(name=PASST):
    path = shutil.which(name) if os.sep not in name else (name if os.access(name, os.X_OK) else None)
    if path is None:
        raise HostError(f"passt is not installed ('{name}' not found in PATH), and <backend type='passt'/> "
                        f"needs it: install the Debian package `{DEBIAN_PACKAGE}` (apt install {DEBIAN_PACKAGE})")
    return path


def runs_as_nobody():
    """passt started by root changes to user nobody (we never pass --runas)."""
    return os.geteuid() == 0


def prepare_dir(directory):
    """Create passt's directory; when passt is started by root, make it writable both by user
    nobody and by root without CAP_DAC_OVERRIDE, and make sure nobody can reach it. Returns True
    when it created the directory."""
    directory = os.fspath(directory)
    created = not os.path.isdir(directory)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    if not runs_as_nobody():
        return created
    try:
        nobody = pwd.getpwnam(RUNAS_WHEN_ROOT)
    except KeyError:
        raise HostError(f"passt started as root changes to user '{RUNAS_WHEN_ROOT}', and this host has "
                        "no such user") from None
    # Owner nobody, group root, mode 0770. Debian 12's passt binds the socket and writes the pid
    # file as nobody (the owner bits let it); a current passt does so as uid 0 / gid 0 without
    # CAP_DAC_OVERRIDE, for which a directory owned by nobody falls to the group bits: group root
    # with rwx lets it. No other user gets in (other: ---). Checked with both binaries: nobody's
    # 0700 fails the current passt ("Failed to bind UNIX domain socket: Permission denied"), root's
    # 0700 fails Debian 12's ("PID file open: Permission denied").
    os.chown(directory, nobody.pw_uid, ROOT_GID)
    os.chmod(directory, 0o770)
    # The domain's own directory is 0700; nobody needs to pass through it (not to list it).
    parent = os.path.dirname(directory)
    os.chmod(parent, stat.S_IMODE(os.stat(parent).st_mode) | 0o011)
    # Only nobody's way down is checked: root without CAP_DAC_READ_SEARCH passes directories root
    # owns (all that virtnet creates), and in the rare one it cannot pass the current passt's own
    # "Permission denied" comes with the hint of _explain().
    blocked = _unsearchable_ancestor(os.path.dirname(parent), nobody.pw_uid, nobody.pw_gid)
    if blocked is not None:
        mode = stat.S_IMODE(os.stat(blocked).st_mode)
        raise HostError(
            f"passt started as root runs as user {RUNAS_WHEN_ROOT}, which cannot reach its socket directory "
            f"{directory}: {blocked} (mode {mode:04o}) is not searchable by others; use a --runtime-dir "
            f"under directories others may search (the default /run/virtnet is fine) or `chmod o+x {blocked}`")
    return created


def _unsearchable_ancestor(path, uid, gid):
    """The first directory from / down to PATH that a process of UID and GID (and no capabilities)
    may not search: the owner, group or other bits, whichever apply to it. None when it may."""
    path = os.path.abspath(path)
    chain = []
    while True:
        chain.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    for directory in reversed(chain):  # from / downwards: report the first one that blocks
        st = os.stat(directory)
        bit = stat.S_IXUSR if st.st_uid == uid else stat.S_IXGRP if st.st_gid == gid else stat.S_IXOTH
        if not st.st_mode & bit:
            return directory
    return None


def _explain(stderr_text):
    lines = [line.strip() for line in stderr_text.splitlines()
             if line.strip() and not _SYSLOG_NOISE.match(line.strip())]
    usage = next((n for n, line in enumerate(lines) if line.startswith("Usage:")), None)
    if usage is not None:
        lines = lines[:usage]  # after a bad option passt prints its whole --help
    detail = "; ".join(lines)[-600:] or "no message"
    text = stderr_text
    hint = ""
    if "unrecognized option '--vhost-user'" in text:
        hint = ("; this passt has no vhost-user support (passt added --vhost-user in 2024): install a newer "
                "passt, or use <interface type='user'> with <backend type='passt'/>")
    elif "No external routable interface" in text or "External interface not usable" in text:
        hint = ("; passt needs a network interface with an address and a default route in this network "
                "namespace (or one named with <source dev='IF'/>)")
    elif "PID file open" in text or "Permission denied" in text:
        if runs_as_nobody():
            hint = ("; started by root, passt opens its log file (a current passt also its socket and pid file) "
                    "as root without CAP_DAC_OVERRIDE, so only permission bits let it in; Debian 12's passt "
                    f"writes its socket and pid file as user {RUNAS_WHEN_ROOT}")
        else:
            hint = "; passt runs as this user and must be able to write its socket, pid file and log file"
    return detail + hint


def start(argv, *, socket_path, pid_path, timeout=START_TIMEOUT):
    """Run passt (argv[0] is looked up in PATH); return its pid once it is serving SOCKET_PATH.

    passt daemonises: the process we run exits once the daemon is ready, with the reason on
    stderr when it is not. Raises HostError; no passt is left running when it raises.
    """
    binary = find_passt(argv[0])
    for path in (socket_path, _repair_socket(socket_path), pid_path):
        _unlink(path)
    with tempfile.TemporaryFile() as output:  # a file, not a pipe: the daemon must not hold our pipe
        try:
            result = subprocess.run([binary, *argv[1:]], stdin=subprocess.DEVNULL, stdout=output,
                                    stderr=output, close_fds=True, timeout=timeout)
        except OSError as e:
            raise HostError(f"cannot run {binary}: {e.strerror}") from None
        except subprocess.TimeoutExpired:
            _stop_by_pidfile(pid_path, socket_path)
            raise HostError(f"passt did not get ready within {timeout:g}s ({shlex.join(argv)})") from None
        output.seek(0)
        text = output.read(65536).decode(errors="replace")
    if result.returncode != 0:
        _remove_files(socket_path, _repair_socket(socket_path), pid_path)
        raise HostError(f"passt failed to start (exit status {result.returncode}): {_explain(text)}")
    pid = _read_pid(pid_path)
    if pid is None or not is_running(pid, socket_path):
        _remove_files(socket_path, _repair_socket(socket_path), pid_path)
        raise HostError(f"passt exited right after starting: {_explain(text)}")
    if not stat.S_ISSOCK(_mode(socket_path)):
        stop({"pid": pid, "socket": str(socket_path), "pidfile": str(pid_path)})
        raise HostError(f"passt (pid {pid}) is running but did not create its socket {socket_path}: {_explain(text)}")
    return pid


def stop(entry, *, timeout=STOP_TIMEOUT):
    """Stop the passt of a runtime-record entry ({pid, socket, pidfile[, dir]}) and remove its files.

    A pid that is no longer this passt (exited, or reused by another process) is not signalled.
    Raises HostError only when passt survives SIGKILL.
    """
    socket_path, pid_path = entry["socket"], entry["pidfile"]
    pid = entry.get("pid") or _read_pid(pid_path)
    try:
        if pid and is_running(pid, socket_path):
            process.terminate(pid, timeout, "passt")
    finally:
        _remove_files(socket_path, _repair_socket(socket_path), pid_path)
        if entry.get("dir"):
            try:
                os.rmdir(entry["dir"])  # only once the domain's last passt is gone
            except OSError:
                pass


def _repair_socket(socket_path):
    """Where a current passt in --vhost-user mode listens for passt-repair (its default)."""
    return f"{socket_path}.repair"


def _stop_by_pidfile(pid_path, socket_path):
    try:
        stop({"socket": str(socket_path), "pidfile": str(pid_path)})
    except HostError:
        pass


def is_running(pid, socket_path):
    """True if PID is alive (not a zombie) and is a passt serving SOCKET_PATH."""
    argv = process.command_line(pid) if process.is_alive(pid) else None
    if not argv:
        return False
    return b"passt" in os.path.basename(argv[0]) and os.fsencode(str(socket_path)) in argv


def _read_pid(path, attempts=20):
    for _ in range(attempts):  # written by the daemonising parent just before it exits
        try:
            with open(path) as f:
                text = f.read().strip()
            if text:
                return int(text)
        except (OSError, ValueError):
            pass
        time.sleep(0.01)
    return None


def _mode(path):
    try:
        return os.lstat(path).st_mode
    except OSError:
        return 0


def _unlink(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _remove_files(*paths):
    for path in paths:
        try:
            _unlink(path)
        except OSError:
            pass
