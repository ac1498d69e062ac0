"""QMP client and QEMU launch/stop against a real QEMU started paused (-S), no guest image."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from contextlib import contextmanager

import pytest

import hostops
from hostcases import live_pids

from virtnet.errors import HostError
from virtnet.host.process import command_line, is_alive, process_state, start_time
from virtnet.qemu.argv import qmp_options
from virtnet.qemu.launch import is_running, launch, stop
from virtnet.qemu.qmp import QMPClient

QEMU = shutil.which("qemu-system-x86_64")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAC = "52:54:00:12:34:56"
USER_NIC = ["-netdev", "user,id=hostnet0", "-device", f"rtl8139,netdev=hostnet0,id=net0,mac={MAC}"]


def require_qemu():
    if QEMU is None:
        pytest.skip("needs qemu-system-x86_64")


def base_argv(*, name):
    # -name carries a marker so a test can look for leftover processes by command line.
    return [QEMU, "-S", "-machine", "pc", "-accel", "tcg", "-m", "64", "-nodefaults",
            "-display", "none", "-no-user-config", "-name", name]


def make_workdir():
    # Short path: a unix socket path must fit in 108 bytes.
    return tempfile.mkdtemp(prefix="vnt-qemu-")


def force_kill(pid):
    """Last-resort cleanup when a test failed before stop() did its job."""
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


@contextmanager
def running_qemu(workdir, extra_argv=(), *, pass_fds=()):
    """Launch a paused QEMU in workdir; always stopped and gone afterwards."""
    require_qemu()
    qmp_path = os.path.join(workdir, "qmp.sock")
    argv = base_argv(name=f"vnt-{uuid.uuid4().hex[:8]}") + qmp_options(qmp_path) + list(extra_argv)
    launched = launch(argv, pass_fds=list(pass_fds), qmp_path=qmp_path,
                      log_path=os.path.join(workdir, "qemu.log"))
    try:
        yield launched, qmp_path
    finally:
        launched.qmp.close()
        try:
            stop(launched.pid, qmp_path, timeout=2.0)
        finally:
            force_kill(launched.pid)


@pytest.fixture(scope="module")
def shared_qemu():
    """One paused QEMU with a user-mode rtl8139 NIC, shared by the read-mostly tests."""
    require_qemu()
    workdir = make_workdir()
    try:
        with running_qemu(workdir, USER_NIC) as (launched, qmp_path):
            yield launched, qmp_path
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def workdir():
    path = make_workdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


# -- argv --------------------------------------------------------------------------------------

def test_qmp_options_are_a_chardev_and_monitor_pair_with_commas_doubled():
    assert qmp_options("/run/a,b/qmp.sock") == [
        "-chardev", "socket,id=charmonitor,path=/run/a,,b/qmp.sock,server=on,wait=off",
        "-mon", "chardev=charmonitor,id=monitor,mode=control",
    ]


# -- QMP client against the shared QEMU ---------------------------------------------------------

def test_paused_qemu_reports_prelaunch(shared_qemu):
    launched, _ = shared_qemu
    status = launched.qmp.execute("query-status")
    assert status["status"] == "prelaunch"
    assert status["running"] is False
    assert launched.qmp.greeting["QMP"]["version"]["qemu"]["major"] >= 7


def test_info_network_shows_the_nic_and_its_user_backend(shared_qemu):
    launched, _ = shared_qemu
    text = hostops.hmp(launched.qmp, "info network")
    assert re.search(rf"^net0: index=0,type=nic,model=rtl8139,macaddr={MAC}\r?$", text, re.M), text
    assert re.search(r"^ \\ hostnet0: index=0,type=user,", text, re.M), text


def rtl8139_link_is_up(qmp):
    """Read the link bit of the NIC's Basic Mode Status register, as the guest would.

    QEMU 7.2's `info network` does not print link state, so look at the device model itself. The
    firmware never ran (-S), so first give BAR0 an I/O address through PCI config ports 0xcf8/0xcfc.
    """
    nic = next(d for d in qmp.execute("query-pci")[0]["devices"] if d.get("qdev_id") == "net0")
    config = 0x80000000 | nic["bus"] << 16 | nic["slot"] << 11 | nic["function"] << 8
    io_base = 0xC000
    for command in (f"o /w 0xcf8 {config | 0x10:#x}", f"o /w 0xcfc {io_base:#x}",  # BAR0
                    f"o /w 0xcf8 {config | 0x04:#x}", "o /h 0xcfc 0x1"):  # command: I/O on
        hostops.hmp(qmp, command)
    reply = hostops.hmp(qmp, f"i /h {io_base + 0x64:#x}")  # BasicModeStatus; bit 2 = link up
    value = int(reply.split("=")[1], 16)
    return bool(value & 0x4)


def test_set_link_down_reaches_the_nic(shared_qemu):
    qmp = shared_qemu[0].qmp
    try:
        assert rtl8139_link_is_up(qmp)
        assert qmp.execute("set_link", {"name": "net0", "up": False}) == {}
        assert not rtl8139_link_is_up(qmp)
        # The device list is unchanged: set_link touches state, not topology.
        assert f"macaddr={MAC}" in hostops.hmp(qmp, "info network")
    finally:
        qmp.execute("set_link", {"name": "net0", "up": True})
    assert rtl8139_link_is_up(qmp)


def test_error_reply_raises_with_qemus_description_and_the_connection_stays_usable(shared_qemu):
    qmp = shared_qemu[0].qmp
    with pytest.raises(HostError, match=r"set_link: Device 'no-such-nic' not found") as caught:
        qmp.execute("set_link", {"name": "no-such-nic", "up": False})
    assert caught.value.qmp_class == "DeviceNotFound"
    with pytest.raises(HostError, match="The command no-such-command has not been found"):
        qmp.execute("no-such-command")
    assert qmp.execute("query-status")["status"] == "prelaunch"


def test_events_arriving_before_a_reply_are_skipped_and_kept(shared_qemu):
    qmp = shared_qemu[0].qmp
    qmp.events.clear()
    assert qmp.execute("system_reset") == {}
    # RESET is emitted asynchronously; it must never be mistaken for a command's reply.
    for _ in range(50):
        assert qmp.execute("query-status")["status"] == "prelaunch"
        if any(event["event"] == "RESET" for event in qmp.events):
            break
    else:
        pytest.fail(f"no RESET event among {list(qmp.events)}")


def test_a_reply_larger_than_one_read_is_reassembled(shared_qemu):
    schema = shared_qemu[0].qmp.execute("query-qmp-schema")
    assert len(json.dumps(schema)) > 65536  # larger than one recv()
    commands = {entry["name"] for entry in schema if entry["meta-type"] == "command"}
    assert {"human-monitor-command", "set_link", "quit"} <= commands


def test_is_running_needs_both_a_live_pid_and_its_socket_path(shared_qemu):
    launched, qmp_path = shared_qemu
    assert is_running(launched.pid, qmp_path)
    assert not is_running(launched.pid, qmp_path + "2")
    assert not is_running(os.getpid(), qmp_path)


def test_proc_stat_is_read_past_a_command_name_holding_spaces_and_parentheses(tmp_path):
    sleeper = tmp_path / "x) Z (y"  # the command name mimics a zombie's state field
    shutil.copy(shutil.which("sleep"), sleeper)
    child = subprocess.Popen([str(sleeper), "30"])
    try:
        for _ in range(500):  # the exec may not have finished when Popen returns
            if command_line(child.pid) != [b""]:
                break
            time.sleep(0.01)
        assert process_state(child.pid) in ("R", "S")
        assert is_alive(child.pid) and start_time(child.pid) > 0
        assert command_line(child.pid)[:2] == [os.fsencode(sleeper), b"30"]
    finally:
        child.kill()
        child.wait()
    assert process_state(child.pid) is None and start_time(child.pid) is None
    assert command_line(child.pid) is None and not is_alive(child.pid)


def test_a_second_client_is_served_after_the_first_closes(shared_qemu):
    launched, qmp_path = shared_qemu
    launched.qmp.close()
    try:
        with QMPClient(qmp_path, timeout=5) as other:
            assert other.execute("query-status")["status"] == "prelaunch"
    finally:
        launched.qmp.connect()
    assert launched.qmp.execute("query-status")["running"] is False


def test_launch_refuses_a_socket_path_a_running_qemu_serves(shared_qemu, workdir):
    _, qmp_path = shared_qemu
    marker = f"vnt-{uuid.uuid4().hex[:8]}"
    argv = base_argv(name=marker) + qmp_options(qmp_path)
    with pytest.raises(HostError, match="already served by a running process"):
        launch(argv, pass_fds=[], qmp_path=qmp_path, log_path=os.path.join(workdir, "qemu.log"))
    assert live_pids(marker) == []


# -- launch failures -------------------------------------------------------------------------

def test_bad_option_raises_quoting_qemu_and_leaves_nothing(workdir):
    require_qemu()
    qmp_path = os.path.join(workdir, "qmp.sock")
    log_path = os.path.join(workdir, "qemu.log")
    with open(log_path, "w") as log:
        log.write("qemu-system-x86_64: an error from an earlier run\n")
    argv = base_argv(name="bad") + qmp_options(qmp_path) + ["-netdev", "bogus,id=hostnet0"]
    with pytest.raises(HostError) as caught:
        launch(argv, pass_fds=[], qmp_path=qmp_path, log_path=log_path)
    message = str(caught.value)
    assert "exited with status 1" in message
    assert "qemu-system-x86_64: -netdev bogus,id=hostnet0: Parameter 'type' does not accept value 'bogus'" in message
    assert "earlier run" not in message
    assert live_pids(qmp_path) == []
    assert not os.path.exists(qmp_path)


def test_timeout_kills_a_qemu_that_never_serves_qmp(workdir):
    require_qemu()
    marker = f"vnt-{uuid.uuid4().hex[:8]}"
    qmp_path = os.path.join(workdir, "qmp.sock")
    argv = base_argv(name=marker)  # no QMP options: nothing will ever listen
    with pytest.raises(HostError, match=r"did not answer on .*qmp.sock within 0.5s; killed it"):
        launch(argv, pass_fds=[], qmp_path=qmp_path, log_path=os.path.join(workdir, "qemu.log"),
               timeout=0.5)
    assert live_pids(marker) == []


def test_missing_binary_is_a_host_error(workdir):
    with pytest.raises(HostError, match="cannot run /nonexistent/qemu: No such file"):
        launch(["/nonexistent/qemu"], pass_fds=[], qmp_path=os.path.join(workdir, "qmp.sock"),
               log_path=os.path.join(workdir, "qemu.log"))


# -- stop ------------------------------------------------------------------------------------

def test_stop_quits_over_qmp_and_qemu_removes_its_socket(workdir):
    with running_qemu(workdir) as (launched, qmp_path):
        launched.qmp.close()  # QEMU serves one client at a time; stop() opens its own
        stop(launched.pid, qmp_path)
        assert not is_running(launched.pid, qmp_path)
        assert not os.path.exists(f"/proc/{launched.pid}")  # reaped, not a zombie
        assert not os.path.exists(qmp_path)
    with open(os.path.join(workdir, "qemu.log")) as log:
        assert "terminating on signal" not in log.read()  # it was quit, not signalled


def test_stop_falls_back_to_sigterm_when_another_client_holds_the_monitor(workdir):
    with running_qemu(workdir) as (launched, qmp_path):
        # launched.qmp stays open, so stop()'s own connection is never greeted.
        stop(launched.pid, qmp_path, timeout=0.3)
        assert not os.path.exists(f"/proc/{launched.pid}")
        assert not os.path.exists(qmp_path)  # QEMU removes it when it handles SIGTERM
    with open(os.path.join(workdir, "qemu.log")) as log:
        assert "terminating on signal 15" in log.read()


def test_stop_escalates_to_sigkill_and_removes_the_socket_left_behind(workdir):
    with running_qemu(workdir) as (launched, qmp_path):
        launched.qmp.close()
        # A stopped process answers neither QMP nor SIGTERM; only SIGKILL ends it.
        os.kill(launched.pid, signal.SIGSTOP)
        stop(launched.pid, qmp_path, timeout=0.3)
        assert not os.path.exists(f"/proc/{launched.pid}")
        assert not os.path.exists(qmp_path)  # SIGKILL leaves it; stop() removed it
    with open(os.path.join(workdir, "qemu.log")) as log:
        assert "terminating on signal" not in log.read()  # never ran again to handle SIGTERM


LAUNCHER = textwrap.dedent("""
    import sys
    from virtnet.qemu.launch import launch
    launched = launch(sys.argv[3:], pass_fds=[], qmp_path=sys.argv[1], log_path=sys.argv[2])
    print(launched.pid)
""")


def test_qemu_outlives_its_launcher_and_stop_ends_a_process_that_is_not_our_child(workdir):
    require_qemu()
    qmp_path = os.path.join(workdir, "qmp.sock")
    marker = f"vnt-{uuid.uuid4().hex[:8]}"
    argv = base_argv(name=marker) + qmp_options(qmp_path)
    env = dict(os.environ, PYTHONPATH=REPO)
    try:
        done = subprocess.run([sys.executable, "-c", LAUNCHER, qmp_path,
                               os.path.join(workdir, "qemu.log"), *argv],
                              env=env, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        pid = int(done.stdout)
        assert is_running(pid, qmp_path)
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        assert os.getsid(pid) == pid  # its own session, detached from ours
        stop(pid, qmp_path)
        assert not is_running(pid, qmp_path)
        assert not os.path.exists(qmp_path)
    finally:
        for pid in live_pids(marker):
            os.kill(pid, signal.SIGKILL)
    assert live_pids(marker) == []


# -- fd passing --------------------------------------------------------------------------------

def test_tap_fd_is_passed_by_number_and_nothing_else_leaks(netns, workdir):
    require_qemu()
    from virtnet.host.tun import open_tap

    ifname, fds = open_tap("vnt-q0", vnet_hdr=True, multi_queue=False)
    tap_fd = fds[0]  # opened O_CLOEXEC: launch must still hand it over
    decoy_path = os.path.join(workdir, "decoy")
    decoy_fd = os.open(decoy_path, os.O_CREAT | os.O_RDWR)  # inheritable, but not listed
    try:
        nic = ["-netdev", f"tap,id=hostnet0,fd={tap_fd},vhost=off",
               "-device", f"virtio-net-pci,netdev=hostnet0,id=net0,mac={MAC}"]
        with running_qemu(workdir, nic, pass_fds=[tap_fd]) as (launched, _):
            text = hostops.hmp(launched.qmp, "info network")
            assert re.search(rf"^ \\ hostnet0: index=0,type=tap,fd={tap_fd}\r?$", text, re.M), text
            qemu_fds = f"/proc/{launched.pid}/fd"
            assert os.readlink(f"{qemu_fds}/{tap_fd}") == "/dev/net/tun"
            targets = {os.readlink(f"{qemu_fds}/{fd}") for fd in os.listdir(qemu_fds)}
            assert decoy_path not in targets
            assert os.readlink(f"{qemu_fds}/0") == "/dev/null"
    finally:
        os.close(decoy_fd)
        for fd in fds:
            os.close(fd)
    assert ifname == "vnt-q0"
