"""Golden tests: testdata/xml2argv/NAME.xml → NAME.args or NAME.err; testdata/xml2xml/NAME.xml → NAME.out.xml.

A case's file name selects xml2argv options: '-keyval' → --syntax keyval, '-standalone' →
--standalone, '-network-only' → --network-only. Every case runs with pinned host capabilities
(vhost-net available), runtime directory and bridge helper path, so the goldens do not depend on
this machine.
"""

import contextlib
import io

import pytest

from golden import REPO, TESTDATA, compare
from virtnet.cli import main
from virtnet.golden import case_options, pinned_options

ARGV_DIR = TESTDATA / "xml2argv"
XML_DIR = TESTDATA / "xml2xml"
PINNED = pinned_options()


def run(args):
    """Run the CLI in-process; returns (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(args)
    return status, out.getvalue(), err.getvalue()


def rel(path):
    return str(path.relative_to(REPO))


def argv_cases():
    return sorted(ARGV_DIR.glob("*.xml"))


def xml_cases():
    return sorted(p for p in XML_DIR.glob("*.xml") if not p.name.endswith(".out.xml"))


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(REPO)  # error messages name files relative to the repo


@pytest.mark.parametrize("case", argv_cases(), ids=lambda p: p.stem)
def test_xml2argv(case):
    status, out, err = run(["xml2argv", *PINNED, *case_options(case.stem), rel(case)])
    assert "Traceback" not in err
    args_file, err_file = case.with_suffix(".args"), case.with_suffix(".err")
    if err_file.exists() or (status != 0 and not args_file.exists()):
        assert status == 1, f"expected a rejection (exit 1), got {status}: {err}"
        assert len(err.strip().splitlines()) == 1, f"error must be one line: {err!r}"
        assert err.startswith(f"virtnet: error: {rel(case)}:"), err
        compare(err_file, err)
    else:
        assert status == 0, err
        compare(args_file, out)


@pytest.mark.parametrize("case", xml_cases(), ids=lambda p: p.stem)
def test_xml2xml(case, tmp_path):
    status, out, err = run(["xml2xml", rel(case)])
    assert status == 0, err
    compare(case.with_name(case.stem + ".out.xml"), out)
    # Canonical output is a fixed point: formatting it again changes nothing.
    again = tmp_path / "again.xml"
    again.write_text(out)
    status, out2, err = run(["xml2xml", str(again)])
    assert (status, out2) == (0, out)


@pytest.mark.parametrize("case", [c for c in argv_cases() if c.with_suffix(".args").exists()], ids=lambda p: p.stem)
def test_round_trip_keeps_argv(case, tmp_path):
    """xml2argv of the canonical XML equals xml2argv of the input."""
    opts = [*PINNED, *case_options(case.stem)]
    status, direct, err = run(["xml2argv", *opts, rel(case)])
    assert status == 0, err
    status, canonical, err = run(["xml2xml", rel(case)])
    assert status == 0, err
    again = tmp_path / "canonical.xml"
    again.write_text(canonical)
    status, via_xml, err = run(["xml2argv", *opts, str(again)])
    assert (status, via_xml) == (0, direct)


def test_enough_cases():
    args = [c for c in argv_cases() if c.with_suffix(".args").exists()]
    errs = [c for c in argv_cases() if c.with_suffix(".err").exists()]
    assert len(args) + len(errs) + len(xml_cases()) >= 40
    assert len(errs) >= 15
    assert (ARGV_DIR / "net-eth-unmanaged-tap.xml").exists(), "the seed case must be a golden"


def _instances(domain):
    """Every model object reachable from a domain, by class."""
    from virtnet.conf import domain as model

    found = {cls: [] for cls in model.MODEL_CLASSES}
    found[model.Domain].append(domain)
    for iface in domain.interfaces:
        found[model.Interface].append(iface)
        if iface.source is not None:
            found[model.Source].append(iface.source)
            found[model.IPAddress] += iface.source.host_ips
            found[model.Route] += iface.source.host_routes
        if iface.address is not None:
            found[model.PCIAddress].append(iface.address)
        found[model.Offloads] += [o for o in (iface.host_offloads, iface.guest_offloads) if o is not None]
        found[model.IPAddress] += iface.guest_ips
        found[model.Route] += iface.guest_routes
        for fwd in iface.port_forwards:
            found[model.PortForward].append(fwd)
            found[model.PortRange] += fwd.ranges
    return found


def test_every_modelled_attribute_is_exercised():
    """A modelled attribute no golden input uses is untested: fail and name it."""
    from virtnet.conf import domain as model
    from virtnet.conf.xmlparse import parse_file
    from virtnet.errors import XMLInputError

    seen = set()
    for case in argv_cases() + xml_cases():
        try:
            _, tree = parse_file(str(case))
        except XMLInputError:
            continue  # malformed on purpose: exercises the parser, not the model
        for cls, objs in _instances(model.Domain(tree.getroot())).items():
            for name, prop in cls.declared_props().items():
                if any(prop.raw(obj) is not None for obj in objs):
                    seen.add((cls.__name__, name))
    missing = [f"{cls.__name__}.{name} ({prop.path})" for cls in model.MODEL_CLASSES
               for name, prop in cls.declared_props().items() if (cls.__name__, name) not in seen]
    assert not missing, "modelled but exercised by no golden input: " + ", ".join(missing)
