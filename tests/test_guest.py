"""What a guest needs to boot, on QEMU's command line: <os> (kernel, firmware, boot order), <cpu>,
<clock>, <features>, lifecycle, character devices, <rng>, <memballoon>, <qemu:commandline>; and
nothing dropped silently.

The goldens (testdata/xml2argv/guest-*, testdata/xml2xml/guest-*) hold the command lines; these
tests check what a golden cannot: that every modelled guest property is exercised by some golden,
that QEMU itself received the kernel, its command line and the environment, that the host-side
steps of `virtnet start` (the UEFI variable store, the guest agent's socket) happen, and that
start refuses a domain whose dropped elements hold data unless --allow-dropped.
"""

import json
import shutil
import socket
import tempfile
from pathlib import Path

import pytest
from lxml import etree

import guestfiles
from hostcases import QEMU, fails, ok, require_qemu, virtnet, write
from test_golden import ARGV_DIR, XML_DIR, unexercised_attributes
from virtnet import convert
from virtnet.conf import guest as model
from virtnet.conf.load import load_file, load_text
from virtnet.errors import HostError, UnsupportedError, XMLInputError
from virtnet.qemu import argv as argvmod
from virtnet.qemu import machine
from virtnet.qemu.argv import ArgvOptions, build_command
from virtnet.qemu.launch import launch, stop
from virtnet.runpaths import DomainPaths

REPO = Path(__file__).resolve().parents[1]


def domain_text(name, *, top="", os_extra="", devices="", dtype="qemu", machine_type="pc", attrs=""):
    return (f"<domain type='{dtype}'{attrs}>\n  <name>{name}</name>\n  <memory unit='MiB'>64</memory>\n"
            f"  <vcpu>1</vcpu>\n  <os>\n    <type arch='x86_64' machine='{machine_type}'>hvm</type>{os_extra}\n"
            f"  </os>{top}\n  <devices>\n    <emulator>{QEMU}</emulator>{devices}\n  </devices>\n</domain>\n")


def load(text):
    return load_text(text, "dom.xml")


def argv_of(text, **options):
    loaded = load(text)
    return build_command(loaded.domain, DomainPaths("/run/virtnet", loaded.domain.name), ArgvOptions(**options))


def option_values(argv, option):
    return [argv[i + 1] for i, word in enumerate(argv[:-1]) if word == option]


# ---------------------------------------------------------------- the goldens cover the model


def _guest_objects(domain):
    found = {cls: [] for cls in model.MODEL_CLASSES}

    def add(obj):
        if obj is not None:
            found[type(obj)._model].append(obj)  # their <address>: tests/test_golden.py covers every device's

    os_ = domain.os
    add(os_)
    if os_ is not None:
        add(os_.loader)
        add(os_.nvram)
    add(domain.cpu)
    if domain.cpu is not None:
        found[model.CpuFeature] += domain.cpu.features
    add(domain.clock)
    if domain.clock is not None:
        found[model.Timer] += domain.clock.timers
    add(domain.features)
    add(domain.pm)
    for obj in domain.serials + domain.consoles + domain.channels + domain.virtio_serial_controllers + domain.rngs:
        add(obj)
    add(domain.memballoon)
    commandline = domain.qemu_commandline
    if commandline is not None:
        found[model.QemuArg] += commandline.args
        found[model.QemuEnv] += commandline.env
    return found


def test_every_modelled_guest_attribute_is_exercised_by_a_golden():
    sources = [path for path in sorted(ARGV_DIR.glob("*.xml")) + sorted(XML_DIR.glob("*.xml"))
               if not path.name.endswith(".out.xml")]
    missing = unexercised_attributes(model, sources, _guest_objects)
    assert not missing, "modelled but exercised by no golden input: " + ", ".join(missing)


# ---------------------------------------------------------------- the command line


def test_options_come_in_libvirts_order():
    text = domain_text(
        "order", top="\n  <cpu mode='maximum'/>\n  <clock offset='localtime'/>\n  <on_reboot>destroy</on_reboot>",
        os_extra="\n    <kernel>/boot/vmlinuz</kernel>\n    <cmdline>console=ttyS0</cmdline>",
        devices="\n    <interface type='user'><model type='virtio'/></interface>\n    <serial type='pty'/>\n"
                "    <channel type='pty'><target type='virtio' name='a'/></channel>\n"
                "    <rng model='virtio'><backend model='random'/></rng>", attrs=" xmlns:q='" + model.QEMU_NS + "'")
    text = text.replace("</domain>", "  <q:commandline><q:arg value='-last'/></q:commandline>\n</domain>")
    argv = argv_of(text).argv
    firsts = [argv.index(o) for o in ("-machine", "-accel", "-cpu", "-m", "-smp", "-uuid", "-rtc", "-action",
                                      "-boot", "-kernel", "-append", "-netdev")] + [argv.index("pty,id=charserial0")]
    assert firsts == sorted(firsts)
    devices = option_values(argv, "-device")
    drivers = [json.loads(d)["driver"] for d in devices]
    assert drivers == ["virtio-serial-pci", "virtio-net-pci", "isa-serial", "virtserialport", "virtio-balloon-pci",
                       "virtio-rng-pci"]
    assert argv[-1] == "-last"


def test_boot_dev_network_gives_the_first_nic_its_position():
    text = domain_text("bootnet", os_extra="\n    <boot dev='hd'/>\n    <boot dev='network'/>",
                       devices="\n    <interface type='user'/>\n    <interface type='user'/>")
    devices = [json.loads(d) for d in option_values(argv_of(text).argv, "-device") if '"netdev"' in d]
    assert [d.get("bootindex") for d in devices] == [2, None]
    assert list(devices[0])[list(devices[0]).index("mac") + 1] == "bootindex"  # where libvirt puts it
    assert machine.boot_indexes(load(text).domain) == {"hd": 1, "network": 2}


def test_boot_indexes_default_to_hd_unless_devices_have_their_own():
    assert machine.boot_indexes(load(domain_text("d")).domain) == {"hd": 1}
    per_device = domain_text("p", devices="\n    <interface type='user'><boot order='1'/></interface>")
    assert machine.boot_indexes(load(per_device).domain) == {}


def test_boot_indexes_without_the_default_leave_hd_out():
    """build_command asks for no default ('hd') when the domain has no disk to give it to."""
    assert machine.boot_indexes(load(domain_text("d")).domain, default=False) == {}
    listed = domain_text("l", os_extra="\n    <boot dev='network'/>\n    <boot dev='hd'/>")
    assert machine.boot_indexes(load(listed).domain, default=False) == {"network": 1, "hd": 2}


def test_machine_options_read_what_os_gives_besides_type_and_boot():
    """machine.options passes over an <os> of only <type> and <boot>; anything more is read."""
    plain = argv_of(domain_text("p", os_extra="\n    <boot dev='hd'/>")).argv
    assert option_values(plain, "-boot") == ["strict=on"]
    menu = argv_of(domain_text("m", os_extra="\n    <boot dev='hd'/>\n    <bootmenu enable='yes' timeout='3'/>")).argv
    assert option_values(menu, "-boot") == ["menu=on,splash-time=3,strict=on"]
    commented = argv_of(domain_text("c", os_extra="<!-- a note -->\n    <kernel>/k</kernel>")).argv
    assert option_values(commented, "-kernel") == ["/k"]


@pytest.mark.parametrize("balloon, wanted", [
    ("<memballoon model='virtio'/>", {"id": "balloon0"}),
    ("<memballoon model='virtio' autodeflate='on' freePageReporting='off'/>",
     {"id": "balloon0", "deflate-on-oom": True, "free-page-reporting": False}),
    ("<memballoon model='virtio'><alias name='ua-b'/><stats period='5'/></memballoon>",
     {"id": "ua-b", "guest-stats-polling-interval": 5}),
])
def test_balloon_reads_its_settings_only_when_given(balloon, wanted):
    devices = [json.loads(d) for d in option_values(argv_of(domain_text("b", devices=balloon)).argv, "-device")]
    props = next(d for d in devices if d["driver"] == "virtio-balloon-pci")
    assert {k: v for k, v in props.items() if k not in ("driver", "bus", "addr")} == wanted


def test_acpi_follows_features_as_in_libvirt():
    without = option_values(argv_of(domain_text("a")).argv, "-machine")[0]
    with_acpi = option_values(argv_of(domain_text("b", top="\n  <features><acpi/></features>")).argv, "-machine")[0]
    assert without.endswith(",acpi=off") and with_acpi.endswith(",acpi=on")


def test_timezone_and_qemu_env_are_returned_as_the_environment():
    text = domain_text("env", top="\n  <clock offset='timezone' timezone='Asia/Tokyo'/>",
                       attrs=" xmlns:qemu='" + model.QEMU_NS + "'")
    text = text.replace("</domain>", "  <qemu:commandline><qemu:env name='A' value='1 2'/><qemu:env name='B'/>"
                                     "</qemu:commandline>\n</domain>")
    command = argv_of(text)
    assert command.env == {"TZ": "Asia/Tokyo", "A": "1 2", "B": ""}
    assert option_values(command.argv, "-rtc") == ["base=localtime"]


def test_xml2argv_prints_the_environment_first_and_warns_about_custom_arguments(tmp_path):
    loaded = convert.load(str(ARGV_DIR / "guest-qemu-commandline.xml"))
    result = convert.xml2argv(loaded, runtime_dir="/run/virtnet")
    assert result.text.startswith("QEMU_AUDIO_DRV=none \\\nEMPTY='' \\\n/usr/bin/qemu-system-x86_64 \\\n")
    messages = [str(w) for w in result.warnings]
    assert any("<qemu:commandline> passes arguments of its own to QEMU (-msg timestamp=on -sandbox "
               "on,obsolete=deny) and sets QEMU_AUDIO_DRV, EMPTY in QEMU's environment" in m for m in messages)
    assert any("<qemu:capabilities> (line" in m for m in messages), messages


def test_a_serial_console_alone_is_serial0_and_a_second_console_is_virtio():
    text = domain_text("con", devices="\n    <console type='pty'/>\n    <console type='pty'>"
                                      "<target type='virtio'/></console>")
    argv = argv_of(text).argv
    assert option_values(argv, "-chardev")[1:] == ["pty,id=charserial0", "pty,id=charconsole1"]
    drivers = [json.loads(d) for d in option_values(argv, "-device")]
    assert {"driver": "isa-serial", "chardev": "charserial0", "id": "serial0", "index": 0} in drivers
    assert {"driver": "virtconsole", "chardev": "charconsole1", "id": "console1"} in drivers


def test_a_channel_without_a_path_listens_in_the_runtime_directory():
    text = domain_text("agent", devices="\n    <channel type='unix'><target type='virtio' "
                                        "name='org.qemu.guest_agent.0'/></channel>")
    chardev = option_values(argv_of(text).argv, "-chardev")[1]
    assert chardev == ("socket,id=charchannel0,path=/run/virtnet/agent/channel/org.qemu.guest_agent.0,"
                       "server=on,wait=off")


def test_a_socket_path_too_long_for_a_unix_address_is_refused():
    text = domain_text("long", devices=f"\n    <serial type='unix'><source mode='bind' path='/{'x' * 120}'/>"
                                       "</serial>")
    with pytest.raises(XMLInputError, match="longer than the 107 bytes"):
        argv_of(text)


# ---------------------------------------------------------------- nothing dropped silently


def test_unrendered_names_elements_anywhere_with_their_lines():
    domain = load_file(str(ARGV_DIR / "guest-dropped.xml")).domain
    dropped = argvmod.unrendered(domain)
    names = [d.what for d in dropped]
    for expected in ("<currentMemory>", "<memoryBacking><hugepages>", "<features><hyperv>", "<cpu><numa>",
                     "<clock offset='variable'>", "<clock><timer name='tsc'>",
                     "<clock><timer name='rtc'><catchup>", "<cputune>", "<filesystem type='mount'>",
                     "<watchdog model='i6300esb'>", "<panic model='isa'>", "<seclabel>"):
        assert expected in names, names
    assert all(d.line for d in dropped)
    assert [d.what for d in dropped if d.data] == ["<filesystem type='mount'>"]
    assert names == [d.what for d in sorted(dropped, key=lambda d: d.line)]


def test_display_devices_warn_that_the_guest_runs_headless():
    domain = load_file(str(ARGV_DIR / "guest-headless.xml")).domain
    messages = [message for _, message in argvmod.warnings(domain)]
    assert len(messages) == 2, messages
    assert messages[0] == "not rendered, so the guest runs without them: <controller type='usb'> (line 11)"
    assert messages[1].startswith("the guest runs headless: <input type='tablet'> (line 12), <graphics type='vnc'> "
                                  "(line 15), <video> (line 16), <sound model='ich6'> (line 19) not rendered; reach "
                                  "it through a serial console")


def test_ps2_input_and_the_chipsets_controllers_are_not_dropped():
    domain = load_file(str(REPO / "examples" / "net-eth-unmanaged-tap.xml")).domain
    assert [d.what for d in argvmod.unrendered(domain)] == ["<controller type='usb'>"]


def test_disks_virtnet_cannot_render_are_dropped_with_data():
    text = domain_text("disk", devices="\n    <disk type='network' device='disk'><source protocol='nbd' "
                                       "name='x'><host name='h'/></source><target dev='vda' bus='virtio'/></disk>")
    domain = load(text).domain
    dropped = [d for d in argvmod.unrendered(domain) if d.what.startswith("<disk")]
    assert dropped and dropped[0].data
    with pytest.raises(UnsupportedError, match=r"^<disk type='network'> \(line 10\): not rendered.*--allow-dropped"):
        argvmod.check_dropped(domain)


def test_lifecycle_actions_qemu_cannot_carry_out_are_named():
    domain = load_file(str(ARGV_DIR / "guest-lifecycle.xml")).domain
    assert [(d.what, d.why) for d in argvmod.unrendered(domain)] == [
        ("<on_crash>restart</on_crash>", "virtnet renders no panic device, so a crash does not reach QEMU")]


# ---------------------------------------------------------------- the UEFI variable store


def test_nvram_template_comes_from_firmware_descriptors(tmp_path):
    code, vars_ = tmp_path / "CODE.fd", tmp_path / "MYVARS.fd"
    code.write_bytes(b"c")
    vars_.write_bytes(b"v")
    descriptors = tmp_path / "firmware"
    descriptors.mkdir()
    (descriptors / "50-x.json").write_text(json.dumps({"mapping": {
        "executable": {"filename": str(code)}, "nvram-template": {"filename": str(vars_)}}}))
    (descriptors / "10-broken.json").write_text("{")
    assert machine.nvram_template(str(code), (str(descriptors),)) == str(vars_)


def test_nvram_template_by_name_next_to_the_code(tmp_path):
    (tmp_path / "OVMF_CODE_4M.fd").write_bytes(b"c")
    (tmp_path / "OVMF_VARS_4M.fd").write_bytes(b"v")
    (tmp_path / "OVMF_CODE.secboot.fd").write_bytes(b"c")
    (tmp_path / "OVMF_VARS.fd").write_bytes(b"v")
    assert machine.nvram_template(str(tmp_path / "OVMF_CODE_4M.fd"), ()) == str(tmp_path / "OVMF_VARS_4M.fd")
    assert machine.nvram_template(str(tmp_path / "OVMF_CODE.secboot.fd"), ()) == str(tmp_path / "OVMF_VARS.fd")
    assert machine.nvram_template(str(tmp_path / "bios.bin"), ()) is None


def _uefi_domain(tmp_path, template=True):
    code = tmp_path / "CODE.fd"
    code.write_bytes(b"\0" * guestfiles.OVMF_CODE_SIZE)
    vars_ = tmp_path / "VARS-template.fd"
    vars_.write_bytes(b"\1" * guestfiles.NVRAM_SIZE)
    nvram = f"\n    <nvram template='{vars_}'/>" if template else ""
    return domain_text("uefi", os_extra=f"\n    <loader readonly='yes' type='pflash'>{code}</loader>{nvram}"), vars_


def test_prepare_nvram_copies_the_template_once(tmp_path):
    text, template = _uefi_domain(tmp_path)
    domain = load(text).domain
    state = tmp_path / "state"
    path = Path(machine.prepare_nvram(domain, state))
    assert path == state / "nvram" / "uefi_VARS.fd"
    assert path.read_bytes() == template.read_bytes() and (path.stat().st_mode & 0o777) == 0o600
    path.write_bytes(b"the guest's own variables")
    machine.prepare_nvram(domain, state)
    assert path.read_bytes() == b"the guest's own variables", "an existing store is the guest's: never replaced"


def test_prepare_nvram_without_a_known_template_is_a_clear_error(tmp_path):
    text, _ = _uefi_domain(tmp_path, template=False)
    with pytest.raises(HostError, match="no variable-store template is known .* add <nvram template="):
        machine.prepare_nvram(load(text).domain, tmp_path / "state")


# ---------------------------------------------------------------- real QEMU


def _launch(domain, workdir, options=None):
    paths = DomainPaths(Path(workdir) / "run", domain.name)
    paths.dir.mkdir(parents=True)
    command = build_command(domain, paths, options or ArgvOptions(state_dir=str(Path(workdir) / "state")))
    argvmod.prepare_host(domain, paths, Path(workdir) / "state")
    return launch(command.argv, pass_fds=[], qmp_path=str(paths.qmp), log_path=str(paths.log), env=command.env), paths


def test_kernel_initrd_and_append_reach_qemu():
    """QEMU paused, nothing boots: its machine object holds what -kernel/-initrd/-append gave."""
    require_qemu()
    domain = load_file(str(ARGV_DIR / "guest-direct-kernel.xml")).domain
    workdir = tempfile.mkdtemp(prefix="vnt-g-")
    files = guestfiles.GuestFiles(domain, workdir)
    launched = None
    try:
        launched, paths = _launch(domain, workdir)
        got = {p: launched.qmp.execute("qom-get", {"path": "/machine", "property": p})
               for p in ("kernel", "initrd", "append")}
        assert got == {"kernel": domain.os.kernel, "initrd": domain.os.initrd,
                       "append": "console=ttyS0 root=/dev/vda rw quiet tg.name='a b'"}
        assert launched.qmp.execute("qom-get", {"path": "/machine", "property": "acpi"}) == "off"
        serial = launched.qmp.execute("qom-get", {"path": "/machine/peripheral/serial0", "property": "chardev"})
        assert serial == "charserial0"
    finally:
        if launched is not None:
            launched.qmp.close()
            stop(launched.pid, str(paths.qmp), timeout=3)
        files.close()
        shutil.rmtree(workdir, ignore_errors=True)


def test_qemu_runs_with_the_environment_and_the_agent_socket_listens():
    require_qemu()
    text = domain_text("envagent", top="\n  <clock offset='timezone' timezone='Asia/Tokyo'/>",
                       attrs=" xmlns:qemu='" + model.QEMU_NS + "'",
                       devices="\n    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/>"
                               "</channel>\n    <rng model='virtio'><backend model='random'>/dev/urandom</backend>"
                               "</rng>")
    text = text.replace("</domain>", "  <qemu:commandline><qemu:env name='VNT_TEST' value='a b'/>"
                                     "</qemu:commandline>\n</domain>")
    domain = load(text).domain
    workdir = tempfile.mkdtemp(prefix="vnt-g-")
    launched = None
    try:
        launched, paths = _launch(domain, workdir)
        environ = Path(f"/proc/{launched.pid}/environ").read_bytes().split(b"\0")
        assert b"VNT_TEST=a b" in environ and b"TZ=Asia/Tokyo" in environ
        agent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            agent.connect(str(paths.dir / "channel" / "org.qemu.guest_agent.0"))
        finally:
            agent.close()
        ports = {p["name"] for p in launched.qmp.execute("qom-list", {"path": "/machine/peripheral"})}
        assert {"virtio-serial0", "channel0", "balloon0", "rng0"} <= ports
    finally:
        if launched is not None:
            launched.qmp.close()
            stop(launched.pid, str(paths.qmp), timeout=3)
        shutil.rmtree(workdir, ignore_errors=True)


# ---------------------------------------------------------------- virtnet start


def test_start_refuses_dropped_data_unless_allowed_and_copies_nvram(ns, dirs, tmp_path):
    text, template = _uefi_domain(tmp_path)
    text = text.replace("</devices>", "  <filesystem type='mount'><source dir='/srv'/><target dir='srv'/>"
                                      "</filesystem>\n  </devices>")
    ok(virtnet(dirs, "define", write(tmp_path / "uefi.xml", text), netns=ns))
    error = fails(virtnet(dirs, "start", "--paused", "uefi", netns=ns))
    assert error == (f"virtnet: error: {dirs.state}/domains/uefi.xml:13: <filesystem type='mount'> (line 13): not "
                     "rendered by virtnet, so the guest would run without this data; `virtnet start --allow-dropped` "
                     "starts it anyway")
    assert dirs.running_records() == [] and not (dirs.state / "nvram").exists()
    started = virtnet(dirs, "start", "--paused", "--allow-dropped", "uefi", netns=ns)
    ok(started)
    try:
        assert ("virtnet: warning: domain 'uefi': not rendered, so the guest runs without them: "
                "<filesystem type='mount'> (line 13)") in started.stderr
        nvram = dirs.state / "nvram" / "uefi_VARS.fd"
        assert nvram.read_bytes() == template.read_bytes()
    finally:
        ok(virtnet(dirs, "destroy", "uefi", netns=ns))
    assert nvram.exists(), "the variable store outlives the domain's run"


# ---------------------------------------------------------------- the grammar


CORPUS_DOMAIN = REPO / ".." / "shared" / "conformance" / "libvirt" / "domain"
# libvirt's domain/ documents virtnet's grammar refuses, and why (the rest must be accepted).
GRAMMAR_REFUSES = {
    "aarch64-virt-virtio.aarch64-latest.xml": "<target> type='system-serial' is not valid; accepted: isa-serial",
    "chardev-backends.xml": "<channel>: type 'vc' is not supported; accepted: pty, null, file, unix, tcp, udp, pipe, dev",
    "chardev-backends.x86_64-9.1.0.xml": "<channel>: type 'vc' is not supported",
    "chardev-backends.x86_64-latest.xml": "<channel>: type 'vc' is not supported",
    "firmware-auto-efi.x86_64-latest.abi-update.xml": "<loader> format='qcow2' is not valid; accepted: raw",
    "q35-virt-manager-basic.xml": "<channel>: type 'spicevmc' is not supported",
    "q35-virt-manager-basic.x86_64-latest.xml": "<channel>: type 'spicevmc' is not supported",
}


def corpus_domain_files():
    if not CORPUS_DOMAIN.is_dir():
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"libvirt's domain/ corpus is not at {CORPUS_DOMAIN}"))]
    return [pytest.param(p, id=p.name) for p in sorted(CORPUS_DOMAIN.glob("*.xml"))]


@pytest.mark.parametrize("path", corpus_domain_files())
def test_libvirts_guest_documents_against_the_grammar(path):
    from lxml import etree

    from virtnet.conf import schema

    tree = etree.parse(str(path))
    words = GRAMMAR_REFUSES.get(path.name)
    if words is None:
        schema.validate(tree, path.name)
        assert schema.diagnose(tree) is None, "the explanation walk must agree with libxml2"
        return
    with pytest.raises(XMLInputError) as caught:
        schema.validate(tree, path.name)
    assert words in caught.value.message and caught.value.line


@pytest.mark.parametrize("devices, words", [
    ("<serial type='file'><target port='0'/></serial>", "<serial type='file'>: the element <source> is missing"),
    ("<channel type='unix'><target type='guestfwd'/></channel>", "<target> type='guestfwd' is not valid; accepted: virtio"),
    ("<rng model='egd'><backend model='random'/></rng>", "<rng>: model='egd' is not valid; accepted: virtio"),
    ("<memballoon model='xen'/>", "<memballoon>: model='xen' is not valid; accepted: virtio"),
    ("<memballoon model='virtio'><stats period='-1'/></memballoon>", "<stats> period='-1' is not valid"),
    ("<serial type='tcp'><source mode='bind' host='h' service='99999'/></serial>",
     "service='99999' is not valid; expected a port number from 0 to 65535"),
    ("<console type='pty'><target type='sclp'/></console>", "<target> type='sclp' is not valid; accepted: serial, virtio"),
])
def test_refused_guest_devices_are_explained_in_one_line(devices, words):
    with pytest.raises(XMLInputError) as caught:
        load(domain_text("refused", devices="\n    " + devices))
    assert words in str(caught.value) and "\n" not in str(caught.value) and caught.value.line == 10


@pytest.mark.parametrize("top, words", [
    ("<cpu mode='host-modle'/>", "<cpu>: mode='host-modle' is not valid; accepted: custom, host-model"),
    ("<features><acip/></features>", "<features>: unknown element <acip> (did you mean <acpi>?)"),
    ("<clock offset='utc'><timer name='rtc' tickpolicy='sometimes'/></clock>", "tickpolicy='sometimes' is not valid"),
    ("<pm><suspend-to-mem enabled='maybe'/></pm>", "enabled='maybe' is not valid; accepted: yes, no"),
    ("<cpu><feature policy='require'/></cpu>", "<feature> needs the attribute 'name'"),
])
def test_refused_guest_elements_are_explained_in_one_line(top, words):
    with pytest.raises(XMLInputError) as caught:
        load(domain_text("refused", top="\n  " + top))
    assert words in str(caught.value) and "\n" not in str(caught.value)


def test_xml2argv_places_the_nvram_in_the_state_dir_start_would_use(tmp_path):
    """A UEFI guest's variable store lives under the state directory: xml2argv names the one given
    with --state-dir (or $VIRTNET_STATE_DIR), as start uses it."""
    import subprocess
    import sys

    from hostcases import REPO, cli_env

    xml = REPO / "testdata" / "xml2argv" / "guest-uefi-secure.xml"
    name = etree.parse(str(xml)).findtext("name")
    for argv, env in ((["--state-dir", str(tmp_path / "a")], {}), ([], {"VIRTNET_STATE_DIR": str(tmp_path / "b")})):
        result = subprocess.run([sys.executable, "-m", "virtnet", *argv, "xml2argv", str(xml)], capture_output=True,
                                text=True, env={**cli_env(), **env})
        assert result.returncode == 0, result.stderr
        where = tmp_path / ("a" if argv else "b") / "nvram" / f"{name}_VARS.fd"
        assert str(where) in result.stdout, result.stdout


def test_undefine_of_a_uefi_guest_neither_drops_nor_keeps_its_variable_store_unasked(dirs):
    """As virsh: with the NVRAM file its first start made, undefine wants --nvram or --keep-nvram."""
    from hostcases import REPO

    xml = REPO / "testdata" / "xml2argv" / "guest-uefi-secure.xml"
    name = etree.parse(str(xml)).findtext("name")
    variables = dirs.state / "nvram" / f"{name}_VARS.fd"
    for flag, kept in (("--keep-nvram", True), ("--nvram", False)):
        ok(virtnet(dirs, "define", xml))
        variables.parent.mkdir(parents=True, exist_ok=True)
        variables.write_bytes(b"the guest's UEFI variables")
        line = fails(virtnet(dirs, "undefine", name))
        assert line == (f"virtnet: error: domain '{name}' has a UEFI variable store, {variables}; `virtnet undefine "
                        f"{name} --nvram` removes it with the definition, `--keep-nvram` keeps it")
        assert name in ok(virtnet(dirs, "list", "--all")) and variables.exists()
        assert ok(virtnet(dirs, "undefine", name, flag)) == f"Domain '{name}' has been undefined\n"
        assert variables.exists() == kept and name not in ok(virtnet(dirs, "list", "--all"))
    assert fails(virtnet(dirs, "undefine", name, "--nvram", "--keep-nvram"), code=2)


def test_a_definition_leaves_out_the_ptys_of_a_live_xml():
    # What `dumpxml` of a running domain shows, pasted into a definition: libvirt ignores a pty's
    # path (QEMU opens another at each start), and so does define.
    text = domain_text("pty", devices=(
        "\n    <serial type='pty'><source path='/dev/pts/3'/><target port='0'/><log file='/tmp/s.log'/></serial>"
        "\n    <console type='pty' tty='/dev/pts/3'><source path='/dev/pts/3'/><target type='serial' port='0'/>"
        "</console>"
        "\n    <channel type='unix'><source mode='bind' path='/tmp/agent.sock'/>"
        "<target type='virtio' name='org.qemu.guest_agent.0'/></channel>"))
    written = convert.xml2xml(load_text(text)).text
    assert "/dev/pts" not in written and "tty=" not in written
    assert "<source mode='bind' path='/tmp/agent.sock'/>" in written  # other types keep their source
    assert "<log file='/tmp/s.log'/>" in written
