"""qemu-bridge-helper's access list (bridge.conf), read with the helper's own rules.

virtnet reads the ACL before it runs the helper, so that a refusal names the exact line an
administrator must add instead of the helper's bare "access denied by acl file". The rules, as
qemu-bridge-helper.c implements them:

- Lines are read as fgets(4096) reads them; leading whitespace is skipped; `#` lines and blank
  lines are ignored.
- A line is `COMMAND ARGUMENT`, split at the first space (or, when the line has no space at all,
  at the first tab); surrounding whitespace is trimmed from the argument. A line without a
  separator is "Invalid config line"; a command other than allow/deny/include is "Unknown
  command"; a name of IFNAMSIZ (16) bytes or more is "name too long". Any of these in the main
  file makes the whole parse fail, and the helper then refuses every bridge.
- `include PATH` parses PATH as well; errors there, including a missing file, are ignored (the
  rules read before the error still count).
- The order of rules does not matter: a bridge is allowed when some `allow all` or `allow NAME`
  matches and no `deny all` or `deny NAME` does. Deny wins; the default is deny.

Standard library only, no host changes: `xml2argv` and `plan` may import it.
"""

import errno
import os
import re
from dataclasses import dataclass, field

from virtnet.conf.ifname import IFNAMSIZ
from virtnet.errors import HostError

DEFAULT_ACL = "/etc/qemu/bridge.conf"
_FGETS_SIZE = 4096  # the helper's line buffer; longer lines are read in pieces
_MAX_INCLUDE_DEPTH = 32
# The helper's compiled-in ACL path, as it appears among the strings of its binary.
_ACL_PATH_IN_BINARY = re.compile(rb"(/[A-Za-z0-9_./+-]*/qemu/bridge\.conf)\0")


@dataclass(frozen=True)
class Rule:
    action: str  # "allow" or "deny"
    name: str  # a bridge name, or "all"
    file: str
    line: int

    def matches(self, bridge):
        return self.name == "all" or self.name == bridge

    def where(self):
        return f"{self.file} line {self.line}"


@dataclass
class ACL:
    path: str
    rules: list = field(default_factory=list)
    ignored: list = field(default_factory=list)  # (file, line, problem) in included files

    def decide(self, bridge):
        """(allowed, deciding rules): the matching deny rules when denied, else the allow rules."""
        allows = [r for r in self.rules if r.action == "allow" and r.matches(bridge)]
        denies = [r for r in self.rules if r.action == "deny" and r.matches(bridge)]
        if denies:
            return False, denies
        return bool(allows), allows


class ACLParseError(Exception):
    def __init__(self, file, line, problem):
        super().__init__(f"{file} line {line}: {problem}")
        self.file, self.line, self.problem = file, line, problem


def helper_acl_path(helper):
    """The ACL file HELPER reads: the path compiled into it, else the distribution default."""
    try:
        with open(helper, "rb") as f:
            data = f.read(16 * 1024 * 1024)
    except OSError:
        return DEFAULT_ACL
    found = _ACL_PATH_IN_BINARY.search(data)
    return found.group(1).decode() if found else DEFAULT_ACL


def _fgets_lines(data):
    """Split bytes as repeated fgets(buf, 4096) calls would: at newlines, and every 4095 bytes."""
    start, size = 0, len(data)
    while start < size:
        end = data.find(b"\n", start, start + _FGETS_SIZE - 1)
        end = end + 1 if end >= 0 else min(start + _FGETS_SIZE - 1, size)
        yield data[start:end]
        start = end


def _is_space(byte):
    return byte in b" \t\n\v\f\r"


def _parse_line(raw):
    """(command, argument) or None for a comment/blank line; raises ValueError with the helper's words."""
    line = raw.split(b"\0", 1)[0]  # C strings end at a NUL
    i = 0
    while i < len(line) and _is_space(line[i]):
        i += 1
    line = line[i:]
    if not line or line[:1] == b"#":
        return None
    cut = line.find(b" ")
    if cut < 0:
        cut = line.find(b"\t")
    if cut < 0:
        raise ValueError(f"invalid config line '{raw.decode(errors='replace').rstrip()}' (no argument)")
    command = line[:cut].decode(errors="replace")
    argument = line[cut + 1:]
    j = 0
    while j < len(argument) and _is_space(argument[j]):
        j += 1
    argument = argument[j:]
    k = len(argument)
    while k > 0 and _is_space(argument[k - 1]):
        k -= 1
    argument = argument[:k].decode(errors="replace")
    if command != "include" and len(argument.encode()) >= IFNAMSIZ:
        raise ValueError(f"name '{argument}' too long: {len(argument.encode())} bytes (at most {IFNAMSIZ - 1})")
    if command not in ("allow", "deny", "include"):
        raise ValueError(f"unknown command '{command}' (accepted: allow, deny, include)")
    return command, argument


def _parse_file(path, acl, depth, stack):
    """Add PATH's rules to ACL; raises ACLParseError / OSError like the helper's parse failing."""
    with open(path, "rb") as f:
        data = f.read()
    for number, raw in enumerate(_fgets_lines(data), start=1):
        try:
            parsed = _parse_line(raw)
        except ValueError as e:
            raise ACLParseError(path, number, str(e)) from None
        if parsed is None:
            continue
        command, argument = parsed
        if command == "include":
            _include(argument, acl, depth + 1, stack + (os.path.abspath(path),), path, number)
        else:
            acl.rules.append(Rule(command, argument, path, number))


def _include(path, acl, depth, stack, parent, number):
    # The helper ignores every error in an included file (keeping what it read before the error).
    # A file that includes itself would only repeat rules it already added, so cycles stop here.
    if depth > _MAX_INCLUDE_DEPTH or os.path.abspath(path) in stack:
        return
    try:
        _parse_file(path, acl, depth, stack)
    except ACLParseError as e:
        acl.ignored.append((e.file, e.line, e.problem))
    except OSError as e:
        acl.ignored.append((parent, number, f"include {path}: {e.strerror}"))


def parse_acl(path=DEFAULT_ACL):
    """The rules of the ACL at PATH (with its includes). Raises ACLParseError or OSError when the
    helper would fail to parse it (and so refuse every bridge)."""
    acl = ACL(path)
    _parse_file(path, acl, 0, ())
    return acl


def check_bridge_allowed(bridge, path=DEFAULT_ACL):
    """Raise HostError, naming the line to add or remove, when the helper would refuse BRIDGE.

    Returns quietly when the ACL allows it, and also when the file exists but cannot be read by
    this user: a setuid helper may still read it, so the helper's own answer decides then.
    """
    add = f"`allow {bridge}`"
    if len(bridge.encode()) >= IFNAMSIZ:
        raise HostError(f"bridge name '{bridge}' is longer than {IFNAMSIZ - 1} bytes; qemu-bridge-helper refuses it")
    try:
        acl = parse_acl(path)
    except FileNotFoundError:
        raise HostError(
            f"qemu-bridge-helper would refuse bridge '{bridge}': its ACL file {path} does not exist, "
            f"and without it every bridge is denied; an administrator must create {path} with the line "
            f"{add} (e.g. `mkdir -p {os.path.dirname(path)} && echo 'allow {bridge}' >> {path}`)"
        ) from None
    except PermissionError:
        return None
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM):
            return None
        raise HostError(f"cannot read qemu-bridge-helper's ACL file {path}: {e.strerror}") from None
    except ACLParseError as e:
        raise HostError(
            f"qemu-bridge-helper would refuse bridge '{bridge}': it cannot parse its ACL file ({e}), and a "
            f"bad line in {path} makes it deny every bridge; an administrator must fix that line "
            f"(the line {bridge} needs is {add})"
        ) from None
    allowed, rules = acl.decide(bridge)
    if allowed:
        return acl
    if rules:  # denied by a deny rule, which wins over any allow
        found = "; ".join(f"`{r.action} {r.name}` ({r.where()})" for r in rules)
        raise HostError(
            f"qemu-bridge-helper would refuse bridge '{bridge}': {found} denies it, and in its ACL a deny "
            f"wins over any allow; an administrator must remove that line and have {add} in {path}"
        )
    raise HostError(
        f"qemu-bridge-helper would refuse bridge '{bridge}': no rule in {path} allows it (the default is "
        f"deny); an administrator must add the line {add} to {path}"
    )
