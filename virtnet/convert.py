"""The conversions behind `xml2xml`, `xml2argv` and `plan`: a loaded domain in, text out. And
`check`, which `validate` and `plan` run: it raises what building QEMU's command line would
refuse, and returns nothing.

The CLI prints what the conversions return; `virtnet golden` and the golden tests compare it
with expectation files. Nothing here prints, probes the host or reads the store: warnings come
back as data, and what a conversion needs to know about the host (capabilities, names in use,
the bridge helper, the runtime directory) is an argument. Errors are raised as VirtnetError,
located in the domain's file.

Imports stay lazy, as in the CLI: xml2xml and xml2argv load neither pyroute2 nor jinja2
(only plan's sh and networkd formats use jinja2), and xml2xml not QEMU's side either.
"""

from virtnet.errors import VirtnetError
from virtnet.lazy import LazyModule
from virtnet.record import Record
from virtnet.runpaths import DomainPaths

PLAN_FORMATS = ("text", "json", "sh", "networkd")


# Imported at their first use: xml2xml never loads QEMU's side, and a batch's conversions import
# nothing per domain.
qemu_argv = LazyModule(globals(), "qemu_argv", "virtnet.qemu.argv")
qemu_render = LazyModule(globals(), "qemu_render", "virtnet.qemu.render")


class Diagnostic(Record):
    """A warning about a domain file; str() is 'FILE:LINE: MESSAGE' (or 'FILE: MESSAGE')."""

    __slots__ = ("file", "line", "message")

    def __init__(self, file, line, message):
        self.file = file
        self.line = line
        self.message = message

    def __str__(self):
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.message}"


class Result(Record):
    __slots__ = ("text", "warnings")

    def __init__(self, text, warnings=None):
        self.text = text  # exactly what the verb prints on standard output
        self.warnings = [] if warnings is None else warnings  # Diagnostics the verb prints on standard error


def load(path):
    """Read and check a domain file ('-' for standard input): a conf.load.Loaded.

    Its warnings (what the defaults step changed or dropped) are diagnostics(loaded).
    """
    from virtnet.conf.load import load_file

    return load_file(path)


def load_many(paths):
    """Read and check many domain files, in order: yields (path, Loaded), or (path, VirtnetError)
    for a file load() refuses. Faster than load() file after file for a batch (conf.load.load_files)."""
    from virtnet.conf.load import load_files

    return load_files(paths)


def diagnostics(loaded):
    """The load-time warnings of LOADED as Diagnostics."""
    return [Diagnostic(loaded.filename, line, message) for line, message in loaded.warnings]


def xml2xml(loaded):
    """The canonical XML of a loaded domain (what `define` stores)."""
    from virtnet.conf.format import format_domain

    return Result(format_domain(loaded.domain))


def xml2argv(loaded, *, runtime_dir, host_caps=frozenset(), syntax="json", standalone=False,
             network_only=False, bridge_helper=None, state_dir=None):
    """The QEMU command line of one domain, as `virtnet xml2argv` prints it for one file.

    With STANDALONE the `# run first: …` passt lines come first. BRIDGE_HELPER is the helper path
    a standalone line names for bridges; the caller finds it (virtnet.host.bridgehelper.find_helper),
    since this function does not look at the host. STATE_DIR is where a UEFI guest's NVRAM lives
    (default: /var/lib/virtnet, root's). QEMU's environment (<qemu:env>, a clock's TZ) comes first,
    as NAME=VALUE lines the shell takes as the command's environment.
    """
    domain, filename = loaded.domain, loaded.filename
    paths = DomainPaths(runtime_dir, domain.name)
    options = qemu_argv.ArgvOptions(syntax=syntax, standalone=standalone, network_only=network_only,
                                    host_caps=frozenset(host_caps), bridge_helper=bridge_helper,
                                    state_dir=str(state_dir or qemu_argv.DEFAULT_STATE_DIR))
    command = _build_command(loaded, paths, options)
    warnings = []
    if not network_only:
        warnings += [Diagnostic(filename, line, message) for line, message in qemu_argv.warnings(domain)]
    lines = []
    if standalone:  # passt must be listening before QEMU connects
        from virtnet.host.passt import standalone_lines

        down = [iface.line_of("link") for iface in domain.interfaces if iface.link_state == "down"]
        if down:
            warnings.append(Diagnostic(filename, down[0], "<link state='down'> is applied over QMP by `virtnet "
                                       "start`; a standalone line starts with the link up (use the monitor's "
                                       "`set_link NETDEV off`)"))
        lines += standalone_lines(domain, paths)
        from virtnet.qemu.chardevs import needs_channel_dir

        if needs_channel_dir(domain):
            warnings.append(Diagnostic(filename, None, f"create {paths.dir}/channel before running this line: "
                                       "QEMU listens there for the unix channels that name no path"))
    if command.argv:  # --network-only for a domain without interfaces prints nothing
        lines.append(_env_lines(command.env) + qemu_render.shell_lines(command.argv))
    return Result("".join(lines), warnings)


def _env_lines(env):
    """QEMU's environment as `NAME=VALUE \\` lines (most domains set none)."""
    if not env:
        return ""
    return "".join(f"{name}={qemu_render.shell_word(value)} \\\n" for name, value in env.items())


def check(loaded, *, runtime_dir, host_caps=frozenset()):
    """Raise what xml2argv and start would refuse while building QEMU's command line for a loaded
    domain (rules that need the whole machine in view: chardev ports, firmware, clock, boot). Pure:
    RUNTIME_DIR is only where generated socket paths would go (their length is checked)."""
    paths = DomainPaths(runtime_dir, loaded.domain.name)
    _build_command(loaded, paths, qemu_argv.ArgvOptions(host_caps=frozenset(host_caps)))


def _build_command(loaded, paths, options):
    """qemu.argv.build_command for a loaded domain, its errors located in the domain's file."""
    try:
        return qemu_argv.build_command(loaded.domain, paths, options)
    except VirtnetError as e:
        raise e.located(loaded.filename) from None


def plan(loaded, fmt="text", *, runtime_dir, names_in_use=frozenset(), host_caps=frozenset(), bridge_helper=None,
         paused=False, owner=None):
    """What `virtnet start` would do for a loaded domain, as `virtnet plan --format FMT` prints it.

    The host facts are given, not probed: NAMES_IN_USE (existing interface names, which decide
    vnetN and collisions), HOST_CAPS (e.g. {'vhost-net'}), BRIDGE_HELPER (the qemu-bridge-helper
    that makes bridge taps, or None when virtnet creates them itself), RUNTIME_DIR (passt sockets).
    OWNER is the user that pre-created taps belong to (the sh and networkd formats need it).
    The warnings are those `start` prints about what the plan cannot honour.
    """
    from virtnet.errors import UsageError
    from virtnet.host.plan import build_plan
    from virtnet.host.planformat import render_plan

    if fmt not in PLAN_FORMATS:
        raise UsageError(f"unknown plan format '{fmt}'; accepted: {', '.join(PLAN_FORMATS)}")
    if owner is None and fmt in ("sh", "networkd"):
        raise UsageError(f"the {fmt} format needs the owner of the pre-created taps")
    domain, filename = loaded.domain, loaded.filename
    paths = DomainPaths(runtime_dir, domain.name)
    # What start would refuse while building QEMU's command line, plan refuses too (as check does).
    _build_command(loaded, paths, qemu_argv.ArgvOptions(host_caps=frozenset(host_caps)))
    try:
        built = build_plan(domain, names_in_use=frozenset(names_in_use), host_caps=frozenset(host_caps),
                           paused=paused, bridge_helper=bridge_helper, paths=paths)
    except VirtnetError as e:
        raise e.located(filename) from None
    dropped = qemu_argv.unrendered(domain)
    warnings = [Diagnostic(filename, line, message) for line, message in qemu_argv.warnings(domain, dropped)]
    try:
        qemu_argv.check_dropped(domain, dropped)
    except VirtnetError as e:
        warnings.append(Diagnostic(filename, e.line, e.message))  # start refuses it without --allow-dropped
    warnings += [Diagnostic(filename, None, message) for message in built.warnings]
    return Result(render_plan(fmt, domain, built, owner), warnings)
