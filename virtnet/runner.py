"""Starting and destroying domains: plan → executor → QEMU, a runtime record, and teardown.

Runtime record (state dir, running/NAME.json): pid, QMP socket, netns, the taps virtnet created
(deleted at destroy) and opened (never touched), downscripts to run, addresses added to
managed='no' taps (removed again at destroy).
"""

import contextlib
import os
import shutil
import sys

from virtnet import domains
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


def _runtime_dir_of(store, name, record):
    """The domain's runtime directory as start made it (a later command may use another --runtime-dir)."""
    from pathlib import Path

    return Path(record["runtime_dir"]) if record.get("runtime_dir") else store.runtime_dir / name


def _stop_recorded(record):
    from virtnet.qemu.launch import stop

    stop(record["pid"], record["qmp"])


def _teardown(store, name, record):
    """Undo a running domain (executor.teardown); the record and runtime files go whatever happens."""
    from virtnet.host.executor import teardown
    from virtnet.host.netlink import Netlink

    netns_name = record.get("netns")
    if netns_name and not os.path.exists(f"/run/netns/{netns_name}"):
        # `ip netns del` removed the name: stopping QEMU (pid and QMP socket suffice) frees the
        # namespace, and its taps go with it.
        errors = teardown(None, record, _stop_recorded)
    else:
        with _in_netns(netns_name), Netlink() as nl:
            errors = teardown(nl, record, _stop_recorded)
    store.clear_runtime(name)
    shutil.rmtree(_runtime_dir_of(store, name, record), ignore_errors=True)
    return errors


def is_alive(record):
    from virtnet.qemu.launch import is_running

    return is_running(record["pid"], record["qmp"])


def reap_dead(store):
    """Clean up after domains whose QEMU died, telling the user. Call under the store lock."""
    for name in store.running_names():
        record = store.read_runtime(name)
        if record is not None and not is_alive(record):
            log = _runtime_dir_of(store, name, record) / "qemu.log"
            tail = ""
            with contextlib.suppress(OSError):
                lines = log.read_text(errors="replace").strip().splitlines()
                tail = f" (last QEMU output: {lines[-1]})" if lines else ""
            errors = _teardown(store, name, record)
            problems = f" (with problems: {'; '.join(errors)})" if errors else ""
            _warn(f"domain '{name}': QEMU (pid {record['pid']}) is no longer running{tail}; "
                  f"cleaned up its taps and runtime state{problems}")


def start(store, name, *, paused=False, fail_at=None, netns_name=None, unprivileged=False, bridge_helper=None):
    """Start a defined domain. Any failure rolls back every step already taken.

    Bridge taps come from qemu-bridge-helper (BRIDGE_HELPER, else found in the usual places) when
    UNPRIVILEGED is set or this process lacks CAP_NET_ADMIN.
    """
    from virtnet.host import bridgehelper
    from virtnet.hostcaps import probe
    from virtnet.host.executor import Executor
    from virtnet.host.netlink import Netlink
    from virtnet.host.plan import build_plan, tap_names
    from virtnet.qemu.argv import ArgvOptions, build_argv
    from virtnet.qemu.launch import launch, stop
    from virtnet.runpaths import DomainPaths

    with store.lock():
        reap_dead(store)
        if store.read_runtime(name) is not None:
            raise StoreError(f"domain '{name}' is already running; `virtnet destroy {name}` stops it")
        loaded = domains.load_defined(store, name)
        domain = loaded.domain
        paths = DomainPaths(store.runtime_dir, name)
        reserved = set()
        for other in store.running_names():
            reserved |= set((store.read_runtime(other) or {}).get("taps", {}).values())

        helper = bridgehelper.helper_for(domain, unprivileged=unprivileged, override=bridge_helper)

        def start_qemu(outcome):
            argv = build_argv(domain, paths, ArgvOptions(fds=outcome.fds))
            fds = [fd for f in outcome.fds.values() for fd in f.taps + f.vhosts]
            return launch(argv, pass_fds=fds, qmp_path=str(paths.qmp), log_path=str(paths.log))

        with Netlink() as nl:
            plan = build_plan(domain, names_in_use=nl.link_names() | reserved, host_caps=probe(), paused=paused,
                              bridge_helper=helper, paths=paths)
            if len(str(paths.qmp).encode()) > UNIX_PATH_MAX:
                raise HostError(f"the QMP socket path {paths.qmp} is longer than the {UNIX_PATH_MAX} bytes a "
                                "unix socket address holds; use a shorter --runtime-dir or domain name")
            try:
                paths.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            except OSError as e:
                raise HostError(f"cannot create the runtime directory {paths.dir}: {e.strerror}; "
                                "choose another with --runtime-dir or $VIRTNET_RUNTIME_DIR") from None
            def stop_qemu(launched):
                launched.qmp.close()  # QEMU serves one QMP client: ours must go before stop's `quit`
                stop(launched.pid, str(paths.qmp))

            executor = Executor(nl, start_qemu=start_qemu, stop_qemu=stop_qemu, fail_at=fail_at)
            try:
                outcome = executor.setup(plan)
            except BaseException:
                shutil.rmtree(paths.dir, ignore_errors=True)
                raise
            record = {
                "pid": outcome.launched.pid,
                "qmp": str(paths.qmp),
                "runtime_dir": str(paths.dir),
                "netns": netns_name,
                "taps": {str(i): n for i, n in {**tap_names(plan), **outcome.helper_taps}.items()},
                "helper_taps": sorted(outcome.helper_taps.values()),  # go away with QEMU: nothing to delete
                "passt": outcome.passt,
                "created_taps": outcome.created_taps,
                "tap_indexes": outcome.tap_indexes,
                "downscripts": [[a.ifname, a.path] for a in plan.teardown if a.kind == "run-downscript"],
                "added_addresses": outcome.added_addresses,
                "added_routes": outcome.added_routes,
            }
            try:
                store.write_runtime(name, record)
            except BaseException:
                from virtnet.host.executor import teardown

                outcome.launched.qmp.close()  # QEMU serves one QMP client; teardown's stop needs it
                teardown(nl, record, _stop_recorded)
                outcome.close_fds()
                shutil.rmtree(paths.dir, ignore_errors=True)
                raise
            outcome.close_fds()  # QEMU holds its own copies now
            outcome.launched.qmp.close()
        for message in plan.warnings + outcome.warnings:
            _warn(message)
        return record


def destroy(store, name):
    with store.lock():
        record = store.read_runtime(name)
        if record is None:
            store.read_domain(name)  # no such domain → that error instead
            raise StoreError(f"domain '{name}' is not running")
        errors = _teardown(store, name, record)
    if errors:
        raise HostError(f"domain '{name}' stopped, but teardown reported: " + "; ".join(errors))
