"""`virtnet golden check|regen DIR`: the repository's goldens pass, and a difference is caught."""

import contextlib
import io
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import test_golden
from virtnet import golden
from virtnet.cli import main

REPO = Path(__file__).resolve().parents[1]
ARGV_DIR = REPO / "testdata" / "xml2argv"
XML_DIR = REPO / "testdata" / "xml2xml"
PLAN_DIR = REPO / "testdata" / "plan"


def run(args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(args)
    return status, out.getvalue(), err.getvalue()


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """An empty 'cases' folder; the working directory is its parent, so paths read 'cases/NAME.xml'."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cases").mkdir()
    return tmp_path / "cases"


def copy_case(name, source_dir, folder, suffixes):
    for suffix in (".xml", *suffixes):
        shutil.copy(source_dir / (name + suffix), folder / (name + suffix))


def summary(out):
    return out.rstrip().splitlines()[-1]


@pytest.mark.parametrize("subdir, checks_per_case", [("xml2argv", 1), ("xml2xml", 1), ("plan", 2)])
def test_the_repositorys_goldens_pass(subdir, checks_per_case, monkeypatch):
    monkeypatch.chdir(REPO)  # .err files name their input relative to the repository
    directory = REPO / "testdata" / subdir
    status, out, err = run(["golden", "check", f"testdata/{subdir}"])
    count = len([p for p in directory.glob("*.xml") if not p.name.endswith(".out.xml")]) * checks_per_case
    assert (status, summary(out)) == (0, f"{count} passed, 0 failed"), out + err


def test_the_runner_does_not_go_through_the_cli():
    """virtnet.golden calls virtnet.convert, as the CLI does, rather than the CLI itself."""
    code = "import sys, virtnet.golden\nprint(sorted(m for m in sys.modules if m == 'virtnet.cli'))\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_conventions_are_the_golden_tests_own():
    """The verb and the repository's golden tests pin the same host facts and read names alike."""
    assert test_golden.PINNED == golden.pinned_options()
    assert golden.pinned_options() == ["--host-caps", "vhost-net", "--runtime-dir", "/run/virtnet",
                                       "--bridge-helper", "/usr/lib/qemu/qemu-bridge-helper"]
    expected = {"net-eth-vhost-keyval": ["--syntax", "keyval"], "net-eth-unmanaged-tap-standalone": ["--standalone"],
                "net-mixed-network-only": ["--network-only"], "net-eth": [],
                "net-eth-standalone-keyval": ["--syntax", "keyval", "--standalone"]}
    for name, options in expected.items():
        assert golden.case_options(name) == options, name


def test_a_changed_args_file_fails_with_a_unified_diff_and_regen_repairs_it(folder):
    copy_case("net-eth", ARGV_DIR, folder, [".args"])
    copy_case("net-user", ARGV_DIR, folder, [".args"])
    status, out, _ = run(["golden", "regen", "cases"])  # the runtime dir in the goldens is the pinned one
    assert (status, summary(out)) == (0, "2 unchanged, 0 rewritten")
    args = folder / "net-eth.args"
    args.write_text(args.read_text().replace('"fd":"3"', '"fd":"7"'))
    status, out, _ = run(["golden", "check", "cases"])
    assert status == 1
    assert "--- cases/net-eth.args\n+++ virtnet xml2argv cases/net-eth.xml\n" in out
    assert "\n-" + "-netdev '{\"type\":\"tap\",\"fd\":\"7\"" in out and "\n+" + "-netdev '{\"type\":\"tap\",\"fd\":\"3\"" in out
    assert summary(out) == "1 passed, 1 failed"
    status, out, _ = run(["golden", "regen", "cases"])
    assert (status, out) == (0, "wrote cases/net-eth.args\n1 unchanged, 1 rewritten\n")
    assert run(["golden", "check", "cases"])[:2] == (0, "2 passed, 0 failed\n")


def test_an_out_xml_expectation_means_xml2xml(folder):
    copy_case("net-comments", XML_DIR, folder, [".out.xml"])
    assert run(["golden", "check", "cases"])[:2] == (0, "1 passed, 0 failed\n")
    out_xml = folder / "net-comments.out.xml"
    out_xml.write_text(out_xml.read_text().replace("<model type=", "<model  type="))
    status, out, _ = run(["golden", "check", "cases"])
    assert status == 1 and "+++ virtnet xml2xml cases/net-comments.xml" in out


def test_an_err_expectation_is_compared_with_the_error(folder):
    copy_case("net-mac-multicast", ARGV_DIR, folder, [".err"])
    status, out, _ = run(["golden", "regen", "cases"])
    assert (status, out) == (0, "wrote cases/net-mac-multicast.err\n0 unchanged, 1 rewritten\n")
    assert (folder / "net-mac-multicast.err").read_text().startswith("virtnet: error: cases/net-mac-multicast.xml:")
    assert run(["golden", "check", "cases"])[:2] == (0, "1 passed, 0 failed\n")


def test_an_err_case_that_virtnet_now_accepts_fails_and_regen_swaps_the_expectation(folder):
    copy_case("net-user", ARGV_DIR, folder, [])
    (folder / "net-user.err").write_text("virtnet: error: cases/net-user.xml:1: refused\n")
    status, out, _ = run(["golden", "check", "cases"])
    assert status == 1 and "(virtnet accepted it)" in out and "-virtnet: error: cases/net-user.xml:1: refused" in out
    status, out, _ = run(["golden", "regen", "cases"])
    assert status == 0 and "removed cases/net-user.err (virtnet accepted it)" in out
    assert not (folder / "net-user.err").exists() and (folder / "net-user.args").exists()


def test_a_case_without_expectation_fails_and_regen_writes_it(folder):
    copy_case("net-user", ARGV_DIR, folder, [])
    status, out, _ = run(["golden", "check", "cases"])
    assert status == 1 and out.startswith("missing expectation cases/net-user.args\n")
    assert summary(out) == "0 passed, 1 failed"
    assert run(["golden", "regen", "cases"])[0] == 0
    # Paths in the output depend on the domain and the pinned runtime dir, not on the folder.
    assert (folder / "net-user.args").read_text() == (ARGV_DIR / "net-user.args").read_text()


def test_an_xml2xml_case_virtnet_refuses_fails_and_is_never_written(folder):
    (folder / "bad.xml").write_text("<domain type='kvm'><name>x</name></domain>\n")
    (folder / "bad.out.xml").write_text("<domain/>\n")
    for action in ("check", "regen"):
        status, out, _ = run(["golden", action, "cases"])
        assert status == 1 and "virtnet: error: cases/bad.xml" in out, out
    assert (folder / "bad.out.xml").read_text() == "<domain/>\n"


def test_pinned_host_caps_and_runtime_dir_can_be_overridden(folder):
    copy_case("net-eth-vhost", ARGV_DIR, folder, [".args"])
    assert run(["golden", "check", "cases"])[0] == 0
    status, out, _ = run(["golden", "check", "--host-caps", "none", "cases"])
    assert status == 1 and '\n-' + "-netdev '{\"type\":\"tap\",\"fd\":\"3\",\"vhost\":true" in out
    status, out, _ = run(["golden", "check", "--runtime-dir", "/elsewhere", "cases"])
    assert status == 1 and "+-chardev socket,id=charmonitor,path=/elsewhere/net-eth-vhost/qmp.sock" in out


def test_usage_errors(folder):
    assert run(["golden", "check", "--host-caps", "warp-drive", "cases"])[0] == 2
    assert run(["golden", "check", "no-such-dir"])[0] == 2
    assert run(["golden", "fix", "cases"])[0] == 2


def test_plan_expectations_are_checked_and_regenerated(folder):
    copy_case("net-eth", PLAN_DIR, folder, [".plan", ".plan.json"])
    assert run(["golden", "check", "cases"])[:2] == (0, "2 passed, 0 failed\n")
    plan = folder / "net-eth.plan"
    plan.write_text(plan.read_text().replace("vnet0", "vnet9"))
    status, out, _ = run(["golden", "check", "cases"])
    assert status == 1 and "--- cases/net-eth.plan\n+++ virtnet plan cases/net-eth.xml\n" in out
    assert summary(out) == "1 passed, 1 failed"
    status, out, _ = run(["golden", "regen", "cases"])
    assert (status, out) == (0, "wrote cases/net-eth.plan\n1 unchanged, 1 rewritten\n")
    (folder / "net-eth.plan.json").write_text("{}\n")
    status, out, _ = run(["golden", "check", "cases"])
    assert status == 1 and "+++ virtnet plan --format json cases/net-eth.xml\n" in out


def test_a_new_case_in_a_plan_folder_gets_both_plan_expectations(folder):
    copy_case("net-eth", PLAN_DIR, folder, [".plan", ".plan.json"])
    copy_case("net-user", PLAN_DIR, folder, [])
    status, out, _ = run(["golden", "regen", "cases"])
    assert (status, out) == (0, "wrote cases/net-user.plan\nwrote cases/net-user.plan.json\n2 unchanged, 2 rewritten\n")
    for suffix in (".plan", ".plan.json"):
        assert (folder / ("net-user" + suffix)).read_text() == (PLAN_DIR / ("net-user" + suffix)).read_text()


def test_a_case_with_args_and_plan_runs_both(folder):
    copy_case("net-eth", ARGV_DIR, folder, [".args"])
    shutil.copy(PLAN_DIR / "net-eth.plan", folder / "net-eth.plan")
    assert run(["golden", "check", "cases"])[:2] == (0, "2 passed, 0 failed\n")


def test_the_unprivileged_suffix_plans_the_bridge_helper(folder):
    for name in ("br-unprivileged", "br"):
        shutil.copy(PLAN_DIR / "net-bridge-unprivileged.xml", folder / f"{name}.xml")
        (folder / f"{name}.plan").write_text("")
    assert run(["golden", "regen", "cases"])[0] == 0
    helper = (folder / "br-unprivileged.plan").read_text()
    assert "/usr/lib/qemu/qemu-bridge-helper --use-vnet --br=br0" in helper and "create tap" not in helper
    own = (folder / "br.plan").read_text()
    assert "qemu-bridge-helper" not in own and "create tap vnet0" in own


def test_a_plan_virtnet_refuses_fails_and_is_never_written(folder):
    shutil.copy(ARGV_DIR / "net-network-unsupported.xml", folder / "net.xml")
    (folder / "net.plan").write_text("old\n")
    for action in ("check", "regen"):
        status, out, _ = run(["golden", action, "cases"])
        assert status == 1 and "virtnet: error: cases/net.xml" in out and "(failed, exit 1)" in out, out
    assert (folder / "net.plan").read_text() == "old\n"
