"""The lifecycle verbs for real: `create` (transient domains), `shutdown`, `reboot`, `reset`, `console`,
and what the next command does after a guest powered itself off, crashed or was signalled.

Two kinds of guest:
- QEMU with no guest OS (no kernel, no disk: the firmware finds nothing to boot). It ignores the ACPI
  power button, so it is the real case of a guest that does not shut down when asked.
- The tiny guest (tools/tiny-guest.py via tests/guest.py): a Debian kernel and a busybox /init that
  reports on the serial console, then powers off (`poweroff -f`, after tg.linger seconds). Its
  domain has <features><acpi/></features>: without ACPI a PC guest can only halt, never power off.
  Its tty echoes what the console types (the kernel's line discipline, /init reads nothing), so a
  console round trip needs nothing from /init.

Every test ends with the namespace as it found it, no QEMU, passt or runtime file of the test left,
and no definition left of a domain started with `create`.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from hostcases import (
    QEMU,
    alive,
    assert_clean,
    cli_argv,
    cli_env,
    domain_xml,
    fails,
    kill,
    links,
    live_pids,
    ok,
    python_for,
    qmp,
    routable,
    snapshot,
    user_env,
    virtnet,
    wait_dead,
    write,
)

TAP = """\
    <interface type='ethernet'>
      <target dev='lctap0'/>
      <model type='virtio'/>
    </interface>
"""
GUEST_TIMEOUT = 150.0  # a tiny guest under TCG on a loaded 2-core machine reports within 5-15 s


def no_os_xml(name, interfaces="", *, acpi=True, extra="", devices=""):
    """A domain with no guest OS: QEMU runs its firmware, which finds nothing to boot."""
    xml = domain_xml(name, interfaces + devices)
    if acpi:
        xml = xml.replace("  <devices>", "  <features><acpi/></features>\n  <devices>", 1)
    return xml.replace("  <devices>", extra + "  <devices>", 1) if extra else xml


def wait_until(predicate, what, timeout=GUEST_TIMEOUT, interval=0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} within {timeout:.0f} s"
        time.sleep(interval)


def listed(d):
    """`virtnet list --all` as {name: state}, and its stderr."""
    result = virtnet(d, "list", "--all")
    rows = ok(result).splitlines()[2:]
    return {cells[0]: cells[1] for cells in (re.split(r"\s{2,}", row) for row in rows)}, result.stderr


def definitions(d):
    directory = d.state / "domains"
    return sorted(os.listdir(directory)) if directory.exists() else []


# --- create: a transient domain --------------------------------------------------------------------


def test_create_runs_a_domain_without_defining_it_and_destroy_forgets_it(ns, dirs, tmp_path):
    d = dirs
    path = write(tmp_path / "tr.xml", no_os_xml("tr", TAP))
    before = snapshot(ns)

    out = ok(virtnet(d, "create", path, "--paused", netns=ns))
    pid = d.record("tr")["pid"]
    assert out == f"Domain 'tr' created from {path} (paused): QEMU pid {pid}, lctap0\n"
    assert alive(pid) and "lctap0" in links(ns)
    assert listed(d) == ({"tr": "running"}, "")
    assert "<target dev='lctap0'/>" in ok(virtnet(d, "dumpxml", "tr"))
    assert ok(virtnet(d, "domiflist", "tr")).splitlines()[2].split()[0] == "lctap0"
    # While it runs it is a domain like any other: its name is taken, it cannot be undefined.
    assert "domain 'tr' is already running" in fails(virtnet(d, "create", path, netns=ns))
    assert "domain 'tr' is running" in fails(virtnet(d, "undefine", "tr"))

    assert ok(virtnet(d, "destroy", "tr")) == "Domain 'tr' destroyed\n"
    assert listed(d) == ({}, "")
    assert definitions(d) == []
    assert "no domain named 'tr'" in fails(virtnet(d, "start", "tr"))
    assert_clean(ns, d, "tr", before, pid)


def test_create_refuses_a_defined_name_and_another_domains_mac_and_leaves_nothing(ns, dirs, tmp_path):
    d = dirs
    mac = "52:54:00:1c:00:01"
    nic = f"    <interface type='user'>\n      <mac address='{mac}'/>\n    </interface>\n"
    ok(virtnet(d, "define", write(tmp_path / "kept.xml", no_os_xml("kept", nic))))
    before = snapshot(ns)

    error = fails(virtnet(d, "create", tmp_path / "kept.xml", netns=ns))
    assert f"{tmp_path / 'kept.xml'}: domain 'kept' is already defined; `virtnet start kept` starts it" in error
    error = fails(virtnet(d, "create", write(tmp_path / "dup.xml", no_os_xml("dup", nic)), netns=ns))
    assert f"MAC address {mac} is already used by domain 'kept'" in error
    assert listed(d) == ({"kept": "shut off"}, "")
    assert definitions(d) == ["kept.xml"]
    assert_clean(ns, d, "dup", before)


def test_a_create_that_fails_leaves_no_definition(ns, dirs, tmp_path):
    d = dirs
    xml = no_os_xml("broken", TAP + "    <interface type='user'>\n      <model type='nosuchnic'/>\n    </interface>\n")
    before = snapshot(ns)
    error = fails(virtnet(d, "create", write(tmp_path / "broken.xml", xml), netns=ns))
    assert "'nosuchnic' is not a valid device model name" in error
    assert listed(d) == ({}, "")
    assert definitions(d) == []
    assert_clean(ns, d, "broken", before)


def test_defining_a_created_domain_while_it_runs_keeps_it(ns, dirs, tmp_path):
    """As in libvirt: `define` makes a running transient domain persistent."""
    d = dirs
    path = write(tmp_path / "kept.xml", no_os_xml("kept", TAP))
    before = snapshot(ns)
    ok(virtnet(d, "create", path, "--paused", netns=ns))
    assert ok(virtnet(d, "define", path)) == f"Domain 'kept' updated from {path}\n"
    ok(virtnet(d, "destroy", "kept"))
    assert listed(d) == ({"kept": "shut off"}, "")
    assert definitions(d) == ["kept.xml"]
    assert_clean(ns, d, "kept", before)


def test_a_create_killed_before_its_start_is_swept(dirs, tmp_path):
    """A create killed between defining the domain and its start's first record leaves a definition
    and its marker: the next command that reaps dead domains removes both, once the creator is gone."""

    from virtnet import livestate
    from virtnet.conf.load import load_file
    from virtnet.domains import define

    d = dirs
    store = d.store()
    define(store, load_file(str(write(tmp_path / "half.xml", no_os_xml("half")))))
    with store.lock():
        livestate.mark_transient(store, "half")
    marker = d.state / "running" / "half.transient"
    creator = subprocess.Popen(["sleep", "60"])  # stands for the create process
    try:
        record = json.loads(marker.read_text())
        marker.write_text(json.dumps({**record, "creator": livestate.process_identity(creator.pid)}))
        fails(virtnet(d, "undefine", "nosuch"))  # reaps: the creator still runs, so it is left alone
        assert definitions(d) == ["half.xml"] and marker.exists()
    finally:
        creator.kill()
        creator.wait()
    assert "no domain named 'nosuch'" in fails(virtnet(d, "undefine", "nosuch"))
    assert listed(d) == ({}, "")
    assert definitions(d) == [] and d.running_records() == []


# --- shutdown, reboot, reset without a guest OS ------------------------------------------------------


def test_shutdown_of_a_guest_that_ignores_acpi_times_out_and_says_to_destroy(ns, dirs, tmp_path):
    d = dirs
    ok(virtnet(d, "define", write(tmp_path / "deaf.xml", no_os_xml("deaf", TAP))))
    before = snapshot(ns)
    ok(virtnet(d, "start", "deaf", netns=ns))  # running: the firmware finds nothing and waits
    pid = d.record("deaf")["pid"]

    started = time.monotonic()
    error = fails(virtnet(d, "shutdown", "deaf", "--timeout", "2"))
    took = time.monotonic() - started
    assert error == ("virtnet: error: domain 'deaf' did not shut down within 2 s: its guest ignored the ACPI power "
                     "button (no operating system running yet, or one that does not act on it); it is still running "
                     "— `virtnet destroy deaf` stops it")
    assert 2 <= took < 20, took
    assert alive(pid) and listed(d) == ({"deaf": "running"}, "")
    with qmp(d.record("deaf")["qmp"]) as client:
        assert client.execute("query-status")["status"] == "running"

    ok(virtnet(d, "destroy", "deaf"))
    assert_clean(ns, d, "deaf", before, pid)


def test_shutdown_and_reboot_refuse_at_once_without_acpi_or_while_paused(ns, dirs, tmp_path):
    d = dirs
    ok(virtnet(d, "define", write(tmp_path / "noacpi.xml", no_os_xml("noacpi", acpi=False))))
    ok(virtnet(d, "define", write(tmp_path / "held.xml", no_os_xml("held"))))
    ok(virtnet(d, "start", "noacpi", netns=ns))
    ok(virtnet(d, "start", "held", "--paused", netns=ns))

    started = time.monotonic()
    assert fails(virtnet(d, "shutdown", "noacpi")) == (
        "virtnet: error: domain 'noacpi' has no ACPI (its XML lacks <features><acpi/></features>), so its guest "
        "cannot be asked to shut down; `virtnet destroy noacpi` stops it")
    assert fails(virtnet(d, "reboot", "noacpi")) == (
        "virtnet: error: domain 'noacpi' has no ACPI (its XML lacks <features><acpi/></features>), so its guest "
        "cannot be asked to reboot; `virtnet reset noacpi` resets it without asking the guest")
    assert fails(virtnet(d, "shutdown", "held")) == (
        "virtnet: error: domain 'held' is paused, so its guest cannot act on the ACPI power button to shut down; "
        "`virtnet destroy held` stops it")
    assert time.monotonic() - started < 15  # no waiting for what cannot happen
    assert listed(d) == ({"held": "running", "noacpi": "running"}, "")
    ok(virtnet(d, "destroy", "noacpi"))
    ok(virtnet(d, "destroy", "held"))


def test_reboot_of_a_guest_that_ignores_acpi_times_out_and_says_to_reset(ns, dirs, tmp_path):
    d = dirs
    ok(virtnet(d, "define", write(tmp_path / "deaf.xml", no_os_xml("deaf"))))
    ok(virtnet(d, "start", "deaf", netns=ns))
    pid = d.record("deaf")["pid"]
    error = fails(virtnet(d, "reboot", "deaf", "--timeout", "1.5"))
    assert error.startswith("virtnet: error: domain 'deaf' did not reboot within 1.5 s: its guest ignored the ACPI "
                            "power button")
    assert error.endswith("it is still running as it was — `virtnet reset deaf` resets it without asking the guest")
    with qmp(d.record("deaf")["qmp"]) as client:
        assert client.execute("query-status")["status"] == "running"
    assert alive(pid)  # that QEMU exits again when the guest powers off: the tiny guest's test below
    ok(virtnet(d, "destroy", "deaf"))


def test_reset_resets_and_with_on_reboot_destroy_stops_the_domain(ns, dirs, tmp_path):
    d = dirs
    ok(virtnet(d, "define", write(tmp_path / "r1.xml", no_os_xml("r1"))))
    ok(virtnet(d, "define", write(tmp_path / "r2.xml", no_os_xml("r2", TAP, extra="  <on_reboot>destroy</on_reboot>\n"))))
    before = snapshot(ns)
    ok(virtnet(d, "start", "r1", netns=ns))
    ok(virtnet(d, "start", "r2", netns=ns))
    pid1, pid2 = d.record("r1")["pid"], d.record("r2")["pid"]

    assert ok(virtnet(d, "reset", "r1")) == "Domain 'r1' was reset\n"
    assert alive(pid1)
    assert ok(virtnet(d, "reset", "r2")) == "Domain 'r2' has been shut down: its <on_reboot> is destroy\n"
    assert not alive(pid2) and "lctap0" not in links(ns)
    assert listed(d) == ({"r1": "running", "r2": "shut off"}, "")
    ok(virtnet(d, "destroy", "r1"))
    assert_clean(ns, d, "r1", before, pid1)


def test_lifecycle_verbs_say_what_is_wrong_in_one_line(dirs, tmp_path):
    d = dirs
    ok(virtnet(d, "define", write(tmp_path / "off.xml", no_os_xml("off"))))
    for verb in ("shutdown", "reboot", "reset", "console"):
        assert fails(virtnet(d, verb, "off")) == "virtnet: error: domain 'off' is not running"
        assert fails(virtnet(d, verb, "nosuch")).startswith("virtnet: error: no domain named 'nosuch' is defined")
    for value in ("0", "-1", "soon", "nan"):
        result = virtnet(d, "shutdown", "off", "--timeout", value)
        assert result.returncode == 2 and "is not a number of seconds" in result.stderr
    for verb in ("create", "shutdown", "reboot", "reset", "console"):
        help_text = ok(virtnet(d, verb, "--help"))
        assert help_text.startswith(f"usage: virtnet {verb}") and f"example:\n  virtnet {verb} " in help_text
    assert "Ctrl+]" in ok(virtnet(d, "console", "--help"))


# --- what the next command finds after QEMU exited ---------------------------------------------------


def test_qemu_that_exited_normally_is_cleaned_up_quietly_and_a_signalled_one_is_named(ns, dirs, tmp_path):
    """QEMU's normal exit path (here a QMP `quit` from elsewhere: what a guest power-off also takes)
    is a domain that shut down: no warning. A QEMU stopped by a signal is reported with it."""
    d = dirs
    for name in ("quits", "termed"):
        ok(virtnet(d, "define", write(tmp_path / f"{name}.xml", no_os_xml(name, TAP.replace("lctap0", name)))))
        ok(virtnet(d, "start", name, "--paused", netns=ns))
    quits, termed = d.record("quits")["pid"], d.record("termed")["pid"]
    with qmp(d.record("quits")["qmp"]) as client:
        client.execute("quit")
    os.kill(termed, signal.SIGTERM)
    wait_dead(quits)
    wait_dead(termed)

    states, warnings = listed(d)
    assert states == {"quits": "shut off", "termed": "shut off"}
    # QEMU names the sender by its pid and program; only the signalled one is reported.
    assert re.fullmatch(rf"virtnet: warning: domain 'termed': QEMU \(pid {termed}\) is no longer running: it was "
                        rf"terminated by SIGTERM from pid {os.getpid()} \([^)\n]+\); cleaned up its taps and runtime "
                        r"state\n", warnings), warnings
    assert d.running_records() == [] and d.runtime_entries() == []
    assert "quits" not in links(ns) and "termed" not in links(ns)


# --- the tiny guest ----------------------------------------------------------------------------------


def guest_xml(image, name, *, linger, serial, interfaces="", extra="", acpi="on"):
    """A tiny guest with ACPI; SERIAL is a <serial> element. ACPI 'ignore': the guest does not act on
    the power button."""
    cmdline = f"console=ttyS0 quiet no_timer_check tg.name={name} tg.linger={linger}"
    if acpi == "ignore":
        cmdline += " tg.acpi=ignore"
    return (f"<domain type='{image.domain_type}'>\n  <name>{name}</name>\n"
            "  <memory unit='MiB'>96</memory>\n  <vcpu>1</vcpu>\n"
            "  <os>\n    <type arch='x86_64' machine='pc'>hvm</type>\n"
            f"    <kernel>{image.kernel}</kernel>\n    <initrd>{image.initrd}</initrd>\n"
            f"    <cmdline>{cmdline}</cmdline>\n  </os>\n  <features><acpi/></features>\n{extra}"
            f"  <devices>\n    <emulator>{QEMU}</emulator>\n{interfaces}    {serial}\n  </devices>\n</domain>\n")


def file_serial(path):
    return f"<serial type='file'><source path='{path}'/><target port='0'/></serial>"


PTY_SERIAL = "<serial type='pty'><target port='0'/></serial>"


@pytest.fixture
def image(tiny_guest):
    return tiny_guest


def reports(path):
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return []
    return [line[len("TG: "):].rstrip("\r") for line in text.splitlines() if line.startswith("TG: ")]


def test_a_guest_that_powers_off_goes_at_once_and_is_cleaned_up_quietly(ns, dirs, tmp_path, image):
    """QEMU exits with the guest; its tap goes with it and passt with QEMU, before any command runs;
    the next command tidies the rest up without a word, and `list` shows the domain shut off."""
    d = dirs
    d.runtime.chmod(0o711)  # passt, started by root, runs as nobody
    routable(ns)
    serial = tmp_path / "off.serial"
    nics = TAP + "    <interface type='user'>\n      <backend type='passt'/>\n      <model type='virtio'/>\n    </interface>\n"
    ok(virtnet(d, "define", write(tmp_path / "off.xml", guest_xml(image, "off", linger=0, serial=file_serial(serial),
                                                                    interfaces=nics))))
    before = snapshot(ns)
    ok(virtnet(d, "start", "off", netns=ns))
    pid = d.record("off")["pid"]
    assert "lctap0" in links(ns) and live_pids(str(d.runtime), program="passt")

    wait_until(lambda: not alive(pid), "the guest did not power off")
    assert "done" in reports(serial)
    assert "lctap0" not in links(ns)  # not persistent: gone with QEMU's descriptors
    wait_until(lambda: not live_pids(str(d.runtime), program="passt"), "passt did not exit with QEMU", timeout=10)

    assert listed(d) == ({"off": "shut off"}, "")  # no warning: the guest shut down
    assert_clean(ns, d, "off", before, pid)


def test_a_created_guest_that_powers_off_is_forgotten(ns, dirs, tmp_path, image):
    d = dirs
    serial = tmp_path / "gone.serial"
    ok(virtnet(d, "create", write(tmp_path / "gone.xml", guest_xml(image, "gone", linger=0, serial=file_serial(serial))),
               netns=ns))
    pid = d.record("gone")["pid"]
    wait_until(lambda: not alive(pid), "the guest did not power off")
    assert listed(d) == ({}, "")
    assert definitions(d) == [] and d.running_records() == [] and d.runtime_entries() == []


def test_reset_reboots_the_guest_at_once(ns, dirs, tmp_path, image):
    d = dirs
    serial = tmp_path / "again.serial"
    ok(virtnet(d, "create", write(tmp_path / "again.xml", guest_xml(image, "again", linger=600,
                                                                      serial=file_serial(serial))), netns=ns))
    wait_until(lambda: "done" in reports(serial), "the guest did not report")
    assert ok(virtnet(d, "reset", "again")) == "Domain 'again' was reset\n"
    wait_until(lambda: [r for r in reports(serial) if r.startswith("boot ")][1:], "the guest did not boot again")
    ok(virtnet(d, "destroy", "again"))
    assert definitions(d) == []


def test_a_reboot_the_guest_ignores_leaves_it_powering_off_as_before(ns, dirs, tmp_path, image):
    """While reboot waits, QEMU is told to pause rather than exit when the guest powers off; when
    the guest ignores the button that is undone: its own power-off later still ends QEMU."""
    d = dirs
    serial = tmp_path / "deaf.serial"
    ok(virtnet(d, "create", write(tmp_path / "deaf.xml", guest_xml(image, "deaf", linger=8, acpi="ignore",
                                                                     serial=file_serial(serial))), netns=ns))
    pid = d.record("deaf")["pid"]
    wait_until(lambda: "done" in reports(serial), "the guest did not report")
    error = fails(virtnet(d, "reboot", "deaf", "--timeout", "1"))
    assert "did not reboot within 1 s" in error and "`virtnet reset deaf`" in error
    wait_until(lambda: not alive(pid), "QEMU did not exit when the guest powered off", timeout=60)
    assert listed(d) == ({}, "")
    assert definitions(d) == []


def test_shutdown_of_a_guest_that_acts_on_acpi(ns, dirs, tmp_path, image):
    d = dirs
    serial = tmp_path / "polite.serial"
    ok(virtnet(d, "define", write(tmp_path / "polite.xml", guest_xml(image, "polite", linger=600,
                                                                       serial=file_serial(serial), interfaces=TAP))))
    before = snapshot(ns)
    ok(virtnet(d, "start", "polite", netns=ns))
    pid = d.record("polite")["pid"]
    wait_until(lambda: "done" in reports(serial), "the guest did not report")
    assert ok(virtnet(d, "shutdown", "polite", "--timeout", "120")) == "Domain 'polite' has been shut down\n"
    assert listed(d) == ({"polite": "shut off"}, "")
    assert_clean(ns, d, "polite", before, pid)


def test_reboot_of_a_guest_that_acts_on_acpi(ns, dirs, tmp_path, image):
    d = dirs
    serial = tmp_path / "twice.serial"
    # Each boot powers off 20 s after its report: the reboot comes first, the second boot's power-off
    # must then end QEMU (what reboot changed meanwhile is undone).
    ok(virtnet(d, "create", write(tmp_path / "twice.xml", guest_xml(image, "twice", linger=20,
                                                                      serial=file_serial(serial))), netns=ns))
    pid = d.record("twice")["pid"]
    wait_until(lambda: "done" in reports(serial), "the guest did not report")
    assert ok(virtnet(d, "reboot", "twice", "--timeout", "120")) == "Domain 'twice' is being rebooted\n"
    wait_until(lambda: [r for r in reports(serial) if r.startswith("boot ")][1:], "the guest did not boot again")
    assert d.record("twice")["pid"] == pid and alive(pid)  # the same QEMU, reset
    wait_until(lambda: not alive(pid), "QEMU did not exit when the rebooted guest powered off")
    assert listed(d) == ({}, "")


# --- console -----------------------------------------------------------------------------------------


class Session:
    """`virtnet console` with its standard input and output as pipes."""

    def __init__(self, argv, env, cwd=None):
        self.process = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE)
        os.set_blocking(self.process.stdout.fileno(), False)
        self.output = b""

    def read(self):
        """Everything the session printed so far."""
        if not self.process.stdout.closed:
            try:
                chunk = self.process.stdout.read()
            except BlockingIOError:
                chunk = None
            self.output += chunk or b""
        return self.output.decode(errors="replace")

    def expect(self, pattern, timeout=GUEST_TIMEOUT):
        return wait_until(lambda: re.search(pattern, self.read()), f"no {pattern!r} on the console "
                          f"(got {self.read()!r})", timeout=timeout)

    def send(self, data):
        self.process.stdin.write(data)
        self.process.stdin.flush()

    def finish(self, timeout=30):
        """(exit status, standard error) once the session has ended by itself."""
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError(f"the console session did not end within {timeout} s; output: {self.read()!r}")
        finally:
            self.read()
            self.process.stdin.close()
            self.process.stdout.close()
        err = self.process.stderr.read().decode(errors="replace")
        self.process.stderr.close()
        return self.process.returncode, err


def run_guest(d, qmp_path):
    with qmp(qmp_path) as client:
        client.execute("cont")


def test_console_relays_the_guest_both_ways_and_ctrl_bracket_leaves(ns, dirs, tmp_path, image):
    d = dirs
    ok(virtnet(d, "create", write(tmp_path / "chat.xml", guest_xml(image, "chat", linger=600, serial=PTY_SERIAL)),
               "--paused", netns=ns))  # paused, so that nothing the guest says is missed
    session = Session(cli_argv(d, "console", "chat"), cli_env())
    # A second session is refused while the first holds the console.
    wait_until(lambda: (d.runtime / "chat" / "console.lock").exists(), "no console lock", timeout=30)
    time.sleep(0.5)
    assert "the console of domain 'chat' is already in use by another session (virtnet pid " in \
        fails(virtnet(d, "console", "chat"))
    run_guest(d, d.record("chat")["qmp"])

    session.expect(r"TG: boot \S+ name chat\r\n")
    session.expect(r"TG: done\r\n")
    # The guest's tty echoes what is typed (its line discipline: /init reads nothing).
    mark = len(session.output)
    session.send(b"hello guest\r")
    wait_until(lambda: (session.read(), b"hello guest" in session.output[mark:])[1], "the guest did not echo",
               timeout=30)
    session.send(b"\x1d")
    status, err = session.finish()
    assert status == 0, err
    assert err.startswith("Connected to domain 'chat' (serial0, /dev/pts/")
    assert "Escape character is ^] (Ctrl + ])" in err
    assert alive(d.record("chat")["pid"])  # leaving the console leaves the guest running
    ok(virtnet(d, "destroy", "chat"))


def test_console_reports_when_the_guest_goes_away(ns, dirs, tmp_path, image):
    d = dirs
    ok(virtnet(d, "create", write(tmp_path / "brief.xml", guest_xml(image, "brief", linger=0, serial=PTY_SERIAL)),
               "--paused", netns=ns))
    session = Session(cli_argv(d, "console", "brief"), cli_env())
    wait_until(lambda: (d.runtime / "brief" / "console.lock").exists(), "no console lock", timeout=30)
    run_guest(d, d.record("brief")["qmp"])
    status, err = session.finish(timeout=GUEST_TIMEOUT)
    assert status == 0, err
    assert "TG: done" in session.read()
    assert err.splitlines()[-1] == "Disconnected from domain 'brief': its console closed (has the domain stopped?)"
    assert listed(d) == ({}, "")


def test_console_of_a_unix_socket_serial(ns, dirs, tmp_path, image):
    d = dirs
    sock = d.runtime / "brief-serial.sock"
    serial = f"<serial type='unix'><source mode='bind' path='{sock}'/><target port='0'/></serial>"
    ok(virtnet(d, "create", write(tmp_path / "sock.xml", guest_xml(image, "sock", linger=600, serial=serial)),
               "--paused", netns=ns))
    session = Session(cli_argv(d, "console", "sock"), cli_env())
    wait_until(lambda: (d.runtime / "sock" / "console.lock").exists(), "no console lock", timeout=30)
    time.sleep(0.3)
    run_guest(d, d.record("sock")["qmp"])
    session.expect(r"TG: done\r\n")
    session.send(b"\x1d")
    status, err = session.finish()
    assert status == 0 and f"(serial0, {sock})" in err, err
    ok(virtnet(d, "destroy", "sock"))
    sock.unlink(missing_ok=True)


def test_console_says_where_a_file_serial_goes_and_when_there_is_none(ns, dirs, tmp_path):
    d = dirs
    log = tmp_path / "serial.log"
    ok(virtnet(d, "create", write(tmp_path / "f.xml", no_os_xml("f", devices=f"    {file_serial(log)}\n")), "--paused",
               netns=ns))
    ok(virtnet(d, "create", write(tmp_path / "none.xml", no_os_xml("none")), "--paused", netns=ns))
    assert fails(virtnet(d, "console", "f")) == (
        f"virtnet: error: domain 'f': <serial type='file'> (serial0) writes to the file {log}; read it there "
        f"(e.g. `tail -f {log}`), or use <serial type='pty'> to attach")
    assert fails(virtnet(d, "console", "none")) == (
        "virtnet: error: domain 'none' has no console: give it a <serial type='pty'> (a <console type='pty'> goes "
        "with it)")
    assert "has no character device 'serial3' (it has: serial0)" in fails(virtnet(d, "console", "f", "--devname",
                                                                                  "serial3"))
    ok(virtnet(d, "destroy", "f"))
    ok(virtnet(d, "destroy", "none"))


def test_the_live_xml_names_the_ptys_qemu_opened(ns, dirs, tmp_path):
    d = dirs
    devices = ("    <serial type='pty'><target port='0'/></serial>\n"
               "    <console type='pty'><source path='/dev/pts/999'/><target type='serial' port='0'/></console>\n"
               "    <console type='pty' tty='/dev/pts/999'><target type='virtio' port='1'/></console>\n")
    ok(virtnet(d, "define", write(tmp_path / "p.xml", no_os_xml("p", devices=devices))))
    ok(virtnet(d, "start", "p", "--paused", netns=ns))
    live = ok(virtnet(d, "dumpxml", "p"))
    paths = re.findall(r"<source path='(/dev/pts/\d+)'/>", live)
    # As libvirt's live XML: the serial port and the serial console share one pty, the virtio
    # console has its own, and each <console> repeats its pty as tty=.
    assert len(paths) == 3 and paths[0] == paths[1] != paths[2], live
    assert re.findall(r"<console type='pty' tty='(/dev/pts/\d+)'>", live) == paths[1:], live
    assert "/dev/pts/999" not in live
    for path in set(paths):
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            assert os.isatty(fd), path
        finally:
            os.close(fd)
    assert "/dev/pts" not in ok(virtnet(d, "dumpxml", "p", "--inactive"))  # QEMU picks them at each start
    ok(virtnet(d, "destroy", "p"))


def test_a_user_attaches_to_the_console_of_a_domain_of_their_own(ns, unprivileged_user, image):  # noqa: F811
    """No privileges needed: the user's QEMU made the pty as that user."""
    user = unprivileged_user
    python = python_for(user)
    work = Path(tempfile.mkdtemp(prefix="vnt-lc-", dir="/tmp"))
    work.chmod(0o755)
    uid = int(subprocess.run(["id", "-u", user], capture_output=True, text=True, check=True).stdout)
    for sub in ("state", "run"):
        (work / sub).mkdir()
        os.chown(work / sub, uid, -1)
    xml = write(work / "mine.xml", guest_xml(image, "mine", linger=600, serial=PTY_SERIAL).replace(
        "<domain type='kvm'>", "<domain type='qemu'>"))
    xml.chmod(0o644)

    def as_user(*args):
        return ["ip", "netns", "exec", ns, "runuser", "-u", user, "--",
                *python.argv("-m", "virtnet", "--state-dir", work / "state", "--runtime-dir", work / "run", *args)]

    try:
        ok(subprocess.run(as_user("create", xml, "--paused"), capture_output=True, text=True, cwd=work,
                          env=user_env(), timeout=60))
        session = Session(as_user("console", "mine"), user_env(), cwd=work)
        wait_until(lambda: (work / "run" / "mine" / "console.lock").exists(), "no console lock", timeout=60)
        time.sleep(0.3)
        with qmp(json.loads((work / "state" / "running" / "mine.json").read_text())["qmp"]) as client:
            client.execute("cont")
        session.expect(r"TG: done\r\n")
        session.send(b"\x1d")
        status, err = session.finish()
        assert status == 0, err
        ok(subprocess.run(as_user("destroy", "mine"), capture_output=True, text=True, cwd=work, env=user_env(),
                          timeout=60))
    finally:
        for pid in live_pids(str(work)):
            kill(pid)
        shutil.rmtree(work, ignore_errors=True)
