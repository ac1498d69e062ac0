"""A start killed at any point leaves nothing that the next command does not undo; a hung script
dies with everything it started; a slow start holds up no other domain; the runtime directory is
never one another user could redirect.

Real processes throughout: `virtnet start` as a subprocess killed with SIGKILL, real QEMU (or an
emulator that never answers), real taps and addresses in a fresh network namespace.
"""

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from hostcases import (QEMU, alive, assert_unchanged, cli_argv, cli_env, domain_xml, fails, ip, links, live_pids,
                       ok, snapshot, virtnet, wait_dead, write)


HOST_ADDRESS = "203.0.113.1"


def precreate_tap(ns):
    ip("-n", ns, "tuntap", "add", "dev", "pre0", "mode", "tap", "vnet_hdr")
    ip("-n", ns, "link", "set", "pre0", "address", "02:00:00:00:0c:01", "up")


def interfaces(script=None):
    hook = f"<script path='{script}'/>" if script else ""
    return f"""\
    <interface type='ethernet'>
      <target dev='pre0' managed='no'/>
      <source><ip address='{HOST_ADDRESS}' prefix='24'/></source>
      <model type='virtio'/>
    </interface>
    <interface type='ethernet'>
      <target dev='mng0'/>
      <model type='virtio'/>
      {hook}
    </interface>
    <interface type='server'>
      <source address='127.0.0.1' port='47123'/>
    </interface>
"""


def define(d, tmp_path, name, xml):
    ok(virtnet(d, "define", write(tmp_path / f"{name}.xml", xml)))


def define_with_open_runtime_dir(d, tmp_path, name, mode):
    """Define a domain NAME without interfaces, and make a directory of MODE (say 0o1777) for its
    runtime dir, one others can write; returns the directory."""
    define(d, tmp_path, name, domain_xml(name, ""))
    runtime = tmp_path / f"{name}-runtime"
    runtime.mkdir()
    runtime.chmod(mode)  # mkdir's mode would go through the umask
    return runtime


def spawn_start(d, name, ns):
    return subprocess.Popen(cli_argv(d, "start", name, "--paused", netns=ns), env=cli_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def hanging_emulator(tmp_path):
    """An emulator that starts and never opens its QMP socket (QEMU stuck before its monitor)."""
    return write(tmp_path / "hang-emulator", f"""\
        #!{sys.executable}
        import time
        time.sleep(600)
        """, mode=0o755)


def test_a_start_killed_while_qemu_hangs_is_undone_by_the_next_command(ns, dirs, tmp_path):
    """The reproduction: an emulator that never opens QMP, `virtnet start` killed meanwhile. The
    emulator, the host address added to the managed='no' tap and the records must all go with the
    next command — and while the start hangs, other domains are not held up."""
    d = dirs
    precreate_tap(ns)
    xml = domain_xml("hung", interfaces()).replace(f"<emulator>{QEMU}</emulator>",
                                                   f"<emulator>{hanging_emulator(tmp_path)}</emulator>")
    define(d, tmp_path, "hung", xml)
    before = snapshot(ns)
    emulator_running = lambda: live_pids(str(tmp_path / "hang-emulator"))  # noqa: E731

    start = spawn_start(d, "hung", ns)
    try:
        assert wait_for(emulator_running), start.stderr and start.stderr.read()
        # The start is in progress: the store is not locked for it, so another domain is defined now.
        ok(virtnet(d, "define", write(tmp_path / "other.xml", domain_xml("other", ""))))
        assert start.poll() is None, "define waited for the start to finish"
        running = snapshot(ns)
        assert ("pre0", HOST_ADDRESS, 24) in running["addrs"]  # added before QEMU, as planned
        assert "being started" in fails(virtnet(d, "start", "hung", netns=ns))
    finally:
        start.send_signal(signal.SIGKILL)
        start.wait()
    emulators = emulator_running()
    assert emulators, "the emulator went with the start: nothing left to reap"

    listing = virtnet(d, "list", "--all")
    ok(listing)
    assert "domain 'hung': its start (virtnet pid" in listing.stderr and "was interrupted" in listing.stderr
    for pid in emulators:
        wait_dead(pid)
    assert_unchanged(ns, before, "after the interrupted start was undone, the namespace")
    assert d.running_records() == [] and d.runtime_entries() == []
    assert "is not running" in fails(virtnet(d, "destroy", "hung"))


@pytest.mark.parametrize("seed", [1, 2])
def test_starts_killed_at_random_points_leave_nothing_behind(ns, dirs, tmp_path, seed):
    """Real QEMU, a managed tap, a managed='no' tap with a host address, a script and a socket
    backend; `virtnet start` killed at random moments from its first step to its last. After each
    kill, one `virtnet list` must leave the namespace as it was, or the domain fully running."""
    d = dirs
    precreate_tap(ns)
    script = write(tmp_path / "up.sh", "#!/bin/sh\nexit 0\n", mode=0o755)
    define(d, tmp_path, "k", domain_xml("k", interfaces(script)))
    before = snapshot(ns)
    rng = random.Random(seed)
    outcomes = set()
    for delay in sorted(rng.uniform(0.05, 1.0) for _ in range(6)):
        start = spawn_start(d, "k", ns)
        time.sleep(delay)
        start.send_signal(signal.SIGKILL)
        finished = start.wait() == 0
        ok(virtnet(d, "list", "--all"))
        record = d.record("k")
        if record is not None:  # the start had finished: the domain runs, whole
            outcomes.add("running")
            assert record["starter"] is None and alive(record["pid"])
            ok(virtnet(d, "destroy", "k"))
        else:
            outcomes.add("undone" if not finished else "running")
        assert_unchanged(ns, before, f"after a start killed at {delay:.2f} s, the namespace")
        assert live_pids(str(d.runtime)) == [], f"processes left after a kill at {delay:.2f} s"
        assert d.running_records() == [] and d.runtime_entries() == []
    assert "undone" in outcomes  # at least one kill landed mid-start


def test_a_hung_script_is_killed_with_the_processes_it_started(tmp_path):
    from virtnet.errors import HostError
    from virtnet.host.executor import run_script

    marker = f"virtnet-test-child-{os.getpid()}"
    script = write(tmp_path / "hang.sh", f"""\
        #!/bin/sh
        {sys.executable} -c 'import time; time.sleep(600)' {marker} </dev/null >/dev/null 2>&1 &
        sleep 600
        """, mode=0o755)
    with pytest.raises(HostError, match=r"did not finish within 1 s; it was killed with the processes it started"):
        run_script(str(script), "lo", timeout=1)
    assert wait_for(lambda: live_pids(marker) == [], timeout=5), "the script's child survived it"


def test_a_runtime_dir_others_can_write_or_a_symlinked_domain_dir_is_refused(ns, dirs, tmp_path):
    d = dirs
    shared = define_with_open_runtime_dir(d, tmp_path, "rt", 0o1777)
    result = virtnet(d, "--runtime-dir", shared, "start", "rt", "--paused", netns=ns)
    assert "must be owned by you and writable by nobody else" in fails(result)
    assert os.listdir(shared) == [] and d.running_records() == []

    # Another user's directory, even one nobody else can write, is not ours to put sockets in.
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, 65534, 65534)
    assert "must be owned by you" in fails(virtnet(d, "--runtime-dir", theirs, "start", "rt", netns=ns))

    # A symlink where the domain's directory goes (planted before the directory was locked down)
    # is never followed: root would otherwise write its socket and log where the link points.
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    os.symlink(target, d.runtime / "rt")
    assert "is not a directory of yours" in fails(virtnet(d, "start", "rt", "--paused", netns=ns))
    assert os.listdir(target) == [] and d.running_records() == []
    os.unlink(d.runtime / "rt")


def test_cli_flags_after_the_verb_reach_the_runtime_dir_check(ns, dirs, tmp_path):
    """--runtime-dir works after the verb too (the README promises both places)."""
    d = dirs
    shared = define_with_open_runtime_dir(d, tmp_path, "rt2", 0o777)
    assert "writable by nobody else" in fails(virtnet(d, "start", "rt2", "--runtime-dir", shared, netns=ns))
    assert not links(ns).keys() - {"lo"}
