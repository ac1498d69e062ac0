"""QEMU options for disks and the controllers they sit on, as libvirt builds them for QEMU 7.2.

Order (libvirt's qemuBuildCommandLine): the controllers first — PCI controllers (root ports,
bridges), then SCSI, then SATA — each as a -device; then, per disk in libvirt's order, its block
nodes and its -device:

    -blockdev {"driver":"file","filename":PATH,"node-name":"libvirt-N-storage","auto-read-only":true,"discard":"unmap"}
    -blockdev {"node-name":"libvirt-N-format","read-only":false,"driver":"qcow2","file":"libvirt-N-storage"}
    -device {"driver":"virtio-blk-pci","bus":"pci.0","addr":"0x3","drive":"libvirt-N-format","id":"virtio-disk0"}

The protocol node is 'file' for an image file, 'host_device' for a block device and 'host_cdrom'
for a block device used as a CD-ROM. Every disk gets a format node, raw ones included: libvirt
leaves the raw format node out only for QEMU ≥ 9.1 (blockjob backing-mask-protocol), which 7.2 is
not. An empty CD-ROM is a -device without a drive.

What virtnet does not render — other disk types (network, volume, dir, nvme, vhost-user), floppy
and LUN devices, other buses, image formats other than raw and qcow2, and disk settings such as
<iotune>, <blockio> or <encryption> — is listed by `unrendered(domain)`, with the reason from
`why_unrendered`, and left out of the command line (xml2argv warns; start refuses dropped disks).
"""

import re

from virtnet.conf.disk import ROOT_MODELS
from virtnet.conf.pci import CONTROLLER_MODEL_NAMES, SINGLE_SLOT
from virtnet.qemu import render
from virtnet.qemu.pciaddr import add_pci_address

RENDERED_TYPES = ("file", "block")
RENDERED_DEVICES = ("disk", "cdrom")
RENDERED_BUSES = ("virtio", "sata", "scsi", "ide")
RENDERED_FORMATS = ("raw", "qcow2")
# What of a <disk> virtnet renders; anything else makes the disk unrendered.
RENDERED_DISK_ATTRS = frozenset({"type", "device"})
RENDERED_CHILDREN = frozenset({"driver", "source", "target", "readonly", "shareable", "serial", "boot", "alias",
                               "address"})
RENDERED_DRIVER_ATTRS = frozenset({"name", "type", "cache", "discard", "io", "detect_zeroes", "error_policy",
                                   "rerror_policy", "queues", "queue_size"})
RENDERED_SOURCE_ATTRS = frozenset({"file", "dev"})
RENDERED_TARGET_ATTRS = frozenset({"dev", "bus"})
# cache= → (write-cache of the device, cache.direct, cache.no-flush) (qemuDomainDiskCachemodeFlags).
CACHE_MODES = {
    "writeback": (True, False, False),
    "writethrough": (False, False, False),
    "none": (True, True, False),
    "directsync": (False, True, False),
    "unsafe": (True, False, True),
}
ERROR_POLICIES = {"stop": "stop", "report": "report", "ignore": "ignore", "enospace": "enospc"}
# SCSI controller models → QEMU's device (libvirt's qemuBuildControllerSCSIDevProps).
SCSI_DRIVERS = {
    "lsilogic": "lsi", "lsisas1068": "mptsas1068", "lsisas1078": "megasas", "vmpvscsi": "pvscsi",
    "virtio-scsi": "virtio-scsi-pci", "virtio-transitional": "virtio-scsi-pci-transitional",
    "virtio-non-transitional": "virtio-scsi-pci-non-transitional",
}
VIRTIO_SCSI_MODELS = ("virtio-scsi", "virtio-transitional", "virtio-non-transitional")
# PCI controller models virtnet renders → QEMU's device when <model name> does not say.
PCI_DRIVERS = CONTROLLER_MODEL_NAMES
# The order libvirt emits controllers in (qemuBuildControllersCommandLine), of those virtnet renders.
CONTROLLER_ORDER = ("pci", "scsi", "sata")
_CONTROLLER_RANK = {ctype: rank for rank, ctype in enumerate(CONTROLLER_ORDER)}
HOST_CDROM_RE = re.compile(r"/dev/(cdrom\d*|sr\d+)")


# ---------------------------------------------------------------- what is rendered


def builtin_controller(domain, controller):
    """A controller the machine provides without an option: the root bus, the PIIX3 IDE (pc), the
    ICH9 SATA (q35), the floppy controller of pc."""
    ctype, index = controller.type, controller.index or 0
    if ctype == "pci":
        return controller.model in ROOT_MODELS and index == 0
    if index != 0:
        return False
    return (ctype in ("ide", "fdc") and not domain.is_q35) or (ctype == "sata" and domain.is_q35)


def controller_rendered(domain, controller):
    """True for a controller QEMU gets: built in, or one virtnet renders as a -device."""
    if builtin_controller(domain, controller):
        return True
    if controller.type == "pci":
        return controller.model in PCI_DRIVERS
    if controller.type == "scsi":
        return controller.model in SCSI_DRIVERS
    return controller.type == "sata"


def _controller(domain, ctype, index):
    for controller in domain.controllers:
        if controller.type == ctype and (controller.index or 0) == index:
            return controller
    return None


def _extra_attributes(node, allowed):
    return [name for name in node.attrib if name not in allowed] if node is not None else []


def why_unrendered(domain, disk):
    """Why virtnet leaves DISK out of the command line (a short phrase), or None when it renders it."""
    node = disk.node
    if disk.type not in RENDERED_TYPES:
        return f"<disk type='{disk.type}'>"
    if disk.device not in RENDERED_DEVICES:
        return f"<disk device='{disk.device}'>"
    if disk.bus not in RENDERED_BUSES:
        return f"<target bus='{disk.bus}'>"
    extra = _extra_attributes(node, RENDERED_DISK_ATTRS)
    if extra:
        return f"<disk {extra[0]}>"
    for child in node:
        if isinstance(child.tag, str) and child.tag not in RENDERED_CHILDREN:
            return f"<{child.tag}>"
    driver = node.find("driver")
    if disk.driver_name not in (None, "qemu"):
        return f"<driver name='{disk.driver_name}'>"
    if disk.format not in (None,) + RENDERED_FORMATS:
        return f"<driver type='{disk.format}'>"
    extra = _extra_attributes(driver, RENDERED_DRIVER_ATTRS)
    if driver is not None and (extra or len(driver)):
        return f"<driver {extra[0]}>" if extra else f"<driver><{driver[0].tag}>"
    source = node.find("source")
    extra = _extra_attributes(source, RENDERED_SOURCE_ATTRS)
    if extra:
        return f"<source {extra[0]}>"
    if source is not None and any(isinstance(child.tag, str) for child in source):
        return "<source> with child elements"
    extra = _extra_attributes(node.find("target"), RENDERED_TARGET_ATTRS)
    if extra:
        return f"<target {extra[0]}>"
    drive = disk.drive
    if disk.bus in ("sata", "scsi") and drive is not None:
        controller = _controller(domain, disk.bus, drive.controller or 0)
        if controller is not None and not controller_rendered(domain, controller):
            return f"its <controller type='{disk.bus}' model='{controller.model}'>"
    return None


def rendered_disks(domain):
    return [disk for disk in domain.disks if why_unrendered(domain, disk) is None]


def unrendered(domain):
    """{element: why ('' when its label says it)} of the <disk> and <controller> elements the command
    line leaves out (controllers the machine provides by itself count as rendered; virtio-serial ones
    are qemu.chardevs'), each disk checked once."""
    found = {}
    for disk in domain.disks:
        why = why_unrendered(domain, disk)
        if why is not None:
            found[disk.node] = why
    for c in domain.controllers:
        if c.type != "virtio-serial" and not controller_rendered(domain, c) and not _explicitly_none(c):
            found[c.node] = ""
    return found


def _explicitly_none(controller):
    return controller.type == "usb" and controller.model == "none"


# ---------------------------------------------------------------- controllers


def controller_props(domain, controller):
    """The -device properties of a controller, or None for one the machine has built in."""
    if builtin_controller(domain, controller) or not controller_rendered(domain, controller):
        return None
    alias = controller.alias  # its id, written by conf.identity.prepare
    if controller.type == "pci":
        props = {"driver": controller.model_name or PCI_DRIVERS[controller.model]}
        if controller.model in SINGLE_SLOT:  # root and downstream ports
            props["port"] = controller.port
            props["chassis"] = controller.chassis
        elif controller.model == "pci-bridge":
            props["chassis_nr"] = controller.chassis_nr
        props["id"] = alias
        if controller.hotplug in ("on", "off"):
            props["hotplug"] = controller.hotplug == "on"
    elif controller.type == "scsi":
        props = {"driver": SCSI_DRIVERS[controller.model], "id": alias}
        if controller.model in VIRTIO_SCSI_MODELS:
            for attr, prop in (("queues", "num_queues"), ("cmd_per_lun", "cmd_per_lun"),
                               ("max_sectors", "max_sectors")):
                if getattr(controller, attr) is not None:
                    props[prop] = getattr(controller, attr)
            if controller.ioeventfd in ("on", "off"):
                props["ioeventfd"] = controller.ioeventfd == "on"
    else:  # sata
        props = {"driver": "ahci", "id": alias}
    add_pci_address(props, domain, controller)
    return props


def controller_options(domain, syntax):
    controllers = domain.controllers
    if not controllers:  # most domains: no sort to set up
        return []
    argv = []
    # One pass, one sort (stable: equal indexes stay in document order), rather than one per type.
    ordered = sorted((c for c in controllers if c.type in _CONTROLLER_RANK),
                     key=lambda c: (_CONTROLLER_RANK[c.type], c.index or 0))
    for controller in ordered:
        props = controller_props(domain, controller)
        if props is not None:
            argv += ["-device", render.option_value(props, syntax, "driver")]
    return argv


# ---------------------------------------------------------------- disks


def _protocol_driver(disk):
    """'file', or for a block device 'host_device' — 'host_cdrom' when a CD-ROM's device is the
    host's CD-ROM drive (libvirt asks the device; virtnet goes by Linux's names for it)."""
    if disk.type == "file":
        return "file"
    return "host_cdrom" if disk.is_cdrom and HOST_CDROM_RE.fullmatch(disk.path or "") else "host_device"


def cache_mode(disk):
    """The cache mode QEMU gets: the <driver cache>, and for a shareable disk that is written to
    'none' (libvirt's qemuDomainPrepareDiskCachemode: other hosts' writes must be seen)."""
    if disk.cache is None and disk.shareable and not disk.readonly:
        return "none"
    return disk.cache


def _cache_props(disk):
    mode = CACHE_MODES.get(cache_mode(disk))
    if mode is None:
        return {}
    _, direct, no_flush = mode
    return {"cache": {"direct": direct, "no-flush": no_flush}}


def detect_zeroes(disk):
    """libvirt's detect-zeroes: 'unmap' only works with discard='unmap'; otherwise it means 'on'."""
    mode = disk.detect_zeroes
    if mode == "unmap" and disk.discard != "unmap":
        return "on"
    return mode


def blockdev_props(disk):
    """(protocol node, format node) properties of a disk with a source, libvirt's keys in its order."""
    ids = disk.ids
    storage = {"driver": _protocol_driver(disk), "filename": disk.path}
    if disk.io is not None:
        storage["aio"] = disk.io
    storage.update({"node-name": ids.storage_node, "auto-read-only": True, "discard": "unmap"})
    storage.update(_cache_props(disk))
    fmt = {"node-name": ids.format_node, "read-only": disk.readonly}
    if disk.discard is not None:
        fmt["discard"] = disk.discard
    if detect_zeroes(disk) is not None:
        fmt["detect-zeroes"] = detect_zeroes(disk)
    fmt.update(_cache_props(disk))
    fmt.update({"driver": disk.format or "raw", "file": ids.storage_node})
    return storage, fmt


def boot_index(domain, disk, defaults=None):
    """The disk's bootindex: its <boot order>, else its kind's position in <os><boot dev> when it is
    the first disk (or CD-ROM) of the domain (libvirt's rule); None when it boots nothing."""
    if disk.boot_order is not None:
        return disk.boot_order
    from virtnet.qemu.machine import boot_indexes

    defaults = boot_indexes(domain) if defaults is None else defaults
    kind = "cdrom" if disk.is_cdrom else "hd"
    if kind not in defaults:
        return None
    first = next((d for d in domain.disks if d.device == ("cdrom" if disk.is_cdrom else "disk")), None)
    return defaults[kind] if first is disk or (first is not None and first.node is disk.node) else None


def _bus_props(domain, disk):
    """The driver and where the device sits: the bus-specific part of libvirt's disk -device."""
    drive = disk.drive
    cdrom = disk.is_cdrom
    if disk.bus == "virtio":
        props = {"driver": "virtio-blk-pci"}
        if disk.queues is not None:
            props["num-queues"] = disk.queues
        if disk.queue_size is not None:
            props["queue-size"] = disk.queue_size
        add_pci_address(props, domain, disk)
        return props
    controller_index, bus, target, unit = drive.drive_key()
    if disk.bus == "ide":
        return {"driver": "ide-cd" if cdrom else "ide-hd", "bus": f"ide.{bus}", "unit": unit}
    controller = _controller(domain, disk.bus, controller_index)
    alias = controller.alias if controller is not None and controller.alias else f"{disk.bus}{controller_index}"
    if disk.bus == "sata":
        # The q35 chipset's own AHCI is 'ide'; its ports are buses ide.0 .. ide.5.
        return {"driver": "ide-cd" if cdrom else "ide-hd", "bus": f"{alias}.{unit}"}
    props = {"driver": "scsi-cd" if cdrom else "scsi-hd"}
    if controller is not None and controller.model == "lsilogic":
        props.update({"bus": f"{alias}.{bus}", "scsi-id": unit})
    else:
        props.update({"bus": f"{alias}.0", "channel": bus, "scsi-id": target, "lun": unit})
    props["device_id"] = disk.serial if disk.serial else f"drive-{disk.ids.alias}"
    return props


def disk_device_props(domain, disk, bootindex=None):
    """The disk's -device properties, libvirt's keys in its order (qemuBuildDiskDeviceProps)."""
    props = _bus_props(domain, disk)
    if disk.shareable:
        props["share-rw"] = True
    if disk.path is not None:
        props["drive"] = disk.ids.format_node
    props["id"] = disk.ids.alias
    if bootindex is not None:
        props["bootindex"] = bootindex
    mode = CACHE_MODES.get(cache_mode(disk))
    if mode is not None:
        props["write-cache"] = "on" if mode[0] else "off"
    if disk.serial is not None:
        props["serial"] = disk.serial
    werror = ERROR_POLICIES.get(disk.error_policy)
    rerror = ERROR_POLICIES.get(disk.rerror_policy) if disk.rerror_policy else (
        werror if disk.error_policy != "enospace" else None)
    if werror:
        props["werror"] = werror
    if rerror:
        props["rerror"] = rerror
    return props


def disk_options(domain, syntax, boot):
    """Each rendered disk's block nodes and -device. BOOT: the domain's machine.boot_indexes()."""
    argv = []
    if not domain.disks:  # most domains: nothing to filter
        return argv
    for disk in rendered_disks(domain):
        if disk.path is not None:
            for props in blockdev_props(disk):
                argv += ["-blockdev", render.to_json(props) if syntax == "json" else render.to_keyval(props, None)]
        device = disk_device_props(domain, disk, boot_index(domain, disk, boot))
        argv += ["-device", render.option_value(device, syntax, "driver")]
    return argv


def disk_sources(domain):
    """(disk alias, host path, read-only, 'file'|'block') of every rendered disk with a source: what
    `start` checks before QEMU runs (virtnet.host.plan's CheckPath)."""
    return [(disk.ids.alias, disk.path, disk.readonly, disk.type) for disk in rendered_disks(domain)
            if disk.path is not None]
