"""passt for <interface type='user'><backend type='passt'/>: the command line (libvirt's argv and
port-forward SPEC grammar), and `virtnet start`/`destroy` with the real passt and a paused QEMU in
a fresh network namespace.

The host tests run twice, once with each passt (conftest's passt_bin, first in PATH): Debian 12's
(0.0~git20230309) and a current one (Debian 13's, built by tools/build-passt.sh), which differ in
what they need: Debian 12's needs an interface with an address and a default route in its
namespace ("No external routable interface" otherwise), so the tests give theirs a veth pair
(`routable`); a current one starts without. Started as root, both end up as user nobody, Debian
12's before it binds its socket, a current one after (as root without CAP_DAC_OVERRIDE): nobody
must reach the socket directory, so the tests' runtime dir (a 0700 mkdtemp) is opened to others
for search (0711), except in the test of that refusal. Only the current one has --vhost-user.
"""

import os
import shutil
import stat
import subprocess
import sys

import pytest

import hostops
from hostcases import (
    REPO,
    alive,
    assert_clean,
    cli_argv,
    cli_env,
    domain_xml,
    fails,
    info_network,
    ip,
    live_pids,
    live_state,
    ok,
    qmp,
    routable,
    snapshot,
    uids_of,
    user_workspace,
    virtnet,
    write,
)
from virtnet.host import passt
from virtnet.host.plan import build_plan
from virtnet.runpaths import DomainPaths

NOBODY = 65534


def load(xml):
    from virtnet.conf.load import load_text

    return load_text(xml).domain


def passt_processes(marker):
    """Live passt processes whose command line mentions MARKER (a test's runtime dir)."""
    return live_pids(marker, program="passt")


@pytest.fixture
def pdirs(dirs):
    """The test's dirs, with a runtime dir that passt (as nobody) may pass through; at the end no
    passt of the test may still run."""
    dirs.runtime.chmod(0o711)
    yield dirs
    leftovers = passt_processes(str(dirs.runtime))
    for pid in leftovers:
        os.kill(pid, 9)
    assert not leftovers, f"passt processes of this test were still running: {leftovers}"


# --- the command line, pure ---------------------------------------------------------------------


def test_argv_follows_libvirt_order_and_spec_grammar():
    domain = load((REPO / "testdata/xml2argv/net-user-passt.xml").read_text())
    argv = passt.passt_argv(domain.interfaces[0], "/run/S.socket", "/run/P.pid")
    assert argv == [
        "passt", "--one-off", "--socket", "/run/S.socket", "--pid", "/run/P.pid",
        "--mtu", "9000", "--interface", "eth42", "--log-file", "/var/log/passt-guest.log",
        "--address", "172.17.2.4", "--netmask", "24", "--address", "2001:db8:ac10:fd01::feed",
        "--tcp-ports", "2001:db8:ac10:fd01::1:10/22:2022,1000-1050,~1020",
        "--udp-ports", "192.0.2.4%eth0/5000-5020:6000-6020",
        "--tcp-ports", "all",
    ]


@pytest.mark.parametrize("forward, spec", [
    ("<portForward proto='tcp'/>", "all"),
    ("<portForward proto='tcp'><range start='2022' to='22'/></portForward>", "2022:22"),
    ("<portForward proto='udp' address='1.2.3.4'><range start='5000' end='5020' to='6000'/>"
     "<range start='5010' end='5015' exclude='yes'/></portForward>", "1.2.3.4/5000-5020:6000-6020,~5010-5015"),
    ("<portForward proto='tcp' address='2001:0db8:ac10:fd01:0:0:1:10'><range start='22' to='2022'/>"
     "<range start='1000' end='1050'/><range start='1020' exclude='yes'/><range start='1030' end='1040' "
     "exclude='yes'/></portForward>", "2001:db8:ac10:fd01::1:10/22:2022,1000-1050,~1020,~1030-1040"),
    ("<portForward proto='tcp' dev='eth0'><range start='80'/></portForward>", "%eth0/80"),
])
def test_port_forward_spec(forward, spec):
    iface = load(domain_xml("spec", f"""\
    <interface type='user'>
      {forward}
      <model type='virtio'/>
      <backend type='passt'/>
    </interface>
""")).interfaces[0]
    assert passt.port_spec(iface.port_forwards[0]) == spec


def passt_nic(mac, extra="", type_="user", backend=""):
    return f"""\
    <interface type='{type_}'>
      <mac address='{mac}'/>{extra}
      <model type='virtio'/>
      <backend type='passt'{backend}/>
    </interface>
"""


def test_the_plan_starts_passt_before_qemu_and_stops_it_after():
    domain = load(domain_xml("pp", passt_nic("52:54:00:c0:00:01")))
    plan = build_plan(domain, paths=DomainPaths("/run/virtnet", "pp"))
    assert [a.kind for a in plan.setup] == ["start-passt", "start-qemu", "resume"]
    assert [a.kind for a in plan.teardown] == ["stop-qemu", "stop-passt"]
    assert plan.setup[0].describe() == ("start passt --one-off --socket /run/virtnet/pp/passt/net0.socket "
                                        "--pid /run/virtnet/pp/passt/net0.pid")


def test_xml2argv_standalone_prints_the_passt_command_to_run_first(tmp_path):
    from test_golden import run

    xml = write(tmp_path / "sa.xml", domain_xml("sa", passt_nic("52:54:00:c0:00:02", """
      <portForward proto='tcp'><range start='2222' to='22'/></portForward>""")))
    status, out, err = run(["xml2argv", "--standalone", "--runtime-dir", "/run/vn", str(xml)])
    assert status == 0, err
    first, qemu = out.split("\n", 1)
    assert first == ("# run first: mkdir -p /run/vn/sa/passt && passt --one-off --socket "
                     "/run/vn/sa/passt/net0.socket --pid /run/vn/sa/passt/net0.pid --tcp-ports 2222:22")
    assert qemu.startswith("/usr/bin/qemu-system-x86_64 \\\n")
    assert ('"type":"stream","addr":{"type":"unix","path":"/run/vn/sa/passt/net0.socket"},"server":false'
            in qemu)


# --- start and destroy with the real passt -----------------------------------------------------------

TWO_NICS = {
    "52:54:00:c0:00:11": """
      <ip address='10.0.2.15' family='ipv4' prefix='24'/>
      <portForward proto='tcp' address='127.0.0.1'><range start='2222' to='22'/></portForward>
      <mtu size='1400'/>""",
    "52:54:00:c0:00:12": """
      <portForward proto='tcp'><range start='8080' end='8081' to='80'/></portForward>
      <portForward proto='udp'><range start='5353'/></portForward>""",
}


def test_passt_serves_each_nic_forwards_ports_and_is_gone_after_destroy(ns, pdirs, tmp_path, passt_bin):
    d = pdirs
    routable(ns)
    logs = d.runtime / "logs"
    logs.mkdir(mode=0o755)  # both passts open their log as root (without CAP_DAC_OVERRIDE): root's dir does
    nics = [passt_nic(mac, extra) for mac, extra in TWO_NICS.items()]
    nics[1] = nics[1].replace("<backend type='passt'/>", f"<backend type='passt' logFile='{logs}/net1.log'/>")
    ok(virtnet(d, "define", write(tmp_path / "pa.xml", domain_xml("pa", "".join(nics)))))
    before = snapshot(ns)

    ok(virtnet(d, "start", "pa", "--paused", netns=ns))
    state = d.live("pa")
    passt_dir = d.runtime / "pa" / "passt"
    # One passt per NIC, recorded (with its pid) among the actions destroy runs.
    entries = {a.device: a for a in state.passts}
    assert len(state.passts) == 2
    assert {dev: e.socket for dev, e in entries.items()} == {"net0": str(passt_dir / "net0.socket"),
                                                            "net1": str(passt_dir / "net1.socket")}
    expected_args = {
        "net0": ["--one-off", "--socket", str(passt_dir / "net0.socket"), "--pid", str(passt_dir / "net0.pid"),
                 "--mtu", "1400", "--address", "10.0.2.15", "--netmask", "24", "--tcp-ports", "127.0.0.1/2222:22"],
        "net1": ["--one-off", "--socket", str(passt_dir / "net1.socket"), "--pid", str(passt_dir / "net1.pid"),
                 "--log-file", f"{logs}/net1.log", "--tcp-ports", "8080-8081:80-81", "--udp-ports", "5353"],
    }
    for dev, args in expected_args.items():
        entry = entries[dev]
        pid = entry.pid
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            assert [a.decode() for a in f.read().split(b"\0")[1:-1]] == args
        assert uids_of(pid) == [str(NOBODY)] * 4
        assert open(entry.pidfile).read().strip() == str(pid)
        assert os.path.exists(entry.socket) and passt.is_running(pid, entry.socket)
        # The passt this test selected (or its .avx2 twin, which it runs on CPUs that have AVX2).
        assert os.readlink(f"/proc/{pid}/exe") in (passt_bin.path, passt_bin.path + ".avx2")
    st = os.stat(passt_dir)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (NOBODY, 0, 0o770)
    assert os.path.getsize(logs / "net1.log") > 0

    # QEMU is connected to each passt as a stream client.
    with qmp(state.qmp) as client:
        text = hostops.hmp(client, "info network")
    for dev, entry in entries.items():
        assert f" \\ host{dev}: index=0,type=stream,unix:{entry.socket}" in text.replace("\r", ""), text

    # Each forwarded host port is passt's listener, and a TCP connection to it is accepted.
    def owners(*ss_args):  # local address -> the pid ss names for the socket
        out = ip("netns", "exec", ns, "ss", "-Hnp", *ss_args).stdout
        return {ln.split()[3]: ln.split("pid=")[1].split(",")[0] for ln in out.splitlines() if "pid=" in ln}

    tcp, udp = owners("-lt"), owners("-lu")
    assert tcp == {"127.0.0.1:2222": str(entries["net0"].pid), "0.0.0.0:8080": str(entries["net1"].pid),
                   "0.0.0.0:8081": str(entries["net1"].pid)}
    assert udp["0.0.0.0:5353"] == str(entries["net1"].pid)
    reply = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", CONNECT, "127.0.0.1", "2222"],
                           capture_output=True, text=True, timeout=30)
    assert reply.stdout.strip() == "connected", reply.stderr

    ok(virtnet(d, "destroy", "pa"))
    for entry in entries.values():
        assert not alive(entry.pid)
        assert not os.path.exists(entry.socket) and not os.path.exists(entry.pidfile)
    shutil.rmtree(logs)
    assert_clean(ns, d, "pa", before, state.pid)


CONNECT = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10):
    print("connected")
"""


def test_a_qemu_failure_after_passt_started_stops_passt_and_removes_its_files(ns, pdirs, tmp_path, passt_bin):
    d = pdirs
    routable(ns)
    nic = passt_nic("52:54:00:c0:00:21", "\n      <rom file='/nonexistent/pxe.rom'/>")
    ok(virtnet(d, "define", write(tmp_path / "pr.xml", domain_xml("pr", nic))))
    before = snapshot(ns)

    error = fails(virtnet(d, "start", "pr", "--paused", netns=ns))
    assert "QEMU exited with status 1 before QMP was ready" in error and "/nonexistent/pxe.rom" in error
    assert passt_processes(str(d.runtime)) == []
    assert_clean(ns, d, "pr", before)


def test_without_a_routable_interface_debian12s_passt_refuses_and_a_current_one_starts(ns, pdirs, tmp_path, passt_bin):
    d = pdirs
    ok(virtnet(d, "define", write(tmp_path / "pn.xml", domain_xml("pn", passt_nic("52:54:00:c0:00:31")))))
    before = snapshot(ns)

    result = virtnet(d, "start", "pn", "--paused", netns=ns)
    if passt_bin.kind == "current":
        # A current passt serves the guest without an upstream interface (it only warns).
        ok(result)
        state = d.live("pn")
        [entry] = state.passts
        assert passt.is_running(entry.pid, entry.socket)
        ok(virtnet(d, "destroy", "pn"))
        assert not alive(entry.pid)
        assert_clean(ns, d, "pn", before, state.pid)
        return
    error = fails(result)
    assert error.startswith("virtnet: error: passt failed to start (exit status 1): ")
    assert "No external routable interface for IPv4" in error
    assert "passt needs a network interface with an address and a default route" in error
    assert "Failed to send" not in error  # passt's syslog noise is dropped
    assert_clean(ns, d, "pn", before)


def test_a_runtime_dir_nobody_cannot_reach_is_refused_with_what_to_change(ns, pdirs, tmp_path, passt_bin):
    d = pdirs
    routable(ns)
    d.runtime.chmod(0o700)
    ok(virtnet(d, "define", write(tmp_path / "pm.xml", domain_xml("pm", passt_nic("52:54:00:c0:00:41")))))
    before = snapshot(ns)

    error = fails(virtnet(d, "start", "pm", "--paused", netns=ns))
    assert (f"passt started as root runs as user nobody, which cannot reach its socket directory "
            f"{d.runtime}/pm/passt: {d.runtime} (mode 0700) is not searchable by others") in error
    assert f"`chmod o+x {d.runtime}`" in error
    assert_clean(ns, d, "pm", before)


def test_a_missing_passt_names_the_debian_package(ns, pdirs, tmp_path):
    d = pdirs
    routable(ns)
    ok(virtnet(d, "define", write(tmp_path / "px.xml", domain_xml("px", passt_nic("52:54:00:c0:00:51")))))
    before = snapshot(ns)

    env = dict(cli_env(), PATH=str(tmp_path / "empty"))  # a PATH without passt
    result = subprocess.run(cli_argv(d, "start", "px", "--paused", netns=ns), env=env, capture_output=True,
                            text=True, timeout=60)
    error = fails(result)
    assert error == ("virtnet: error: passt is not installed ('passt' not found in PATH), and <backend "
                     "type='passt'/> needs it: install the Debian package `passt` (apt install passt)")
    assert_clean(ns, d, "px", before)


def test_vhost_user_flavour_runs_passt_with_vhost_user_or_says_this_passt_lacks_it(ns, pdirs, tmp_path, passt_bin):
    # The guest stays paused and never boots: QEMU 7.2 under TCG crashes when a guest's driver
    # probes a vhost-user NIC. Paused, QEMU connects and negotiates the netdev, which is the part
    # virtnet sets up.
    d = pdirs
    routable(ns)
    log = tmp_path / "pv-passt.log"  # passt logs the connection it accepts
    nic = passt_nic("52:54:00:c0:00:61", "\n      <source type='unix' path='/ignored.sock' mode='client'/>",
                    type_="vhostuser", backend=f" logFile='{log}'")
    xml = domain_xml("pv", nic).replace("<vcpu>", "<memoryBacking><access mode='shared'/></memoryBacking>\n  <vcpu>")
    ok(virtnet(d, "define", write(tmp_path / "pv.xml", xml)))
    before = snapshot(ns)

    result = virtnet(d, "start", "pv", "--paused", netns=ns)
    assert passt_bin.vhost_user == (passt_bin.kind == "current"), passt_bin
    if passt_bin.vhost_user:
        ok(result)
        state = d.live("pv")
        sock = d.runtime / "pv" / "passt" / "net0.socket"
        [entry] = state.passts
        with open(f"/proc/{entry.pid}/cmdline", "rb") as f:
            assert f.read().split(b"\0")[1:3] == [b"--vhost-user", b"--one-off"]
        with qmp(state.qmp) as client:
            [peer] = info_network(client)["net0"]["backends"]
            chardevs = {c["label"]: c["filename"] for c in client.execute("query-chardev")}
            status = client.execute("query-status")
        assert (peer["name"], peer["type"]) == ("hostnet0", "vhost-user")
        # Connected: a client chardev shows its (unnamed) local end, "disconnected:unix:PATH" if not.
        assert chardevs["charnet0"] == "unix:"
        with open(f"/proc/{state.pid}/cmdline", "rb") as f:
            assert f"socket,id=charnet0,path={sock},".encode() in f.read()
        assert (status["status"], status["running"]) == ("prelaunch", False)
        # passt accepted the connection (the pid it logs is 0: passt is in a pid namespace of its own,
        # where QEMU has no pid) and still serves it.
        assert log.read_text().count("accepted connection from PID") == 1
        assert passt.is_running(entry.pid, entry.socket)
        assert stat.S_ISSOCK(os.stat(f"{sock}.repair").st_mode)  # passt-repair's, removed with the socket
        ok(virtnet(d, "destroy", "pv"))
        assert not alive(entry.pid)
        assert_clean(ns, d, "pv", before, state.pid)
    else:
        # Debian 12's passt (2023) predates vhost-user support: passt's own refusal, explained.
        error = fails(result)
        assert "unrecognized option '--vhost-user'" in error
        assert "this passt has no vhost-user support" in error
        assert_clean(ns, d, "pv", before)


def test_a_user_without_privileges_runs_passt_as_itself(ns, tmp_path, unprivileged_user, passt_bin):
    user = unprivileged_user
    routable(ns)
    with user_workspace(user, ns, "vnt-pu-") as space:
        work, state, runtime, uid, as_user = space.work, space.state, space.runtime, space.uid, space.virtnet
        xml = write(work / "pu.xml", domain_xml("pu", passt_nic("52:54:00:c0:00:71", """
      <portForward proto='tcp'><range start='2222' to='22'/></portForward>""")), mode=0o644)

        ok(as_user("define", xml))
        ok(as_user("start", "pu", "--paused"))
        live = live_state(state, "pu")
        [entry] = live.passts
        assert uids_of(entry.pid) == [str(uid)] * 4
        assert os.stat(entry.socket).st_uid == uid
        assert stat.S_IMODE(os.stat(runtime / "pu").st_mode) == 0o700  # nobody else needs to get in
        reply = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", CONNECT, "127.0.0.1", "2222"],
                               capture_output=True, text=True, timeout=30)
        assert reply.stdout.strip() == "connected", reply.stderr

        ok(as_user("destroy", "pu"))
        assert not alive(entry.pid) and not alive(live.pid)
        assert os.listdir(runtime) == []
