"""Hardening: values that would reach a script, a unit file, a comment or QEMU's argv are refused
at validation; the generated scripts quote everything and only configure taps they create.

Everything runs through the real CLI. Generated scripts are checked with `sh -n`, then run for real
as root inside a fresh network namespace, to prove that nothing but the intended commands runs.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from virtnet.errors import StoreError
from virtnet.store import check_name

REPO = Path(__file__).resolve().parents[1]
SEED = REPO / "testdata" / "xml2argv" / "net-eth-unmanaged-tap.xml"
PASST = REPO / "examples" / "passt.xml"
VERBS = ["validate", "xml2xml", "xml2argv", "plan", "define"]

def virtnet(*args, stdin=None, state=None):
    extra = ["--state-dir", str(state / "state"), "--runtime-dir", str(state / "run")] if state else []
    return subprocess.run([sys.executable, "-m", "virtnet", *extra, *args], input=stdin, capture_output=True,
                          text=True, cwd=REPO, timeout=60)


def variant(tmp_path, old, new, seed=SEED, name="dom.xml"):
    text = seed.read_text()
    assert old in text
    path = tmp_path / name
    path.write_text(text.replace(old, new, 1))
    return path


def name_variant(tmp_path, name):
    return variant(tmp_path, "<name>QEMUGuest1</name>", f"<name>{name}</name>")


def run_verb(verb, path, tmp_path):
    args = [verb, str(path)]
    if verb == "plan":
        args = ["plan", "--format", "sh", "--owner", "root", str(path)]
    return virtnet(*args, state=tmp_path)


def assert_one_line_refusal(result, path, line=None):
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    prefix = f"virtnet: error: {path}:" + (f"{line}: " if line else "")
    assert result.stderr.startswith(prefix), result.stderr


def in_ns(ns, *argv, **kwargs):
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=60,
                          **kwargs)


def link_field(ns, dev, field):
    return in_ns(ns, "cat", f"/sys/class/net/{dev}/{field}").stdout.strip()


# --- 1. injection through names and paths ---------------------------------------------------------


@pytest.mark.parametrize("verb", VERBS)
def test_a_newline_in_the_domain_name_is_refused_by_every_verb(tmp_path, verb):
    marker = tmp_path / "PWNED"
    path = name_variant(tmp_path, f"x&#10;touch {marker}&#10;#")
    result = run_verb(verb, path, tmp_path)
    assert_one_line_refusal(result, path, 2)
    assert "<name>x\\ntouch" in result.stderr and "control character U+000A" in result.stderr
    assert "accepted: printable characters only" in result.stderr
    assert not marker.exists()


def test_networkd_cannot_be_given_extra_lines_through_the_name(tmp_path):
    path = name_variant(tmp_path, "x&#10;[Tap]&#10;User=root")
    result = virtnet("plan", "--format", "networkd", "--owner", "root", str(path))
    assert_one_line_refusal(result, path, 2)
    assert "[Tap]" not in result.stdout


@pytest.mark.parametrize("old,new", [
    ("<backend type='passt'/>", "<backend type='passt' logFile='/tmp/p.log&#10;touch MARK'/>"),
    ("<backend type='passt'/>", "<source dev='eth0&#10;touch MARK'/><backend type='passt'/>"),
])
def test_standalone_passt_comment_lines_cannot_carry_a_command(tmp_path, old, new):
    marker = tmp_path / "MARK"
    path = variant(tmp_path, old, new.replace("MARK", str(marker)), seed=PASST)
    result = virtnet("xml2argv", "--standalone", str(path))
    assert_one_line_refusal(result, path)
    assert "control character" in result.stderr
    assert not marker.exists()


@pytest.mark.parametrize("text,shown", [
    ("x&#9;y", "x\\ty"),              # tab: spoofs `list` columns
    ("ok&#x202E;gpj.exe", "ok\\u202egpj.exe"),  # right-to-left override
    ("x&#x85;y", "x\\u0085y"),        # a C1 control (NEL)
    ("x&#x7F;y", "x\\u007fy"),        # DEL
])
def test_names_with_tabs_bidi_and_c1_controls_are_refused(tmp_path, text, shown):
    path = name_variant(tmp_path, text)
    result = virtnet("validate", str(path))
    assert_one_line_refusal(result, path, 2)
    assert shown in result.stderr


@pytest.mark.parametrize("name,why", [("a/b", "contains '/'"), (".tmp-x", "starts with '.'"),
                                      (".hidden", "starts with '.'")])
@pytest.mark.parametrize("verb", ["validate", "define"])
def test_libvirt_name_rules(tmp_path, name, why, verb):
    path = name_variant(tmp_path, name)
    result = run_verb(verb, path, tmp_path)
    assert_one_line_refusal(result, path, 2)
    assert why in result.stderr


def test_the_store_refuses_hidden_and_control_names():
    for name in (".tmp-x", "a\nb", "a\u202eb", "a\tb"):
        with pytest.raises(StoreError):
            check_name(name)
    check_name("ok-name_1.2")


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs sh")
def test_shell_metacharacters_in_a_valid_name_never_run(tmp_path, outside_netns):
    marker = tmp_path / "MARKER"
    name = "x'; touch MARKER; echo '$(touch MARKER)`touch MARKER` \"$(touch MARKER)\""  # no '/' in a name
    path = name_variant(tmp_path, name.replace("'", "&apos;"))
    result = virtnet("plan", "--format", "sh", "--owner", "root", str(path))
    assert result.returncode == 0, result.stderr
    script = tmp_path / "precreate.sh"
    script.write_text(result.stdout)
    assert subprocess.run(["sh", "-n", str(script)]).returncode == 0
    run = in_ns(outside_netns, "sh", str(script), cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert not marker.exists()
    assert link_field(outside_netns, "mytap0", "address") == "fa:11:22:33:44:55"


# --- 2. the pre-create script only configures a tap it created ------------------------------------


def precreate_script(tmp_path, owner="root"):
    result = virtnet("plan", "--format", "sh", "--owner", owner, str(SEED))
    assert result.returncode == 0, result.stderr
    script = tmp_path / "precreate.sh"
    script.write_text(result.stdout)
    assert subprocess.run(["sh", "-n", str(script)]).returncode == 0
    return script


def test_an_existing_device_that_is_not_a_tap_is_refused_and_left_alone(tmp_path, outside_netns):
    script = precreate_script(tmp_path)
    assert in_ns(outside_netns, "ip", "link", "add", "mytap0", "address", "02:00:00:00:00:01", "type", "veth",
                 "peer", "name", "mypeer0").returncode == 0
    run = in_ns(outside_netns, "sh", str(script))
    assert run.returncode == 1
    assert "mytap0 already exists and is not a tap" in run.stderr
    assert link_field(outside_netns, "mytap0", "address") == "02:00:00:00:00:01"
    assert link_field(outside_netns, "mytap0", "operstate") == "down"


def test_an_existing_tap_of_another_owner_is_refused_and_left_alone(tmp_path, outside_netns):
    script = precreate_script(tmp_path, owner="root")
    assert in_ns(outside_netns, "ip", "tuntap", "add", "dev", "mytap0", "mode", "tap", "user", "nobody").returncode == 0
    before = link_field(outside_netns, "mytap0", "address")
    run = in_ns(outside_netns, "sh", str(script))
    assert run.returncode == 1
    assert "tap mytap0 already exists but is not owned by root" in run.stderr
    assert link_field(outside_netns, "mytap0", "address") == before != "fa:11:22:33:44:55"
    assert "UP" not in in_ns(outside_netns, "ip", "-br", "link", "show", "mytap0").stdout.split("<")[-1]


def test_an_existing_tap_of_the_owner_is_accepted_unchanged_and_a_new_one_is_set_up(tmp_path, outside_netns):
    script = precreate_script(tmp_path, owner="root")
    run = in_ns(outside_netns, "sh", str(script))  # creates it
    assert run.returncode == 0, run.stderr
    assert link_field(outside_netns, "mytap0", "address") == "fa:11:22:33:44:55"
    assert link_field(outside_netns, "mytap0", "owner") == "0"
    assert in_ns(outside_netns, "ip", "link", "set", "dev", "mytap0", "address", "02:00:00:00:00:09").returncode == 0
    run = in_ns(outside_netns, "sh", str(script))  # exists, right owner: kept as it is
    assert run.returncode == 0, run.stderr
    assert link_field(outside_netns, "mytap0", "address") == "02:00:00:00:00:09"


@pytest.mark.parametrize("fmt", ["sh", "networkd"])
def test_owner_must_be_an_existing_user(fmt):
    result = virtnet("plan", "--format", fmt, "--owner", "no-such-user-xyz", str(SEED))
    assert result.returncode == 2
    assert result.stderr == ("virtnet: error: --owner 'no-such-user-xyz': no such user on this host; "
                             "name an existing user (see getent passwd)\n")
    assert result.stdout == ""


# --- 3. -machine injection ------------------------------------------------------------------------


@pytest.mark.parametrize("machine", ["pc,usb=on", "pc,kernel=/etc/hostname", "pc q35", ""])
def test_machine_names_are_letters_digits_dot_underscore_dash(tmp_path, machine):
    path = variant(tmp_path, "machine='pc'", f"machine='{machine}'")
    result = virtnet("xml2argv", str(path))
    assert_one_line_refusal(result, path, 8)
    assert "is not a machine type name; accepted: letters, digits, '.', '_' and '-'" in result.stderr


def test_a_versioned_machine_name_is_accepted(tmp_path):
    path = variant(tmp_path, "machine='pc'", "machine='pc-i440fx-7.2'")
    result = virtnet("xml2argv", str(path))
    assert result.returncode == 0, result.stderr
    assert "-machine pc-i440fx-7.2," in result.stdout


# --- 9. no tracebacks: what validate accepts, every verb handles ----------------------------------


BAD_VALUES = {
    "empty-name": ("<name>QEMUGuest1</name>", "<name/>", 2, "<name> is empty"),
    "blank-name": ("<name>QEMUGuest1</name>", "<name>  </name>", 2, "<name> is empty"),
    "huge-queues": ("<model type='virtio'/>", "<model type='virtio'/><driver queues='99999999999999999999999'/>",
                    29, "<driver> queues='99999999999999999999999' is not valid"),
    "many-queues": ("<model type='virtio'/>", "<model type='virtio'/><driver queues='257'/>",
                    29, "is out of range 1..256"),
    "vcpu-5000-digits": ("<vcpu placement='static'>1</vcpu>", "<vcpu placement='static'>" + "9" * 5000 + "</vcpu>",
                         6, "expected a positive integer"),
    "vcpu-huge": ("<vcpu placement='static'>1</vcpu>", "<vcpu placement='static'>99999999999</vcpu>",
                  6, "expected a positive integer"),
    "pci-slot-5000-digits": ("<model type='virtio'/>",
                             "<model type='virtio'/><address type='pci' slot='" + "1" * 5000 + "'/>",
                             29, "not valid"),
}


@pytest.mark.parametrize("verb", VERBS)
@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_out_of_range_values_are_refused_by_every_verb_without_traceback(tmp_path, case, verb):
    old, new, line, message = BAD_VALUES[case]
    path = variant(tmp_path, old, new)
    result = run_verb(verb, path, tmp_path)
    assert_one_line_refusal(result, path, line)
    assert message in result.stderr


# --- 10. validation gaps --------------------------------------------------------------------------


@pytest.mark.parametrize("old,new,line,message", [
    ("<model type='virtio'/>", "<model type='virtio&#10;'/>", 29, "control character U+000A"),
    ("<target dev='mytap0' managed='no'/>", "<target dev='' managed='no'/>", 28, "is not a usable interface name"),
    ("<interface type='ethernet'>", "<interface type='bridge'><source bridge='br0&#10;touch x'/>", 26,
     "<source bridge='br0\\ntouch x'> contains the control character U+000A"),
    ("<emulator>/usr/bin/qemu-system-i686</emulator>", "<emulator>/usr/bin/qemu&#10;id</emulator>", 16,
     "expected an absolute path"),
    ("<emulator>/usr/bin/qemu-system-i686</emulator>", "<emulator>/usr/bin/qemu&#9;id</emulator>", 16,
     "<emulator>/usr/bin/qemu\\tid</emulator> contains the control character U+0009"),
    ("<mac address='fe:11:22:33:44:55'/>", "<mac address='fe:11:22:33:44:55'/><alias name='ua-a&#x202E;b'/>",
     27, "U+202E"),
])
def test_values_with_control_characters_or_empty_names_are_refused(tmp_path, old, new, line, message):
    path = variant(tmp_path, old, new.replace("</interface>", ""))
    if "type='bridge'" in new:
        path.write_text(path.read_text().replace("<target dev='mytap0' managed='no'/>", ""))
    for verb in ("validate", "xml2argv"):
        result = virtnet(verb, str(path))
        assert_one_line_refusal(result, path, line)
        assert message in result.stderr


def test_blank_elements_and_numbers_may_be_laid_out_on_lines(tmp_path):
    path = variant(tmp_path, "<vcpu placement='static'>1</vcpu>",
                   "<vcpu placement='static'>\n    1\n  </vcpu>\n  <blkiotune>\n  </blkiotune>")
    assert virtnet("validate", str(path)).returncode == 0
    path = name_variant(tmp_path, "\n    QEMUGuest1\n  ")
    result = virtnet("validate", str(path))
    assert_one_line_refusal(result, path, 2)
    assert "<name>\\n    QEMUGuest1\\n  </name> contains the control character U+000A" in result.stderr


def test_a_description_may_span_lines(tmp_path):
    path = variant(tmp_path, "<name>QEMUGuest1</name>",
                   "<name>QEMUGuest1</name><description>two\n\tlines</description>")
    assert virtnet("validate", str(path)).returncode == 0


def test_a_name_starting_with_a_dash_needs_double_dash(tmp_path):
    # argparse reads `-dash` as an option: a usage error (exit 2). After `--` it is a NAME.
    result = virtnet("dumpxml", "-dash", state=tmp_path)
    assert result.returncode == 2 and "usage:" in result.stderr
    result = virtnet("dumpxml", "--", "-dash", state=tmp_path)
    assert result.returncode == 1
    assert "no domain named '-dash' is defined" in result.stderr
