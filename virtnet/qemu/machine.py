"""The machine part of QEMU's command line: what the guest is and how it boots, in libvirt's option
order and with libvirt's conventions —

    -blockdev (pflash firmware)  -machine  -bios  -accel  -cpu  -global (secure flash)  -m  -object
    (shared RAM)  -smp  -uuid  -display none  -no-user-config  -nodefaults  QMP  -rtc  -global
    (PIT)  -no-shutdown/-action  -global (S3/S4)  -boot  -kernel  -initrd  -append

Everything here is pure: the domain and a few given facts in, options out. What must happen on
the host before QEMU starts (the per-domain UEFI variable store copied from its template) is
prepare_nvram(), which `virtnet start` calls; the argv builder never does.
"""

import os

from virtnet.errors import HostError, XMLInputError
from virtnet.qemu import render
from virtnet.record import Record

DEFAULT_EMULATOR = "/usr/bin/qemu-system-x86_64"
DEFAULT_STATE_DIR = "/var/lib/virtnet"  # root's state directory: where xml2argv places NVRAM unless told
MEMORY_BACKEND_ID = "pc.ram"
UNIT_TO_KIB = {"b": 1 / 1024, "bytes": 1 / 1024, "KB": 1000 / 1024, "k": 1, "KiB": 1,
               "MB": 1000**2 / 1024, "M": 1024, "MiB": 1024, "GB": 1000**3 / 1024, "G": 1024**2,
               "GiB": 1024**2, "TB": 1000**4 / 1024, "T": 1024**3, "TiB": 1024**3}
PFLASH_CODE_NODE = "libvirt-pflash0"
PFLASH_VARS_NODE = "libvirt-pflash1"
# libvirt's expansion of <cpu mode='host-model'> under TCG for QEMU 7.2 (its test case
# cpu-host-model-tcg.x86_64-7.2.0): what TCG can emulate, as a named model plus features. TCG's
# features do not depend on the host CPU, so the expansion is fixed for a QEMU version.
TCG_HOST_MODEL_7_2 = (
    "EPYC,monitor=on,hypervisor=on,acpi=on,ss=on,erms=on,mpx=on,pcommit=on,clwb=on,umip=on,pku=on,"
    "vaes=on,la57=on,pks=on,3dnowext=on,3dnow=on,npt=on,vgif=on,svme-addr-chk=on,vme=off,rdseed=off,"
    "sha-ni=off,xsavec=off,misalignsse=off,3dnowprefetch=off,osvw=off,topoext=off,fxsr-opt=off,nrip-save=off"
)
# <cpu><feature policy=...> → on/off, as libvirt writes them on -cpu.
FEATURE_POLICY = {"force": "on", "require": "on", "optional": "on", "disable": "off", "forbid": "off"}
# <timer name='pit' tickpolicy=...> → kvm-pit's lost_tick_policy.
# (catchup is kvm-pit's own default: libvirt passes nothing for it, and no tickpolicy means delay.)
PIT_TICK_POLICY = {None: "delay", "delay": "delay", "discard": "discard"}
RTC_TRACK = {"guest": "vm", "wall": "host", "realtime": "rt"}


# ---------------------------------------------------------------- memory


def memory_kib(domain):
    """Guest RAM in KiB, rounded up to whole MiB as QEMU wants (libvirt does the same)."""
    return kib_of(domain.memory or 0, domain.memory_unit)


def kib_of(amount, unit):
    """AMOUNT of UNIT (the schema's memory units; KiB when None) in KiB, rounded up to whole MiB."""
    kib = amount * UNIT_TO_KIB[(unit or "KiB").strip()]
    return int(-(-kib // 1024) * 1024)


def shared_memory(domain):
    """<memoryBacking><access mode='shared'/>: guest RAM that vhost-user backends can map."""
    return domain.memory_access == "shared"


def check_shared_memory(domain):
    """vhost-user backends (passt --vhost-user, OVS-DPDK, ...) map the guest's RAM, so QEMU must
    allocate it shareable; without that the guest's NIC never passes traffic."""
    if not shared_memory(domain):
        _check_no_vhost_user(domain)


def _check_no_vhost_user(domain):
    for iface in domain.interfaces:
        if iface.type == "vhostuser":
            raise XMLInputError(
                "<interface type='vhostuser'> needs guest RAM that QEMU shares with the vhost-user backend: "
                "add <memoryBacking><access mode='shared'/></memoryBacking> to the domain (virtnet then "
                "backs the RAM with a shared memfd)", line=iface.line)


def memory_backend(domain, syntax):
    """The shared RAM backend (-object) for <access mode='shared'/>; libvirt's id for PC machines."""
    props = {"qom-type": "memory-backend-memfd", "id": MEMORY_BACKEND_ID, "share": True,
             "size": memory_kib(domain) * 1024}
    return ["-object", render.option_value(props, syntax, "qom-type")]


# ---------------------------------------------------------------- QMP


def qmp_chardev_value(qmp_path):
    """The QMP server's -chardev value (keyval: a comma inside the path is written twice)."""
    return f"socket,id=charmonitor,path={render.keyval_escape(qmp_path)},server=on,wait=off"


def qmp_options(qmp_path):
    """The -chardev/-mon pair that puts a QMP server on qmp_path (kept here, free of process and
    socket imports, so that xml2argv stays cheap)."""
    return ["-chardev", qmp_chardev_value(qmp_path), "-mon", "chardev=charmonitor,id=monitor,mode=control"]


# ---------------------------------------------------------------- firmware


def nvram_path(domain, state_dir):
    """The UEFI variable store of a domain with a read-only pflash loader: <nvram>'s path, else
    STATE_DIR/nvram/NAME_VARS.fd (libvirt: /var/lib/libvirt/qemu/nvram/NAME_VARS.fd). None when the
    domain has no such loader. Not written into the XML: the state directory depends on who runs."""
    os_ = domain.os
    loader = os_.loader if os_ is not None else None
    if loader is None or not loader.is_pflash or loader.readonly != "yes":
        return None
    nvram = os_.nvram
    if nvram is not None and nvram.text:
        return nvram.text
    return os.path.join(str(state_dir), "nvram", f"{domain.name}_VARS.fd")


def pflash_options(domain, os_, syntax, state_dir):
    """(-blockdev options, -machine properties) for a pflash loader, laid out as libvirt does: the
    code through a raw format node (read-only unless readonly='no'), the NVRAM as a plain file."""
    loader = os_.loader if os_ is not None else None
    if loader is None or not loader.is_pflash:
        return [], {}
    code = PFLASH_CODE_NODE
    argv = ["-blockdev", _blockdev({"driver": "file", "filename": loader.text, "node-name": code + "-storage",
                                    "auto-read-only": True, "discard": "unmap"}, syntax)]
    argv += ["-blockdev", _blockdev({"node-name": code + "-format", "read-only": loader.readonly == "yes",
                                     "driver": "raw", "file": code + "-storage"}, syntax)]
    machine = {"pflash0": code + "-format"}
    vars_path = nvram_path(domain, state_dir)
    if vars_path is not None:
        node = PFLASH_VARS_NODE + "-storage"
        argv += ["-blockdev", _blockdev({"driver": "file", "filename": vars_path, "node-name": node,
                                         "read-only": False}, syntax)]
        machine["pflash1"] = node
    return argv, machine


def _blockdev(props, syntax):
    return render.to_json(props) if syntax == "json" else render.to_keyval(props, None)


def check_firmware(domain, os_):
    loader = os_.loader if os_ is not None else None
    if loader is None:
        if os_ is not None and os_.nvram is not None:
            raise XMLInputError("<os><nvram> needs a <loader readonly='yes' type='pflash'> (the UEFI code "
                                "the variable store belongs to)", line=os_.nvram.line)
        return
    if not loader.text:
        raise XMLInputError("<os><loader> needs the firmware image's path, e.g. <loader readonly='yes' "
                            "type='pflash'>/usr/share/OVMF/OVMF_CODE.fd</loader>", line=loader.line)
    if loader.secure == "yes":
        if not loader.is_pflash:
            raise XMLInputError("<loader secure='yes'> needs type='pflash'", line=loader.line)
        if not domain.is_q35:
            raise XMLInputError("<loader secure='yes'> (Secure Boot) is supported with q35 machine types only",
                                line=loader.line)
        features = domain.features
        if features is None or features.smm_state != "on":
            raise XMLInputError("<loader secure='yes'> (Secure Boot) needs SMM: add <features><smm state='on'/>"
                                "</features>", line=loader.line)
    if os_.nvram is not None and not (loader.is_pflash and loader.readonly == "yes"):
        raise XMLInputError("<os><nvram> goes with a read-only pflash loader: <loader readonly='yes' "
                            "type='pflash'>", line=os_.nvram.line)


# ---------------------------------------------------------------- -machine and -cpu


def machine_value(domain, firmware_props, features, clock, shared):
    """`-machine TYPE,prop=...` in libvirt's property order."""
    props = [domain.machine or "pc", "usb=off"]
    if features is not None and features.vmport_state is not None:
        props.append(f"vmport={features.vmport_state}")
    if features is not None and features.smm_state is not None:
        props.append(f"smm={features.smm_state}")
    props.append(f"dump-guest-core={'on' if domain.dump_core == 'on' else 'off'}")
    if shared:
        props.append(f"memory-backend={MEMORY_BACKEND_ID}")
    props += [f"{key}={value}" for key, value in firmware_props.items()]
    hpet = clock.timer("hpet") if clock is not None else None
    if hpet is not None and hpet.present is not None:
        props.append(f"hpet={'on' if hpet.present == 'yes' else 'off'}")
    # libvirt's rule: ACPI only when <features><acpi/> asks for it (QEMU's own default is on).
    props.append(f"acpi={'on' if features is not None and features.acpi else 'off'}")
    return ",".join(props)


def cpu_value(domain, cpu, features):
    """The -cpu value, or None for QEMU's default model (qemu64: libvirt's default for x86 too)."""
    kvm = domain.type == "kvm"
    mode = cpu.effective_mode if cpu is not None else "custom"
    if mode == "host-passthrough":
        if not kvm:
            raise XMLInputError(
                "<cpu mode='host-passthrough'> needs KVM (<domain type='kvm'>); under TCG (type='qemu') use "
                "mode='host-model' or mode='maximum'", line=cpu.line)
        model = f"host,migratable={'off' if cpu.migratable == 'off' else 'on'}"
    elif mode == "host-model":
        # Under KVM libvirt expands the host's CPU into a named model from what it probed; without
        # probing, the nearest command line is QEMU's own host CPU.
        model = "host,migratable=on" if kvm else TCG_HOST_MODEL_7_2
    elif mode == "maximum":
        model = "max"
    else:  # custom
        model = cpu.model.strip() if cpu is not None and cpu.model and cpu.model.strip() else None
    cpu_features = cpu.features if cpu is not None else []
    if model is None and cpu_features:
        raise XMLInputError("<cpu> features need a model: add <model>NAME</model>, or use mode='host-model' "
                            "or 'maximum'", line=cpu.line)
    extra = []
    if features is not None and features.apic_eoi is not None and kvm:
        extra.append(f"kvm-pv-eoi={features.apic_eoi}")  # libvirt: on the CPU, for KVM only
    extra += [f"{f.name}={FEATURE_POLICY.get(f.policy or 'require', 'on')}" for f in cpu_features]
    if model is None and not extra:
        return None
    return ",".join([model or "qemu64", *extra])


def smp_value(domain, cpu):
    """`-smp N,sockets=S,cores=C,threads=T`: libvirt's topology (sockets=N when none is given)."""
    vcpus = domain.vcpu or 1
    current = domain.vcpu_current
    if cpu is not None and cpu.has_topology:
        sockets, dies, cores, threads = (cpu.sockets or 1, cpu.dies or 1, cpu.cores or 1, cpu.threads or 1)
        clusters = cpu.clusters or 1
        if sockets * dies * clusters * cores * threads != vcpus:
            raise XMLInputError(
                f"<cpu><topology> gives {sockets * dies * clusters * cores * threads} vCPUs "
                f"(sockets × dies × clusters × cores × threads), but <vcpu> says {vcpus}; they must agree",
                line=cpu.line_of("topology"))
        if clusters != 1:
            raise XMLInputError("<cpu><topology clusters> is for ARM guests; x86 has no clusters",
                                line=cpu.line_of("topology"))
    else:
        sockets, dies, cores, threads = vcpus, 1, 1, 1
    value = str(current if current is not None and current < vcpus else vcpus)
    if current is not None and current < vcpus:
        value += f",maxcpus={vcpus}"
    value += f",sockets={sockets}" + (f",dies={dies}" if dies != 1 else "") + f",cores={cores},threads={threads}"
    return value


# ---------------------------------------------------------------- clock, lifecycle, power management


def clock_options(clock):
    """(-rtc/-global options, environment) for <clock>. offset='timezone' runs QEMU with TZ set and
    the RTC in local time, as libvirt does."""
    if clock is None:
        return [], {}
    env = {}
    offset = clock.offset or "utc"
    if offset == "timezone":
        base = "localtime"
        env["TZ"] = clock.timezone
    elif offset == "absolute":
        import datetime

        start = datetime.datetime.fromtimestamp(clock.start or 0, datetime.timezone.utc)
        base = start.strftime("%Y-%m-%dT%H:%M:%S")
    elif offset == "variable":
        base = "utc"  # the adjustment itself is reported as not rendered (it depends on the time of start)
    else:
        base = offset
    rtc = [f"base={base}"]
    timer = clock.timer("rtc")
    if timer is not None:
        if timer.track in RTC_TRACK:
            rtc.append(f"clock={RTC_TRACK[timer.track]}")
        if timer.tickpolicy == "catchup":
            rtc.append("driftfix=slew")
    argv = ["-rtc", ",".join(rtc)]
    pit = clock.timer("pit")
    if pit is not None and pit.tickpolicy in PIT_TICK_POLICY:
        argv += ["-global", f"kvm-pit.lost_tick_policy={PIT_TICK_POLICY[pit.tickpolicy]}"]
    return argv, env


def check_clock(clock):
    if clock is None:
        return
    if clock.offset == "timezone" and not clock.timezone:
        raise XMLInputError("<clock offset='timezone'> needs the attribute timezone='Europe/Paris' (a TZ name)",
                            line=clock.line)
    for timer in clock.timers:
        if timer.name == "rtc" and timer.tickpolicy in ("merge", "discard"):
            raise XMLInputError(f"<timer name='rtc' tickpolicy='{timer.tickpolicy}'> is not supported by QEMU; "
                                "accepted: delay, catchup", line=timer.line)
        if timer.name == "rtc" and timer.track == "boot":
            raise XMLInputError("<timer name='rtc' track='boot'> is not supported by QEMU; accepted: guest, wall, "
                                "realtime", line=timer.line)
        if timer.name == "pit" and timer.tickpolicy == "merge":
            raise XMLInputError("<timer name='pit' tickpolicy='merge'> is not supported by QEMU; accepted: delay, "
                                "catchup, discard", line=timer.line)


def lifecycle_options(domain):
    """What QEMU does itself at a guest power-off or reboot. virtnet has no daemon watching QEMU
    (libvirt always passes -no-shutdown and acts on QEMU's events), so QEMU must exit by itself
    when the domain is to be destroyed: on_poweroff='destroy' needs no option at all."""
    argv = []
    if domain.on_poweroff == "preserve":
        argv.append("-no-shutdown")  # QEMU keeps the stopped guest until `virtnet destroy`
    if domain.on_reboot == "destroy":
        argv += ["-action", "reboot=shutdown"]  # QEMU ≥ 6.0 (libvirt: -no-reboot, or set-action over QMP)
    return argv


# The lifecycle elements (<on_poweroff> and the like): lifecycle_options and lifecycle_dropped read
# them only for a domain that gives one.
LIFECYCLE_TAGS = frozenset({"on_poweroff", "on_reboot", "on_crash"})


def lifecycle_dropped(domain):
    """(line, element, why) for lifecycle actions QEMU cannot carry out without a daemon."""
    dropped = []
    for tag, value, default in (("on_poweroff", domain.on_poweroff, ("destroy", "preserve")),
                                ("on_reboot", domain.on_reboot, ("restart", "destroy")),
                                ("on_crash", domain.on_crash, ("destroy",))):
        if value is not None and value not in default:
            why = {"on_poweroff": "QEMU exits when the guest powers off",
                   "on_reboot": "the guest reboots in place",
                   "on_crash": "virtnet renders no panic device, so a crash does not reach QEMU"}[tag]
            dropped.append((domain.line_of(tag), f"<{tag}>{value}</{tag}>", why))
    return dropped


def pm_options(domain):
    pm = domain.pm
    if pm is None:
        return []
    device = "ICH9-LPC" if domain.is_q35 else "PIIX4_PM"
    argv = []
    for value, prop in ((pm.suspend_to_mem, "disable_s3"), (pm.suspend_to_disk, "disable_s4")):
        if value in ("yes", "no"):
            argv += ["-global", f"{device}.{prop}={1 if value == 'no' else 0}"]
    return argv


# ---------------------------------------------------------------- boot


def effective_boot_devs(domain, default=True):
    """libvirt's boot order: <os><boot dev> in order; none given and no device has <boot order>,
    then ['hd'] (libvirt's default), unless DEFAULT is false."""
    devs = domain.os.boot_devs if domain.os is not None else ()
    if devs or not default:
        return devs
    return () if _device_boot(domain.devices_node()) else ("hd",)


def _device_boot(devices):
    """Whether a device has a <boot order> (devices/*/boot), the NICs' too. A walk of <devices> for
    <boot> elements, in C: half the cost of that XPath (find() with '*' runs ElementPath in Python)."""
    if devices is None:
        return False
    return any(boot.getparent().getparent() is devices for boot in devices.iter("boot"))


def boot_indexes(domain, default=True):
    """{'hd'|'cdrom'|'fd'|'network': bootindex}: <os><boot dev> turned into per-device bootindex
    as libvirt does — the first disk, CD-ROM, floppy and NIC get the position of their kind in the
    boot order (virtnet.qemu.storage gives them to disks; network_options to the first NIC).
    DEFAULT=False leaves out libvirt's default (a disk's 'hd'), which costs a walk of the devices."""
    indexes = {}
    for position, dev in enumerate(effective_boot_devs(domain, default), 1):
        indexes.setdefault(dev, position)  # a kind named twice boots at its first place
    return indexes


def boot_options(os_):
    """-boot (libvirt always asks for strict=on: only devices with a bootindex are tried) and direct
    kernel boot, from <os> (None when it gives no more than its type and boot order)."""
    items = []
    if os_ is not None and os_.bootmenu_enable in ("yes", "no"):
        items.append(f"menu={'on' if os_.bootmenu_enable == 'yes' else 'off'}")
    if os_ is not None and os_.bios_reboot_timeout is not None:
        items.append(f"reboot-timeout={os_.bios_reboot_timeout}")
    if os_ is not None and os_.bootmenu_timeout is not None:
        items.append(f"splash-time={os_.bootmenu_timeout}")
    items.append("strict=on")
    argv = ["-boot", ",".join(items)]
    if os_ is not None:
        for option, value in (("-kernel", os_.kernel), ("-initrd", os_.initrd), ("-append", os_.cmdline)):
            if value is not None and (option == "-append" or value.strip()):
                argv += [option, value.strip() if option != "-append" else value]
    return argv


def check_boot(os_):
    if os_ is None:
        return
    for tag in ("initrd", "cmdline"):
        if os_.has(tag) and not (os_.kernel or "").strip():
            raise XMLInputError(f"<os><{tag}> needs <kernel> (QEMU takes -initrd and -append only with -kernel)",
                                line=os_.line_of(tag))
    if os_.kernel is not None and not os_.kernel.strip():
        raise XMLInputError("<os><kernel> is empty; give the kernel image's path", line=os_.line_of("kernel"))


# ---------------------------------------------------------------- the whole machine part


# <os> children that every domain has a use for: the machine type and the boot order. Anything
# else there is firmware, direct kernel boot or the boot menu.
_OS_BASICS = frozenset({"type", "boot"})


def _child_tags(node):
    """The tags of NODE's children (one slice, one C call). options() screens with them the parts
    most domains leave out: through the frozen model, each value of an absent part still costs a
    first read of about 3 K instructions, a tag test about 0.1 K."""
    return {child.tag for child in node[:]}


class _Given(Record):
    """What a domain gives of the machine part's optional elements: each sub-object, or None when
    the domain leaves it out (as the model would say, without asking it), and whether the guest's
    RAM is shared. `os` is None too when <os> gives no more than its type and boot order."""

    __slots__ = ("tags", "os", "features", "clock", "cpu", "shared")

    def __init__(self, domain):
        tags = self.tags = _child_tags(domain.node)
        os_ = domain.os if "os" in tags else None
        self.os = os_ if os_ is not None and not _child_tags(os_.node) <= _OS_BASICS else None
        self.features = domain.features if "features" in tags else None
        self.clock = domain.clock if "clock" in tags else None
        self.cpu = domain.cpu if "cpu" in tags else None
        self.shared = "memoryBacking" in tags and shared_memory(domain)


def check(domain, given):
    """The rules the machine part relies on (raised as XMLInputError at the element's line); GIVEN:
    the domain's _Given."""
    if not given.shared:
        _check_no_vhost_user(domain)
    check_firmware(domain, given.os)
    check_clock(given.clock)
    check_boot(given.os)


def options(domain, paths, *, syntax="json", standalone=False, state_dir=DEFAULT_STATE_DIR):
    """(argv, environment) of the machine part. Standalone lines run by themselves: no -S and no
    QMP socket in virtnet's runtime directory (nothing would resume the guest or create it)."""
    given = _Given(domain)
    check(domain, given)
    os_, shared = given.os, given.shared
    flash, flash_props = pflash_options(domain, os_, syntax, state_dir)
    argv = [(domain.emulator or DEFAULT_EMULATOR).strip()]
    argv += ["-name", "guest=" + render.keyval_escape(domain.name)]
    if not standalone:
        argv += ["-S"]  # start paused: virtnet sets links over QMP, then runs the vCPUs
    argv += flash
    argv += ["-machine", machine_value(domain, flash_props, given.features, given.clock, shared)]
    loader = os_.loader if os_ is not None else None
    if loader is not None and not loader.is_pflash:
        argv += ["-bios", loader.text]
    argv += ["-accel", "kvm" if domain.type == "kvm" else "tcg"]
    cpu = cpu_value(domain, given.cpu, given.features)
    if cpu is not None:
        argv += ["-cpu", cpu]
    if loader is not None and loader.secure == "yes":
        argv += ["-global", "driver=cfi.pflash01,property=secure,value=on"]
    argv += ["-m", f"size={memory_kib(domain)}k"]
    if shared:
        argv += memory_backend(domain, syntax)
    argv += ["-smp", smp_value(domain, given.cpu)]
    argv += ["-uuid", domain.uuid]
    argv += ["-display", "none", "-no-user-config", "-nodefaults"]
    if not standalone:
        argv += qmp_options(paths.qmp_text)
    clock, env = clock_options(given.clock)
    argv += clock
    if not LIFECYCLE_TAGS.isdisjoint(given.tags):
        argv += lifecycle_options(domain)
    if "pm" in given.tags:
        argv += pm_options(domain)
    argv += boot_options(os_)
    return argv, env


# ---------------------------------------------------------------- host side, at start


FIRMWARE_DESCRIPTOR_DIRS = ("/etc/qemu/firmware", "/usr/share/qemu/firmware")


def nvram_template(loader_path, descriptor_dirs=FIRMWARE_DESCRIPTOR_DIRS):
    """The variable-store template that goes with a UEFI code image: from QEMU's firmware
    descriptors (docs/interop/firmware.json, as libvirt reads them), else the image's own folder
    by Debian's and Fedora's naming (OVMF_CODE*.fd → OVMF_VARS*.fd). None when neither knows."""
    import json

    for directory in descriptor_dirs:
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            continue
        for name in names:
            if not name.endswith(".json"):
                continue
            try:
                with open(os.path.join(directory, name), encoding="utf-8") as f:
                    mapping = json.load(f).get("mapping", {})
            except (OSError, ValueError, AttributeError):
                continue
            executable = (mapping.get("executable") or {}).get("filename")
            template = (mapping.get("nvram-template") or {}).get("filename")
            if executable and template and os.path.realpath(executable) == os.path.realpath(loader_path):
                return template
    folder, base = os.path.split(loader_path)
    if "CODE" in base:
        for candidate in (base.replace("CODE", "VARS"),
                          base.replace("CODE", "VARS").replace(".secboot", "").replace(".ms", "")):
            path = os.path.join(folder, candidate)
            if os.path.isfile(path):
                return path
    return None


def prepare_nvram(domain, state_dir):
    """Before QEMU starts: the domain's UEFI variable store, copied from its template when it does
    not exist yet (libvirt does the same at the first start). Returns the path, or None."""
    path = nvram_path(domain, state_dir)
    if path is None or os.path.exists(path):
        return path
    loader = domain.os.loader
    nvram = domain.os.nvram
    template = nvram.template if nvram is not None and nvram.template else nvram_template(loader.text)
    if template is None:
        raise HostError(f"no variable-store template is known for the UEFI loader {loader.text}, and {path} "
                        "does not exist: add <nvram template='/usr/share/OVMF/OVMF_VARS.fd'> to <os>")
    import shutil  # start only: xml2argv does not pay for it

    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        partial = path + ".new"
        shutil.copyfile(template, partial)
        os.chmod(partial, 0o600)
        os.replace(partial, path)
    except OSError as e:
        raise HostError(f"cannot create the UEFI variable store {path} from {template}: "
                        f"{e.strerror or e}") from None
    return path
