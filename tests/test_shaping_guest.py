"""<bandwidth> measured through real guests: the tiny guest (tools/tiny-guest.py) serves a bulk
receive (tg.sink) and a bulk send (tg.source) over TCP, the host in the test's namespace drives both
with plain sockets and times them.

Rates are libvirt's: average='1000' is what libvirt hands tc as `1000kbps`, 1 000 000 bytes/s.
The receive is timed from the connection to the guest's answer, which comes only once the guest
has read every byte; the send from the first byte to the last, as the host receives them.
"""

import json
import subprocess
import sys

from hostcases import assert_clean, ok, snapshot, virtnet, write

MAC = "52:54:00:b0:00:01"
HOST, GUEST = "192.0.2.1", "192.0.2.2"
SINK, SOURCE = 5001, 5002
AVERAGE = 1000  # kilobytes/s
RATE = AVERAGE * 1000  # bytes/s, as tc applies it
VOLUME = 3_000_000  # bytes each way: about 3 s at the rate, where the initial burst is lost in the noise
TOLERANCE = 0.10

# Both transfers from the namespace: prints {"in": [bytes, seconds, guest's own seconds], "out": [...]}.
TRANSFERS = r"""
import json, socket, sys, time
guest, sink, source, volume = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])

def connect(port):
    for _ in range(50):  # the guest's listener restarts between connections
        try:
            return socket.create_connection((guest, port), timeout=60)
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"cannot connect to {guest}:{port}")

conn = connect(sink)
started = time.monotonic()
block = bytes(65536)
left = volume
while left:
    left -= conn.send(block[:min(left, len(block))])
conn.shutdown(socket.SHUT_WR)
answer = conn.makefile().readline().split()
received = time.monotonic() - started
conn.close()

conn = connect(source)
conn.sendall(f"{volume // 1024}\n".encode())
got, first = 0, None
while True:
    data = conn.recv(65536)
    if not data:
        break
    if first is None:
        first = time.monotonic()
    got += len(data)
sent = time.monotonic() - first
conn.close()
print(json.dumps({"in": [int(answer[0]), received, float(answer[1])], "out": [got, sent]}))
"""


def nic(bandwidth=""):
    return (f"    <interface type='ethernet'>\n      <mac address='{MAC}'/>\n"
            f"      <source>\n        <ip address='{HOST}' family='ipv4' prefix='24'/>\n      </source>\n"
            f"{bandwidth}      <target dev='btap0'/>\n      <model type='virtio'/>\n    </interface>\n")


def transfer(lab, guest):
    """One receive and one send: (bytes/s to the guest, bytes/s from it, the raw numbers)."""
    result = subprocess.run(["ip", "netns", "exec", lab.ns, sys.executable, "-c", TRANSFERS, GUEST, str(SINK),
                             str(SOURCE), str(VOLUME)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr + guest.diagnostics()
    found = json.loads(result.stdout)
    received, sent = found["in"], found["out"]
    # Every byte arrived both ways, as the guest counted and as the host did.
    assert received[0] == VOLUME and sent[0] == VOLUME // 1024 * 1024, found
    return received[0] / received[1], sent[0] / sent[1], found


def boot(lab, name, bandwidth=""):
    guest = lab.boot(name, nic(bandwidth), {"ip": f"{GUEST}/24", "ping": HOST, "sink": SINK, "source": SOURCE})
    report = guest.report()
    assert report["ping " + HOST].startswith("ok "), report
    return guest


def assert_shaped(lab, guest, what):
    """Both directions at the average ± 10 %. A shaper is a ceiling the guest reaches when it gets
    the CPU to: no run may go above it, and of up to three runs (a TCG guest on a loaded machine
    can stall, and the few KiB of burst do not make up for lost time) one must reach it."""
    runs = []
    for _ in range(3):
        inbound, outbound, found = transfer(lab, guest)
        runs.append((inbound, outbound))
        print(f"{what}: to the guest {inbound / 1000:.0f} kB/s, from the guest {outbound / 1000:.0f} kB/s "
              f"(average {AVERAGE} kB/s); raw {found}")
        assert inbound <= (1 + TOLERANCE) * RATE and outbound <= (1 + TOLERANCE) * RATE, f"above the average: {found}"
        if min(inbound, outbound) >= (1 - TOLERANCE) * RATE:
            return
    raise AssertionError(f"{what}: no run reached {RATE} B/s ± 10 % both ways: {runs}")


def test_bandwidth_limits_what_the_guest_receives_and_sends_to_the_average(lab):
    before = snapshot(lab.ns)
    shaped = (f"      <bandwidth>\n        <inbound average='{AVERAGE}'/>\n"
              f"        <outbound average='{AVERAGE}'/>\n      </bandwidth>\n")
    guest = boot(lab, "shaped", shaped)
    assert_shaped(lab, guest, "shaped")
    guest.destroy()
    # The ifb device and the qdiscs went with destroy: the namespace is as it was.
    assert_clean(lab.ns, lab.d, "shaped", before, guest.pid)


def test_without_bandwidth_the_guest_is_not_limited(lab):
    inbound, outbound, found = transfer(lab, boot(lab, "unshaped"))
    print(f"unshaped: to the guest {inbound / 1000:.0f} kB/s, from the guest {outbound / 1000:.0f} kB/s; raw {found}")
    # Well above the shaped rate both ways (under TCG the guest moves several MB/s).
    assert inbound > 2 * RATE and outbound > 2 * RATE, found


def test_domiftune_changes_a_running_guests_rates(lab):
    guest = boot(lab, "tuned")
    inbound, outbound, found = transfer(lab, guest)
    assert inbound > 2 * RATE and outbound > 2 * RATE, found
    ok(virtnet(lab.d, "domiftune", "tuned", "btap0", "--inbound", f"{AVERAGE}", "--outbound", f"{AVERAGE}"))
    assert_shaped(lab, guest, "tuned live")


# --- clean-traffic --------------------------------------------------------------------------------

CLEAN = (f"      <filterref filter='clean-traffic'>\n        <parameter name='IP' value='{GUEST}'/>\n"
         "      </filterref>\n")
SPOOFED_MAC = "52:54:00:b0:00:99"


def filtered_nic(mac, tap, host, filterref):
    return (f"    <interface type='ethernet'>\n      <mac address='{mac}'/>\n"
            f"      <source>\n        <ip address='{host}' family='ipv4' prefix='24'/>\n      </source>\n"
            f"      <target dev='{tap}'/>\n      <model type='virtio'/>\n{filterref}    </interface>\n")


def test_clean_traffic_stops_a_guest_that_changes_its_mac_or_ip_and_only_then(lab):
    """Four guests, each on a tap of its own in its own subnet (the namespace routes each to its tap):
    filtered and honest, filtered with another MAC, filtered with another IP, unfiltered with
    another MAC. Only the spoofing filtered guests cannot reach the host."""
    before = snapshot(lab.ns)
    cases = {  # name: (XML MAC, tg.mac, guest address, filtered)
        "honest": ("52:54:00:b0:00:11", None, "10.0.1.2", True),
        "macspoof": ("52:54:00:b0:00:12", SPOOFED_MAC, "10.0.2.2", True),
        "ipspoof": ("52:54:00:b0:00:13", None, "10.0.3.3", True),
        "free": ("52:54:00:b0:00:14", SPOOFED_MAC, "10.0.4.2", False),
    }
    guests = {}
    for n, (name, (mac, spoof, address, filtered)) in enumerate(cases.items(), 1):
        host = f"10.0.{n}.1"
        # The filter's IP is the address the guest should have (.2); ipspoof uses .3 instead.
        filterref = CLEAN.replace(GUEST, f"10.0.{n}.2") if filtered else ""
        test = {"ip": f"{address}/24", "ping": host, "tries": 5}
        if spoof:
            test["mac"] = spoof
        guests[name] = lab.boot(name, filtered_nic(mac, f"ftap{n}", host, filterref), test)
    reports = {name: guest.report() for name, guest in guests.items()}
    results = {name: report["ping " + f"10.0.{n}.1"].split()[0] for n, (name, report) in enumerate(reports.items(), 1)}
    print(f"clean-traffic: {results}")
    assert reports["macspoof"].nic["mac"] == SPOOFED_MAC and reports["free"].nic["mac"] == SPOOFED_MAC
    assert results == {"honest": "ok", "macspoof": "fail", "ipspoof": "fail", "free": "ok"}, reports
    # The rules are virtnet's own table per domain and interface, and go at destroy.
    tables = subprocess.run(["ip", "netns", "exec", lab.ns, "nft", "list", "tables"], capture_output=True, text=True)
    assert sorted(tables.stdout.split()) == sorted(["table"] * 3 + ["netdev"] * 3 + [
        f"virtnet-{name}-net0" for name in ("honest", "macspoof", "ipspoof")]), tables.stdout
    for guest in guests.values():
        guest.destroy()
    tables = subprocess.run(["ip", "netns", "exec", lab.ns, "nft", "list", "tables"], capture_output=True, text=True)
    assert tables.stdout.strip() == "", tables.stdout
    assert_clean(lab.ns, lab.d, "honest", before)


def test_a_shaped_and_filtered_nic_plugged_into_a_running_guest_goes_with_its_tc_and_rules(lab, tmp_path):
    """Hot-plug applies <bandwidth> and clean-traffic to the new tap, and hot-unplug removes them:
    the ifb device and the nftables table with the NIC."""
    ns = lab.ns
    before = snapshot(ns)
    guest = lab.boot("hot", "", {"watch": 1, "hotip": f"{GUEST}/24", "hotping": HOST})
    guest.wait_for("done$")
    shaped = f"      <bandwidth>\n        <outbound average='{AVERAGE}'/>\n      </bandwidth>\n"
    path = write(tmp_path / "nic.xml", nic(shaped).replace("</interface>", CLEAN + "    </interface>"))
    ok(virtnet(lab.d, "attach-device", "hot", path, "--live", netns=ns))
    ping = guest.wait_for(r"hotping eth\d+ ")
    assert ping.split()[3] == "ok", guest.diagnostics()  # the filter lets the honest guest through
    listed = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "tables"], capture_output=True, text=True)
    assert listed.stdout.split() == ["table", "netdev", "virtnet-hot-net0"], listed.stdout
    assert "ifb-btap0" in subprocess.run(["ip", "-n", ns, "-br", "link"], capture_output=True, text=True).stdout
    ok(virtnet(lab.d, "detach-device", "hot", path, "--live", netns=ns))
    guest.wait_for(r"unplug eth\d+$", timeout=30)
    listed = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "tables"], capture_output=True, text=True)
    assert listed.stdout == "" and [a.kind for a in lab.d.live("hot").teardown] == ["stop-qemu"]
    guest.destroy()
    assert_clean(ns, lab.d, "hot", before, guest.pid)
