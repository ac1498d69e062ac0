"""The `virtnet` command line: verbs, messages and exit codes.

Imports are lazy: each verb imports only what it uses, so `xml2argv` never loads pyroute2 or jinja2.
"""

import gc
import os
import sys

from virtnet.errors import UsageError, VirtnetError
from virtnet.lazy import LazyModule

PROG = "virtnet"

DESCRIPTION = """\
libvirt-style guest networking for QEMU, without libvirtd.

Write a libvirt domain XML; virtnet validates it, writes it back canonically, turns each
<interface> into host tap setup and QEMU -netdev/-device options, and starts QEMU with the taps.
"""

EPILOG = """\
examples:
  virtnet validate dom.xml                 check a domain file (schema + semantic rules)
  virtnet xml2xml dom.xml                  canonical XML, as it would be stored
  virtnet xml2argv dom.xml                 the QEMU command line (fds numbered from 3)
  virtnet xml2argv --network-only dom.xml  only the -netdev/-device options
  virtnet xml2argv --standalone dom.xml    a command line QEMU can run without virtnet

exit status: 0 ok, 1 rejected input or failed operation, 2 usage error.
"""


# argparse, imported at its first use: the conversion verbs' usual command lines are parsed by
# _quick_args without it (importing and building it is a tenth of the start-up floor).
argparse = LazyModule(globals(), "argparse", "argparse")

# Options every verb takes, before or after the verb: (flag, add_argument keywords); the default
# is the top parser's (sub-parsers leave the attribute alone unless the option is given).
COMMON_OPTIONS = (
    ("--debug", {"action": "store_true", "default": False, "help": "show Python tracebacks on errors"}),
    ("--state-dir", {"metavar": "DIR", "default": None,
                     "help": "where definitions and runtime records live (default: $VIRTNET_STATE_DIR, "
                     "/var/lib/virtnet for root, $XDG_DATA_HOME/virtnet otherwise)"}),
    ("--runtime-dir", {"metavar": "DIR", "default": None,
                       "help": "QMP and passt sockets, QEMU logs (default: $VIRTNET_RUNTIME_DIR, "
                       "/run/virtnet for root, $XDG_RUNTIME_DIR/virtnet otherwise)"}),
    ("--netns", {"metavar": "NAME", "default": None,
                 "help": "work inside network namespace NAME (as `ip netns exec NAME` would)"}),
)

# xml2argv's own options, from which both its sub-parser and _quick_args are made.
XML2ARGV_OPTIONS = (
    ("--network-only", {"action": "store_true", "help": "print only the -netdev/-device/-chardev options"}),
    ("--standalone", {"action": "store_true",
                      "help": "let QEMU open taps by name (ifname=...,script=no,downscript=no) and use "
                      "-netdev bridge with qemu-bridge-helper for bridges, so the line runs without virtnet"}),
    ("--syntax", {"choices": ("json", "keyval"), "default": "json",
                  "help": "JSON objects (default; what QEMU 7.x takes) or legacy keyval for -netdev/-device"}),
    ("--host-caps", {"default": "auto", "metavar": "CAPS",
                     "help": "host capabilities to assume: 'auto' (probe this host, default), 'none', or a "
                     "comma list of: vhost-net. Pin it for golden tests."}),
    ("--bridge-helper", {"metavar": "PATH",
                         "help": "with --standalone: the qemu-bridge-helper QEMU runs for bridges (default: the "
                         "first found in /usr/lib/qemu, /usr/libexec/qemu, /usr/libexec, /usr/local/libexec)"}),
)


def _common(parser, top=False):
    """Options every verb takes, before or after the verb (defaults live on the top parser only)."""
    for flag, keywords in COMMON_OPTIONS:
        parser.add_argument(flag, **(keywords if top else {**keywords, "default": argparse.SUPPRESS}))


def _add_file(parser, nargs=None):
    parser.add_argument("file", metavar="FILE", nargs=nargs, help="domain XML file, or - for standard input")


def build_parser(verb=None):
    """The whole command line; with VERB (see _verb_of), only that verb's sub-parser is built, which
    parses that verb's command lines exactly as the whole parser does, at a fraction of the cost."""
    parser_class = _parser_class()
    parser = parser_class(
        prog=PROG, description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    _common(parser, top=True)
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    # prog given: argparse would otherwise format a usage line to work it out.
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", prog=PROG, parser_class=parser_class)
    verbs.required = True
    if verb is not None:
        verbs = _OneVerb(verbs, verb)

    p = verbs.add_parser("validate", help="check a domain XML against the schema and rules",
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         description="Check FILE against virtnet's RelaxNG schema and libvirt's semantic rules, and\n"
                         "everything xml2argv and start check while building QEMU's command line (socket\n"
                         "paths under --runtime-dir must fit, as for start).\n"
                         "Prints nothing and exits 0 when it is valid; otherwise one line names the file, line,\n"
                         "element and value, and what is accepted, and the exit status is 1.",
                         epilog=_example("virtnet validate web.xml && echo valid"))
    _add_file(p)
    _common(p)

    p = verbs.add_parser("xml2xml", help="print the canonical form of a domain XML",
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         description="Print FILE the way virtnet stores it: like libvirt's dumpxml --inactive,\n"
                         "with MACs and PCI addresses filled in, generated target names dropped.",
                         epilog=_example("virtnet xml2xml web.xml > web.canonical.xml"))
    _add_file(p)
    _common(p)

    p = verbs.add_parser(
        "xml2argv", help="print the QEMU command line for a domain",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Print the QEMU command line for each FILE, one option per line with shell quoting.\n"
        "Tap-backed interfaces get fd=N (numbered from 3): `virtnet start` opens the taps itself\n"
        "and passes real descriptors. With several files, each command line is preceded by\n"
        "a `# FILE` line.",
        epilog=_example("virtnet xml2argv --network-only web.xml", "virtnet xml2argv --standalone web.xml > run.sh"),
    )
    _add_file(p, nargs="+")
    for flag, keywords in XML2ARGV_OPTIONS:
        p.add_argument(flag, **keywords)
    _common(p)
    _host_verbs(verbs)
    _lifecycle_verbs(verbs)
    _interface_verbs(verbs)
    _device_verbs(verbs)
    _tuning_verbs(verbs)
    _network_verbs(verbs)
    _check_verbs(verbs)
    return parser


def _example(*lines):
    """A verb's epilog: the command lines `VERB --help` ends with (the man page's EXAMPLES too)."""
    return ("example:\n" if len(lines) == 1 else "examples:\n") + "".join(f"  {line}\n" for line in lines)


def _verb(verbs, name, help, description, *examples, domain=False):
    """A verb's sub-parser: its help, description and example lines, the common options, and with
    DOMAIN the NAME of the domain it acts on."""
    p = verbs.add_parser(name, help=help, description=description, epilog=_example(*examples),
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    if domain:
        p.add_argument("name", metavar="NAME", help="the domain")
    _common(p)
    return p


def _check_verbs(verbs):
    p = verbs.add_parser(
        "golden", help="compare (or rewrite) a folder of golden cases",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="For each NAME.xml in DIR: NAME.out.xml expects `xml2xml` output, NAME.args expects\n"
        "`xml2argv` output, NAME.err its error, NAME.plan expects `plan` output and NAME.plan.json\n"
        "`plan --format json` output. `check` prints unified diffs and 'N passed, M failed' (exit 1\n"
        "on any difference); `regen` rewrites the expectations that differ. Host facts are pinned, as\n"
        "the golden tests pin them: --host-caps vhost-net, --runtime-dir /run/virtnet unless given, the\n"
        "helper /usr/lib/qemu/qemu-bridge-helper, no interface names in use. A case name ending in\n"
        "-keyval, -standalone or -network-only selects that xml2argv option; -unprivileged plans\n"
        "bridges through the bridge helper.",
        epilog=_example("virtnet golden regen golden/   # once, then commit golden/",
                        "virtnet golden check golden/   # in CI: exit 1 on any difference"))
    p.add_argument("action", choices=("check", "regen"))
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--host-caps", default="vhost-net", metavar="CAPS",
                   help="host capabilities xml2argv and plan assume (default: vhost-net)")
    _common(p)


def _host_verbs(verbs):
    def verb(*args):
        return _verb(verbs, *args)

    p = verb("define", "store a domain definition (canonical form, MACs and PCI addresses filled in)",
             "Check FILE and store it as a defined domain (like `virsh define`). Redefining a domain\n"
             "with the same name and uuid updates it; a different domain with the same name or uuid,\n"
             "or one that reuses another domain's MAC address or target dev, is refused.",
             "virtnet define web.xml && virtnet start web")
    _add_file(p)
    p = verb("undefine", "remove a stopped domain's definition",
             "Forget the definition of domain NAME (like `virsh undefine`). A running domain is\n"
             "refused: destroy or shut it down first. A stored definition that no longer loads is\n"
             "removed all the same.",
             "virtnet destroy web; virtnet undefine web")
    p.add_argument("name", metavar="NAME")
    nvram = p.add_mutually_exclusive_group()
    nvram.add_argument("--nvram", action="store_true", default=None,
                       help="also remove a UEFI guest's variable store (without it or --keep-nvram, undefine "
                       "refuses while the store exists, as virsh does)")
    nvram.add_argument("--keep-nvram", dest="nvram", action="store_false", default=None, help="keep the variable store")
    p = verb("list", "list domains: name, state, interfaces",
             "List the running domains (with --all, the shut-off ones too) with their interface\n"
             "types, like `virsh list`. A domain whose QEMU has died is cleaned up first and shown\n"
             "shut off.",
             "virtnet list --all")
    p.add_argument("--all", action="store_true", help="include domains that are shut off")
    p = verb("dumpxml", "print a defined domain's XML (live tap names while it runs)",
             "Print the XML of domain NAME (like `virsh dumpxml`): while it runs, the live view with\n"
             "device aliases and the taps in use; otherwise, or with --inactive, the stored definition.",
             "virtnet dumpxml web --inactive > web.xml")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--inactive", action="store_true", help="the stored definition, not the live view")
    p = verb("domiflist", "list a domain's interfaces: interface, type, source, model, MAC",
             "List the interfaces of domain NAME, one line each, as `virsh domiflist` does: the host\n"
             "interface (the tap in use while it runs, else the configured target or -), the type,\n"
             "the source (bridge, socket, ...), the NIC model and the MAC address.",
             "virtnet domiflist web")
    p.add_argument("name", metavar="NAME")
    p = verb("plan", "print the host actions `start` would take, without doing them",
             "Print what `virtnet start` would do on this host, without doing it.\n\n"
             "formats:\n"
             "  text      one action per line (setup, then teardown)\n"
             "  json      the same, machine-readable\n"
             "  sh        an ip(8) script for root that pre-creates the domain's taps, owned by\n"
             "            --owner, so an unprivileged user can run it with managed='no'\n"
             "  networkd  the same taps as systemd-networkd .netdev/.network files",
             "virtnet plan web",
             "virtnet plan --format sh --owner alice web.xml | sudo sh   # pre-create alice's taps")
    p.add_argument("target", metavar="NAME|FILE", help="a defined domain, or a domain XML file (- for stdin)")
    p.add_argument("--format", choices=("text", "json", "sh", "networkd"), default="text")
    p.add_argument("--owner", metavar="USER", help="owner of pre-created taps (default: $SUDO_USER or you)")
    p = verb("start", "start a defined domain under QEMU with the taps virtnet prepares",
             "Create or open the domain's taps, start QEMU paused with their descriptors, apply\n"
             "<link state='down'> over QMP, then run the vCPUs (unless --paused). Any failure rolls\n"
             "back everything already done; managed='no' taps are never changed. To start a domain\n"
             "from a file, `define` it first, or `create` it.",
             "virtnet start web --paused")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--paused", action="store_true", help="leave the vCPUs stopped (QEMU -S)")
    p.add_argument("--unprivileged", action="store_true",
                   help="create bridge taps through qemu-bridge-helper, as a user without CAP_NET_ADMIN "
                   "must (the default then)")
    p.add_argument("--bridge-helper", metavar="PATH",
                   help="the qemu-bridge-helper to run (default: the first found in /usr/lib/qemu, "
                   "/usr/libexec/qemu, /usr/libexec, /usr/local/libexec)")
    p.add_argument("--allow-dropped", action="store_true",
                   help="start even when elements holding the guest's data (disks, filesystems, host "
                   "devices) are not rendered on QEMU's command line; the guest runs without them")
    p = verb("destroy", "stop a running domain and remove what start created",
             "Stop domain NAME at once (QMP quit, then SIGTERM, then SIGKILL), like `virsh destroy`,\n"
             "and undo what start did: taps it created deleted, passt stopped, addresses and scripts\n"
             "undone, runtime files removed. managed='no' taps are left as they were. The definition\n"
             "is kept (a domain started by `create` is forgotten).",
             "virtnet destroy web")
    p.add_argument("name", metavar="NAME")


def _network_verbs(verbs):
    def verb(*args):
        return _verb(verbs, *args)

    p = verb("net-define", "store a virtual network definition (canonical form)",
             "Check FILE (libvirt's network XML) and store it as a defined network, like `virsh\n"
             "net-define`. A network that makes its own bridge and names none gets the first free\n"
             "virbrN. Redefining a network with the same name and uuid updates it (an active one at its\n"
             "next net-start); another network's uuid or bridge is refused.",
             "virtnet net-define default.xml && virtnet net-start default")
    _add_file(p)
    p = verb("net-undefine", "remove an inactive network's definition",
             "Forget the definition of network NAME (and its autostart mark), like `virsh\n"
             "net-undefine`. An active network is refused: net-destroy it first.",
             "virtnet net-destroy default; virtnet net-undefine default")
    p.add_argument("name", metavar="NAME")
    p = verb("net-start", "start a defined network: bridge, addresses, NAT, dnsmasq",
             "Create the network's bridge with its addresses and routes, enable IP forwarding (this\n"
             "network namespace's own sysctl) for nat and route modes, load its nftables table\n"
             "(inet virtnet-net-NAME) and start dnsmasq for DHCP and DNS, as libvirt's network driver\n"
             "does. Any failure undoes every step taken; a killed net-start is undone by the next\n"
             "command. With --autostart, every network marked by net-autostart that is not active is\n"
             "started instead (NAME omitted): what a boot-time unit runs.",
             "virtnet net-start default", "virtnet net-start --autostart   # at boot")
    p.add_argument("name", metavar="NAME", nargs="?")
    p.add_argument("--autostart", action="store_true", help="start the networks marked autostart")
    p = verb("net-destroy", "stop an active network and remove what net-start made",
             "Undo what net-start did for network NAME, like `virsh net-destroy`: dnsmasq stopped, the\n"
             "nftables table deleted, forwarding put back when no other network needs it, the bridge\n"
             "deleted, runtime files removed. The definition is kept.",
             "virtnet net-destroy default")
    p.add_argument("name", metavar="NAME")
    p = verb("net-list", "list networks: name, state, autostart, persistent",
             "List the active networks (with --all, the inactive ones too), like `virsh net-list`.",
             "virtnet net-list --all")
    p.add_argument("--all", action="store_true", help="include inactive networks")
    p = verb("net-dumpxml", "print a network's XML",
             "Print the stored XML of network NAME in libvirt's canonical form, like `virsh net-dumpxml`.",
             "virtnet net-dumpxml default > default.xml")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--inactive", action="store_true", help="accepted for virsh's sake: the same XML")
    p = verb("net-info", "print a network's name, uuid, state and bridge",
             "Print network NAME's name, uuid, whether it is active and autostarted, and its bridge,\n"
             "like `virsh net-info`.",
             "virtnet net-info default")
    p.add_argument("name", metavar="NAME")
    p = verb("net-autostart", "mark a network to be started at boot (or unmark it)",
             "Record that network NAME starts at boot (--disable: no longer), like `virsh\n"
             "net-autostart`. virtnet has no daemon: `virtnet net-start --autostart` starts the marked\n"
             "networks, e.g. from the systemd unit the README shows.",
             "virtnet net-autostart default")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--disable", action="store_true", help="do not start it at boot any more")
    p = verb("net-dhcp-leases", "list the DHCP leases of an active network",
             "Print the leases dnsmasq handed out on network NAME (its lease file), like `virsh\n"
             "net-dhcp-leases`: expiry time, MAC address, protocol, address and prefix, hostname.\n"
             "--mac keeps the leases of one MAC address.",
             "virtnet net-dhcp-leases default")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--mac", metavar="MAC", type=_mac_argument, help="only this MAC address's leases")


def _seconds(text):
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0 < value <= 86400:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of seconds between 0 and 86400")
    return value


SHUTDOWN_TIMEOUT = 60.0  # seconds; runner.DEFAULT_SHUTDOWN_TIMEOUT (not imported: every verb builds this)


def _add_name_and_timeout(p):
    """shutdown's and reboot's arguments: the domain, and how long the guest gets to power off."""
    p.add_argument("name", metavar="NAME")
    p.add_argument("--timeout", metavar="SECONDS", type=_seconds, default=SHUTDOWN_TIMEOUT,
                   help="how long to wait for the guest (default: %(default)g); a guest that has not "
                   "powered off by then is left running")


def _lifecycle_verbs(verbs):
    """create, shutdown, reboot, reset and console: virsh's lifecycle verbs."""
    def verb(*args):
        return _verb(verbs, *args)

    p = verb("create", "start a domain from a file without defining it (a transient domain)",
             "Start the domain in FILE as `start` would, without keeping its definition (like `virsh\n"
             "create`): it is listed, and its name, uuid, MACs and target devs are taken, while it\n"
             "runs; once it stops (destroy, shutdown, the guest powering off) it is forgotten. A domain\n"
             "of that name that is already defined is refused; `define` while it runs keeps it.",
             "virtnet create web.xml --paused")
    _add_file(p)
    p.add_argument("--paused", action="store_true", help="leave the vCPUs stopped (QEMU -S)")
    p.add_argument("--unprivileged", action="store_true",
                   help="create bridge taps through qemu-bridge-helper, as a user without CAP_NET_ADMIN "
                   "must (the default then)")
    p.add_argument("--bridge-helper", metavar="PATH", help="the qemu-bridge-helper to run (as for start)")
    p.add_argument("--allow-dropped", action="store_true",
                   help="start even when elements holding the guest's data are not rendered (as for start)")

    p = verb("shutdown", "ask the guest to power off (ACPI), wait, then clean up as destroy does",
             "Press the guest's ACPI power button (QMP system_powerdown) and wait for it to power off;\n"
             "then remove what start created, as destroy does (a domain started by `create` is\n"
             "forgotten). The guest needs ACPI (<features><acpi/></features>) and an operating\n"
             "system that acts on the button; one that does not is left running, with an error\n"
             "saying so: `virtnet destroy NAME` stops it at once.",
             "virtnet shutdown web --timeout 120")
    _add_name_and_timeout(p)

    p = verb("reboot", "reboot the guest cleanly: ACPI power-down, then reset and run again",
             "Reboot as `virsh reboot` does by default: press the guest's ACPI power button, wait for\n"
             "the guest to shut down cleanly, then reset the machine and run it again (QEMU is kept\n"
             "from exiting meanwhile). A guest that ignores the button keeps running as it was, with\n"
             "an error: `virtnet reset NAME` resets it without asking. A domain whose <on_reboot> is\n"
             "destroy is shut down instead, as libvirt does.",
             "virtnet reboot web")
    _add_name_and_timeout(p)

    p = verb("reset", "reset the machine at once, without asking the guest (like pressing reset)",
             "Reset the machine (QMP system_reset), as `virsh reset` does: the guest reboots without\n"
             "shutting down. A domain whose <on_reboot> is destroy stops instead, as its guest's own\n"
             "reboot would stop it, and is cleaned up as destroy does.",
             "virtnet reset web")
    p.add_argument("name", metavar="NAME")

    p = verb("console", "attach the terminal to the guest's serial console (Ctrl+] leaves)",
             "Connect to the guest's console, as `virsh console` does: the first serial port\n"
             "(<serial type='pty'>, or type='unix' with mode='bind'), else the first virtio console.\n"
             "Type Ctrl+] to leave. On a terminal, the terminal is in raw mode meanwhile, so Ctrl+C\n"
             "and the like reach the guest; from a pipe, the bytes are relayed as they are and the end\n"
             "of the input also ends the session. One session at a time.",
             "virtnet console web")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--devname", metavar="ALIAS",
                   help="the character device to attach to, by alias: serial0, serial1, console0, channel0, "
                   "a ua- alias (default: the first console)")


def _mac_argument(text):
    from virtnet.conf.mac import is_mac, normal

    if not is_mac(text):
        raise argparse.ArgumentTypeError(f"'{text}' is not a MAC address (six hex octets, e.g. 52:54:00:12:34:56)")
    return normal(text)


def _mtu_argument(text):
    if not text.isdigit() or not 68 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"'{text}' is not an MTU between 68 and 65535")
    return int(text)


UNPLUG_TIMEOUT = 10.0  # seconds; qemu.hotplug.DEFAULT_UNPLUG_TIMEOUT (not imported: every verb builds this)
ATTACH_TYPES = ("bridge", "network", "direct", "ethernet", "user", "server", "client", "mcast", "udp", "vhostuser")


def _device_verbs(verbs):
    """attach-device, attach-interface, detach-device, detach-interface, suspend and resume."""
    def verb(*args):
        return _verb(verbs, *args, domain=True)

    def scope_options(p, persistent):
        p.add_argument("--live", action="store_true", help="change the running guest")
        p.add_argument("--config", action="store_true", help="change the stored definition (used from the next start)")
        p.add_argument("--current", action="store_true",
                       help="the running guest when the domain runs, else its definition (the default)")
        if persistent:
            p.add_argument("--persistent", action="store_true",
                           help="the definition, and the running guest too when the domain runs")

    scopes = ("\n\n--live changes the running guest (its live XML: dumpxml, domiflist), --config the stored\n"
              "definition, both when both are given; without either, the running guest when the domain\n"
              "runs, else its definition (virsh's rules).")
    host = ("The host side is what start does for the interface (taps, bridges, the bridge helper\n"
            "when unprivileged, passt); its descriptors go to QEMU over QMP (getfd, netdev_add,\n"
            "device_add). If any step fails, QEMU refusing the device included, all of it is undone.\n"
            "The NIC gets the next alias (net1, net2, ...) and a free hot-pluggable PCI slot: an empty\n"
            "pcie-root-port on q35 (libvirt leaves one spare), a free slot of pci.0 on pc.")
    p = verb("attach-device", "add the <interface> in FILE to a domain (running, defined, or both)",
             "Add the device in FILE (an <interface> element, checked as part of the domain) to domain\n"
             "NAME.\n\n" + host + scopes, "virtnet attach-device web nic.xml --live --config")
    p.add_argument("file", metavar="FILE", help="an <interface> element, or - for standard input")
    scope_options(p, persistent=True)
    _attach_options(p)

    p = verb("attach-interface", "add a NIC described by arguments (virsh attach-interface)",
             "Add an interface of TYPE to domain NAME, as `virsh attach-interface` does: SOURCE is the\n"
             "bridge (bridge), the network (network), the host device (direct), the socket path\n"
             "(vhostuser) or ADDRESS:PORT (server, client, mcast, udp); ethernet and user take none.\n"
             "--print-xml prints the <interface> it would add and changes nothing.\n\n" + host + scopes,
             "virtnet attach-interface web bridge br0 --model virtio --live")
    p.add_argument("type", metavar="TYPE", choices=ATTACH_TYPES, help=f"one of: {', '.join(ATTACH_TYPES)}")
    p.add_argument("source", metavar="SOURCE", nargs="?", help="what the interface connects to (see above)")
    p.add_argument("--target", metavar="DEV", help="the host tap's name (a %%d template is filled in)")
    p.add_argument("--unmanaged", action="store_true",
                   help="ethernet: the --target tap exists already; use it as it is (managed='no')")
    p.add_argument("--mac", metavar="MAC", type=_mac_argument, help="the guest's MAC (default: a new one)")
    p.add_argument("--model", metavar="MODEL", help="the NIC model, e.g. virtio, e1000e, rtl8139")
    p.add_argument("--mtu", metavar="BYTES", type=_mtu_argument, help="the MTU of the guest and of the host tap")
    p.add_argument("--script", metavar="PATH", help="ethernet: a script run with the tap's name")
    p.add_argument("--alias", metavar="ALIAS", help="a user alias (ua-...) as the device's id")
    p.add_argument("--source-mode", metavar="MODE",
                   help="direct: vepa, bridge, private or passthrough; vhostuser: client or server")
    p.add_argument("--print-xml", action="store_true", help="print the <interface> element; change nothing")
    scope_options(p, persistent=True)
    _attach_options(p)

    unplug = (" The guest is asked to release the device (QMP\n"
              "device_del) and given --timeout seconds; then its backend and host side (taps virtnet\n"
              "created, passt, downscripts) go. A guest that does not release it in time (paused, or\n"
              "without PCI hot-unplug support) keeps it, and the error says so.")
    p = verb("detach-device", "remove the <interface> FILE names from a domain",
             "Remove from domain NAME the interface that FILE's <interface> names: by its <mac>, <alias>\n"
             "and <address>, whichever it has (libvirt's rule)." + unplug + scopes,
             "virtnet detach-device web nic.xml --live")
    p.add_argument("file", metavar="FILE", help="an <interface> element, or - for standard input")
    scope_options(p, persistent=True)
    p.add_argument("--timeout", metavar="SECONDS", type=_seconds, default=UNPLUG_TIMEOUT,
                   help="how long the guest gets to release the device (default: %(default)g)")

    p = verb("detach-interface", "remove a NIC by type (and MAC) from a domain (virsh detach-interface)",
             "Remove the interface of TYPE from domain NAME; --mac chooses one when there are several\n"
             "(virsh's rule)." + unplug + scopes,
             "virtnet detach-interface web bridge --mac 52:54:00:12:34:56 --live")
    p.add_argument("type", metavar="TYPE", choices=ATTACH_TYPES, help=f"one of: {', '.join(ATTACH_TYPES)}")
    p.add_argument("--mac", metavar="MAC", type=_mac_argument, help="the interface's MAC address")
    scope_options(p, persistent=True)
    p.add_argument("--timeout", metavar="SECONDS", type=_seconds, default=UNPLUG_TIMEOUT,
                   help="how long the guest gets to release the device (default: %(default)g)")

    verb("suspend", "stop the guest's vCPUs (QMP stop); resume runs them again",
         "Pause domain NAME, as `virsh suspend` does: its vCPUs stop, its devices and memory stay.",
         "virtnet suspend web")
    verb("resume", "run a suspended (or `start --paused`) guest's vCPUs again (QMP cont)",
         "Run domain NAME's vCPUs again, as `virsh resume` does.", "virtnet resume web")


def _attach_options(p):
    p.add_argument("--unprivileged", action="store_true",
                   help="create a bridge tap through qemu-bridge-helper (as for start)")
    p.add_argument("--bridge-helper", metavar="PATH", help="the qemu-bridge-helper to run (as for start)")


def _tuning_verbs(verbs):
    """domiftune: an interface's <bandwidth>, as virsh's verb."""
    p = verbs.add_parser(
        "domiftune", help="print or change an interface's bandwidth limits (virsh domiftune)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Without --inbound/--outbound, print the <bandwidth> of interface IFACE of domain NAME as\n"
        "`virsh domiftune` does (inbound.average, .peak, .burst, .floor, outbound.average, .peak, .burst;\n"
        "0 when unset). With them, change it: rates in kilobytes/s, burst in KiB, as in the XML.\n"
        "A running guest's tap gets its tc setup replaced at once (--live), the stored definition\n"
        "the new <bandwidth> (--config); with neither, the running guest when it runs, else the\n"
        "definition. An average of 0 removes that direction's limit.",
        epilog=_example("virtnet domiftune web vnet0 --inbound 1000,2000,64 --outbound 500"))
    p.add_argument("name", metavar="NAME")
    p.add_argument("interface", metavar="IFACE",
                   help="the interface: its target dev (the tap, as domiflist shows it) or its MAC address")
    p.add_argument("--inbound", metavar="AVERAGE[,PEAK[,BURST[,FLOOR]]]",
                   help="the limit of what the guest receives (floor only on type='network', as in libvirt)")
    p.add_argument("--outbound", metavar="AVERAGE[,PEAK[,BURST]]", help="the limit of what the guest sends")
    p.add_argument("--live", action="store_true", help="change the running guest")
    p.add_argument("--config", action="store_true", help="change the stored definition (also: read it)")
    p.add_argument("--current", action="store_true", help="the running guest when it runs, else the definition")
    _common(p)


def _interface_verbs(verbs):
    """domif-setlink, domif-getlink, domifstat and domifaddr: virsh's verbs for a running guest's NICs."""
    def verb(*args):
        return _verb(verbs, *args, domain=True)

    iface_help = "the interface: its target dev (the tap, as domiflist shows it) or its MAC address"
    config_help = "the stored definition, even while the domain runs (--persistent is the same)"
    p = verb("domif-setlink", "set the link of a guest's interface up or down (virsh domif-setlink)",
             "Set the link of interface IFACE of domain NAME up or down, as `virsh domif-setlink` does.\n"
             "While it runs: QMP set_link on its netdev (down, the guest sees no carrier and no packet\n"
             "passes either way), and the live XML (dumpxml) shows <link state='down'/> or\n"
             "<link state='up'/>; the stored definition is not changed. With --config, or when the\n"
             "domain is not running, the stored definition is changed instead (from its next start).",
             "virtnet domif-setlink web vnet0 down")
    p.add_argument("interface", metavar="IFACE", help=iface_help)
    p.add_argument("state", metavar="STATE", choices=("up", "down"), help="up or down")
    p.add_argument("--config", "--persistent", action="store_true", help=config_help)

    p = verb("domif-getlink", "print the link state of a domain's interface (virsh domif-getlink)",
             "Print `IFACE up` or `IFACE down`, as `virsh domif-getlink` does: from the live XML while\n"
             "the domain runs, else (or with --config) from its stored definition.",
             "virtnet domif-getlink web 52:54:00:12:34:56")
    p.add_argument("interface", metavar="IFACE", help=iface_help)
    p.add_argument("--config", "--persistent", action="store_true", help=config_help)

    p = verb("domifstat", "print a running guest's interface counters (virsh domifstat)",
             "Print the counters of interface IFACE of running domain NAME as `virsh domifstat` does\n"
             "(`IFACE rx_bytes N`, rx_packets, rx_errs, rx_drop, then tx_...), from the guest's side:\n"
             "the host tap's counters read over netlink, its receive side as the guest's transmit side.\n"
             "Interfaces without a host tap (user, sockets, vhost-user) have none to read.",
             "virtnet domifstat web vnet0")
    p.add_argument("interface", metavar="IFACE", help=iface_help)

    p = verb("domifaddr", "print a running guest's addresses (virsh domifaddr)",
             "Print the addresses of running domain NAME in `virsh domifaddr`'s table, from --source:\n"
             "  lease  the DHCP leases of a virtnet network (none yet: refused, naming the others)\n"
             "  agent  the QEMU guest agent in the guest, over the domain's <channel type='unix'> with\n"
             "         <target type='virtio' name='org.qemu.guest_agent.0'/>: the guest's own names\n"
             "  arp    the host's neighbour table: IPv4 addresses seen with each interface's MAC",
             "virtnet domifaddr web --source agent")
    p.add_argument("--source", choices=("lease", "agent", "arp"), default="lease",
                   help="where the addresses come from (default: %(default)s, as in virsh)")
    p.add_argument("--interface", metavar="IFACE",
                   help="only this interface, by the name the table shows (the guest's name with agent, the "
                   "tap with arp)")
    p.add_argument("--full", action="store_true", help="repeat the name and MAC on every address line")


def _version():
    from virtnet import __version__

    return __version__


def cmd_validate(args):
    from virtnet import convert
    from virtnet.runpaths import default_runtime_dir

    loaded = convert.load(args.file)
    _print_diagnostics(convert.diagnostics(loaded))
    # What xml2argv and start refuse while building the command line is invalid here too.
    convert.check(loaded, runtime_dir=args.runtime_dir or default_runtime_dir())
    return 0


def cmd_xml2xml(args):
    from virtnet import convert

    loaded = convert.load(args.file)
    _print_diagnostics(convert.diagnostics(loaded))
    result = convert.xml2xml(loaded)
    _print_diagnostics(result.warnings)
    sys.stdout.write(result.text)
    return 0


def _print_diagnostics(diagnostics):
    for diagnostic in diagnostics:
        print(f"{PROG}: warning: {diagnostic}", file=sys.stderr)


HOST_CAPS = ("vhost-net", "tc-ifb", "tc-police", "tc-sfq")


def parse_host_caps(text):
    if text == "auto":
        from virtnet.hostcaps import probe

        return probe()
    if text == "none":
        return frozenset()
    caps = frozenset(c.strip() for c in text.split(",") if c.strip())
    unknown = caps - set(HOST_CAPS)
    if unknown:
        raise UsageError(f"--host-caps: unknown capability '{sorted(unknown)[0]}'; accepted: auto, none, "
                         + ", ".join(HOST_CAPS))
    return caps


def _expand_files(files):
    """Directories stand for the *.xml files inside them, sorted."""
    out = []
    for f in files:
        if f != "-" and os.path.isdir(f):
            found = sorted(os.path.join(f, n) for n in os.listdir(f) if n.endswith(".xml"))
            if not found:
                raise UsageError(f"{f}: the directory holds no *.xml domain files")
            out += found
        else:
            out.append(f)
    return out


def cmd_xml2argv(args):
    from pathlib import Path

    from virtnet import convert
    from virtnet.runpaths import default_runtime_dir, default_state_dir

    caps = parse_host_caps(args.host_caps)
    runtime_dir = Path(args.runtime_dir) if args.runtime_dir else default_runtime_dir()
    state_dir = Path(args.state_dir) if args.state_dir else default_state_dir()  # a UEFI guest's NVRAM, as start
    files = _expand_files(args.file)
    out = []
    for path, loaded in convert.load_many(files):
        if isinstance(loaded, VirtnetError):
            raise loaded  # as loading the files one by one would: the first refused file stops the verb
        _print_diagnostics(convert.diagnostics(loaded))
        helper = args.bridge_helper
        if args.standalone and helper is None and any(i.type == "bridge" for i in loaded.domain.interfaces):
            from virtnet.host.bridgehelper import find_helper  # the line names the helper QEMU runs

            helper = find_helper()
        result = convert.xml2argv(loaded, runtime_dir=runtime_dir, host_caps=caps, syntax=args.syntax,
                                  standalone=args.standalone, network_only=args.network_only,
                                  bridge_helper=helper, state_dir=state_dir)
        _print_diagnostics(result.warnings)
        if len(files) > 1:
            out.append(f"# {path}\n")
        out.append(result.text)
    sys.stdout.write("".join(out))
    return 0


def _store(args):
    from pathlib import Path

    from virtnet.domains import open_store

    return open_store(Path(args.state_dir) if args.state_dir else None,
                      Path(args.runtime_dir) if args.runtime_dir else None)


def cmd_define(args):
    from virtnet import convert, domains

    loaded = convert.load(args.file)
    _print_diagnostics(convert.diagnostics(loaded))
    store = _store(args)
    new = domains.define(store, loaded)
    _print_diagnostics(domains.start_refusals(loaded, store.runtime_dir) + domains.unknown_networks(store, loaded))
    print(f"Domain '{loaded.domain.name}' {'defined' if new else 'updated'} from {loaded.filename}")
    return 0


def cmd_undefine(args):
    from virtnet import domains, runner

    store = _store(args)
    with store.lock():
        # A domain whose QEMU died is not running any more; a damaged record of another domain is
        # skipped with a warning.
        runner.reap_dead(store)
        domains.undefine(store, args.name, nvram=args.nvram)
    print(f"Domain '{args.name}' has been undefined")
    return 0


def cmd_list(args):
    from virtnet import domains, runner

    store = _store(args)
    running = set(store.running_names())
    if running or store.has_runtime_temporaries():
        with store.lock():
            # It warns about each damaged record and skips it: that domain is shown from its
            # definition alone (shut off), as libvirt shows one whose status file it cannot read.
            damaged = runner.reap_dead(store)
        running = set(store.running_names()) - set(damaged)
    summaries, problems = store.listing()
    for _, warning, _ in problems:  # definitions skipped, or listed under their file's name
        print(f"{PROG}: warning: {warning}", file=sys.stderr)
    rows = []
    for name, summary in sorted(summaries.items()):
        state = "running" if name in running else "shut off"
        if state == "running" or args.all:
            types = summary.get("interfaces", [])
            rows.append((name, state, f"{len(types)}: {', '.join(types)}" if types else "0"))
    sys.stdout.write(domains.table(("Name", "State", "Interfaces"), rows))
    return 0


def _live_xml(store, name):
    """The live XML of a running domain (its aliases and the taps in use), else None. A domain
    whose QEMU died is cleaned up first."""
    from virtnet import livestate, runner

    if runner.running_state(store, name) is None:
        return None
    return livestate.live_xml(store, name)


def cmd_dumpxml(args):
    store = _store(args)
    text = None if args.inactive else _live_xml(store, args.name)
    sys.stdout.write(text if text is not None else store.read_domain(args.name))
    return 0


def cmd_domiflist(args):
    from virtnet import domains
    from virtnet.conf.load import load_live

    store = _store(args)
    text = _live_xml(store, args.name)
    if text is not None:
        domain = load_live(text, f"{store.running_dir}/{args.name}.xml").domain
    else:
        domain = domains.load_defined(store, args.name).domain
    rows = domains.interface_rows(domain)
    sys.stdout.write(domains.table(("Interface", "Type", "Source", "Model", "MAC"), rows))
    return 0


def _default_owner():
    import getpass

    return os.environ.get("SUDO_USER") or getpass.getuser()


def cmd_plan(args):
    from pathlib import Path

    from virtnet import convert, domains
    from virtnet.host.bridgehelper import helper_for
    from virtnet.hostcaps import probe
    from virtnet.runpaths import default_runtime_dir

    target = args.target
    if target == "-" or os.path.exists(target) or target.endswith(".xml"):
        loaded = convert.load(target)
    else:
        loaded = domains.load_defined(_store(args), target)
    _print_diagnostics(convert.diagnostics(loaded))
    names = set()
    if args.format in ("text", "json"):
        from virtnet.host.netlink import Netlink  # existing names decide vnetN and collisions

        with Netlink() as nl:
            names = nl.link_names()
    try:
        helper = helper_for(loaded.domain)
        from virtnet.network import ports

        ports.attach(_store(args), loaded.domain)  # type='network': the active network's bridge, as start
    except VirtnetError as e:
        raise e.located(loaded.filename) from None
    result = convert.plan(loaded, args.format, names_in_use=names, host_caps=probe(tc=True), bridge_helper=helper,
                          runtime_dir=Path(args.runtime_dir) if args.runtime_dir else default_runtime_dir(),
                          owner=args.owner or _default_owner())
    _print_diagnostics(result.warnings)
    sys.stdout.write(result.text)
    return 0


def cmd_start(args):
    from virtnet import domains, runner

    store = _store(args)
    domains.refuse_file_as_name(store, "start", args.name)
    state = runner.start(store, args.name, paused=args.paused, netns_name=_netns_name(args),
                         unprivileged=args.unprivileged, bridge_helper=args.bridge_helper,
                         allow_dropped=args.allow_dropped)
    taps = ", ".join(state.taps.values()) or "no taps"
    print(f"Domain '{args.name}' started{' (paused)' if args.paused else ''}: QEMU pid {state.pid}, {taps}")
    return 0


def _domain_action(action, done):
    """A verb that runs runner.ACTION(store, NAME) and says the domain was DONE."""
    def command(args):
        from virtnet import runner

        getattr(runner, action)(_store(args), args.name)
        print(f"Domain '{args.name}' {done}")
        return 0
    return command


cmd_destroy = _domain_action("destroy", "destroyed")
cmd_suspend = _domain_action("suspend", "suspended")
cmd_resume = _domain_action("resume", "resumed")


def cmd_create(args):
    from virtnet import convert, runner

    loaded = convert.load(args.file)
    _print_diagnostics(convert.diagnostics(loaded))
    state = runner.create(_store(args), loaded, paused=args.paused, netns_name=_netns_name(args),
                          unprivileged=args.unprivileged, bridge_helper=args.bridge_helper,
                          allow_dropped=args.allow_dropped)
    taps = ", ".join(state.taps.values()) or "no taps"
    print(f"Domain '{loaded.domain.name}' created from {loaded.filename}{' (paused)' if args.paused else ''}: "
          f"QEMU pid {state.pid}, {taps}")
    return 0


def cmd_shutdown(args):
    from virtnet import runner

    runner.shutdown(_store(args), args.name, timeout=args.timeout)
    print(f"Domain '{args.name}' has been shut down")
    return 0


def cmd_reboot(args):
    from virtnet import runner

    if runner.reboot(_store(args), args.name, timeout=args.timeout) == "shut down":
        print(f"Domain '{args.name}' has been shut down: its <on_reboot> is destroy")
    else:
        print(f"Domain '{args.name}' is being rebooted")
    return 0


def cmd_reset(args):
    from virtnet import runner

    if runner.reset(_store(args), args.name) == "shut down":
        print(f"Domain '{args.name}' has been shut down: its <on_reboot> is destroy")
    else:
        print(f"Domain '{args.name}' was reset")
    return 0


def cmd_console(args):
    from virtnet import console

    return console.attach(_store(args), args.name, args.devname)


def _scope(args, store):
    from virtnet import hotplug

    return hotplug.scope(store, args.name, live=args.live, config=args.config, current=args.current,
                         persistent=getattr(args, "persistent", False))


def _attach(args, element, filename, what):
    from virtnet import hotplug

    store = _store(args)
    live, config = _scope(args, store)
    warnings = hotplug.attach(store, args.name, element, filename, live=live, config=config,
                              unprivileged=args.unprivileged, bridge_helper=args.bridge_helper)
    for message in warnings:
        print(f"{PROG}: warning: {message}", file=sys.stderr)
    print(f"{what} attached successfully")
    return 0


def cmd_attach_device(args):
    from virtnet.conf.fragment import parse_device

    filename, element = parse_device(args.file)
    return _attach(args, element, filename, "Device")


def cmd_attach_interface(args):
    from virtnet.conf.fragment import interface_from_options

    try:
        element = interface_from_options(args.type, args.source, target=args.target, unmanaged=args.unmanaged,
                                         mac=args.mac, model=args.model, mtu=args.mtu, script=args.script,
                                         alias=args.alias, source_mode=args.source_mode)
    except ValueError as e:  # lxml refuses characters XML cannot hold
        raise UsageError(f"an argument cannot go into XML: {e}") from None
    if args.print_xml:
        from lxml import etree

        sys.stdout.write(etree.tostring(element, pretty_print=True, encoding="unicode"))
        return 0
    return _attach(args, element, "attach-interface", "Interface")


def cmd_detach_device(args):
    from virtnet import hotplug
    from virtnet.conf.fragment import parse_device

    filename, element = parse_device(args.file)
    store = _store(args)
    live, config = _scope(args, store)
    hotplug.detach(store, args.name, hotplug.by_element(element, filename), live=live, config=config,
                   timeout=args.timeout)
    print("Device detached successfully")
    return 0


def cmd_detach_interface(args):
    from virtnet import hotplug

    store = _store(args)
    live, config = _scope(args, store)
    hotplug.detach(store, args.name, hotplug.by_type(args.type, args.mac), live=live, config=config,
                   timeout=args.timeout)
    print("Interface detached successfully")
    return 0


def cmd_domif_setlink(args):
    from virtnet import liveif

    liveif.set_link(_store(args), args.name, args.interface, args.state == "up", config=args.config)
    print("Device updated successfully")
    return 0


def cmd_domif_getlink(args):
    from virtnet import liveif

    print(f"{args.interface} {liveif.get_link(_store(args), args.name, args.interface, config=args.config)}")
    return 0


def cmd_domifstat(args):
    from virtnet import liveif

    for field, value in liveif.interface_stats(_store(args), args.name, args.interface):
        print(f"{args.interface} {field} {value}")
    return 0


def cmd_domiftune(args):
    from virtnet import iftune

    store = _store(args)
    changes = {}
    for option, value in (("--inbound", args.inbound), ("--outbound", args.outbound)):
        if value is not None:
            changes[option[2:]] = iftune.parse_rates(value, option)
    if not changes:
        sys.stdout.write(iftune.current(store, args.name, args.interface, config=args.config))
        return 0
    live, config = _scope(args, store)
    iftune.tune(store, args.name, args.interface, changes, live=live, config=config)
    return 0


def cmd_domifaddr(args):
    from virtnet import ifaddr

    found = ifaddr.addresses(_store(args), args.name, args.source)
    sys.stdout.write(ifaddr.table(found, only=args.interface, full=args.full))
    return 0


def cmd_golden(args):
    from virtnet import golden

    caps = parse_host_caps(args.host_caps)  # refuse unknown capabilities before running any case
    return golden.main(args.action, args.dir, host_caps=caps, runtime_dir=args.runtime_dir)


def cmd_net_define(args):
    from virtnet.host.netlink import Netlink
    from virtnet.network import defs
    from virtnet.network.load import load_file

    loaded = load_file(args.file)
    try:
        with Netlink() as nl:
            in_use = nl.link_names()
    except VirtnetError:
        in_use = set()
    new = defs.define(_store(args), loaded, in_use)
    print(f"Network '{loaded.network.name}' {'defined' if new else 'updated'} from {loaded.filename}")
    return 0


def cmd_net_undefine(args):
    from virtnet.network import defs

    defs.undefine(_store(args), args.name)
    print(f"Network '{args.name}' has been undefined")
    return 0


def cmd_net_start(args):
    from virtnet.network import runner

    store = _store(args)
    if args.autostart:
        if args.name:
            raise UsageError("net-start takes NAME or --autostart, not both")
        for name in runner.autostart(store, _netns_name(args)):
            print(f"Network '{name}' started")
        return 0
    if not args.name:
        raise UsageError("net-start needs a network's NAME (or --autostart)")
    network = runner.start(store, args.name, _netns_name(args))
    print(f"Network '{args.name}' started" + (f": bridge {network.bridge_name}" if network.bridge_name else ""))
    return 0


def cmd_net_destroy(args):
    from virtnet.network import runner

    runner.destroy(_store(args), args.name)
    print(f"Network '{args.name}' destroyed")
    return 0


def cmd_net_list(args):
    from virtnet.domains import table
    from virtnet.network import defs

    rows = defs.list_rows(_store(args), args.all)
    sys.stdout.write(table(("Name", "State", "Autostart", "Persistent"), rows))
    return 0


def cmd_net_dumpxml(args):
    from virtnet.network import defs

    sys.stdout.write(defs.files(_store(args)).read(args.name))
    return 0


def cmd_net_info(args):
    from virtnet.network import defs

    sys.stdout.write(defs.info(_store(args), args.name))
    return 0


def cmd_net_autostart(args):
    from virtnet.network import defs

    defs.set_autostart(_store(args), args.name, not args.disable)
    print(f"Network '{args.name}' {'unmarked as' if args.disable else 'marked as'} autostarted")
    return 0


def cmd_net_dhcp_leases(args):
    from virtnet.network import leases

    found = leases.of_network(_store(args), args.name, mac=args.mac)
    sys.stdout.write(leases.table(found))
    return 0


def _netns_name(args):
    """The namespace we run in: --netns, or the one `ip netns exec` put us in (None for the host's)."""
    if args.netns:
        return args.netns
    from virtnet.host import netns

    return netns.current_name()


COMMANDS = {"validate": cmd_validate, "xml2xml": cmd_xml2xml, "xml2argv": cmd_xml2argv,
            "define": cmd_define, "undefine": cmd_undefine, "list": cmd_list, "dumpxml": cmd_dumpxml,
            "domiflist": cmd_domiflist, "plan": cmd_plan, "start": cmd_start, "destroy": cmd_destroy,
            "golden": cmd_golden, "create": cmd_create, "shutdown": cmd_shutdown, "reboot": cmd_reboot,
            "reset": cmd_reset, "console": cmd_console, "domif-setlink": cmd_domif_setlink,
            "domif-getlink": cmd_domif_getlink, "domifstat": cmd_domifstat, "domifaddr": cmd_domifaddr,
            "domiftune": cmd_domiftune,
            "attach-device": cmd_attach_device,
            "attach-interface": cmd_attach_interface, "detach-device": cmd_detach_device,
            "detach-interface": cmd_detach_interface, "suspend": cmd_suspend, "resume": cmd_resume,
            "net-define": cmd_net_define, "net-undefine": cmd_net_undefine, "net-start": cmd_net_start,
            "net-destroy": cmd_net_destroy, "net-list": cmd_net_list, "net-dumpxml": cmd_net_dumpxml,
            "net-info": cmd_net_info, "net-autostart": cmd_net_autostart, "net-dhcp-leases": cmd_net_dhcp_leases}


_PARSER_CLASS = []


def _parser_class():
    """argparse makes a help formatter at every add_argument, and each asks shutil (a 2 ms import
    of bz2, lzma and zlib) for the terminal width; this parser works the width out as shutil does."""
    if not _PARSER_CLASS:
        class Parser(argparse.ArgumentParser):
            def _get_formatter(self):
                return self.formatter_class(prog=self.prog, width=_terminal_columns() - 2)  # as argparse does

            def _check_value(self, action, value):
                # argparse lists every choice; a near miss (`lst`, --format jsn) gets the one meant.
                if action.choices is not None and isinstance(value, str) and value not in action.choices:
                    from virtnet.suggest import closest

                    close = closest(value, action.choices)
                    if close:
                        raise argparse.ArgumentError(action, f"invalid choice: '{value}' (did you mean '{close}'?)")
                super()._check_value(action, value)

        _PARSER_CLASS.append(Parser)
    return _PARSER_CLASS[0]


def _terminal_columns():
    """shutil.get_terminal_size().columns: $COLUMNS, else the terminal's width, else 80."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
        columns = columns or 80
    return columns


class _OneVerb:
    """Stands in for the sub-parsers action while build_parser builds one verb: the other verbs'
    sub-parsers are not built (their add_argument calls go nowhere)."""

    def __init__(self, verbs, verb):
        self.verbs, self.verb = verbs, verb

    def add_parser(self, name, **kwargs):
        return self.verbs.add_parser(name, **kwargs) if name == self.verb else _NoParser()


class _NoParser:
    def add_argument(self, *args, **kwargs):
        pass

    def add_mutually_exclusive_group(self, *args, **kwargs):
        return self


_VALUE_OPTIONS = ("--state-dir", "--runtime-dir", "--netns")  # the global options that take a value


def _verb_of(argv):
    """The verb ARGV runs, when that is certain without parsing (the options before it are spelled
    out in full); None otherwise, and build_parser then builds every verb."""
    tokens = iter(argv)
    for token in tokens:
        if token in _VALUE_OPTIONS:
            next(tokens, None)
        elif token != "--debug" and not token.startswith(tuple(o + "=" for o in _VALUE_OPTIONS)):
            return token if token in COMMANDS else None
    return None


def _dest(flag):
    return flag[2:].replace("-", "_")


# The verbs _quick_args parses: (their own options, whether FILE takes several).
_QUICK_VERBS = {"validate": ((), False), "xml2xml": ((), False), "xml2argv": (XML2ARGV_OPTIONS, True)}


def _quick_args(argv):
    """The namespace argparse makes of a plain command line of validate, xml2xml or xml2argv,
    without argparse: options spelled out in full with their value as the next word, files in one
    run. Anything else (help, --version, abbreviations, --opt=value, '--', a mistake) gives None,
    and argparse parses it, with its messages."""
    from types import SimpleNamespace

    values = {_dest(flag): keywords["default"] for flag, keywords in COMMON_OPTIONS}
    options = dict(COMMON_OPTIONS)
    verb, files, several, files_ended = None, [], False, False
    tokens = iter(argv)
    for token in tokens:
        if verb is None and token in _QUICK_VERBS:
            verb = token
            own, several = _QUICK_VERBS[verb]
            options.update(own)
            for flag, keywords in own:
                values[_dest(flag)] = keywords.get("default", False if keywords.get("action") == "store_true" else None)
        elif verb is not None and (token == "-" or not token.startswith("-")):
            if files_ended:
                return None  # argparse refuses files on both sides of an option
            files.append(token)
        elif token in options:
            files_ended = bool(files)
            keywords = options[token]
            if keywords.get("action") == "store_true":
                values[_dest(token)] = True
                continue
            value = next(tokens, None)
            if value is None or value.startswith("-") or value not in keywords.get("choices", (value,)):
                return None
            values[_dest(token)] = value
        else:
            return None
    if verb is None or not files or (len(files) > 1 and not several):
        return None
    return SimpleNamespace(**values, verb=verb, file=files if several else files[0])


def main(argv=None):
    """Run the command line ARGV (default: the process's own, which ends with the verb)."""
    whole_process = argv is None
    argv = sys.argv[1:] if argv is None else argv
    args = _quick_args(argv)
    if args is None:
        parser = build_parser(_verb_of(argv))
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:
            return e.code
    if args.verb in _QUICK_VERBS and gc.isenabled():
        # The conversion verbs run without the cycle collector. What they make is freed as its last
        # reference goes (a conversion leaves no cycle: tests/test_cli.py), while the
        # collector's passes over what start-up makes to keep (modules, classes, lxml's) find
        # nothing: ~9 M instructions of a one-file xml2argv's ~245 M, and ~25 K per domain of a
        # batch. A process that ends with the verb then freezes what is left, which the
        # interpreter's exit would otherwise walk once more (another ~16 M).
        gc.disable()
        try:
            return _run(args)
        finally:
            if whole_process:
                gc.freeze()
            else:
                gc.enable()
    return _run(args)


def _run(args):
    """The verb ARGS names, its errors printed as one line each (with --debug: raised)."""
    try:
        if args.netns:
            from virtnet.host import netns

            netns.enter(args.netns)
        return COMMANDS[args.verb](args)
    except VirtnetError as e:
        if args.debug:
            raise
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:
        return 1
    except OSError as e:
        # A file-system failure that no module turned into a VirtnetError: still one line, no traceback.
        if args.debug:
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"{PROG}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
