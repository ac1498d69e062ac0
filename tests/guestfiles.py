"""Host files for a golden's guest hardware, made by the test: goldens name fixed paths (a kernel
under /var/lib/virtnet/images, OVMF under /usr/share/OVMF, serial logs under /var/log/virtnet,
sockets under /run/virtnet-test), and `provide()` points the loaded domain at real ones in the
test's work directory before its argv is built, so that QEMU can open every one of them.

    kernel, initrd      a minimal bzImage header QEMU's loader accepts (nothing boots: -S) and a
                        small initrd
    pflash firmware     a zero-filled image of OVMF's size (QEMU maps it; nothing executes)
    NVRAM               a 128 KiB variable store (what `virtnet start` would copy from the template)
    chardev files       files, fifos and a pty in the work directory (always: the goldens' are
                        the host's business)
    unix sockets        a listening socket for mode='connect'; a fresh path for mode='bind'

A kernel or firmware path that exists on this host (SeaBIOS's bios-256k.bin) is left as it is.
"""

import os
import socket
import struct
import subprocess
import threading
from functools import lru_cache
from pathlib import Path

import pytest

from virtnet.conf.xmlmodel import thaw

QEMU = "/usr/bin/qemu-system-x86_64"
OVMF_CODE_SIZE = 1966080
NVRAM_SIZE = 131072


def fake_kernel(path):
    """A bzImage header (boot protocol 2.15, loadable high) and nothing else: QEMU's x86 loader
    takes it for a Linux kernel, which is all a paused QEMU needs."""
    image = bytearray(16384)
    image[0x1F1] = 1  # setup_sects
    struct.pack_into("<H", image, 0x1FE, 0xAA55)
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", image, 0x206, 0x020F)
    image[0x211] = 0x01  # LOADED_HIGH
    struct.pack_into("<I", image, 0x22C, 0x37FFFFFF)  # initrd_addr_max
    struct.pack_into("<I", image, 0x238, 2048)  # cmdline_size
    Path(path).write_bytes(bytes(image))
    return str(path)


class Listener:
    """A listening socket that accepts and holds connections (TCP for connect=, unix for passt)."""

    def __init__(self, family, address):
        self.sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        if family == socket.AF_INET:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(address)
        self.sock.listen(4)
        self.accepted, self._threads = [], []
        start_thread(self._threads, self._loop)

    def _loop(self):
        while True:
            try:
                self.accepted.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self):
        shut_sockets([self.sock, *self.accepted])
        join_threads(self._threads)


def start_thread(threads, target, *args):
    thread = threading.Thread(target=target, args=args, daemon=True)
    threads.append(thread)
    thread.start()


def shut_sockets(sockets):
    for sock in sockets:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()


def join_threads(threads):
    # Threads share the test thread's filesystem context, and the netns fixture can only move the
    # test thread back to its mount namespace once no other thread shares it: wait for them.
    for thread in threads:
        thread.join(5)
        assert not thread.is_alive(), "a stand-in thread did not stop"


class GuestFiles:
    """The files and listeners of one case; close() releases them (the work directory goes with
    the caller's)."""

    def __init__(self, domain, workdir):
        self.dir = Path(workdir) / "guest"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.closers = []
        self.count = 0
        thaw(domain)  # the paths are rewritten in the tree: no value may be served from before
        self._os(domain)
        for chardev in domain.serials + domain.consoles + domain.channels:
            self._chardev(chardev)

    def _new(self, stem):
        self.count += 1
        return self.dir / f"{self.count}-{stem}"

    def _os(self, domain):
        os_ = domain.os
        if os_ is None:
            return
        for tag, make in (("kernel", fake_kernel), ("initrd", lambda p: _write(p, b"\0" * 4096))):
            node = os_.node.find(tag)
            if node is not None and not os.path.exists(node.text.strip()):
                node.text = make(self._new(tag))
        loader = os_.node.find("loader")
        if loader is not None and not os.path.exists(loader.text.strip()):
            loader.text = _write(self._new("code.fd"), b"\0" * OVMF_CODE_SIZE)
        if loader is not None and loader.get("type") == "pflash" and loader.get("readonly") == "yes":
            nvram = os_.node.find("nvram")
            if nvram is None:
                from lxml import etree

                nvram = etree.SubElement(os_.node, "nvram")
            nvram.text = _write(self._new("VARS.fd"), b"\0" * NVRAM_SIZE)

    def _chardev(self, chardev):
        node = chardev.node
        if chardev.type == "unix" and node.find("source[@path]") is None:
            # A channel socket virtnet would place in the runtime directory: here, in the work directory.
            from lxml import etree

            source = node.find("source")
            if source is None:
                source = etree.SubElement(node, "source", {"mode": "bind"})
            source.set("path", str(self._new("channel.sock")))
            return
        for source in node.findall("source"):
            path = source.get("path")
            if path is None:
                continue
            kind = chardev.type
            new = self._new(os.path.basename(path))
            if kind == "unix" and source.get("mode") == "connect":
                listener = Listener(socket.AF_UNIX, str(new))
                self.closers.append(listener.close)
            elif kind == "pipe":
                os.mkfifo(new)
            elif kind == "dev":
                main, secondary = os.openpty()
                self.closers += [lambda fd=main: os.close(fd), lambda fd=secondary: os.close(fd)]
                new = os.ttyname(secondary)
            source.set("path", str(new))
        log = node.find("log")
        if log is not None:
            log.set("file", str(self._new(os.path.basename(log.get("file")))))

    def close(self):
        for close in reversed(self.closers):
            close()
        self.closers = []


def _write(path, data):
    Path(path).write_bytes(data)
    return str(path)


@lru_cache(maxsize=None)
def kvm_runs_host_cpu():
    """(True, '') when QEMU can start a paused guest with -accel kvm -cpu host here, else (False,
    QEMU's words): a nested KVM may offer /dev/kvm and still refuse the host CPU's MSRs."""
    try:
        proc = subprocess.run([QEMU, "-S", "-display", "none", "-nodefaults", "-accel", "kvm", "-cpu", "host",
                               "-m", "64", "-qmp", "stdio"], input='{"execute":"qmp_capabilities"}\n'
                              '{"execute":"quit"}\n', capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, str(e)
    words = " ".join(line for line in proc.stderr.splitlines() if line.strip())
    return proc.returncode == 0, words


def skip_unless_runnable(domain):
    """Skip, saying why, a case whose CPU this host cannot give a paused QEMU."""
    cpu = domain.cpu
    if cpu is not None and domain.type == "kvm" and cpu.mode in ("host-passthrough", "host-model"):
        usable, words = kvm_runs_host_cpu()
        if not usable:
            pytest.skip(f"this host's KVM cannot run -cpu host (needed by <cpu mode='{cpu.mode}'>): {words[:200]}")
