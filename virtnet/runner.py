"""Starting and destroying domains: plan → executor → QEMU, the live state, and teardown.

start records the live state (livestate.py): the live XML and a runtime record whose teardown
actions are the inverses the executor recorded while setting up. destroy, and the reaping of a
domain whose QEMU died, run exactly those actions through the same executor.
"""

import contextlib
import os
import re
import select
import shutil
import signal
import stat
import sys
import time
from pathlib import Path

from virtnet import livestate
from virtnet.domains import load_defined
from virtnet.errors import HostError, StoreError

UNIX_PATH_MAX = 107  # sun_path holds 108 bytes including the terminating NUL


def _warn(message):
    print(f"virtnet: warning: {message}", file=sys.stderr)


def _teardown(store, name, state):
    """Undo a running domain from its live state; the record and runtime files go whatever happens."""
    from virtnet.host.executor import Executor

    if state.netns and not os.path.exists(f"/run/netns/{state.netns}"):
        # `ip netns del` removed the name: stopping QEMU (pid and QMP socket suffice) frees the
        # namespace, and its taps go with it.
        errors = Executor(None).teardown(state.teardown)
    else:
        from virtnet.host.netlink import Netlink

        from virtnet.host import netns

        with netns.inside_if_elsewhere(state.netns), Netlink() as nl:
            errors = Executor(nl).teardown(state.teardown)
    livestate.forget(store, name)
    shutil.rmtree(Path(state.runtime_dir), ignore_errors=True)
    _forget_transient(store, name)
    return errors


def _forget_transient(store, name):
    """A domain started by create goes with its runtime state: its definition is removed while it
    is still the one create wrote (livestate.is_transient), and its marker in any case. Needs the
    store's lock."""
    if livestate.is_transient(store, name):
        with contextlib.suppress(StoreError):
            store.remove_domain(name)
    livestate.unmark_transient(store, name)


def is_alive(state):
    """A started domain: its QEMU runs. A start in progress: the process starting it runs."""
    if state.starting:
        return state.starter_alive()
    from virtnet.qemu.launch import is_running

    return is_running(state.pid, state.qmp)


def reap_dead(store):
    """Clean up after domains whose QEMU exited, or whose start was killed. Call under the store lock.

    A guest that powered itself off (QEMU exited through its normal path: see exit_reason) is
    cleaned up quietly, as libvirt's domain simply shows shut off; a QEMU that crashed or was killed
    and an interrupted start are each reported in one warning line. A damaged runtime record is
    skipped with a one-line warning naming its file, rather than failing for every domain; returns
    the names of the records skipped."""
    store.remove_runtime_temporaries()  # a record write cut short by a kill
    damaged = []
    for name in store.running_names():
        state, problem = livestate.load_or_skip(store, name)
        if problem is not None:
            _warn(problem)
            damaged.append(name)
            continue
        if state is None or is_alive(state):
            continue
        reason = None if state.starting else exit_reason(state)
        errors = _teardown(store, name, state)
        problems = f" (with problems: {'; '.join(errors)})" if errors else ""
        if state.starting:
            _warn(f"domain '{name}': its start (virtnet pid {state.starter[0]}) was interrupted; undid what "
                  f"it had done{problems}")
        elif reason is not None:
            _warn(f"domain '{name}': QEMU (pid {state.pid}) is no longer running: {reason}; "
                  f"cleaned up its taps and runtime state{problems}")
        elif errors:
            _warn(f"domain '{name}' shut down; cleaning up after it reported: {'; '.join(errors)}")
    for name in livestate.transient_names(store):
        # A create killed between defining the domain and its start's first record.
        if (name not in damaged and livestate.load_or_skip(store, name) == (None, None)
                and not livestate.creator_alive(store, name)):
            _forget_transient(store, name)
    return damaged


# What QEMU 7.2 logs when a signal stops it through its normal exit path (SIGTERM, SIGINT, SIGHUP).
_TERMINATED = re.compile(r"terminating on signal (\d+)(?: from pid (\d+)(?: \((.*)\))?)?")


def exit_reason(state):
    """Why the QEMU of STATE, no longer running, stopped: None when it exited through its normal
    path without being signalled (the guest powered off, or reset with <on_reboot> destroy, or a
    QMP `quit`), else a few words for the user.

    Observed with QEMU 7.2: its normal exit path removes the QMP socket, and logs `terminating on
    signal N from pid P (NAME)` first when a signal asked for it; a crash (SIGSEGV, SIGABRT) or
    SIGKILL leaves the socket behind. virtnet cannot read QEMU's exit status (QEMU is not its
    child once `virtnet start` has returned), nor hear the SHUTDOWN event (nobody is connected to
    QMP then); the socket and the log tell the same apart."""
    lines = []
    with contextlib.suppress(OSError):
        lines = [line.strip() for line in
                 state.paths.log.read_text(errors="replace").splitlines() if line.strip()]
    last = lines[-1] if lines else None
    for line in reversed(lines[-5:]):
        match = _TERMINATED.search(line)
        if match:
            signum, sender, command = match.groups()
            try:
                signame = signal.Signals(int(signum)).name
            except ValueError:
                signame = f"signal {signum}"
            by = f" from pid {sender}" + (f" ({command})" if command else "") if sender else ""
            return f"it was terminated by {signame}{by}"
    try:
        socket_left = stat.S_ISSOCK(os.lstat(state.qmp).st_mode)
    except OSError:
        socket_left = False
    if socket_left:
        return "it crashed or was killed" + (f" (last QEMU output: {last})" if last else "")
    return None


def running_state(store, name):
    """The live state of a running domain; a domain whose QEMU died is cleaned up first (None)."""
    if livestate.load(store, name) is None:
        return None
    with store.lock():
        reap_dead(store)
        return livestate.load(store, name)


def reserved_tap_names(store):
    """Tap names other domains use or are about to create: not free for a '%d' template even if not
    (or no longer) on the host."""
    names = set()
    for other in store.running_names():
        state, _ = livestate.load_or_skip(store, other)  # a damaged record was reported by the reaping
        if state is not None:
            names |= set(state.taps.values())
    return names


def _busy(name, state):
    if state.starting:
        return StoreError(f"domain '{name}' is already being started (virtnet pid {state.starter[0]})")
    return StoreError(f"domain '{name}' is already running; `virtnet destroy {name}` stops it")


def check_runtime_dir(path):
    """The runtime directory holds QEMU's monitor socket and log and passt's files: it must be the
    caller's own and writable by nobody else, so that no other user can put a symlink where start
    writes (as root, that would redirect root's writes). Created (0700) when missing."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        info = os.lstat(path)
    except OSError as e:
        raise HostError(f"cannot create the runtime directory {path}: {e.strerror}; "
                        "choose another with --runtime-dir or $VIRTNET_RUNTIME_DIR") from None
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise HostError(f"the runtime directory {path} is not a directory (a symlink?); choose another with "
                        "--runtime-dir or $VIRTNET_RUNTIME_DIR")
    if info.st_uid != os.geteuid() or info.st_mode & 0o022:
        raise HostError(f"the runtime directory {path} must be owned by you and writable by nobody else "
                        f"(owner uid {info.st_uid}, mode {stat.S_IMODE(info.st_mode):04o}); choose another with "
                        "--runtime-dir, e.g. a directory of your own")


def make_private_dir(path):
    """A domain's (or a network's) own runtime directory PATH, new and 0700 (a leftover of ours is
    replaced; anything else refused)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        info = None
    if info is not None:
        if stat.S_ISDIR(info.st_mode) and not stat.S_ISLNK(info.st_mode) and info.st_uid == os.geteuid():
            shutil.rmtree(path, ignore_errors=True)  # left by an earlier run whose record is gone
        else:
            raise HostError(f"{path} exists and is not a directory of yours; remove it")
    try:
        os.mkdir(path, 0o700)
    except OSError as e:
        raise HostError(f"cannot create the runtime directory {path}: {e.strerror}") from None


def _guest_warnings(loaded, paths, state_dir, allow_dropped):
    """Check what QEMU's command line will hold before anything is done on the host; the warnings
    to print (elements not rendered, custom QEMU arguments). A domain whose dropped elements hold
    data (disks, filesystems, host devices) is refused unless ALLOW_DROPPED."""
    from virtnet.errors import VirtnetError
    from virtnet.qemu.argv import ArgvOptions, build_command, check_dropped, unrendered, warnings

    domain = loaded.domain
    try:
        build_command(domain, paths, ArgvOptions(state_dir=str(state_dir)))  # pure: refuses what cannot be rendered
        dropped = unrendered(domain)
        if not allow_dropped:
            check_dropped(domain, dropped)
    except VirtnetError as e:
        raise e.located(loaded.filename) from None
    return [f"domain '{domain.name}': {message}" for _, message in warnings(domain, dropped)]


def _record_ptys(domain, qmp):
    """Write the pty QEMU opened for each character device of type 'pty' into DOMAIN, as libvirt's
    live XML shows it: <source path='/dev/pts/N'/>, and on a <console> also tty='/dev/pts/N'. A
    serial console (not virtio) is the first serial port, so it shows that port's pty."""
    from virtnet.qemu.chardevs import chardev_aliases, first_serial_console

    filenames = {d.get("label"): d.get("filename", "") for d in qmp.execute("query-chardev")}
    ptys = {}
    for group in chardev_aliases(domain):
        for alias, chardev in group:
            filename = filenames.get("char" + alias, "")
            if chardev.type == "pty" and filename.startswith("pty:"):
                ptys[chardev] = filename[len("pty:"):]
    serial_console = first_serial_console(domain)
    if serial_console is not None and serial_console not in ptys and domain.serials:
        first = domain.serials[0]
        if serial_console.type == "pty" and first in ptys:
            ptys[serial_console] = ptys[first]
    for chardev, path in ptys.items():
        chardev.source_path = path
        if chardev.kind == "console":
            chardev.node.set("tty", path)


def start(store, name, *, paused=False, netns_name=None, unprivileged=False, bridge_helper=None,
          allow_dropped=False):
    """Start a defined domain; returns its LiveState. Any failure rolls back every step already taken.

    The store lock is held only to check, plan and record: a slow QEMU does not hold up commands on
    other domains. Meanwhile the domain's record says who is starting it (livestate.py).

    Bridge taps come from qemu-bridge-helper (BRIDGE_HELPER, else found in the usual places) when
    UNPRIVILEGED is set or this process lacks CAP_NET_ADMIN. ALLOW_DROPPED starts a domain even when
    elements holding the guest's data (disks, filesystems, host devices) are not rendered.
    """
    from virtnet.conf.format import format_domain
    from virtnet.host import bridgehelper
    from virtnet.host.executor import Executor
    from virtnet.host.netlink import Netlink
    from virtnet.host.plan import build_plan, tap_names, teardown_order
    from virtnet.network import ports
    from virtnet.hostcaps import probe
    from virtnet.qemu.argv import ArgvOptions, build_command, prepare_host
    from virtnet.qemu.launch import launch
    from virtnet.runpaths import DomainPaths

    with Netlink() as nl:
        with store.lock():
            reap_dead(store)
            state = livestate.load(store, name)
            if state is not None:
                raise _busy(name, state)
            loaded = load_defined(store, name)
            domain = loaded.domain
            paths = DomainPaths(store.runtime_dir, name)
            guest_warnings = _guest_warnings(loaded, paths, store.state_dir, allow_dropped)
            helper = bridgehelper.helper_for(domain, unprivileged=unprivileged, override=bridge_helper)
            ports.attach(store, domain)  # type='network': the active network's bridge (or an error naming net-start)
            plan = build_plan(domain, names_in_use=nl.link_names() | reserved_tap_names(store),
                              host_caps=probe(tc=True), paused=paused, bridge_helper=helper, paths=paths)
            if len(str(paths.qmp).encode()) > UNIX_PATH_MAX:
                raise HostError(f"the QMP socket path {paths.qmp} is longer than the {UNIX_PATH_MAX} bytes a "
                                "unix socket address holds; use a shorter --runtime-dir or domain name")
            check_runtime_dir(store.runtime_dir)
            state = livestate.LiveState(pid=None, qmp=str(paths.qmp), runtime_dir=str(paths.dir), netns=netns_name,
                                        taps=tap_names(plan), starter=livestate.process_identity(os.getpid()))
            # Recorded before the domain's folder exists: a start killed in between leaves a record
            # whose reaping removes the folder, never a folder nobody knows of.
            livestate.save(store, name, state)
            try:
                make_private_dir(paths.dir)
            except BaseException:
                livestate.forget(store, name)
                raise

        def journal(inverses):
            state.teardown = teardown_order(inverses)
            with store.lock():
                livestate.save(store, name, state)

        def start_qemu(outcome):
            prepare_host(domain, paths, store.state_dir)  # the UEFI variable store; channel sockets' folder
            command = build_command(domain, paths, ArgvOptions(fds=outcome.fds, state_dir=str(store.state_dir)))
            fds = [fd for f in outcome.fds.values() for fd in f.taps + f.vhosts]
            return launch(command.argv, pass_fds=fds, qmp_path=str(paths.qmp), log_path=str(paths.log),
                          env=command.env)

        executor = Executor(nl, start_qemu=start_qemu, journal=journal)
        try:
            outcome = executor.setup(plan)
        except BaseException:
            with store.lock():
                livestate.forget(store, name)
            shutil.rmtree(paths.dir, ignore_errors=True)
            raise
        taps = {**tap_names(plan), **outcome.helper_taps}  # the plan named every tap it creates or opens
        state = livestate.LiveState(pid=outcome.launched.pid, qmp=str(paths.qmp), runtime_dir=str(paths.dir),
                                    netns=netns_name, taps=taps, teardown=outcome.teardown)
        for iface in domain.interfaces:  # the live XML names the taps in use, as libvirt's does
            if iface.ids.alias in taps:
                iface.target_dev = taps[iface.ids.alias]
        try:
            _record_ptys(domain, outcome.launched.qmp)  # ... and the ptys QEMU opened
            with store.lock():
                livestate.save(store, name, state, format_domain(domain, live=True))
        except BaseException:
            executor.teardown(state.teardown)
            outcome.close_fds()
            with store.lock():
                livestate.forget(store, name)
            shutil.rmtree(paths.dir, ignore_errors=True)
            raise
        outcome.close_fds()  # QEMU holds its own copies now
        outcome.launched.qmp.close()
    for message in guest_warnings + plan.warnings + outcome.warnings:
        _warn(message)
    return state


def destroy(store, name):
    with store.lock():
        state = require_running(store, name, "destroy")  # a start killed midway is undone first
        errors = _teardown(store, name, state)
    if errors:
        raise HostError(f"domain '{name}' stopped, but teardown reported: " + "; ".join(errors))


# --- create, shutdown, reboot, reset -----------------------------------------------------------------

DEFAULT_SHUTDOWN_TIMEOUT = 60.0  # seconds shutdown and reboot wait for the guest
_POLL_INTERVAL = 0.25
_RESET_TIMEOUT = 10.0  # seconds for QEMU to act on system_reset


def create(store, loaded, **start_options):
    """Start the domain of LOADED (conf.load.Loaded) without keeping its definition, as `virsh
    create` does: it is defined while it runs, so that list, dumpxml, domiflist and define's
    conflict rules (uuid, MACs, target devs) see it, and forgotten when it stops, however it stops
    (destroy, shutdown, the guest powering off, QEMU dying, a failed start). A `define` of the same
    name while it runs makes it persistent. A domain of that name that is already defined is refused.
    START_OPTIONS are start()'s. Returns the LiveState."""
    from virtnet import domains

    name = loaded.domain.name
    with store.lock():
        reap_dead(store)
        state = livestate.load(store, name)
        if state is not None:
            raise _busy(name, state)
        if store.summary_of(name) is not None or os.path.lexists(store.domains_dir / f"{name}.xml"):
            raise StoreError(f"domain '{name}' is already defined; `virtnet start {name}` starts it (create is for "
                             f"a domain that is not defined; `virtnet undefine {name}` first to create it from this "
                             "file)").located(loaded.filename)
        domains.define(store, loaded)
        livestate.mark_transient(store, name)
    try:
        return start(store, name, **start_options)
    except BaseException:
        with store.lock():
            if livestate.load_or_skip(store, name) == (None, None):  # no start of it is recorded
                _forget_transient(store, name)
        raise


def require_running(store, name, what):
    """The LiveState of NAME, which must be running (not being started). Needs the store's lock;
    domains that died are reaped first."""
    reap_dead(store)
    state = livestate.load(store, name)
    if state is None:
        store.read_domain(name)  # no such domain → that error instead
        raise StoreError(f"domain '{name}' is not running")
    if state.starting:
        raise StoreError(f"domain '{name}' is being started (virtnet pid {state.starter[0]}); {what} it once the "
                         "start has finished")
    return state


def monitor(name, state, timeout=10.0):
    """A QMP connection to the QEMU of domain NAME (close it soon: QEMU serves one client at a time)."""
    from virtnet.qemu.qmp import QMPClient

    try:
        return QMPClient(state.qmp, timeout=timeout).connect()
    except OSError as e:
        raise HostError(f"domain '{name}': cannot reach QEMU's monitor {state.qmp}: {e.strerror or e}") from None
    except HostError as e:
        raise HostError(f"domain '{name}': QEMU's monitor did not answer ({e.message}); another program may hold "
                        "it") from None


def _status(state, timeout=2.0):
    """QEMU's run state ('running', 'paused', 'shutdown', …), or None when it cannot be asked."""
    from virtnet.qemu.qmp import QMPClient

    try:
        with QMPClient(state.qmp, timeout=timeout) as qmp:
            return qmp.execute("query-status").get("status")
    except (OSError, HostError):
        return None


def _check_power_button(name, qmp, status, doing, instead):
    """Refuse, with one line saying what to do INSTEAD, when the guest cannot act on the ACPI power
    button: its vCPUs are not running, or the machine has no ACPI (libvirt's rule: only with
    <features><acpi/>; QEMU itself is asked, so the answer holds whatever rendered the line)."""
    if status != "running":
        what = "paused" if status in ("paused", "prelaunch") else f"not running (QEMU status '{status}')"
        raise HostError(f"domain '{name}' is {what}, so its guest cannot act on the ACPI power button to {doing}; "
                        f"{instead}")
    try:
        acpi = qmp.execute("qom-get", {"path": "/machine", "property": "acpi"})
    except HostError:
        acpi = None  # a machine without the property: try
    if acpi == "off":
        raise HostError(f"domain '{name}' has no ACPI (its XML lacks <features><acpi/></features>), so its guest "
                        f"cannot be asked to {doing}; {instead}")


def _wait_powered_off(state, deadline, *, watch_status):
    """Wait until the guest of STATE is off: 'exited' once QEMU has exited, 'shutdown' once QEMU
    stays with the guest shut down (-no-shutdown, or set-action shutdown=pause; only looked for with
    WATCH_STATUS), None when DEADLINE (time.monotonic()) comes first."""
    from virtnet.qemu.launch import is_running

    try:
        pidfd = os.pidfd_open(state.pid)
    except ProcessLookupError:
        return "exited"
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)  # readable once the process has exited
        while True:
            remaining = deadline - time.monotonic()
            if poller.poll(max(0.0, min(remaining, _POLL_INTERVAL)) * 1000) or not is_running(state.pid, state.qmp):
                return "exited"
            if watch_status and _status(state) == "shutdown":
                return "shutdown"
            if remaining <= 0:
                return None
    finally:
        os.close(pidfd)


def _finish(store, name, pid):
    """Tear down domain NAME, whose guest is off, unless another command did (its record is gone, or
    is that of a later start). Returns the teardown's errors."""
    with store.lock():
        state, _ = livestate.load_or_skip(store, name)
        if state is None or state.starting or state.pid != pid:
            return []
        return _teardown(store, name, state)


def _stopped(name, errors):
    if errors:
        raise HostError(f"domain '{name}' shut down, but teardown reported: " + "; ".join(errors))


def shutdown(store, name, *, timeout=DEFAULT_SHUTDOWN_TIMEOUT):
    """Ask the guest to power off (the ACPI power button, QMP system_powerdown), wait up to TIMEOUT
    seconds for it, then remove what start created, as destroy does (a domain started by create is
    forgotten). A guest that does not power off in time is left running, and the error says to use
    destroy. The store lock is not held while waiting."""
    with store.lock():
        state = require_running(store, name, "shut down")
        domain = livestate.live_domain(store, name, missing_ok=True)
    instead = f"`virtnet destroy {name}` stops it"
    qmp = monitor(name, state)
    try:
        status = qmp.execute("query-status").get("status")
        if status != "shutdown":  # else a guest already off, kept by <on_poweroff>preserve</on_poweroff>
            _check_power_button(name, qmp, status, "shut down", instead)
            qmp.execute("system_powerdown")
    finally:
        qmp.close()
    if status != "shutdown":
        preserve = domain is None or domain.on_poweroff == "preserve"  # QEMU then stays, the guest off
        if _wait_powered_off(state, time.monotonic() + timeout, watch_status=preserve) is None:
            raise HostError(f"domain '{name}' did not shut down within {timeout:g} s: its guest ignored the ACPI "
                            "power button (no operating system running yet, or one that does not act on it); it is "
                            f"still running — {instead}")
    _stopped(name, _finish(store, name, state.pid))


def reboot(store, name, *, timeout=DEFAULT_SHUTDOWN_TIMEOUT):
    """Reboot the guest the way `virsh reboot` does by default: press the ACPI power button, let the
    guest shut down cleanly, then reset the machine and run it again instead of letting QEMU exit
    (libvirt's "fake reboot": QMP set-action shutdown=pause for the time, system_reset, cont). Waits
    up to TIMEOUT seconds for the guest; one that ignores the button keeps running as it was, and the
    error points at `virtnet reset`. A domain whose <on_reboot> is destroy is shut down instead, as
    libvirt does. Returns 'rebooted' or 'shut down'."""
    with store.lock():
        state = require_running(store, name, "reboot")
        domain = livestate.live_domain(store, name, missing_ok=True)
    if domain is not None and domain.on_reboot == "destroy":
        shutdown(store, name, timeout=timeout)
        return "shut down"
    # What QEMU does when the guest powers off, to put back: -no-shutdown pauses it, else it exits.
    usual = "pause" if domain is not None and domain.on_poweroff == "preserve" else "poweroff"
    instead = f"`virtnet reset {name}` resets it without asking the guest"
    qmp = monitor(name, state)
    try:
        status = qmp.execute("query-status").get("status")
        if status != "shutdown":
            _check_power_button(name, qmp, status, "reboot", instead)
            qmp.execute("set-action", {"shutdown": "pause"})
            try:
                qmp.execute("system_powerdown")
            except BaseException:
                with contextlib.suppress(HostError):
                    qmp.execute("set-action", {"shutdown": usual})
                raise
    finally:
        qmp.close()
    if status != "shutdown":
        outcome = _wait_powered_off(state, time.monotonic() + timeout, watch_status=True)
        if outcome is None:
            with contextlib.suppress(HostError, OSError):
                with monitor(name, state) as qmp:
                    qmp.execute("set-action", {"shutdown": usual})
            raise HostError(f"domain '{name}' did not reboot within {timeout:g} s: its guest ignored the ACPI power "
                            "button (no operating system running yet, or one that does not act on it); it is still "
                            f"running as it was — {instead}")
        if outcome == "exited":  # QEMU went away meanwhile (killed, or quit by someone else)
            _stopped(name, _finish(store, name, state.pid))
            raise HostError(f"domain '{name}' stopped instead of rebooting: its QEMU exited; cleaned up after it")
    with monitor(name, state) as qmp:
        _reset_and_run(name, qmp)
        qmp.execute("set-action", {"shutdown": usual})
    return "rebooted"


def _reset_and_run(name, qmp):
    """Reset a machine whose guest is shut down (QEMU paused in state 'shutdown') and run it."""
    qmp.execute("system_reset")
    deadline = time.monotonic() + _RESET_TIMEOUT
    while qmp.execute("query-status").get("status") == "shutdown":  # QEMU resets from its main loop
        if time.monotonic() > deadline:
            raise HostError(f"domain '{name}': QEMU did not reset the machine within {_RESET_TIMEOUT:g} s")
        time.sleep(0.02)
    qmp.execute("cont")


def reset(store, name):
    """Reset the machine at once, without asking the guest (QMP system_reset, `virsh reset`). A
    domain whose <on_reboot> is destroy stops instead, as when its guest reboots (QEMU runs it with
    -action reboot=shutdown), and is then removed as destroy does. A guest kept powered off by
    <on_poweroff>preserve</on_poweroff> is reset and run. Returns 'reset' or 'shut down'."""
    with store.lock():
        state = require_running(store, name, "reset")
        domain = livestate.live_domain(store, name, missing_ok=True)
    with monitor(name, state) as qmp:
        if qmp.execute("query-status").get("status") == "shutdown":
            _reset_and_run(name, qmp)
            return "reset"
        qmp.execute("system_reset")
    if domain is not None and domain.on_reboot == "destroy":
        if _wait_powered_off(state, time.monotonic() + _RESET_TIMEOUT, watch_status=False) is None:
            raise HostError(f"domain '{name}': QEMU did not stop within {_RESET_TIMEOUT:g} s of the reset its "
                            f"<on_reboot>destroy</on_reboot> turns into a shutdown; `virtnet destroy {name}` stops it")
        _stopped(name, _finish(store, name, state.pid))
        return "shut down"
    return "reset"


def suspend(store, name):
    """Stop the guest's vCPUs (QMP stop), as `virsh suspend` does; its macvtaps go down meanwhile,
    as libvirt takes them down while the vCPUs are stopped."""
    with store.lock():
        state = require_running(store, name, "suspend")
        domain = livestate.live_domain(store, name, missing_ok=True)
    with monitor(name, state) as qmp:
        qmp.execute("stop")
    _set_macvtaps(state, domain, up=False)


def resume(store, name):
    """Run the guest's vCPUs again (QMP cont), as `virsh resume` does, its macvtaps up first. A guest
    that is shut down (kept by <on_poweroff>preserve</on_poweroff>) cannot be resumed: `virtnet
    reset` starts it again."""
    with store.lock():
        state = require_running(store, name, "resume")
        domain = livestate.live_domain(store, name, missing_ok=True)
    with monitor(name, state) as qmp:
        status = qmp.execute("query-status").get("status")
        if status == "shutdown":
            raise HostError(f"domain '{name}' is powered off inside QEMU; `virtnet reset {name}` boots it again")
        _set_macvtaps(state, domain, up=True)
        qmp.execute("cont")


def _set_macvtaps(state, domain, *, up):
    """The macvtaps of a domain's <interface type='direct'> up (their lower devices first, as at
    start) or down."""
    macvtaps = [(state.taps[i.ids.alias], i.source.dev) for i in (domain.interfaces if domain is not None else [])
                if i.type == "direct" and i.ids.alias in state.taps]
    if not macvtaps:
        return
    from virtnet.host import netns
    from virtnet.host.netlink import Netlink

    with netns.inside_if_elsewhere(state.netns), Netlink() as nl:
        for ifname, lower in macvtaps:
            if not up:
                nl.set_down(ifname)
                continue
            lower_link = nl.link(lower)
            if lower_link is not None and not lower_link.up:
                nl.set_up(lower)
            nl.set_up(ifname)
