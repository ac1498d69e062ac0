"""Linux interface names: the kernel's limits and the names virtnet generates itself."""

IFNAMSIZ = 16  # the kernel's limit includes the terminating NUL
GENERATED_PREFIX = "vnet"  # managed taps without a <target dev> are vnetN
# Target names libvirt (and virtnet) generate; dropped from inactive XML unless managed='no'.
GENERATED_TARGET_PREFIXES = ("vnet", "macvtap", "macvlan")


def fits(name):
    return len(name.encode()) < IFNAMSIZ


def problem(name):
    """Why NAME cannot be a Linux interface name (or a '%d' template), or None."""
    if not fits(name):
        return f"is {len(name.encode())} bytes long; Linux interface names have at most {IFNAMSIZ - 1}"
    if name in ("", ".", ".."):
        return "is not a usable interface name"
    if "/" in name or any(c.isspace() for c in name) or ":" in name:
        return "contains '/', ':' or whitespace, which interface names cannot"
    if name.count("%") > 1 or ("%" in name and "%d" not in name):
        return "may contain at most one '%d' template and no other '%'"
    return None


def is_generated(name):
    return name.startswith(GENERATED_TARGET_PREFIXES)
