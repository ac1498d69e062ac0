"""Linux interface names: the kernel's limits and the names virtnet generates itself."""

import re

IFNAMSIZ = 16  # the kernel's limit includes the terminating NUL
GENERATED_PREFIX = "vnet"  # managed taps without a <target dev> are vnetN
# Target names libvirt (and virtnet) generate; dropped from inactive XML unless managed='no'.
GENERATED_TARGET_PREFIXES = ("vnet", "macvtap", "macvlan")


# Bytes the kernel's isspace() is true for (lib/ctype.c: 0xA0 too, which UTF-8 uses inside characters
# such as 'à'): dev_valid_name() refuses a name holding any of them.
KERNEL_SPACE = frozenset(b"\t\n\v\f\r \xa0")
# A name none of problem()'s rules can object to (as most are: 'tap0', 'vm1-eth0'), told in one match.
PLAIN_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,%d}" % (IFNAMSIZ - 1))


def fits(name):
    return len(name.encode()) < IFNAMSIZ


def problem(name):
    """Why NAME cannot be a Linux interface name (or a '%d' template), or None."""
    if PLAIN_NAME_RE.fullmatch(name) and name not in (".", ".."):
        return None
    if not fits(name):
        return f"is {len(name.encode())} bytes long; Linux interface names have at most {IFNAMSIZ - 1}"
    if name in ("", ".", ".."):
        return "is not a usable interface name"
    if "/" in name or ":" in name or any(c.isspace() for c in name) or KERNEL_SPACE & set(name.encode()):
        return "contains '/', ':' or whitespace, which interface names cannot"
    if name.count("%") > 1 or ("%" in name and "%d" not in name):
        return "may contain at most one '%d' template and no other '%'"
    return None


def is_generated(name):
    return name.startswith(GENERATED_TARGET_PREFIXES)
