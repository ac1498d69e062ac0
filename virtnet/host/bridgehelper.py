"""Locating QEMU's bridge helper (qemu-bridge-helper)."""

import os

from virtnet.errors import HostError

HELPER_NAME = "qemu-bridge-helper"
SEARCH_DIRS = ("/usr/lib/qemu", "/usr/libexec/qemu", "/usr/libexec", "/usr/local/libexec")


def find_helper(override=None):
    """The helper's path: OVERRIDE (--bridge-helper), else the first hit in SEARCH_DIRS."""
    if override:
        if not os.access(override, os.X_OK):
            raise HostError(f"bridge helper '{override}' is not an executable file")
        return override
    for directory in SEARCH_DIRS:
        path = os.path.join(directory, HELPER_NAME)
        if os.access(path, os.X_OK):
            return path
    raise HostError(
        f"{HELPER_NAME} not found in {', '.join(SEARCH_DIRS)}; install QEMU's helper (Debian: "
        "qemu-system-common) or pass --bridge-helper PATH"
    )
