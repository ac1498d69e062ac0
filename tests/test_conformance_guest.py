"""libvirt's domain/ corpus (qemuxmlconfdata cases for real guests) as a judge of virtnet's whole
command line: the cases virtnet agrees on must keep agreeing, and the comparison must notice a
difference. The rules live in tools/conformance.py (kind 'guest' in its table and baseline)."""

from pathlib import Path

import pytest

from conftest import load_tool

REPO = Path(__file__).resolve().parents[1]
conf = load_tool("conformance.py")
CORPUS = REPO / conf.DEFAULT_CORPUS

AGREEING = ("serial-pty-chardev", "serial-file-log", "serial-unix-chardev", "serial-tcp-telnet-chardev",
            "console-compat", "console-virtio", "channel-virtio-unix", "channel-virtio-autoassign",
            "channel-unix-source-path", "virtio-rng-random", "virtio-rng-builtin", "balloon-device-deflate",
            "balloon-device-auto", "misc-no-reboot", "clock-localtime", "clock-catchup", "clock-hpet-off",
            "cpu-host-passthrough", "cpu-host-passthrough-features", "boot-multi", "boot-menu-enable",
            "firmware-manual-efi", "firmware-manual-efi-secboot", "firmware-manual-efi-nvram-template",
            "firmware-manual-bios", "qemu-ns", "qemu-ns-alt", "qemu-ns-commandline-ns0", "x86_64-pc-minimal")


@pytest.fixture(scope="module")
def results():
    if not (CORPUS / "domain").is_dir():
        pytest.skip(f"libvirt's domain/ corpus is not at {CORPUS / 'domain'}")
    return {r.case: r for r in (conf.check_guest_case(CORPUS, case) for case in conf.guest_cases(CORPUS))}


def test_guest_cases_that_agree_today(results):
    disagree = {case: f"{results[case].status}: {results[case].detail}" for case in AGREEING
                if results[case].status != "match"}
    assert not disagree


def test_no_guest_case_crashes_and_the_lists_name_real_cases(results):
    assert not [r for r in results.values() if r.status == "virtnet-crashes"]
    for table in (conf.GUEST_OUT_OF_SCOPE, conf.GUEST_STRICTER):
        assert set(table) <= set(results)
        assert all(len(reason) > 20 for reason in table.values())


def test_the_comparison_sees_a_difference(tmp_path):
    """libvirt's line for serial-pty-chardev, with one property changed, no longer matches."""
    if not (CORPUS / "domain").is_dir():
        pytest.skip("libvirt's domain/ corpus is absent")
    corpus = tmp_path / "corpus"
    (corpus / "domain").mkdir(parents=True)
    source = CORPUS / "domain"
    for name in ("serial-pty-chardev.xml", "serial-pty-chardev.x86_64-latest.args"):
        text = (source / name).read_text()
        (corpus / "domain" / name).write_text(text.replace('"index":0', '"index":1'))
    result = conf.check_guest_case(corpus, "serial-pty-chardev")
    assert result.status == "differs" and "index=0 (libvirt 1)" in result.detail


def test_the_environment_and_custom_arguments_are_compared(tmp_path):
    if not (CORPUS / "domain").is_dir():
        pytest.skip("libvirt's domain/ corpus is absent")
    corpus = tmp_path / "corpus"
    (corpus / "domain").mkdir(parents=True)
    for name in ("qemu-ns-alt.xml", "qemu-ns-alt.x86_64-latest.args"):
        text = (CORPUS / "domain" / name).read_text()
        (corpus / "domain" / name).write_text(text.replace("NS=ns", "NS=other").replace("-unknown", "-unknowable")
                                              if name.endswith(".args") else text)
    detail = conf.check_guest_case(corpus, "qemu-ns-alt").detail
    assert "NS=ns (libvirt other)" in detail and "qemu:commandline" in detail
