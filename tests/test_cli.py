"""The command line as a user meets it: real subprocesses, exit codes, messages, imports."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SEED = REPO / "testdata" / "xml2argv" / "net-eth-unmanaged-tap.xml"
BAD = REPO / "testdata" / "xml2argv" / "net-bridge-unmanaged.xml"


def virtnet(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "virtnet", *args], input=stdin, capture_output=True,
                          text=True, cwd=REPO, timeout=60)


def test_standard_input_is_accepted_as_dash():
    result = virtnet("xml2argv", "--host-caps", "none", "--network-only", "-", stdin=SEED.read_text())
    assert result.returncode == 0, result.stderr
    assert '"driver":"virtio-net-pci"' in result.stdout and '"type":"tap"' in result.stdout


def test_rejected_input_exits_1_with_one_line_and_no_traceback():
    result = virtnet("xml2argv", str(BAD.relative_to(REPO)))
    assert result.returncode == 1
    assert result.stderr.startswith("virtnet: error: testdata/xml2argv/net-bridge-unmanaged.xml:14: ")
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_debug_shows_the_traceback():
    result = virtnet("--debug", "validate", str(BAD))
    assert result.returncode != 0 and "Traceback" in result.stderr


@pytest.mark.parametrize("args", [[], ["frobnicate"], ["xml2argv"], ["xml2argv", "--syntax", "yaml", "x.xml"]])
def test_usage_errors_exit_2(args):
    result = virtnet(*args)
    assert result.returncode == 2
    assert "usage:" in result.stderr


def test_unknown_host_cap_is_a_usage_error():
    result = virtnet("xml2argv", "--host-caps", "warp-drive", str(SEED))
    assert result.returncode == 2
    assert "unknown capability 'warp-drive'" in result.stderr


def test_missing_file_is_a_clear_error():
    result = virtnet("validate", "/nonexistent/dom.xml")
    assert result.returncode == 1
    assert result.stderr == "virtnet: error: /nonexistent/dom.xml: cannot read the file: No such file or directory\n"


def test_oversized_document_is_refused(tmp_path):
    big = tmp_path / "big.xml"
    big.write_text("<domain type='qemu'><name>x</name><description>" + "a" * (1 << 20) + "</description></domain>")
    result = virtnet("validate", str(big))
    assert result.returncode == 1
    assert "larger than 1048576 bytes" in result.stderr


def test_entity_expansion_is_refused(tmp_path):
    bomb = tmp_path / "bomb.xml"
    bomb.write_text('<?xml version="1.0"?>\n<!DOCTYPE d [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;">]>\n'
                    "<domain type='qemu'><name>&b;</name></domain>\n")
    result = virtnet("validate", str(bomb))
    assert result.returncode == 1
    assert f"{bomb}:2: DOCTYPE and entity declarations are not accepted" in result.stderr


def test_every_verb_has_help():
    result = virtnet("--help")
    assert result.returncode == 0
    verbs = ["validate", "xml2xml", "xml2argv", "define", "undefine", "list", "dumpxml", "domiflist",
             "plan", "start", "destroy"]
    for verb in verbs:
        assert verb in result.stdout
        sub = virtnet(verb, "--help")
        assert sub.returncode == 0 and "usage: virtnet " + verb in sub.stdout


@pytest.mark.parametrize("verb", ["validate", "xml2xml", "xml2argv"])
def test_conversion_verbs_import_neither_pyroute2_nor_jinja2(verb):
    """Start-up stays lean: the pure verbs never load the netlink or template libraries."""
    code = ("import sys, contextlib, io\n"
            "from virtnet.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
            f"    status = main([{verb!r}, {str(SEED)!r}])\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('pyroute2', 'jinja2'))\n"
            "print(status, heavy)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.stdout.strip() == "0 []", result.stdout + result.stderr


def test_batch_conversion_prefixes_each_file(tmp_path):
    result = virtnet("xml2argv", "--host-caps", "none", "--network-only", str(SEED),
                     str(REPO / "testdata" / "xml2argv" / "net-user.xml"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("# ") == 2 and result.stdout.index(str(SEED)) < result.stdout.index("net-user.xml")


def test_a_directory_without_domains_is_an_error(tmp_path):
    result = virtnet("xml2argv", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr == f"virtnet: error: {tmp_path}: the directory holds no *.xml domain files\n"


def test_a_state_dir_that_is_a_file_is_one_line_not_a_traceback(tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    result = virtnet("list", "--all", "--state-dir", str(not_a_dir))
    assert result.returncode == 1
    assert result.stderr.startswith("virtnet: error: ") and len(result.stderr.splitlines()) == 1
    assert "Traceback" not in result.stderr and str(not_a_dir) in result.stderr
