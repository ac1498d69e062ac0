"""Starting and destroying domains: plan → executor → QEMU, the live state, and teardown.

start records the live state (livestate.py): the live XML and a runtime record whose teardown
actions are the inverses the executor recorded while setting up. destroy, and the reaping of a
domain whose QEMU died, run exactly those actions through the same executor.
"""

import contextlib
import os
import shutil
import stat
import sys
from pathlib import Path

from virtnet import livestate
from virtnet.domains import load_defined
from virtnet.errors import HostError, StoreError

UNIX_PATH_MAX = 107  # sun_path holds 108 bytes including the terminating NUL


def _warn(message):
    print(f"virtnet: warning: {message}", file=sys.stderr)


@contextlib.contextmanager
def _in_netns(name):
    """Run a block in the domain's network namespace when it is not the one we are in."""
    from virtnet.host import netns

    if not name or netns.current_name() == name:
        yield
        return
    with netns.inside(name):
        yield


def _teardown(store, name, state):
    """Undo a running domain from its live state; the record and runtime files go whatever happens."""
    from virtnet.host.executor import Executor

    if state.netns and not os.path.exists(f"/run/netns/{state.netns}"):
        # `ip netns del` removed the name: stopping QEMU (pid and QMP socket suffice) frees the
        # namespace, and its taps go with it.
        errors = Executor(None).teardown(state.teardown)
    else:
        from virtnet.host.netlink import Netlink

        with _in_netns(state.netns), Netlink() as nl:
            errors = Executor(nl).teardown(state.teardown)
    livestate.forget(store, name)
    shutil.rmtree(Path(state.runtime_dir), ignore_errors=True)
    return errors


def is_alive(state):
    """A started domain: its QEMU runs. A start in progress: the process starting it runs."""
    if state.starting:
        return state.starter_alive()
    from virtnet.qemu.launch import is_running

    return is_running(state.pid, state.qmp)


def reap_dead(store):
    """Clean up after domains whose QEMU died, or whose start was killed, telling the user. Call
    under the store lock."""
    for name in store.running_names():
        state = livestate.load(store, name)
        if state is None or is_alive(state):
            continue
        tail = ""
        with contextlib.suppress(OSError):
            lines = (Path(state.runtime_dir) / "qemu.log").read_text(errors="replace").strip().splitlines()
            tail = f" (last QEMU output: {lines[-1]})" if lines else ""
        errors = _teardown(store, name, state)
        problems = f" (with problems: {'; '.join(errors)})" if errors else ""
        if state.starting:
            _warn(f"domain '{name}': its start (virtnet pid {state.starter[0]}) was interrupted; undid what "
                  f"it had done{problems}")
        else:
            _warn(f"domain '{name}': QEMU (pid {state.pid}) is no longer running{tail}; "
                  f"cleaned up its taps and runtime state{problems}")


def running_state(store, name):
    """The live state of a running domain; a domain whose QEMU died is cleaned up first (None)."""
    if livestate.load(store, name) is None:
        return None
    with store.lock():
        reap_dead(store)
        return livestate.load(store, name)


def _reserved_tap_names(store):
    """Tap names other domains use or are about to create: not free for a '%d' template even if not
    (or no longer) on the host."""
    names = set()
    for other in store.running_names():
        state = livestate.load(store, other)
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


def _make_domain_dir(paths):
    """The domain's own runtime directory, new (a leftover of ours is replaced; anything else refused)."""
    try:
        info = os.lstat(paths.dir)
    except FileNotFoundError:
        info = None
    if info is not None:
        if stat.S_ISDIR(info.st_mode) and not stat.S_ISLNK(info.st_mode) and info.st_uid == os.geteuid():
            shutil.rmtree(paths.dir, ignore_errors=True)  # left by an earlier run whose record is gone
        else:
            raise HostError(f"{paths.dir} exists and is not a directory of yours; remove it")
    try:
        os.mkdir(paths.dir, 0o700)
    except OSError as e:
        raise HostError(f"cannot create the runtime directory {paths.dir}: {e.strerror}") from None


def start(store, name, *, paused=False, netns_name=None, unprivileged=False, bridge_helper=None):
    """Start a defined domain; returns its LiveState. Any failure rolls back every step already taken.

    The store lock is held only to check, plan and record: a slow QEMU does not hold up commands on
    other domains. Meanwhile the domain's record says who is starting it (livestate.py).

    Bridge taps come from qemu-bridge-helper (BRIDGE_HELPER, else found in the usual places) when
    UNPRIVILEGED is set or this process lacks CAP_NET_ADMIN.
    """
    from virtnet.conf.format import format_domain
    from virtnet.host import bridgehelper
    from virtnet.host.executor import Executor
    from virtnet.host.netlink import Netlink
    from virtnet.host.plan import build_plan, tap_names
    from virtnet.hostcaps import probe
    from virtnet.qemu.argv import ArgvOptions, build_argv
    from virtnet.qemu.launch import launch
    from virtnet.runpaths import DomainPaths

    with Netlink() as nl:
        with store.lock():
            reap_dead(store)
            state = livestate.load(store, name)
            if state is not None:
                raise _busy(name, state)
            domain = load_defined(store, name).domain
            paths = DomainPaths(store.runtime_dir, name)
            helper = bridgehelper.helper_for(domain, unprivileged=unprivileged, override=bridge_helper)
            plan = build_plan(domain, names_in_use=nl.link_names() | _reserved_tap_names(store), host_caps=probe(),
                              paused=paused, bridge_helper=helper, paths=paths)
            if len(str(paths.qmp).encode()) > UNIX_PATH_MAX:
                raise HostError(f"the QMP socket path {paths.qmp} is longer than the {UNIX_PATH_MAX} bytes a "
                                "unix socket address holds; use a shorter --runtime-dir or domain name")
            check_runtime_dir(store.runtime_dir)
            _make_domain_dir(paths)
            state = livestate.LiveState(pid=None, qmp=str(paths.qmp), runtime_dir=str(paths.dir), netns=netns_name,
                                        taps=tap_names(plan), starter=livestate.process_identity(os.getpid()))
            livestate.save(store, name, state)

        def journal(teardown):
            state.teardown = teardown
            with store.lock():
                livestate.save(store, name, state)

        def start_qemu(outcome):
            argv = build_argv(domain, paths, ArgvOptions(fds=outcome.fds))
            fds = [fd for f in outcome.fds.values() for fd in f.taps + f.vhosts]
            return launch(argv, pass_fds=fds, qmp_path=str(paths.qmp), log_path=str(paths.log))

        executor = Executor(nl, start_qemu=start_qemu, journal=journal)
        try:
            outcome = executor.setup(plan)
        except BaseException:
            with store.lock():
                livestate.forget(store, name)
            shutil.rmtree(paths.dir, ignore_errors=True)
            raise
        taps = {**tap_names(plan), **outcome.helper_taps}
        for created in outcome.inverses:  # the kernel filled in a '%d' template
            if created.kind == "delete-tap":
                taps[created.device] = created.ifname
        state = livestate.LiveState(pid=outcome.launched.pid, qmp=str(paths.qmp), runtime_dir=str(paths.dir),
                                    netns=netns_name, taps=taps, teardown=outcome.teardown)
        for iface in domain.interfaces:  # the live XML names the taps in use, as libvirt's does
            if iface.ids.alias in taps:
                iface.target_dev = taps[iface.ids.alias]
        try:
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
    for message in plan.warnings + outcome.warnings:
        _warn(message)
    return state


def destroy(store, name):
    with store.lock():
        reap_dead(store)  # a start killed midway is undone here, and a dead QEMU tidied up
        state = livestate.load(store, name)
        if state is None:
            store.read_domain(name)  # no such domain → that error instead
            raise StoreError(f"domain '{name}' is not running")
        if state.starting:
            raise StoreError(f"domain '{name}' is being started (virtnet pid {state.starter[0]}); destroy it "
                             "once the start has finished")
        errors = _teardown(store, name, state)
    if errors:
        raise HostError(f"domain '{name}' stopped, but teardown reported: " + "; ".join(errors))
