#!/usr/bin/env python3
"""Build the tiny test guest: Debian's cloud kernel and a busybox initramfs whose /init runs one
network test, described on the kernel command line, and reports on the serial console.

    python tools/tiny-guest.py [--cache-dir DIR] [--json] [--rebuild] [--link]   (make guest: --link)

Everything comes from Debian packages, downloaded with `apt-get download` and unpacked with
`dpkg-deb -x` (never installed): linux-image-cloud-amd64 and the linux-image-VERSION-cloud-amd64 it
depends on (the kernel, and the virtio modules the initramfs carries), busybox-static (the guest's
shell and tools), and qemu-guest-agent with the packages of the shared libraries it needs (libc6,
libglib2.0-0, libpcre2-8-0, libudev1, libnuma1, liburing2; the libraries are found by the sonames
its ELF headers name, in those packages only). The image is cached outside the repository, in a
directory named after the kernel's, busybox's and the agent's versions and a hash of what goes into
the image (the libraries' versions too), so that a newer kernel or an edited /init builds anew:
$VIRTNET_TEST_CACHE/guest/ (default /var/cache/virtnet-test/guest/) for root, else
$XDG_CACHE_HOME/virtnet-test/guest/ (~/.cache/...); --cache-dir overrides. Builds are serialised by
a lock in that directory, so parallel callers build once. It prints the kernel and initrd paths
(or a JSON record). With --link (as `make guest` runs it) the symlink `current` in that directory
points at the image just built or found, and the paths printed go through it
(/var/cache/virtnet-test/guest/current/vmlinuz and .../current/initrd.gz for root): stable paths for
a domain XML to name, such as examples/quickstart.xml.

Booting it (QEMU, or a domain XML with <kernel>, <initrd>, <cmdline> and <serial type='file'>):

    qemu-system-x86_64 -m 96 -nodefaults -display none -kernel KERNEL -initrd INITRD \\
        -append 'console=ttyS0 quiet no_timer_check tg.ip=dhcp tg.ping=10.0.2.2' -serial file:serial.log \\
        -netdev user,id=n0 -device virtio-net-pci,netdev=n0

/init reads its test from `tg.KEY=VALUE` words of the kernel command line:

    tg.name=NAME        a label, echoed in the first report
    tg.ip=dhcp|A/P      configure the NIC by DHCP (busybox udhcpc) or statically; absent: no address
    tg.dhcpopt=OPT      also ask the DHCP server for option OPT (udhcpc -O, e.g. mtu)
    tg.gw=A             a default route via A
    tg.listen=PORT      accept one TCP connection on PORT, read a line and answer `guest NAME got LINE`
    tg.ping=A[,B...]    ping each address until it answers (at most tg.tries times, one second each)
    tg.connect=A:P[,..] connect to each, send `hello from NAME`, report the first line answered
    tg.resolve=N@S[,..] ask DNS server S for name N's IPv4 address (busybox nslookup)
    tg.tries=N          attempts per ping/connect (default 30)
    tg.disk=DEV         report the size and first line of block device DEV (virtio_blk is loaded)
    tg.disksum=DEV:KIB  report the md5 of the first KIB KiB of block device DEV (busybox md5sum)
    tg.linger=S         stay up S seconds after the last report before powering off (default 0)
    tg.acpi=ignore      do not power off when the ACPI power button is pressed (default: power off)
    tg.agent=1          run the QEMU guest agent (qemu-ga) on the virtio-serial port named
                        org.qemu.guest_agent.0 (a <channel> with that target name), found in sysfs
    tg.watch=1          during the linger time after `done`, every 0.2 s, look for interfaces that
                        appear (hot-plugged) or go; bring each new one up and set it up as below
    tg.hotip=dhcp|A/P   a new interface's address: DHCP as tg.ip, or A/P (removed first from any
                        other interface that has it); absent: none
    tg.hotgw=A          a default route via A on a new interface
    tg.hotping=B        ping B from a new interface (tg.tries attempts), once its carrier is up
                        (waited for up to 2 s)
    tg.debug=1          keep kernel messages on the console (otherwise silenced once /init runs)
    tg.mac=MAC          give the NIC this MAC address before bringing it up (a guest that spoofs its MAC)
    tg.sink=PORT        accept TCP connections on PORT, one after another, for as long as the guest is up:
                        each is read to its end, then answered `BYTES SECONDS` (what it read, and the
                        time from its start to its end by /proc/uptime) and closed (a bulk receive)
    tg.source=PORT      likewise, but each connection sends a line with a count KIB and gets KIB KiB of
                        zeros back, then is closed (a bulk send)

Reports are lines starting with `TG: ` on the console, in this order: `boot KERNEL name NAME`,
`agent PORT ok` (or `agent PORT fail: LOG LINE`, `agent none` when no port has that name),
`disk DEV sectors N first TEXT`, `disksum DEV kib N md5 HEX`,
`nic IF mac MAC mtu MTU carrier 0|1` (or `nic none`), `dhcp ...`
(DHCP only), `addr A/P|none`, `route default via A|none`, `listening PORT`, `ping A ok|fail tries
N`, `resolve N ADDRESS|fail tries N`, `connect A:P ok tries N: REPLY` (or `connect A:P fail tries N`), `accepted PORT`, `stats IF
rx_packets N tx_packets N`, `done`. With tg.watch=1, then, for each interface that appears:
`hotplug IF mac MAC`, `dhcp ...` (tg.hotip=dhcp), `hotping IF B ok|fail tries N` (tg.hotping),
`hotready IF`; and `unplug IF` for each one that goes. tg.sink and tg.source report `serving PORT`
after `listening`, and `sink bytes N seconds S` or `source kib N` for each connection, as it ends.
Then `poweroff -f` (which powers QEMU off only when the machine has ACPI).
busybox-static's wget crashes, so TCP is done with busybox nc.

`no_timer_check` on the command line keeps a slow (TCG, loaded host) boot from panicking in the
kernel's IO-APIC timer check ("IO-APIC + timer doesn't work").
"""

import argparse
import fcntl
import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KERNEL_META = "linux-image-cloud-amd64"
BUSYBOX = "busybox-static"
# Modules the guest loads, with everything they depend on (found from each module's modinfo).
# button+evdev: ACPI power button; virtio_console: the guest agent's virtio-serial port.
MODULES = ("virtio_net", "virtio_pci", "virtio_blk", "button", "evdev", "virtio_console")
# The QEMU guest agent (tg.agent=1) and the packages holding the shared libraries it needs; the
# builder resolves its DT_NEEDED entries in these packages alone (never in the host's libraries).
AGENT = "qemu-guest-agent"
AGENT_BINARY = "usr/sbin/qemu-ga"
AGENT_LIBRARIES = ("libc6", "libglib2.0-0", "libpcre2-8-0", "libudev1", "libnuma1", "liburing2")
LIB_DIRS = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu")  # where Debian 12 puts them
IMAGE_FORMAT = 2  # bump when how the image is built or laid out changes (it is part of the cache key)

INIT = r"""#!/bin/sh
# /init of the tiny test guest (tools/tiny-guest.py): one network test from the kernel command
# line, reported as `TG: ...` lines on the console, then power off.
/bin/busybox mkdir -p /proc /sys /dev /tmp /run /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/sbin:/usr/sbin:/bin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null

say() { echo "TG: $*"; }
finish() {
    say done
    if [ "${tg_watch:-0}" = 1 ]; then
        watch_hotplug
    elif [ "${tg_linger:-0}" -gt 0 ] 2>/dev/null; then
        sleep "$tg_linger"
    fi
    poweroff -f
}

# Ping $1 until it answers, at most $tries times: sets $result (ok|fail) and $n (the tries).
ping_until() {
    n=0; result=fail
    while [ $n -lt "$tries" ]; do
        n=$((n + 1))
        if ping -c 1 -W 1 "$1" >/dev/null 2>&1; then result=ok; break; fi
        usleep 200000
    done
}

nets() { ls /sys/class/net | tr '\n' ' '; }

# tg.watch=1: for the linger time, every 0.2 s, set up each interface that appears (hot-plugged)
# as tg.hotip/tg.hotgw/tg.hotping say, and report each one that goes.
watch_hotplug() {
    known=" $(nets)"
    end=$(($(date +%s) + ${tg_linger:-0}))
    while [ "$(date +%s)" -lt "$end" ]; do
        now=" $(nets)"
        for dev in $now; do
            case "$known" in *" $dev "*) ;; *) hotplugged "$dev" ;; esac
        done
        for dev in $known; do
            case "$now" in *" $dev "*) ;; *) say "unplug $dev" ;; esac
        done
        known=$now
        usleep 200000
    done
}

hotplugged() {
    dev=$1
    say "hotplug $dev mac $(cat /sys/class/net/$dev/address)"
    ip link set "$dev" up
    case "${tg_hotip:-}" in
        dhcp) udhcpc -i "$dev" -f -q -n -t 10 -T 1 -s /etc/udhcpc.script >/dev/null 2>&1 || say "dhcp fail" ;;
        */*)
            for other in $(nets); do
                [ "$other" = "$dev" ] || ip addr del "$tg_hotip" dev "$other" 2>/dev/null
            done
            ip addr add "$tg_hotip" dev "$dev" ;;
    esac
    [ -n "${tg_hotgw:-}" ] && ip route replace default via "$tg_hotgw" dev "$dev"
    m=0
    while [ "$(cat /sys/class/net/$dev/carrier 2>/dev/null)" != 1 ] && [ $m -lt 20 ]; do
        usleep 100000; m=$((m + 1))
    done
    if [ -n "${tg_hotping:-}" ]; then
        ping_until "$tg_hotping"
        say "hotping $dev $tg_hotping $result tries $n"
    fi
    say "hotready $dev"
}

for word in $(cat /proc/cmdline); do
    case "$word" in
        tg.*=*)
            key=${word%%=*}; key=${key#tg.}; value=${word#*=}
            case "$key" in
                ''|*[!a-z_]*) say "error bad key $key" ;;
                *) eval "tg_$key=\$value" ;;
            esac ;;
    esac
done
[ "${tg_debug:-0}" = 1 ] || dmesg -n 1
name=${tg_name:-guest}
tries=${tg_tries:-30}
say "boot $(uname -r) name $name"

for module in $(cat /lib/modules/order); do
    insmod "/lib/modules/$module.ko" || say "error insmod $module"
done

# The ACPI power button (virtnet shutdown/reboot press it): power off as a real init would, unless
# the test wants a guest that ignores it (tg.acpi=ignore).
[ "${tg_acpi:-}" = ignore ] || for event in /sys/class/input/event*; do
    if grep -q "Power Button" "$event/device/name" 2>/dev/null; then
        ( dd if="/dev/input/${event##*/}" bs=24 count=1 >/dev/null 2>&1 && say "power button" && poweroff -f ) &
    fi
done

# tg.agent=1: the QEMU guest agent on the virtio-serial port named org.qemu.guest_agent.0 (found
# through sysfs: there is no udev to make the /dev/virtio-ports/ link).
if [ "${tg_agent:-0}" = 1 ]; then
    port=; n=0
    while [ -z "$port" ] && [ $n -lt 50 ]; do
        for p in /sys/class/virtio-ports/*; do
            [ "$(cat "$p/name" 2>/dev/null)" = org.qemu.guest_agent.0 ] && [ -e "/dev/${p##*/}" ] && port=${p##*/}
        done
        [ -n "$port" ] || { usleep 100000; n=$((n + 1)); }
    done
    if [ -z "$port" ]; then
        say "agent none"
    else
        qemu-ga -m virtio-serial -p "/dev/$port" -t /run > /tmp/qemu-ga.log 2>&1 &
        agent=$!
        usleep 500000
        if kill -0 "$agent" 2>/dev/null; then
            say "agent $port ok"
        else
            say "agent $port fail: $(tail -n 1 /tmp/qemu-ga.log)"
        fi
    fi
fi

if [ -n "${tg_disk:-}" ]; then
    say "disk $tg_disk sectors $(cat /sys/block/$tg_disk/size 2>/dev/null || echo none) first $(head -n 1 /dev/$tg_disk 2>/dev/null | tr -cd ' -~' | head -c 64)"
fi
# tg.disksum=DEV:KIB: the md5 of the first KIB KiB of DEV (busybox md5sum), for the host to compare.
if [ -n "${tg_disksum:-}" ]; then
    sumdev=${tg_disksum%%:*}; sumkib=${tg_disksum#*:}
    sum=$(dd if="/dev/$sumdev" bs=1024 count="$sumkib" 2>/dev/null | md5sum | awk '{print $1}')
    say "disksum $sumdev kib $sumkib md5 ${sum:-none}"
fi

ip link set lo up
nic=
for dev in /sys/class/net/*; do
    [ "${dev##*/}" = lo ] || { nic=${dev##*/}; break; }
done
if [ -z "$nic" ]; then
    say "nic none"
    finish
fi
[ -n "${tg_mac:-}" ] && ip link set dev "$nic" address "$tg_mac"
ip link set "$nic" up
n=0
while [ "$(cat /sys/class/net/$nic/carrier 2>/dev/null)" != 1 ] && [ $n -lt 20 ]; do
    usleep 100000; n=$((n + 1))
done
carrier=$(cat /sys/class/net/$nic/carrier 2>/dev/null || echo 0)
say "nic $nic mac $(cat /sys/class/net/$nic/address) mtu $(cat /sys/class/net/$nic/mtu) carrier $carrier"

case "${tg_ip:-}" in
    dhcp) udhcpc -i "$nic" -f -q -n -t 10 -T 1 ${tg_dhcpopt:+-O "$tg_dhcpopt"} -s /etc/udhcpc.script >/dev/null 2>&1 \
              || say "dhcp fail" ;;
    */*) ip addr add "$tg_ip" dev "$nic" ;;
esac
[ -n "${tg_gw:-}" ] && ip route add default via "$tg_gw" dev "$nic"
addr=$(ip -4 -o addr show dev "$nic" | awk '{print $4; exit}')
say "addr ${addr:-none}"
gw=$(ip -4 route show default | awk '{print $3; exit}')
say "route default via ${gw:-none}"

listener=
if [ -n "${tg_listen:-}" ]; then
    export tg_name="$name"
    nc -l -p "$tg_listen" -e /bin/tg-answer &
    listener=$!
    hexport=$(printf ':%04X ' "$tg_listen")
    n=0
    while ! grep -q "$hexport.* 0A " /proc/net/tcp && [ $n -lt 50 ]; do usleep 100000; n=$((n + 1)); done
    say "listening $tg_listen"
fi

# tg.sink / tg.source: a loop of one-connection listeners, each running a bulk receive or send.
serve() {
    ( while :; do nc -l -p "$1" -e "$2"; done ) </dev/null >/dev/null 2>&1 &
    hexport=$(printf ':%04X ' "$1")
    n=0
    while ! grep -q "$hexport.* 0A " /proc/net/tcp && [ $n -lt 50 ]; do usleep 100000; n=$((n + 1)); done
    say "serving $1"
}
[ -n "${tg_sink:-}" ] && serve "$tg_sink" /bin/tg-sink
[ -n "${tg_source:-}" ] && serve "$tg_source" /bin/tg-source

for target in $(echo "${tg_ping:-}" | tr , ' '); do
    ping_until "$target"
    say "ping $target $result tries $n"
done

# tg.resolve=NAME@SERVER: ask the DNS server SERVER for NAME's IPv4 address (busybox nslookup).
for query in $(echo "${tg_resolve:-}" | tr , ' '); do
    n=0; found=
    while [ -z "$found" ] && [ $n -lt "$tries" ]; do
        n=$((n + 1))
        found=$(nslookup -type=a "${query%@*}" "${query##*@}" 2>/dev/null \
            | awk '/^Name:/ {f=1} f && /^Address/ {sub(/^Address[^:]*:[ \t]*/, ""); split($0, a, " "); print a[1]; exit}')
        [ -n "$found" ] || sleep 1
    done
    say "resolve ${query%@*} ${found:-fail} tries $n"
done

# The first line the peer at $1 (HOST:PORT) answers to `hello from NAME`, waiting at most 10 s for
# it. nc is stopped once the line is in rather than left to wait for the peer's FIN: Debian 12's
# passt (2023) loses the FIN of a connection the guest half-closed first.
ask() {
    rm -f /tmp/answer
    mkfifo /tmp/answer
    echo "hello from $name" | nc -w 3 "${1%:*}" "${1##*:}" > /tmp/answer 2>/dev/null &
    asker=$!
    answer=
    read -t 10 -r answer < /tmp/answer
    kill "$asker" 2>/dev/null
    wait "$asker" 2>/dev/null
    echo "$answer"
}

for target in $(echo "${tg_connect:-}" | tr , ' '); do
    n=0; reply=
    while [ -z "$reply" ] && [ $n -lt "$tries" ]; do
        n=$((n + 1))
        reply=$(ask "$target")
        [ -n "$reply" ] || usleep 500000
    done
    if [ -n "$reply" ]; then say "connect $target ok tries $n: $reply"; else say "connect $target fail tries $n"; fi
done

if [ -n "$listener" ]; then
    n=0
    while kill -0 "$listener" 2>/dev/null && [ $n -lt 600 ]; do usleep 100000; n=$((n + 1)); done
    if kill -0 "$listener" 2>/dev/null; then say "accepted none"; else say "accepted $tg_listen"; fi
fi

say "stats $nic rx_packets $(cat /sys/class/net/$nic/statistics/rx_packets) tx_packets $(cat /sys/class/net/$nic/statistics/tx_packets)"
finish
"""

ANSWER = r"""#!/bin/sh
# Run by `nc -l -e` with the connection as stdin/stdout.
read -r line
echo "guest ${tg_name:-guest} got $line"
"""

SINK = r"""#!/bin/sh
# tg.sink: run by `nc -l -e` with the connection as stdin/stdout: read it to its end, answer with the
# byte count and the seconds it took.
start=$(cut -d ' ' -f 1 /proc/uptime)
bytes=$(wc -c | tr -d ' ')
end=$(cut -d ' ' -f 1 /proc/uptime)
seconds=$(awk "BEGIN { print $end - $start }")
echo "$bytes $seconds"
echo "TG: sink bytes $bytes seconds $seconds" > /dev/console
"""

SOURCE = r"""#!/bin/sh
# tg.source: run by `nc -l -e`: read a count of KiB, send that many KiB of zeros.
read -r kib
case "$kib" in ''|*[!0-9]*) exit 1 ;; esac
dd if=/dev/zero bs=1024 count="$kib" 2>/dev/null
echo "TG: source kib $kib" > /dev/console
"""

UDHCPC_SCRIPT = r"""#!/bin/sh
# udhcpc's hook: apply the lease; report what the server offered (on the console: /init sends
# udhcpc's own chatter to /dev/null).
case "$1" in
    deconfig)
        ip -4 addr flush dev "$interface"
        ip link set "$interface" up ;;
    bound|renew)
        ip -4 addr flush dev "$interface"
        ip addr add "$ip/${mask:-24}" dev "$interface"
        [ -n "$mtu" ] && ip link set dev "$interface" mtu "$mtu"
        for r in $router; do ip route add default via "$r" dev "$interface"; break; done
        echo "TG: dhcp ip $ip mask ${mask:-none} router ${router:-none} server ${serverid:-none} mtu ${mtu:-none}" \
            > /dev/console ;;
esac
exit 0
"""


class BuildError(Exception):
    pass


def default_cache_dir():
    """$VIRTNET_TEST_CACHE/guest (the test cache the Makefile names; /var/cache/virtnet-test when
    root) when this user may write there, else $XDG_CACHE_HOME/virtnet-test/guest."""
    shared = Path(os.environ.get("VIRTNET_TEST_CACHE") or "/var/cache/virtnet-test")
    if os.geteuid() == 0 or os.access(shared / "guest", os.W_OK) or (
            not (shared / "guest").exists() and os.access(shared, os.W_OK)):
        return shared / "guest"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "virtnet-test" / "guest"


def run(argv, **kwargs):
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=True, **kwargs)
    except FileNotFoundError:
        raise BuildError(f"{argv[0]} not found: this builder needs Debian's apt and dpkg") from None
    except subprocess.CalledProcessError as e:
        raise BuildError(f"`{' '.join(argv)}` failed ({e.returncode}): {e.stderr.strip()}") from None


def candidates(*packages):
    """{package: its apt fields} for the versions `apt-get download PACKAGE` would fetch (one
    apt-cache call: without apt's binary cache, each call costs about a second)."""
    def show():
        return subprocess.run(["apt-cache", "show", "--no-all-versions", *packages], capture_output=True, text=True)

    try:
        result = show()
    except FileNotFoundError:
        raise BuildError("apt-cache not found: this builder needs Debian's apt") from None
    if result.returncode != 0 and os.geteuid() == 0:
        run(["apt-get", "update", "-qq"])  # package lists never fetched (a fresh container): once
        result = show()
    if result.returncode != 0:
        raise BuildError(f"apt-cache show {' '.join(packages)} failed: {result.stderr.strip()}; "
                         "run `apt-get update` as root")
    found = {}
    for record in result.stdout.strip().split("\n\n"):
        fields = {}
        for line in record.splitlines():
            key, sep, value = line.partition(": ")
            if sep and not line.startswith(" "):
                fields[key] = value
        if "Package" in fields:
            found.setdefault(fields["Package"], fields)
    return found


def resolve():
    """The exact packages to download: [(name, version)] for the kernel, busybox, the guest agent
    and its libraries, in that order. The kernel is the image package linux-image-cloud-amd64
    depends on, at the version it names."""
    wanted = (KERNEL_META, BUSYBOX, AGENT) + AGENT_LIBRARIES
    found = candidates(*wanted)
    for package in wanted:
        if package not in found:
            raise BuildError(f"apt knows no package {package}; run `apt-get update` as root")
    depends = found[KERNEL_META].get("Depends", "")
    match = re.search(r"(linux-image-[0-9][^\s,(]*-cloud-amd64) \(= ([^)\s]+)\)", depends)
    if not match:
        raise BuildError(f"{KERNEL_META} depends on no exact linux-image-*-cloud-amd64 version: {depends!r}")
    return [(match.group(1), match.group(2))] + [(name, found[name]["Version"]) for name in wanted[1:]]


def cache_key(packages):
    """A directory name: the kernel's, busybox's and the agent's versions, and a hash of what this
    builder puts in the image (the scripts and modules, the versions of the agent's libraries, and
    IMAGE_FORMAT, which a change to how it is built must bump)."""
    recipe = json.dumps([IMAGE_FORMAT, MODULES, INIT, ANSWER, UDHCPC_SCRIPT, packages[3:], SINK, SOURCE])
    digest = hashlib.sha256(recipe.encode()).hexdigest()[:10]
    parts = [f"{name.removeprefix('linux-image-')}_{version}" for name, version in packages[:3]]
    return re.sub(r"[^A-Za-z0-9._+-]", "_", "+".join(parts)) + f"+{digest}"


# --- modules ---------------------------------------------------------------------------------------


def module_index(root):
    """{module name: path} for every module of the unpacked kernel (name with '-' as '_')."""
    index = {}
    for path in (root / "lib" / "modules").glob("*/kernel/**/*.ko*"):
        name = path.name.split(".ko")[0].replace("-", "_")
        index[name] = path
    return index


def module_bytes(path):
    data = path.read_bytes()
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if not path.name.endswith(".ko"):
        raise BuildError(f"cannot decompress {path.name} (only .ko and .ko.xz are handled)")
    return data


def module_depends(data):
    """The modules a module needs, from `depends=` in its .modinfo section."""
    match = re.search(rb"(?:^|\0)depends=([^\0]*)\0", data)
    if not match or not match.group(1):
        return []
    return [d.decode().replace("-", "_") for d in match.group(1).split(b",") if d]


def load_order(index, wanted):
    """WANTED and everything they depend on, each after its dependencies: {name: bytes} in order."""
    ordered, visiting = {}, set()

    def visit(name):
        if name in ordered:
            return
        if name in visiting:
            raise BuildError(f"module dependency cycle through {name}")
        if name not in index:
            raise BuildError(f"the kernel package has no module {name} (built in? then drop it from MODULES)")
        visiting.add(name)
        data = module_bytes(index[name])
        for dep in module_depends(data):
            visit(dep)
        visiting.discard(name)
        ordered[name] = data

    for name in wanted:
        visit(name)
    return ordered


# --- the guest agent and its libraries ---------------------------------------------------------


def elf_dynamic(data):
    """(interpreter or None, [DT_NEEDED sonames]) of a little-endian ELF64 file."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise BuildError("not a little-endian 64-bit ELF file")
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    loads, dynamic, interpreter = [], None, None
    for i in range(phnum):
        kind, _, offset, vaddr, _, filesz = struct.unpack_from("<IIQQQQ", data, phoff + i * phentsize)
        if kind == 1:  # PT_LOAD
            loads.append((vaddr, offset, filesz))
        elif kind == 2:  # PT_DYNAMIC
            dynamic = (offset, filesz)
        elif kind == 3:  # PT_INTERP
            interpreter = data[offset:offset + filesz].rstrip(b"\0").decode()
    if dynamic is None:
        return interpreter, []
    entries = [struct.unpack_from("<qQ", data, dynamic[0] + i) for i in range(0, dynamic[1], 16)]
    strtab = next((value for tag, value in entries if tag == 5), None)  # DT_STRTAB, an address
    base = next((offset + strtab - vaddr for vaddr, offset, size in loads if vaddr <= (strtab or -1) < vaddr + size),
                None)
    if base is None:
        raise BuildError("an ELF file with a dynamic section but no string table in a loaded segment")
    needed = [data[base + value:data.index(b"\0", base + value)].decode() for tag, value in entries if tag == 1]
    return interpreter, needed


def inside(root, path):
    """PATH (absolute, as in the package) under ROOT, its symlinks followed within ROOT."""
    current = root / path.lstrip("/")
    for _ in range(16):
        if not current.is_symlink():
            return current
        target = os.readlink(current)
        current = root / target.lstrip("/") if target.startswith("/") else current.parent / target
    raise BuildError(f"too many symlinks at {path} in {root.name}")


def agent_files(roots):
    """{path in the initramfs: bytes, or a symlink's target} of the guest agent, its ELF
    interpreter and every library it needs, found in ROOTS (the unpacked agent and library
    packages) by soname."""
    def find(soname):
        for root in roots:
            for folder in LIB_DIRS:
                path = inside(root, f"/{folder}/{soname}")
                if path.is_file():
                    return path.read_bytes()
        raise BuildError(f"no package of {', '.join(AGENT_LIBRARIES)} holds {soname}, which the guest agent needs; "
                         "add its package to AGENT_LIBRARIES")

    agent = inside(roots[0], "/" + AGENT_BINARY).read_bytes()
    interpreter, pending = elf_dynamic(agent)
    files = {AGENT_BINARY: agent}
    if interpreter:  # /lib64/ld-linux-x86-64.so.2: a link to the one among the libraries, as in libc6
        pending.append(os.path.basename(interpreter))
        files[interpreter.lstrip("/")] = f"/{LIB_DIRS[0]}/{os.path.basename(interpreter)}"
    while pending:
        soname = pending.pop()
        if f"{LIB_DIRS[0]}/{soname}" not in files:
            data = find(soname)
            files[f"{LIB_DIRS[0]}/{soname}"] = data
            pending += elf_dynamic(data)[1]
    return files


# --- the initramfs ---------------------------------------------------------------------------------


def cpio_newc(entries):
    """An uncompressed cpio archive in the "newc" format the kernel unpacks. ENTRIES: (name,
    mode, data) with data the file's bytes, a symlink's target, or (major, minor) for a device."""
    out = bytearray()

    def pad():
        out.extend(b"\0" * (-len(out) % 4))

    def header(ino, mode, nlink, size, rdev, name):
        encoded = name.encode() + b"\0"
        fields = [ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev[0], rdev[1], len(encoded), 0]
        out.extend(b"070701" + b"".join(b"%08X" % f for f in fields) + encoded)
        pad()

    for ino, (name, mode, data) in enumerate(entries, start=1):
        rdev = (0, 0)
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            rdev, data = data, b""
        elif isinstance(data, str):
            data = data.encode()
        header(ino, mode, 2 if stat.S_ISDIR(mode) else 1, len(data), rdev, name)
        out.extend(data)
        pad()
    header(0, 0, 1, 0, (0, 0), "TRAILER!!!")
    return bytes(out)


def initramfs_entries(busybox, modules, agent):
    d, x, f = stat.S_IFDIR | 0o755, stat.S_IFREG | 0o755, stat.S_IFREG | 0o644
    folders = {"bin", "dev", "etc", "lib", "lib/modules", "proc", "sys", "tmp", "run", "sbin", "usr", "usr/bin",
               "usr/sbin"}
    for path in agent:
        parts = path.split("/")[:-1]
        folders |= {"/".join(parts[:i]) for i in range(1, len(parts) + 1)}
    entries = [(name, d, b"") for name in sorted(folders, key=lambda name: (name.count("/"), name))]
    entries += [
        ("dev/console", stat.S_IFCHR | 0o600, (5, 1)),
        ("bin/busybox", x, busybox),
        ("bin/sh", stat.S_IFLNK | 0o777, "busybox"),
        ("init", x, INIT),
        ("bin/tg-answer", x, ANSWER),
        ("bin/tg-sink", x, SINK),
        ("bin/tg-source", x, SOURCE),
        ("etc/udhcpc.script", x, UDHCPC_SCRIPT),
        ("lib/modules/order", f, "".join(f"{name}\n" for name in modules)),
    ]
    entries += [(f"lib/modules/{name}.ko", f, data) for name, data in modules.items()]
    entries += [(path, stat.S_IFLNK | 0o777 if isinstance(data, str) else x, data)
                for path, data in sorted(agent.items())]
    return entries


def check_archive(archive, entries, busybox_path):
    """List the archive with busybox's own cpio (an independent reader) and compare the names."""
    listed = subprocess.run([str(busybox_path), "cpio", "-t"], input=archive, capture_output=True)
    names = listed.stdout.decode().split()
    expected = [name for name, _, _ in entries]
    if listed.returncode != 0 or names != expected:
        raise BuildError(f"busybox cpio -t does not list the initramfs as written: {names} != {expected} "
                         f"({listed.stderr.decode().strip()})")


# --- building --------------------------------------------------------------------------------------


def download(packages, into):
    if os.geteuid() == 0:
        try:  # let apt's sandbox user write there (otherwise apt warns and downloads as root)
            shutil.chown(into, user="_apt")
        except (LookupError, OSError):
            pass
    run(["apt-get", "download", "-q"] + [f"{name}={version}" for name, version in packages], cwd=into)
    debs = {}
    for name, _ in packages:
        found = sorted(into.glob(f"{name}_*.deb"))
        if len(found) != 1:
            raise BuildError(f"apt-get download left {len(found)} files for {name} in {into}")
        debs[name] = found[0]
    return debs


def build(packages, target, log):
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=".build-", dir=target.parent) as tmp:
        tmp = Path(tmp)
        (tmp / "debs").mkdir()
        debs = download(packages, tmp / "debs")
        log(f"downloaded {', '.join(p.name for p in debs.values())} in {time.monotonic() - started:.1f} s")
        for name, deb in debs.items():
            run(["dpkg-deb", "-x", str(deb), str(tmp / name)])
        kroot, broot, *agent_roots = (tmp / name for name, _ in packages)
        [vmlinuz] = sorted((kroot / "boot").glob("vmlinuz-*"))
        busybox_path = broot / "bin" / "busybox"
        modules = load_order(module_index(kroot), MODULES)
        agent = agent_files(agent_roots)
        entries = initramfs_entries(busybox_path.read_bytes(), modules, agent)
        archive = cpio_newc(entries)
        check_archive(archive, entries, busybox_path)

        out = tmp / "image"
        out.mkdir()
        shutil.copyfile(vmlinuz, out / "vmlinuz")
        (out / "initrd.gz").write_bytes(gzip.compress(archive, compresslevel=6, mtime=0))
        info = {
            "format": IMAGE_FORMAT,
            "packages": dict(packages),
            "kernel_release": vmlinuz.name.removeprefix("vmlinuz-"),
            "modules": list(modules),
            "agent_files": sorted(agent),
            "kernel": str(target / "vmlinuz"),
            "initrd": str(target / "initrd.gz"),
            "kernel_bytes": (out / "vmlinuz").stat().st_size,
            "initrd_bytes": (out / "initrd.gz").stat().st_size,
            "build_seconds": round(time.monotonic() - started, 2),
        }
        (out / "image.json").write_text(json.dumps(info, indent=1) + "\n")
        for path in out.iterdir():
            path.chmod(0o644)
        out.chmod(0o755)
        os.rename(out, target)
    return info


def prune(cache, keep, log, max_age_days=7):
    """Remove images of other versions that nobody used for a week."""
    now = time.time()
    for entry in cache.iterdir():
        if (entry.name == keep or entry.name.startswith(".") or entry.is_symlink()  # `current` (--link)
                or not (entry / "image.json").exists()):
            continue
        if now - (entry / "image.json").stat().st_mtime > max_age_days * 86400:
            shutil.rmtree(entry, ignore_errors=True)
            log(f"removed the unused image {entry}")


LINK = "current"


def link_current(cache, key):
    """Point CACHE/current at the image directory KEY (replaced atomically: a reader never finds
    it missing)."""
    link = cache / LINK
    if link.is_symlink() and os.readlink(link) == key:
        return
    tmp = cache / f".{LINK}.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(key)
    os.replace(tmp, link)


def ensure_image(cache_dir=None, rebuild=False, log=lambda message: None, link=False):
    """The image's record (image.json as a dict, with "built": whether this call built it). LINK:
    also point CACHE/current at it, and give the kernel and initrd paths through that link."""
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    packages = resolve()
    key = cache_key(packages)
    target = cache / key
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel callers wait for one build
        built = False
        if rebuild and target.exists():
            shutil.rmtree(target)
        if not (target / "image.json").exists():
            if target.exists():
                shutil.rmtree(target)  # an incomplete leftover
            info = build(packages, target, log)
            built = True
            prune(cache, key, log)
        info = json.loads((target / "image.json").read_text())
        os.utime(target / "image.json")  # in use: keep it from being pruned
        if link:
            link_current(cache, key)
            info["kernel"], info["initrd"] = (str(cache / LINK / Path(info[k]).name) for k in ("kernel", "initrd"))
    return {**info, "built": built}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--cache-dir", help=f"where images are kept (default here: {default_cache_dir()})")
    parser.add_argument("--json", action="store_true", help="print the image's record as JSON")
    parser.add_argument("--rebuild", action="store_true", help="build again even if cached")
    parser.add_argument("--link", action="store_true",
                        help=f"point the symlink {LINK} in the cache directory at the image and print paths through it")
    args = parser.parse_args(argv)
    try:
        info = ensure_image(args.cache_dir, args.rebuild, log=lambda m: print(f"tiny-guest: {m}", file=sys.stderr),
                            link=args.link)
    except BuildError as e:
        print(f"tiny-guest: error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(info, indent=1))
    else:
        if info["built"]:
            print(f"tiny-guest: built in {info['build_seconds']} s: kernel {info['kernel_bytes'] / 1e6:.1f} MB, "
                  f"initramfs {info['initrd_bytes'] / 1e6:.1f} MB", file=sys.stderr)
        print(f"kernel: {info['kernel']}")
        print(f"initrd: {info['initrd']}")
        print("cmdline: console=ttyS0 quiet no_timer_check tg.ip=dhcp tg.ping=10.0.2.2   (--help: the tg.* keys)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
