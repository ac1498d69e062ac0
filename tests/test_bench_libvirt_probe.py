"""`make bench` finishes in its stated time whatever libvirt does: the probe is bounded, and each
virsh call of a benchmark too, and a skip says why (not installed, no daemon, no answer, too slow,
virsh's own error).

Each case puts a stand-in `virsh` script first in PATH that behaves like one kind of host: none,
no daemon installed, a daemon that hangs (and leaves a child holding virsh's pipes), a slow one.
"""

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import benchlib  # noqa: E402

NO_SOCKET = ("error: failed to connect to the hypervisor\n"
             "error: Failed to connect socket to '/var/run/libvirt/virtqemud-sock': No such file or directory")


@pytest.fixture
def fake_virsh(tmp_path, monkeypatch):
    """Installs a `virsh` running the given shell body; PATH then finds only it (and sh's tools)."""
    folder = tmp_path / "bin"
    folder.mkdir()

    def install(body):
        script = folder / "virsh"
        script.write_text(f"#!/bin/sh\n{body}\n")
        script.chmod(0o755)
        return script

    monkeypatch.setenv("PATH", f"{folder}:/usr/bin:/bin")
    return install


def test_no_virsh(fake_virsh, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert benchlib.probe_libvirt() == "virsh is not installed (Debian: libvirt-clients)"


def test_no_daemon_says_so_with_virshs_error(fake_virsh, monkeypatch):
    fake_virsh(f"printf '%s\\n' \"{NO_SOCKET}\" >&2; exit 1")
    monkeypatch.setattr(benchlib, "LIBVIRT_DAEMONS", ("/nonexistent/libvirtd",))
    assert benchlib.probe_libvirt() == (
        "no libvirt daemon is installed (Debian: libvirt-daemon-system); virsh -c qemu:///system: failed to "
        "connect to the hypervisor; Failed to connect socket to '/var/run/libvirt/virtqemud-sock': No such file "
        "or directory")


def test_an_installed_daemon_that_refuses_is_not_called_missing(fake_virsh, monkeypatch, tmp_path):
    fake_virsh("echo 'error: authentication unavailable' >&2; exit 1")
    daemon = tmp_path / "virtqemud"
    daemon.touch()
    monkeypatch.setattr(benchlib, "LIBVIRT_DAEMONS", (str(daemon),))
    assert benchlib.probe_libvirt() == ("a libvirt daemon is installed but virsh -c qemu:///system failed: "
                                        "authentication unavailable")


def test_a_hanging_daemon_is_given_up_on_in_time(fake_virsh):
    # A child holding the pipes open (as a spawned helper would) must not extend the wait either.
    fake_virsh("sleep 60 & sleep 60")
    started = time.monotonic()
    reason = benchlib.probe_libvirt(timeout=1)
    assert time.monotonic() - started < 5
    assert reason == "the libvirt daemon did not answer `virsh -c qemu:///system version` within 1 s"


def test_a_slow_daemon_is_not_compared_with(fake_virsh):
    fake_virsh("sleep 0.6; echo 'Running hypervisor: QEMU 7.2.0'")
    reason = benchlib.probe_libvirt(timeout=5, slow=0.3)
    assert reason.startswith("the libvirt daemon took 0.") and reason.endswith(
        " s to answer `virsh -c qemu:///system version` (over 0.3 s): every virsh call would be as slow"), reason


def test_a_quick_daemon_is_compared_with(fake_virsh):
    fake_virsh("echo 'Running hypervisor: QEMU 7.2.0'")
    assert benchlib.probe_libvirt() is None


def test_each_virsh_call_of_a_benchmark_is_bounded(fake_virsh, monkeypatch):
    virsh = fake_virsh("exec sleep 60")
    monkeypatch.setattr(benchlib, "VIRSH_CALL_TIMEOUT", 1.0)
    monkeypatch.setattr(benchlib, "_virsh_spent", [0.0])
    started = time.monotonic()
    with pytest.raises(benchlib.VirshTimeout, match=r"^`\S+/virsh domxml-to-native x.xml` did not finish within 1 s$"):
        benchlib.run([str(virsh), "domxml-to-native", "x.xml"])
    assert time.monotonic() - started < 5
    # Past the run's budget, no virsh call starts at all.
    monkeypatch.setattr(benchlib, "_virsh_spent", [benchlib.VIRSH_BUDGET])
    with pytest.raises(benchlib.VirshTimeout, match="virsh calls took over 120 s in all"):
        benchlib.run(["virsh", "version"])
