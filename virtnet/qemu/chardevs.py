"""QEMU options for the guest's character devices and small virtio devices, as libvirt renders them:

    <controller type='virtio-serial'>   -device virtio-serial-pci
    <serial>, a serial <console>        -chardev … + -device isa-serial
    <channel><target type='virtio'>     -chardev … + -device virtserialport
    <console><target type='virtio'>     -chardev … + -device virtconsole
    <memballoon model='virtio'>         -device virtio-balloon-pci
    <rng model='virtio'>                -object rng-random|rng-builtin + -device virtio-rng-pci

Ids follow libvirt (charserial0/serial0, charchannel0/channel0, virtio-serial0, balloon0,
objrng0/rng0), or a device's `ua-` alias. -chardev is always keyval (QEMU 7.2 takes no JSON there);
-device and -object follow the line's syntax. A unix channel without a path gets a socket in the
domain's runtime directory, as libvirt puts one in its channel directory.
"""

import os

from virtnet.conf.guest import VIRTIO_MODELS, VIRTIO_SERIAL
from virtnet.conf.pci import placed
from virtnet.errors import XMLInputError
from virtnet.qemu import render
from virtnet.qemu.pciaddr import VIRTIO_PCI_SUFFIX, add_pci_address, address_element

UNIX_PATH_MAX = 107  # sun_path holds 108 bytes including the terminating NUL
ISA_SERIAL_PORTS = 4  # COM1..COM4
DEFAULT_RNG_SOURCE = "/dev/random"  # libvirt's default for <backend model='random'/>
CHANNEL_DIR = "channel"


# ---------------------------------------------------------------- ids and addresses


def _alias(device, default):
    return device.alias or default


def _virtio_serial_controllers(domain):
    """domain.virtio_serial_controllers; [] at once for a domain without any <controller>: their
    look-up filters on an attribute, which the model answers with an ElementPath query (Python)."""
    return domain.virtio_serial_controllers if domain.controllers else []


def _device(props, syntax):
    return ["-device", render.option_value(props, syntax, "driver")]


# ---------------------------------------------------------------- chardev backends


def channel_socket_path(paths, chardev):
    """Where a unix channel without <source path> listens: RUNTIME_DIR/NAME/channel/TARGET_NAME
    (libvirt: its channel directory, named after the target too)."""
    name = chardev.target_name
    if not name:
        addr = chardev.address
        controller, bus, port = (addr.controller or 0, addr.bus or 0, addr.port or 0) if addr is not None else (0, 0, 0)
        name = f"vioser-{controller:02d}-{bus:02d}-{port:02d}.sock"
    return paths.below_text(CHANNEL_DIR, name)


def _log_props(chardev):
    if not chardev.log_file:
        return []
    return [f"logfile={render.keyval_escape(chardev.log_file)}",
            f"logappend={'on' if chardev.log_append == 'on' else 'off'}"]


def _reconnect(chardev):
    if chardev.reconnect_enabled == "yes":
        return [f"reconnect={chardev.reconnect_timeout or 0}"]
    return []


def backend_value(chardev, ident, paths):
    """The -chardev value of one character device's host side (always keyval)."""
    kind = chardev.type
    esc = render.keyval_escape
    if kind in ("pty", "null"):
        items = [kind, f"id={ident}"]
    elif kind == "file":
        items = ["file", f"id={ident}", f"path={esc(chardev.source_path)}"]
        if chardev.source_append == "on":
            items.append("append=on")
    elif kind in ("pipe", "dev"):
        items = ["pipe" if kind == "pipe" else "serial", f"id={ident}", f"path={esc(chardev.source_path)}"]
    elif kind == "unix":
        path = chardev.source_path
        if not path:
            path = channel_socket_path(paths, chardev)
        items = ["socket", f"id={ident}", f"path={esc(path)}"]
        if chardev.source_mode != "connect":  # libvirt: a unix socket listens unless mode='connect'
            items += ["server=on", "wait=off"]
        else:
            items += _reconnect(chardev)
    elif kind == "tcp":
        items = ["socket", f"id={ident}", f"host={esc(chardev.source_host or '')}",
                 f"port={esc(chardev.source_service or '')}"]
        if chardev.protocol == "telnet":
            items.append("telnet=on")
        if chardev.source_mode == "bind":
            items += ["server=on", "wait=off"]
        else:
            items += _reconnect(chardev)
    elif kind == "udp":
        (host, port), bind = chardev.udp_sources
        local_host, local_port = bind if bind is not None else ("", "0")
        items = ["udp", f"id={ident}", f"host={esc(host or '')}", f"port={esc(port or '')}",
                 f"localaddr={esc(local_host or '')}", f"localport={esc(local_port or '0')}"]
    else:  # the schema admits no other type
        raise XMLInputError(f"<{chardev.kind} type='{kind}'> is not supported", line=chardev.line)
    return ",".join(items + _log_props(chardev))


def socket_paths(domain, paths):
    """(chardev, path) of every unix socket a character device binds or connects to."""
    found = []
    for chardev in domain.serials + domain.consoles + domain.channels:
        if chardev.type == "unix":
            found.append((chardev, chardev.source_path or channel_socket_path(paths, chardev)))
    return found


# ---------------------------------------------------------------- which device is which


def serial_ports(domain):
    """[(ident suffix, chardev)] of the ISA serial ports: every <serial>, and the first <console>
    when it is a serial console and no <serial> exists (libvirt then adds the <serial> itself)."""
    ports = list(domain.serials)
    if not ports:
        console = first_serial_console(domain)
        if console is not None:
            ports = [console]
    return ports


def _has_chardevs(domain):
    """Whether DOMAIN has any serial port, console or channel: most have none, and their rules and
    options are then skipped whole."""
    return bool(domain.serials or domain.consoles or domain.channels)


def first_serial_console(domain):
    consoles = domain.consoles
    if consoles and consoles[0].target_type in (None, "serial"):
        return consoles[0]
    return None


def check(domain, paths):
    """The rules the character devices rely on."""
    if _has_chardevs(domain):
        _check_ports(domain, paths)
    for device in [domain.memballoon] + domain.rngs:
        if device is None or placed(domain, device.node):
            continue  # none, or placed on PCI by conf.pci
        addr = address_element(device)
        if addr is not None and addr.get("type") != "pci":
            raise XMLInputError(f"<{device.node.tag}>: <address type='{addr.get('type')}'> is for other machines; "
                                "virtnet puts x86 guests' devices on PCI (type='pci')", line=addr.sourceline)
    balloon = domain.memballoon
    if balloon is not None and balloon.model == "none" and (balloon.autodeflate or balloon.stats_period):
        raise XMLInputError("<memballoon model='none'> takes no autodeflate or <stats>", line=balloon.line)


def _check_ports(domain, paths):
    """The rules of serial ports, consoles and channels."""
    seen_ports = {}
    for index, chardev in enumerate(serial_ports(domain)):
        port = chardev.target_port if chardev.target_port is not None else index
        if port >= ISA_SERIAL_PORTS:
            raise XMLInputError(f"<{chardev.kind}><target port='{port}'>: an ISA serial port is 0 to "
                                f"{ISA_SERIAL_PORTS - 1} (COM1..COM4)", line=chardev.line)
        if port in seen_ports:
            raise XMLInputError(f"<{chardev.kind}>: serial port {port} is used twice (lines {seen_ports[port]} "
                                f"and {chardev.line})", line=chardev.line)
        seen_ports[port] = chardev.line
    for index, console in enumerate(domain.consoles):
        if index and console.target_type in (None, "serial"):
            raise XMLInputError("<console>: only the first console can be a serial console; give this one "
                                "<target type='virtio'/>", line=console.line)
    controllers = {c.index or 0 for c in _virtio_serial_controllers(domain)}
    used = {}
    for chardev in domain.channels:
        if chardev.target_type != "virtio":
            raise XMLInputError("<channel> needs <target type='virtio' name='...'/>", line=chardev.line)
        addr = chardev.address
        if addr is not None and addr.type == VIRTIO_SERIAL:
            key = (addr.controller or 0, addr.bus or 0, addr.port)
            if (addr.controller or 0) not in controllers:
                raise XMLInputError(f"<channel>: <address controller='{addr.controller}'> names no "
                                    "<controller type='virtio-serial'>", line=addr.line)
            if key in used:
                raise XMLInputError(f"<channel>: virtio-serial port {addr.port} is used twice (lines "
                                    f"{used[key]} and {chardev.line})", line=chardev.line)
            used[key] = chardev.line
    for chardev in domain.serials + domain.consoles:
        if chardev.type == "unix" and not chardev.source_path:
            raise XMLInputError(f"<{chardev.kind} type='unix'> needs <source mode='bind|connect' path='...'/>",
                                line=chardev.line)
    for chardev, path in socket_paths(domain, paths):
        if len(path.encode()) > UNIX_PATH_MAX:
            raise XMLInputError(f"<{chardev.kind} type='unix'>: the socket path {path} is longer than the "
                                f"{UNIX_PATH_MAX} bytes a unix socket address holds; use a shorter path "
                                "(or a shorter --runtime-dir or domain name)", line=chardev.line)


# ---------------------------------------------------------------- the options


def controller_options(domain, syntax):
    """-device virtio-serial-pci for each <controller type='virtio-serial'> (libvirt: with the
    controllers, before the disks)."""
    argv = []
    for controller in _virtio_serial_controllers(domain):
        index = controller.index or 0
        props = {"driver": "virtio-serial-pci", "id": _alias(controller, f"virtio-serial{index}")}
        if controller.ports is not None:
            props["max_ports"] = controller.ports
        if controller.vectors is not None:
            props["vectors"] = controller.vectors
        add_pci_address(props, domain, controller)
        argv += _device(props, syntax)
    return argv


def _virtio_serial_bus(domain, chardev):
    addr = chardev.address
    controller = addr.controller or 0 if addr is not None else 0
    bus = addr.bus or 0 if addr is not None else 0
    owner = next((c for c in _virtio_serial_controllers(domain) if (c.index or 0) == controller), None)
    name = _alias(owner, f"virtio-serial{controller}") if owner is not None else f"virtio-serial{controller}"
    return f"{name}.{bus}"


def _serial_port(chardev, index):
    """The port number of the INDEXth ISA serial port (see serial_ports)."""
    return chardev.target_port if chardev.target_port is not None else index


def _serial_alias(chardev, port):
    return chardev.alias if chardev.kind == "serial" and chardev.alias else f"serial{port}"


def chardev_aliases(domain):
    """([(alias, chardev)] of the ISA serial ports, of the channels, of the virtio consoles): QEMU's
    id of each device, whose chardev's id is 'char' + alias (as chardev_options writes them)."""
    serials = [(_serial_alias(c, _serial_port(c, i)), c) for i, c in enumerate(serial_ports(domain))]
    channels = [(_alias(c, f"channel{i}"), c) for i, c in enumerate(domain.channels)]
    consoles = [(_alias(c, f"console{i}"), c) for i, c in enumerate(domain.consoles) if c.target_type == "virtio"]
    return serials, channels, consoles


def chardev_options(domain, paths, syntax):
    """Serial ports, then channels, then virtio consoles: libvirt's order."""
    argv = []
    if not _has_chardevs(domain):
        return argv
    for index, chardev in enumerate(serial_ports(domain)):
        port = _serial_port(chardev, index)
        alias = _serial_alias(chardev, port)
        ident = "char" + alias
        argv += ["-chardev", backend_value(chardev, ident, paths)]
        argv += _device({"driver": "isa-serial", "chardev": ident, "id": alias, "index": port}, syntax)
    for index, chardev in enumerate(domain.channels):
        alias = _alias(chardev, f"channel{index}")
        ident = "char" + alias
        argv += ["-chardev", backend_value(chardev, ident, paths)]
        props = {"driver": "virtserialport", "bus": _virtio_serial_bus(domain, chardev)}
        addr = chardev.address
        if addr is not None and addr.type == VIRTIO_SERIAL and addr.port is not None:
            props["nr"] = addr.port
        props.update({"chardev": ident, "id": alias})
        if chardev.target_name:
            props["name"] = chardev.target_name
        argv += _device(props, syntax)
    for index, console in enumerate(domain.consoles):
        if console.target_type != "virtio":
            continue
        alias = _alias(console, f"console{index}")
        ident = "char" + alias
        argv += ["-chardev", backend_value(console, ident, paths)]
        props = {"driver": "virtconsole"}
        addr = console.address
        if addr is not None and addr.type == VIRTIO_SERIAL:  # else QEMU's choice: port 0 of the first bus
            props["bus"] = _virtio_serial_bus(domain, console)
            if addr.port is not None:
                props["nr"] = addr.port
        props.update({"chardev": ident, "id": alias})
        argv += _device(props, syntax)
    return argv


def _settings_given(device):
    """(attributes, children): whether the model object DEVICE has attributes besides its model,
    and children besides its <address>. Most devices (the balloon libvirt adds) have neither: their
    other values are then known to be absent without reading them through the model, where each
    first read costs 2-5 K instructions and the first of a child's values its snapshot, ~10 K."""
    node = device.node
    return len(node.attrib) > 1, any(child.tag != "address" for child in node[:])


def balloon_options(domain, syntax):
    balloon = domain.memballoon
    if balloon is None or balloon.model not in VIRTIO_MODELS:
        return []
    attributes, children = _settings_given(balloon)
    props = {"driver": "virtio-balloon-pci" + VIRTIO_PCI_SUFFIX[balloon.model],
             "id": _alias(balloon, "balloon0") if children else "balloon0"}
    if attributes and balloon.autodeflate in ("on", "off"):
        props["deflate-on-oom"] = balloon.autodeflate == "on"
    if attributes and balloon.free_page_reporting in ("on", "off"):
        props["free-page-reporting"] = balloon.free_page_reporting == "on"
    if children and balloon.stats_period:
        # libvirt sets this over QMP once QEMU runs; the same QOM property, on the command line.
        props["guest-stats-polling-interval"] = balloon.stats_period
    add_pci_address(props, domain, balloon)
    return _device(props, syntax)


def rng_options(domain, syntax):
    argv = []
    for index, rng in enumerate(domain.rngs):
        alias = _alias(rng, f"rng{index}")
        backend = "obj" + alias
        if rng.backend_model == "builtin":
            obj = {"qom-type": "rng-builtin", "id": backend}
        else:
            obj = {"qom-type": "rng-random", "id": backend, "filename": rng.backend or DEFAULT_RNG_SOURCE}
        argv += ["-object", render.option_value(obj, syntax, "qom-type")]
        props = {"driver": "virtio-rng-pci" + VIRTIO_PCI_SUFFIX[rng.model], "rng": backend, "id": alias}
        if rng.rate_bytes is not None:
            props["max-bytes"] = rng.rate_bytes
            props["period"] = rng.rate_period or 1000
        add_pci_address(props, domain, rng)
        argv += _device(props, syntax)
    return argv


def needs_channel_dir(domain):
    """True when a unix channel gets its socket in the runtime directory (start creates the folder)."""
    return any(c.type == "unix" and not c.source_path for c in domain.serials + domain.consoles + domain.channels)


def prepare_host(domain, paths):
    """Before QEMU starts: the folder generated channel sockets go in (QEMU creates no folders)."""
    if needs_channel_dir(domain):
        os.makedirs(paths.dir / CHANNEL_DIR, mode=0o700, exist_ok=True)

