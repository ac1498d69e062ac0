"""Hints that lead somewhere: each one, followed, must not lead to the next warning.

- The bridge helper's privilege failure: no "make it setuid" for a helper that already is, and what
  keeps its privilege from working instead. Each case installs a stand-in helper file the way an
  administrator would (plain, setuid root, setcap, on a nosuid mount, run under no_new_privs) and
  asks for the message of the helper's own failure text; the real helper's failures are run in
  tests/test_bridge_helper.py.
- A managed='no' tap that is missing, or was made without vnet_hdr: the command the hint gives is
  run, and the next start has no warning.
- define warns, one line per interface, about the interface types start refuses.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hostcases import domain_xml, fails, ip, ok, virtnet, write
from virtnet.conf import iftypes
from virtnet.host import bridgehelper

REPO = Path(__file__).resolve().parents[1]

NO_CAP = "failed to create tun device: Operation not permitted"
NO_TUN = "failed to open /dev/net/tun: Permission denied"


def message(helper, text):
    return bridgehelper._failure(str(helper), "br0", 1, text)


@pytest.fixture
def helper(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root: installs a root-owned setuid or setcap helper")
    path = tmp_path / "qemu-bridge-helper"
    path.write_text("#!/bin/sh\n")
    os.chmod(path, 0o755)
    return path


def test_a_plain_helper_is_told_to_get_the_privilege(helper):
    text = message(helper, NO_CAP)
    assert text.endswith(f"; the helper needs CAP_NET_ADMIN and has neither setuid root nor the capability: "
                         f"`chmod u+s {helper}` or `setcap cap_net_admin+ep {helper}`"), text
    assert "chmod 0666 /dev/net/tun" in message(helper, NO_TUN)


def test_a_setuid_helper_is_not_told_to_be_setuid(helper):
    os.chmod(helper, 0o4755)
    for failure in (NO_CAP, NO_TUN):
        text = message(helper, failure)
        assert "chmod u+s" not in text, text
        assert "; the helper is already setuid root, so something else denied it" in text, text


def test_a_setcap_helper_that_cannot_open_tun_is_told_why(helper):
    setcap = shutil.which("setcap") or shutil.which("setcap", path="/usr/sbin:/sbin")
    if setcap is None:
        pytest.skip("needs setcap (Debian: libcap2-bin)")
    subprocess.run([setcap, "cap_net_admin+ep", str(helper)], check=True)
    assert "the helper is already given cap_net_admin (a file capability)" in message(helper, NO_CAP)
    text = message(helper, NO_TUN)
    assert "has cap_net_admin but not the right to open a root-only /dev/net/tun" in text, text


def run_elsewhere(prefix, helper, failure):
    """The message as a process run under PREFIX (a command line) computes it."""
    code = ("import sys; from virtnet.host import bridgehelper as b; "
            "print(b._failure(sys.argv[1], 'br0', 1, sys.argv[2]))")
    result = subprocess.run([*prefix, sys.executable, "-c", code, str(helper), failure], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_a_setuid_helper_on_a_nosuid_mount_is_told_so(helper, tmp_path):
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux)")
    mount = tmp_path / "nosuid"
    mount.mkdir()
    script = (f"mount -t tmpfs -o nosuid tmpfs {mount} && cp -p {helper} {mount}/ && chmod 4755 {mount}/{helper.name}"
              ' && exec "$@"')
    text = run_elsewhere(["unshare", "--mount", "sh", "-c", script, "sh"], mount / helper.name, NO_CAP)
    assert f"; the helper is setuid root, but {mount} is on a file system mounted nosuid, so it ran without " \
           "privileges" in text, text


def test_a_setuid_helper_under_no_new_privs_is_told_so(helper):
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux)")
    os.chmod(helper, 0o4755)
    text = run_elsewhere(["setpriv", "--no-new-privs"], helper, NO_CAP)
    assert "; the helper is setuid root, but virtnet runs with no_new_privs" in text, text


# --- managed='no' taps ---------------------------------------------------------------------------

UNMANAGED = """    <interface type='ethernet'>
      <mac address='52:54:00:e1:00:01'/>
      <target dev='pre1' managed='no'/>
      <model type='virtio'/>
    </interface>
"""


def hinted_command(text):
    """The first `ip tuntap ...` command of a message, as a reader would copy it (for user $USER)."""
    import re

    command = re.search(r"`(ip tuntap [^`]*)`", text).group(1)
    return command.replace("$USER", "root")


def test_following_the_missing_tap_hint_gives_a_tap_that_starts_without_warnings(ns, dirs, tmp_path):
    d = dirs
    ok(virtnet(d, "define", write(tmp_path / "um.xml", domain_xml("um", UNMANAGED))))
    error = fails(virtnet(d, "start", "um", "--paused", netns=ns))
    assert "target dev 'pre1' (managed='no') does not exist" in error
    command = hinted_command(error)
    assert command == "ip tuntap add dev pre1 mode tap user root vnet_hdr", error
    subprocess.run(["ip", "netns", "exec", ns, "sh", "-c", command], check=True)
    started = virtnet(d, "start", "um", "--paused", netns=ns)
    ok(started)
    assert started.stderr == "", started.stderr
    ok(virtnet(d, "destroy", "um", netns=ns))


def test_following_the_vnet_hdr_warning_gives_a_tap_that_starts_without_it(ns, dirs, tmp_path):
    d = dirs
    ip("-n", ns, "tuntap", "add", "dev", "pre1", "mode", "tap")
    ok(virtnet(d, "define", write(tmp_path / "um.xml", domain_xml("um", UNMANAGED))))
    started = virtnet(d, "start", "um", "--paused", netns=ns)
    ok(started)
    assert "was created without vnet_hdr" in started.stderr, started.stderr
    ok(virtnet(d, "destroy", "um", netns=ns))
    command = hinted_command(started.stderr)
    assert command == "ip tuntap del dev pre1 mode tap && ip tuntap add dev pre1 mode tap user root vnet_hdr"
    subprocess.run(["ip", "netns", "exec", ns, "sh", "-c", command], check=True)
    again = virtnet(d, "start", "um", "--paused", netns=ns)
    ok(again)
    assert again.stderr == "", again.stderr
    ok(virtnet(d, "destroy", "um", netns=ns))


# --- define ----------------------------------------------------------------------------------------

REFUSED_BY_START = """    <interface type='network'>
      <source network='default'/>
    </interface>
    <interface type='user'/>
    <interface type='direct'>
      <source dev='eth0' mode='vepa'/>
    </interface>
"""


def test_define_warns_about_each_interface_start_will_refuse(tmp_path):
    """type='network' on a network that is not defined is refused by start; type='direct'
    (macvtap) runs, so define says nothing of it. Once the network is defined, nothing either."""
    path = write(tmp_path / "mixed.xml", domain_xml("mixed", REFUSED_BY_START))
    argv = [sys.executable, "-m", "virtnet", "--state-dir", str(tmp_path / "state")]
    result = subprocess.run(argv + ["define", str(path)], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    assert all(iftypes.kind(kind).driven for kind in ("network", "user", "direct"))
    lines = path.read_text().splitlines()
    line = 1 + next(i for i, text in enumerate(lines) if "<interface type='network'" in text)
    assert result.stderr.splitlines() == [
        f"virtnet: warning: {path}:{line}: network 'default' is not defined: `virtnet start mixed` will refuse it "
        "until `virtnet net-define` and `virtnet net-start default`"], result.stderr
    assert result.stdout == f"Domain 'mixed' defined from {path}\n"
    network = write(tmp_path / "default.xml", "<network><name>default</name><ip address='10.7.0.1' prefix='24'/>"
                                              "</network>")
    subprocess.run(argv + ["net-define", str(network)], check=True, capture_output=True, cwd=REPO, timeout=60)
    again = subprocess.run(argv + ["define", str(path)], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert again.returncode == 0 and again.stderr == "", again.stderr


def test_define_warns_about_what_building_the_command_line_refuses(tmp_path):
    """A definition that validate refuses for the command-line builder's rules (here: a timezone
    clock without its timezone) is still stored by define, which says at once that start will
    refuse it, with validate's message."""
    path = write(tmp_path / "tz.xml", domain_xml("tz", "").replace("<devices>", "<clock offset='timezone'/>\n  <devices>", 1))
    assert "<clock offset='timezone'/>" in path.read_text()
    argv = [sys.executable, "-m", "virtnet", "--state-dir", str(tmp_path / "state")]
    validate = subprocess.run(argv + ["validate", str(path)], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert validate.returncode == 1 and "needs the attribute timezone=" in validate.stderr, validate.stderr
    result = subprocess.run(argv + ["define", str(path)], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    message = validate.stderr.removeprefix("virtnet: error: ").rstrip("\n")
    assert result.stderr == f"virtnet: warning: {message}; `virtnet start tz` will refuse it\n"
    assert result.stdout == f"Domain 'tz' defined from {path}\n"
