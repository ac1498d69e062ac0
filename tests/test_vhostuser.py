"""vhost-user interfaces started for real: QEMU paused, connected to a small vhost-user backend
written here (QEMU as client, as server, reconnecting, multiqueue), with the guest RAM on a
shared memfd; and the refusal when the domain's RAM is not shared.

No vhost-user network backend ships with Debian 12 (its passt predates --vhost-user), so the
backend is a thread speaking the vhost-user protocol's setup part: it answers the feature and
queue-count queries QEMU makes while the guest is paused and accepts (and closes) the eventfds QEMU
sends. That is everything QEMU needs to bring the netdev up; no packets flow, and no host network
state is touched, so these tests need no root and no namespace. One test uses a real backend
instead: a current passt (Debian 13's, built by tools/build-passt.sh) with --vhost-user, started
by the test itself.
"""

import array
import os
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from conftest import passt_binary
from hostcases import (
    alive,
    domain_xml,
    fails,
    info_network,
    ok,
    qemu_pids,
    qmp,
    require_qemu,
    virtnet,
    write,
)

GET_FEATURES, GET_PROTOCOL_FEATURES, GET_QUEUE_NUM = 1, 15, 17
NEED_REPLY, REPLY = 0x8, 0x4 | 0x1  # flags: reply-ack wanted; a reply of protocol version 1
F_VERSION_1, F_PROTOCOL_FEATURES, F_MRG_RXBUF = 1 << 32, 1 << 30, 1 << 15
PROTOCOL_F_MQ = 1 << 0
MEMORY_MIB = 64


class FakeBackend:
    """The backend end of a vhost-user socket at PATH: listening (QEMU connects as a client), or
    connecting (QEMU is the server). Counts connections and records the requests it saw."""

    def __init__(self, path, *, queues=1, listen=True):
        self.path, self.queues, self.listen = str(path), queues, listen
        self.connections = 0
        self.requests = []
        self._stop = threading.Event()
        self._conn = None
        self._server = None
        if listen:
            self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._server.bind(self.path)
            self._server.listen(4)
            self._server.settimeout(0.1)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            conn = self._accept() if self.listen else self._connect()
            if conn is None:
                continue
            self.connections += 1
            self._conn = conn
            try:
                self._serve(conn)
            except OSError:
                pass
            finally:
                conn.close()
                self._conn = None

    def _accept(self):
        try:
            conn, _ = self._server.accept()
        except (socket.timeout, OSError):
            return None
        conn.settimeout(None)
        return conn

    def _connect(self):
        if self.connections:  # QEMU as server: one connection is all these tests need
            time.sleep(0.05)
            return None
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(self.path)
        except OSError:
            conn.close()
            time.sleep(0.05)
            return None
        return conn

    def _serve(self, conn):
        while True:
            header, ancillary, _, _ = conn.recvmsg(12, socket.CMSG_SPACE(8 * 4))
            if len(header) < 12:
                return  # QEMU closed the connection
            request, flags, size = struct.unpack("<III", header)
            payload = b""
            while len(payload) < size:
                chunk = conn.recv(size - len(payload))
                if not chunk:
                    return
                payload += chunk
            for _, _, data in ancillary:  # eventfds for the rings: not needed while paused
                fds = array.array("i")
                fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
                for fd in fds:
                    os.close(fd)
            self.requests.append(request)
            value = None
            if request == GET_FEATURES:
                value = F_VERSION_1 | F_PROTOCOL_FEATURES | F_MRG_RXBUF
            elif request == GET_PROTOCOL_FEATURES:
                value = PROTOCOL_F_MQ if self.queues > 1 else 0
            elif request == GET_QUEUE_NUM:
                value = self.queues
            elif flags & NEED_REPLY:
                value = 0
            if value is not None:
                conn.sendall(struct.pack("<IIIQ", request, REPLY, 8, value))

    def drop(self):
        """Close the current connection, as a restarting backend would."""
        conn = self._conn
        if conn is not None:
            conn.shutdown(socket.SHUT_RDWR)

    def wait_for(self, connections, timeout=10.0):
        deadline = time.monotonic() + timeout
        while self.connections < connections:
            assert time.monotonic() < deadline, f"{self.connections} connection(s), expected {connections}"
            time.sleep(0.02)

    def close(self):
        self._stop.set()
        self.drop()
        if self._server is not None:
            self._server.close()
        self._thread.join(5)
        if self.listen and os.path.exists(self.path):
            os.unlink(self.path)


@pytest.fixture
def backends():
    made = []

    def make(path, **kwargs):
        made.append(FakeBackend(path, **kwargs))
        return made[-1]

    yield make
    for backend in made:
        backend.close()


def vhostuser_xml(name, path, *, mode="client", queues=1, reconnect=None, shared=True):
    driver = f"\n      <driver queues='{queues}'/>" if queues > 1 else ""
    inner = f"\n        <reconnect enabled='yes' timeout='{reconnect}'/>\n      " if reconnect else ""
    source = f"<source type='unix' path='{path}' mode='{mode}'>{inner}</source>"
    xml = domain_xml(name, f"""\
    <interface type='vhostuser'>
      <mac address='52:54:00:d0:00:01'/>
      {source}
      <model type='virtio'/>{driver}
    </interface>
""")
    if shared:
        xml = xml.replace("<vcpu>", "<memoryBacking><access mode='shared'/></memoryBacking>\n  <vcpu>")
    return xml


def start(d, tmp_path, xml, name):
    ok(virtnet(d, "define", write(tmp_path / f"{name}.xml", xml)))
    ok(virtnet(d, "start", name, "--paused"))
    return d.live(name)


def destroy_and_check(d, name, state):
    ok(virtnet(d, "destroy", name))
    assert not alive(state.pid)
    assert d.record(name) is None and d.runtime_entries() == []


def test_without_shared_guest_ram_vhostuser_is_refused_naming_what_to_add(dirs, tmp_path):
    from test_golden import run

    d = dirs
    text = vhostuser_xml("ns", tmp_path / "be.sock", shared=False)
    xml = write(tmp_path / "ns.xml", text)
    line = next(n for n, ln in enumerate(text.splitlines(), 1) if "<interface type='vhostuser'>" in ln)
    expected = (f":{line}: <interface type='vhostuser'> needs guest RAM that QEMU shares with the vhost-user "
                "backend: add <memoryBacking><access mode='shared'/></memoryBacking> to the domain (virtnet then "
                "backs the RAM with a shared memfd)")
    status, out, err = run(["xml2argv", str(xml)])
    assert status == 1 and err == f"virtnet: error: {xml}{expected}\n"
    ok(virtnet(d, "define", xml))
    error = fails(virtnet(d, "start", "ns", "--paused"))
    assert error.endswith(expected.split(": ", 1)[1])
    assert d.record("ns") is None and d.runtime_entries() == [] and qemu_pids(str(d.runtime)) == []


def test_qemu_connects_as_client_with_the_guest_ram_on_a_shared_memfd(dirs, tmp_path, backends):
    require_qemu()
    d = dirs
    path = tmp_path / "be.sock"
    backend = backends(path)
    state = start(d, tmp_path, vhostuser_xml("vc", path), "vc")

    assert backend.connections == 1 and GET_FEATURES in backend.requests
    with qmp(state.qmp) as client:
        [peer] = info_network(client)["net0"]["backends"]
        chardevs = {c["label"]: c["filename"] for c in client.execute("query-chardev")}
        ram = {p: client.execute("qom-get", {"path": "/objects/pc.ram", "property": p}) for p in ("share", "size")}
        backend_of_machine = client.execute("qom-get", {"path": "/machine", "property": "memory-backend"})
    assert (peer["name"], peer["type"]) == ("hostnet0", "vhost-user")
    assert chardevs["charnet0"].startswith("unix:")
    assert ram == {"share": True, "size": MEMORY_MIB << 20}
    assert backend_of_machine == "/objects/pc.ram"
    with open(f"/proc/{state.pid}/cmdline", "rb") as f:
        argv = f.read().split(b"\0")
    assert b'{"qom-type":"memory-backend-memfd","id":"pc.ram","share":true,"size":67108864}' in argv

    destroy_and_check(d, "vc", state)


def test_qemu_as_server_waits_for_the_backend_to_connect(dirs, tmp_path, backends):
    require_qemu()
    d = dirs
    path = tmp_path / "qemu-listens.sock"
    backend = backends(path, listen=False)  # keeps trying until QEMU's socket appears
    state = start(d, tmp_path, vhostuser_xml("vs", path, mode="server"), "vs")

    assert backend.connections == 1
    with qmp(state.qmp) as client:
        [peer] = info_network(client)["net0"]["backends"]
        chardevs = {c["label"]: c["filename"] for c in client.execute("query-chardev")}
    assert peer["type"] == "vhost-user"
    assert chardevs["charnet0"].startswith(f"unix:{path},server=on")
    destroy_and_check(d, "vs", state)


def test_a_client_with_reconnect_comes_back_after_the_backend_drops_it(dirs, tmp_path, backends):
    require_qemu()
    d = dirs
    path = tmp_path / "be.sock"
    backend = backends(path)
    state = start(d, tmp_path, vhostuser_xml("vr", path, reconnect=1), "vr")
    assert backend.connections == 1

    backend.drop()  # the backend restarts; QEMU reconnects after about a second
    backend.wait_for(2)
    with qmp(state.qmp) as client:
        assert info_network(client)["net0"]["backends"][0]["type"] == "vhost-user"
    destroy_and_check(d, "vr", state)


def test_multiqueue_vhostuser_gets_a_queue_pair_per_queue(dirs, tmp_path, backends):
    require_qemu()
    d = dirs
    path = tmp_path / "be.sock"
    backends(path, queues=2)
    state = start(d, tmp_path, vhostuser_xml("vq", path, queues=2), "vq")

    with qmp(state.qmp) as client:
        peers = info_network(client)["net0"]["backends"]
        mq = client.execute("qom-get", {"path": "/machine/peripheral/net0/virtio-backend", "property": "mq"})
        vectors = client.execute("qom-get", {"path": "/machine/peripheral/net0", "property": "vectors"})
    assert [(p["name"], p["type"], p["index"]) for p in peers] == [("hostnet0", "vhost-user", "0"),
                                                                  ("hostnet0", "vhost-user", "1")]
    assert (mq, vectors) == (True, 6)
    destroy_and_check(d, "vq", state)


def test_a_real_passt_with_vhost_user_is_the_backend_qemu_connects_to(dirs, tmp_path):
    """<interface type='vhostuser'> (no passt backend: the domain names a socket) served by a passt
    --vhost-user the test starts, in this network namespace (in passt mode it forwards no host
    port unless told to). The guest stays paused and never boots: QEMU 7.2 under TCG crashes when
    a guest's driver probes a vhost-user NIC."""
    require_qemu()
    current = passt_binary("current")  # Debian 12's has no --vhost-user
    assert current.vhost_user, current
    d = dirs
    work = Path(tempfile.mkdtemp(prefix="vnt-be-", dir="/tmp"))  # a unix socket path stays short
    if os.geteuid() == 0:  # passt then writes as nobody and as root without CAP_DAC_OVERRIDE
        os.chown(work, 65534, 0)
        work.chmod(0o770)
    sock, pidfile, log = work / "be.sock", work / "be.pid", tmp_path / "passt.log"
    pid = None
    try:
        started = subprocess.run([current.path, "--vhost-user", "--one-off", "--socket", str(sock), "--pid",
                                  str(pidfile), "--log-file", str(log)], capture_output=True, text=True, timeout=30)
        assert started.returncode == 0, started.stderr  # it daemonises once the socket listens
        pid = int(pidfile.read_text())
        state = start(d, tmp_path, vhostuser_xml("vp", sock), "vp")

        with qmp(state.qmp) as client:
            [peer] = info_network(client)["net0"]["backends"]
            chardevs = {c["label"]: c["filename"] for c in client.execute("query-chardev")}
            status = client.execute("query-status")
        assert (peer["name"], peer["type"]) == ("hostnet0", "vhost-user")
        assert chardevs["charnet0"] == "unix:"  # connected ("disconnected:unix:PATH" otherwise)
        assert status["status"] == "prelaunch"
        assert log.read_text().count("accepted connection from PID") == 1
        assert alive(pid)

        destroy_and_check(d, "vp", state)
        deadline = time.monotonic() + 10  # --one-off: passt exits once QEMU has closed the connection
        while alive(pid):
            assert time.monotonic() < deadline, f"passt {pid} still runs after QEMU went away"
            time.sleep(0.05)
        pid = None
    finally:
        if pid is not None and alive(pid):
            os.kill(pid, signal.SIGKILL)
        for path in (sock, pidfile, work / "be.sock.repair"):  # passt leaves them (.repair: for passt-repair)
            path.unlink(missing_ok=True)
        work.rmdir()
