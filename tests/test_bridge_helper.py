"""Bridges through qemu-bridge-helper: the ACL read with the helper's rules, and `virtnet start`
running the real helper (as root with --unprivileged, and as a freshly created non-root user with
a copy of the helper given CAP_NET_ADMIN by setcap).

The helper's ACL file (/etc/qemu/bridge.conf, compiled into the helper) is global: every test
that writes it takes the `bridge_conf` fixture, which serialises them across pytest-xdist workers
with a lock (flock on this file) and puts the original back (by renaming it, so contents, owner, mode and times are
exactly as they were; if there was none, the file, and /etc/qemu when it was created, are removed).
"""

import fcntl
import json
import os
import shutil
import stat
import subprocess
import uuid
from pathlib import Path

import pytest

from hostcases import (
    alive,
    assert_clean,
    domain_xml,
    fails,
    info_network,
    ip,
    links,
    live_state,
    ok,
    qmp,
    snapshot,
    tap_of_fd,
    uids_of,
    user_workspace,
    virtnet,
    write,
)
from virtnet.errors import HostError
from virtnet.host import bridgeacl, bridgehelper
from virtnet.host.plan import RunBridgeHelper, build_plan

BR_MAC = "02:00:00:00:0b:00"
NIC_MAC = "52:54:00:b0:00:01"
# The lock that serialises the tests writing the ACL: this file, which every xdist worker shares
# and which exists anyway (so no lock file is left behind).
LOCK_PATH = __file__


def real_helper():
    try:
        return bridgehelper.find_helper()
    except HostError as e:
        pytest.skip(f"needs qemu-bridge-helper: {e}")


def require_root():
    if os.geteuid() != 0:
        pytest.skip("needs root: writes the bridge helper's ACL file and creates namespaces")


# --- the ACL file, owned by one test at a time ----------------------------------------------------


@pytest.fixture
def bridge_conf():
    """A function writing the helper's ACL file (None removes it) for this test only."""
    require_root()
    path = Path(bridgeacl.helper_acl_path(real_helper()))
    with open(LOCK_PATH, "rb") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        made_dir = not path.parent.exists()
        path.parent.mkdir(parents=True, exist_ok=True)
        backup = path.with_name(f".{path.name}.virtnet-test-{uuid.uuid4().hex[:8]}")
        had_file = os.path.lexists(path)
        if had_file:
            os.rename(path, backup)

        def set_conf(text):
            if os.path.lexists(path):
                os.unlink(path)
            if text is not None:
                path.write_text(text)
                path.chmod(0o644)
            return path

        try:
            yield set_conf
        finally:
            if os.path.lexists(path):
                os.unlink(path)
            if had_file:
                os.rename(backup, path)
            elif made_dir:
                path.parent.rmdir()


# --- the ACL rules, pure ----------------------------------------------------------------------------


def decide(tmp_path, text, bridge, **files):
    """check_bridge_allowed on an ACL file with TEXT (and extra files NAME=TEXT next to it)."""
    for name, content in files.items():
        (tmp_path / name).write_text(content)
    acl = tmp_path / "bridge.conf"
    acl.write_text(text.replace("@", str(tmp_path) + "/"))
    try:
        bridgeacl.check_bridge_allowed(bridge, str(acl))
    except HostError as e:
        return str(e)
    return "allowed"


def test_allow_names_a_bridge_and_everything_else_is_denied_with_the_line_to_add(tmp_path):
    assert decide(tmp_path, "allow br0\n", "br0") == "allowed"
    message = decide(tmp_path, "allow br0\n", "br1")
    assert "no rule in" in message and "the default is deny" in message
    assert f"must add the line `allow br1` to {tmp_path}/bridge.conf" in message


def test_deny_wins_over_allow_whatever_the_order(tmp_path):
    for text in ("deny all\nallow br0\n", "allow br0\ndeny all\n"):
        message = decide(tmp_path, text, "br0")
        assert "`deny all`" in message and "deny wins over any allow" in message, text
        assert f"{tmp_path}/bridge.conf line {text.splitlines().index('deny all') + 1}" in message
    assert decide(tmp_path, "allow all\ndeny br1\n", "br0") == "allowed"
    assert "`deny br1`" in decide(tmp_path, "allow all\ndeny br1\n", "br1")


def test_comments_blank_lines_tabs_and_trailing_spaces_follow_the_helper(tmp_path):
    text = "# bridges for the lab\n\n   allow\tbr0\n\t# indented comment\nallow  br2 \t \n"
    assert decide(tmp_path, text, "br0") == "allowed"
    assert decide(tmp_path, text, "br2") == "allowed"  # spaces around the argument are trimmed
    # The helper splits at the first space; only a line without any space splits at a tab. So a
    # tab before a later space (even a trailing one) leaves "allow\tbr0" as the command.
    for line in ("allow\tbr0 # lab\n", "allow\tbr0 \n"):
        # (Error messages show a tab as \t: a message is always one line.)
        assert "unknown command 'allow\\tbr0'" in decide(tmp_path, line, "br0")


@pytest.mark.parametrize("line, problem", [
    ("allow", "invalid config line 'allow' (no argument)"),
    ("permit br0", "unknown command 'permit'"),
    ("allow averyveryverylongbr", "name 'averyveryverylongbr' too long: 19 bytes (at most 15)"),
])
def test_a_bad_line_in_the_main_file_denies_every_bridge(tmp_path, line, problem):
    message = decide(tmp_path, f"allow all\n{line}\n", "br0")
    assert f"{tmp_path}/bridge.conf line 2: {problem}" in message
    assert "makes it deny every bridge" in message and "`allow br0`" in message


def test_errors_in_included_files_are_ignored_but_rules_before_them_count(tmp_path):
    text = "include @lab.conf\ninclude @missing.conf\ninclude @self.conf\n"
    files = {"lab.conf": "allow br0\nbogus line\nallow br1\n", "self.conf": "include @self.conf\nallow br3\n"}
    files["self.conf"] = files["self.conf"].replace("@", str(tmp_path) + "/")
    assert decide(tmp_path, text, "br0", **files) == "allowed"
    assert "no rule" in decide(tmp_path, text, "br1", **files)  # after the bad line: never read
    assert decide(tmp_path, text, "br3", **files) == "allowed"  # a self-include does not loop
    acl = bridgeacl.parse_acl(str(tmp_path / "bridge.conf"))
    assert [(f, n) for f, n, _ in acl.ignored] == [(str(tmp_path / "lab.conf"), 2),
                                                   (str(tmp_path / "bridge.conf"), 2)]


def test_a_missing_acl_file_says_to_create_it(tmp_path):
    with pytest.raises(HostError) as caught:
        bridgeacl.check_bridge_allowed("br0", str(tmp_path / "none.conf"))
    message = str(caught.value)
    assert f"its ACL file {tmp_path}/none.conf does not exist" in message
    assert f"create {tmp_path}/none.conf with the line `allow br0`" in message


def test_the_acl_path_is_read_from_the_helper_binary():
    assert bridgeacl.helper_acl_path(real_helper()) == "/etc/qemu/bridge.conf"


# --- the ACL rules, checked against the real helper ------------------------------------------------

DIFFERENTIAL = {
    "allow-one": "allow br0\n",
    "allow-all-deny-one": "allow all\ndeny br1\n",
    "deny-all-wins": "deny all\nallow br0\nallow br1\n",
    "whitespace": "# comment\n\n   allow\tbr1\n  deny \t br0  \n",
    "tab-then-trailing-space": "allow br0\nallow\tbr1 \n",
    "tab-then-space": "allow br1\nallow\tbr0 # x\n",
    "unknown-command": "allow br0\npermit br1\n",
    "no-argument": "allow br0\nallow\n",
    "name-too-long": "allow br0\nallow averyveryverylongbr\n",
    "include-partial": "include @inc.conf\n",
    "include-missing": "include @nothere.conf\nallow br1\n",
    "missing-file": None,
}


@pytest.mark.parametrize("case", sorted(DIFFERENTIAL))
def test_virtnet_decides_as_the_real_helper_does(netns, tmp_path, bridge_conf, case):
    """For each ACL, virtnet's verdict on br0 and br1 equals the real helper's, run for real."""
    helper = real_helper()
    (tmp_path / "inc.conf").write_text("allow br1\nnonsense\nallow br0\n")
    text = DIFFERENTIAL[case]
    acl = bridge_conf(None if text is None else text.replace("@", str(tmp_path) + "/"))
    for bridge in ("br0", "br1"):
        ip("link", "add", bridge, "type", "bridge")
        ip("link", "set", bridge, "up")
    for bridge in ("br0", "br1"):
        try:
            bridgeacl.check_bridge_allowed(bridge, str(acl))
            ours = True
        except HostError:
            ours = False
        try:
            fd, tap = bridgehelper.run_helper(helper, bridge, vnet_hdr=True)
        except HostError as e:
            assert "access denied by acl file" in str(e) or "failed to parse default acl file" in str(e), str(e)
            theirs = False
        else:
            assert links_master(tap) == bridge
            os.close(fd)  # the helper's tap is not persistent: it goes with its last fd
            theirs = True
        assert ours == theirs, f"{case}: {bridge}: virtnet says {ours}, the helper says {theirs}"


def links_master(tap):
    out = json.loads(ip("-j", "link", "show", "dev", tap).stdout)
    return out[0].get("master")


# --- the plan, pure --------------------------------------------------------------------------------


def loaded_domain(xml):
    from virtnet.conf.load import load_text

    return load_text(xml).domain


def bridge_xml(name, *, queues=1, mtu=None, bridge="br0", type_="qemu"):
    driver = f"\n      <driver queues='{queues}'/>" if queues > 1 else ""
    mtu_line = f"\n      <mtu size='{mtu}'/>" if mtu else ""
    return domain_xml(name, f"""\
    <interface type='bridge'>
      <mac address='{NIC_MAC}'/>
      <source bridge='{bridge}'/>
      <model type='virtio'/>{driver}{mtu_line}
    </interface>
""", type_=type_)


def test_the_plan_runs_the_helper_instead_of_creating_a_tap_and_warns_about_what_it_cannot_do():
    domain = loaded_domain(bridge_xml("p", queues=4, mtu=1400, type_="kvm"))
    plan = build_plan(domain, bridge_helper="/usr/lib/qemu/qemu-bridge-helper", host_caps={"vhost-net"})
    kinds = [a.kind for a in plan.setup]
    assert kinds == ["check-bridge", "run-bridge-helper", "open-vhost", "start-qemu", "resume"]
    run = plan.setup[1]
    assert run == RunBridgeHelper("net0", "br0", "/usr/lib/qemu/qemu-bridge-helper", True)
    assert run.describe().startswith("run /usr/lib/qemu/qemu-bridge-helper --use-vnet --br=br0")
    assert plan.setup[2].queues == 1  # one vhost fd for the one tap fd
    assert [a.kind for a in plan.teardown] == ["stop-qemu"]  # the helper's tap goes with QEMU
    assert plan.warnings == [
        "net0 (bridge 'br0'): qemu-bridge-helper passes a single tap fd, so <driver queues='4'> "
        "degrades to one queue",
        "net0 (bridge 'br0'): <mtu size='1400'> is not applied to the host tap (qemu-bridge-helper "
        "gives it the bridge's MTU); the guest is still told the MTU",
    ]


def test_xml2argv_standalone_uses_the_helper_given(tmp_path):
    from test_golden import run

    helper = write(tmp_path / "my-helper", "#!/bin/sh\n", mode=0o755)
    xml = write(tmp_path / "b.xml", bridge_xml("sa"))
    status, out, err = run(["xml2argv", "--standalone", "--host-caps", "none", "--bridge-helper", str(helper),
                            str(xml)])
    assert status == 0, err
    assert f'"type":"bridge","br":"br0","helper":"{helper}","id":"hostnet0"' in out
    # The line may be meant for another machine: a given path is printed as it is, not checked here.
    elsewhere = "/opt/qemu/libexec/qemu-bridge-helper"
    status, out, err = run(["xml2argv", "--standalone", "--host-caps", "none", "--bridge-helper", elsewhere, str(xml)])
    assert status == 0, err
    assert f'"helper":"{elsewhere}"' in out


# --- start as root with --unprivileged -------------------------------------------------------------


def logging_helper(tmp_path, helper):
    """A wrapper that records each run's arguments, then runs the real helper (fds pass through)."""
    log = tmp_path / "helper.log"
    wrapper = write(tmp_path / "helper.sh", f'#!/bin/sh\necho "$@" >> {log}\nexec {helper} "$@"\n', mode=0o755)
    return wrapper, log


def add_bridge(ns, name="br0"):
    ip("-n", ns, "link", "add", name, "type", "bridge")
    ip("-n", ns, "link", "set", name, "address", BR_MAC, "up")


def test_unprivileged_start_gets_the_tap_from_the_helper_and_destroy_leaves_nothing(ns, dirs, tmp_path,
                                                                                      bridge_conf):
    d = dirs
    add_bridge(ns)
    bridge_conf("# lab bridges\nallow br0\n")
    wrapper, log = logging_helper(tmp_path, real_helper())
    ok(virtnet(d, "define", write(tmp_path / "hb.xml", bridge_xml("hb"))))
    before = snapshot(ns)

    out = ok(virtnet(d, "start", "hb", "--paused", "--unprivileged", "--bridge-helper", wrapper, netns=ns))
    state = d.live("hb")
    pid, tap = state.pid, state.taps["net0"]
    assert out == f"Domain 'hb' started (paused): QEMU pid {pid}, {tap}\n"
    # The helper's tap is the NIC's, and virtnet did not create it: destroy only stops QEMU.
    assert tap.startswith("tap") and state.taps == {"net0": tap} and state.created_taps == []
    assert [a.kind for a in state.teardown] == ["stop-qemu"]
    [line] = log.read_text().splitlines()
    assert line.startswith("--use-vnet --br=br0 --fd=")  # virtio: a vnet header, as libvirt asks

    # The kernel: the helper's tap is a port of br0, up, with the helper's fe:… MAC, not persistent.
    now = links(ns)[tap]
    tun = dict(now.tun)
    assert (now.master, now.up, now.mac[:3]) == ("br0", True, "fe:")
    assert (tun["type"], tun["vnet_hdr"], tun["persist"]) == ("tap", "True", "False")
    # QEMU: the NIC's tap backend is an fd attached to that tap.
    with qmp(state.qmp) as client:
        nic = info_network(client)["net0"]
    assert (nic["model"], nic["macaddr"]) == ("virtio-net-pci", NIC_MAC)
    [peer] = nic["backends"]
    assert (peer["name"], peer["type"]) == ("hostnet0", "tap")
    assert tap_of_fd(pid, int(peer["fd"])) == tap
    assert f"<target dev='{tap}'/>" in ok(virtnet(d, "dumpxml", "hb"))

    ok(virtnet(d, "destroy", "hb"))
    assert tap not in links(ns)
    assert_clean(ns, d, "hb", before, pid)


@pytest.mark.parametrize("acl, expected", [
    ("allow br1\n", "no rule in /etc/qemu/bridge.conf allows it (the default is deny); an administrator "
                    "must add the line `allow br0` to /etc/qemu/bridge.conf"),
    ("allow all\ndeny br0\n", "`deny br0` (/etc/qemu/bridge.conf line 2) denies it, and in its ACL a deny "
                              "wins over any allow"),
    (None, "its ACL file /etc/qemu/bridge.conf does not exist, and without it every bridge is denied; an "
           "administrator must create /etc/qemu/bridge.conf with the line `allow br0`"),
])
def test_a_denied_bridge_is_refused_before_the_helper_runs(ns, dirs, tmp_path, bridge_conf, acl, expected):
    d = dirs
    add_bridge(ns)
    bridge_conf(acl)
    wrapper, log = logging_helper(tmp_path, real_helper())
    ok(virtnet(d, "define", write(tmp_path / "hd.xml", bridge_xml("hd"))))
    before = snapshot(ns)

    error = fails(virtnet(d, "start", "hd", "--paused", "--unprivileged", "--bridge-helper", wrapper, netns=ns))
    assert error.startswith("virtnet: error: qemu-bridge-helper would refuse bridge 'br0': ")
    assert expected in error
    assert not log.exists(), "the helper ran although virtnet knew it would refuse"
    assert_clean(ns, d, "hd", before)


def test_multiqueue_through_the_helper_degrades_to_one_queue_with_a_warning(ns, dirs, tmp_path, bridge_conf):
    d = dirs
    add_bridge(ns)
    bridge_conf("allow br0\n")
    ok(virtnet(d, "define", write(tmp_path / "hq.xml", bridge_xml("hq", queues=3))))
    before = snapshot(ns)

    result = virtnet(d, "start", "hq", "--paused", "--unprivileged", netns=ns)
    ok(result)
    assert ("virtnet: warning: net0 (bridge 'br0'): qemu-bridge-helper passes a single tap fd, so "
            "<driver queues='3'> degrades to one queue") in result.stderr.splitlines()
    state = d.live("hq")
    with qmp(state.qmp) as client:
        nic = info_network(client)["net0"]
        mq = client.execute("qom-get", {"path": "/machine/peripheral/net0/virtio-backend", "property": "mq"})
    assert len(nic["backends"]) == 1 and mq is False
    tun = dict(links(ns)[state.taps["net0"]].tun)
    assert tun["multi_queue"] == "False"
    ok(virtnet(d, "destroy", "hq"))
    assert_clean(ns, d, "hq", before, state.pid)


# --- start as a real unprivileged user ------------------------------------------------------------


def test_a_non_root_user_starts_a_bridge_domain_with_a_capable_copy_of_the_helper(ns, tmp_path, bridge_conf,
                                                                                  unprivileged_user):
    if shutil.which("setcap") is None:
        pytest.skip("needs setcap (Debian: libcap2-bin)")
    user = unprivileged_user
    add_bridge(ns)
    bridge_conf("allow br0\n")
    with user_workspace(user, ns, "vnt-u-") as space:
        work, state, runtime, uid, as_user = space.work, space.state, space.runtime, space.uid, space.virtnet
        plain = work / "plain-helper"
        capable = work / "helper"
        shutil.copy(real_helper(), plain)
        shutil.copy(real_helper(), capable)
        caps = "cap_net_admin+ep"
        if stat.S_IMODE(os.stat("/dev/net/tun").st_mode) & 0o006 != 0o006:
            # Distributions ship /dev/net/tun mode 0666; where it is 0600 (as on some CI hosts) the
            # helper must also get past its permissions, as a setuid-root helper would.
            caps = "cap_net_admin,cap_dac_override+ep"
        subprocess.run(["setcap", caps, str(capable)], check=True, capture_output=True)
        xml = write(work / "hu.xml", bridge_xml("hu"), mode=0o644)

        ok(as_user("define", xml))
        before = snapshot(ns)
        # Without CAP_NET_ADMIN virtnet plans the helper by itself (no --unprivileged needed).
        plan = json.loads(ok(as_user("plan", "--format", "json", "hu")))
        assert [a["action"] for a in plan["setup"]] == ["check-bridge", "run-bridge-helper", "start-qemu", "resume"]

        # A helper without the capability fails; its own words reach the user, with what to do.
        error = fails(as_user("start", "hu", "--paused", "--bridge-helper", plain))
        assert f"virtnet: error: bridge helper {plain} exited with status 1 for bridge 'br0': failed to " in error
        assert "Permission denied" in error or "Operation not permitted" in error
        assert "chmod u+s" in error
        assert snapshot(ns) == before and os.listdir(runtime) == []

        out = ok(as_user("start", "hu", "--paused", "--bridge-helper", capable))
        live = live_state(state, "hu")
        pid, tap = live.pid, live.taps["net0"]
        assert out == f"Domain 'hu' started (paused): QEMU pid {pid}, {tap}\n"
        assert uids_of(pid) == [str(uid)] * 4
        assert links(ns)[tap].master == "br0"
        with qmp(live.qmp) as client:
            [peer] = info_network(client)["net0"]["backends"]
        assert peer["type"] == "tap" and tap_of_fd(pid, int(peer["fd"])) == tap

        ok(as_user("destroy", "hu"))
        assert not alive(pid)
        assert snapshot(ns) == before
        assert os.listdir(runtime) == [] and os.listdir(state / "running") == []
