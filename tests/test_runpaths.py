"""runpaths._join's text shortcut against pathlib's own join, and the paths DomainPaths builds with it."""

from pathlib import Path, PurePosixPath

import pytest

from virtnet.runpaths import DomainPaths, _join

BASES = ["/", "//", "//x", "///x", "/run", "/run/", "/run//", "/run/virtnet", "/run/virtnet/", "/run//virtnet",
         "/run/./virtnet", "/run/virtnet/.", "/run/../virtnet", "/run/virtnet/..", "/.", "/..", "/.x", "/..x",
         ".", "..", "", "./run", "run", "run/", "run/virtnet", "../run", "a b", "/a b/c"]
NAMES = ["vm", "vm.1", ".", "..", ".vm", "..vm", "...", "a/b", "a//b", "a/", "/abs", "./vm", "vm/.", "a b", "é",
         "-", "~", "vm\\x", ":", "qmp.sock"]


@pytest.mark.parametrize("base", BASES)
def test_join_is_pathlibs_join(base):
    for name in NAMES:
        expected = str(Path(base) / name)
        assert _join(base, name) == expected, (base, name)
        assert _join(Path(base), name) == expected, (base, name)  # os.fspath accepts Paths too
        assert _join(PurePosixPath(base), name) == expected, (base, name)


def test_domain_paths_text_and_paths_agree():
    paths = DomainPaths("/run/virtnet/", "vm")
    assert paths.dir_text == "/run/virtnet/vm" and paths.dir == Path(paths.dir_text)
    assert paths.qmp_text == "/run/virtnet/vm/qmp.sock" and paths.qmp == Path(paths.qmp_text)
    assert paths.passt_dir_text == "/run/virtnet/vm/passt" and paths.passt_dir == Path(paths.passt_dir_text)
    assert paths.passt_socket_text("net0") == "/run/virtnet/vm/passt/net0.socket"
    assert paths.passt_socket("net0") == paths.passt_dir / "net0.socket"
    assert paths.passt_pid("net0") == paths.passt_dir / "net0.pid"
    assert paths.log == paths.dir / "qemu.log"


@pytest.mark.parametrize("base", BASES)
def test_below_text_is_pathlibs_join(base):
    paths = DomainPaths(base, "vm")
    for name in NAMES:
        assert paths.below_text("channel", name) == str(paths.dir / "channel" / name), (base, name)
    assert paths.below_text() == paths.dir_text
