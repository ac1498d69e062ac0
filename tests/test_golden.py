"""Golden tests: every case in testdata/xml2argv (NAME.args or NAME.err), testdata/xml2xml
(NAME.out.xml) and testdata/plan (NAME.plan, NAME.plan.json), run and compared by virtnet.golden —
the runner behind `virtnet golden check` — on virtnet.convert, the conversions the CLI prints.

A case's file name selects options: '-keyval' → --syntax keyval, '-standalone' → --standalone,
'-network-only' → --network-only, '-unprivileged' → bridges through qemu-bridge-helper in the plan.
Every case runs with pinned host facts (vhost-net available, /run/virtnet, the bridge helper path,
no interface names in use), so the goldens do not depend on this machine.

VIR_TEST_REGENERATE_OUTPUT=1 (`make regen`) rewrites the expectations that differ; a missing one
is written and the test fails, so that it is read before it is committed.
"""

import contextlib
import io
import os
from dataclasses import replace
from pathlib import Path

import pytest

from virtnet import convert, golden
from virtnet.cli import main

REPO = Path(__file__).resolve().parents[1]
TESTDATA = REPO / "testdata"
ARGV_DIR = TESTDATA / "xml2argv"
XML_DIR = TESTDATA / "xml2xml"
PLAN_DIR = TESTDATA / "plan"
PINNED = golden.pinned_options()
PINNED_ARGV = {"runtime_dir": golden.DEFAULT_RUNTIME_DIR, "host_caps": golden.PINNED_HOST_CAPS,
               "bridge_helper": golden.PINNED_BRIDGE_HELPER}


def run(args):
    """Run the CLI in-process; returns (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(args)
    return status, out.getvalue(), err.getvalue()


def regenerating():
    return os.environ.get("VIR_TEST_REGENERATE_OUTPUT") == "1"


def discover(directory):
    """virtnet.golden's cases of DIRECTORY, their sources relative to the repository (as .err files quote them)."""
    return [replace(case, source=os.path.relpath(case.source, REPO)) for case in golden.cases(directory)]


def checks():
    params = []
    for directory in (ARGV_DIR, XML_DIR, PLAN_DIR):
        for case in discover(directory):
            for kind in case.kinds:
                params.append(pytest.param(case, kind, id=f"{directory.name}/{case.name}:{kind}"))
    return params


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(REPO)  # error messages name files relative to the repo


@pytest.mark.parametrize("case,kind", checks())
def test_golden(case, kind):
    outcome = golden.run_check(case, kind)
    assert outcome.status is not None, outcome.actual  # crashed
    if outcome.expected_file.endswith(".err"):
        err = outcome.actual
        assert outcome.status == 1, f"expected a rejection (exit 1), got {outcome.status}: {err}"
        assert len(err.strip().splitlines()) == 1, f"error must be one line: {err!r}"
        assert err.startswith(f"virtnet: error: {case.source}:"), err
    assert outcome.writable, golden.diff(outcome)
    difference = golden.diff(outcome)
    if not difference:
        return
    missing = not os.path.exists(outcome.expected_file)
    if regenerating() or missing:
        golden.write(outcome)
        if missing:
            pytest.fail(f"{outcome.expected_file} did not exist; written now — read it, then commit it")
        return
    pytest.fail(difference, pytrace=False)


def loaded_from_text(text, tmp_path, name="again.xml"):
    path = tmp_path / name
    path.write_text(text)
    return convert.load(str(path))


def argv_of(source, name):
    return convert.xml2argv(convert.load(str(source)), **PINNED_ARGV, **golden.argv_settings(name)).text


def xml_cases():
    return [case for case in discover(XML_DIR) if "xml2xml" in case.kinds]


def argv_cases_accepted():
    return [case for case in discover(ARGV_DIR) if os.path.exists(REPO / case.path(".args"))]


@pytest.mark.parametrize("case", xml_cases(), ids=lambda c: c.name)
def test_xml2xml_is_a_fixed_point(case, tmp_path):
    """Canonical output formatted again changes nothing."""
    canonical = convert.xml2xml(convert.load(case.source)).text
    assert convert.xml2xml(loaded_from_text(canonical, tmp_path)).text == canonical


@pytest.mark.parametrize("case", argv_cases_accepted(), ids=lambda c: c.name)
def test_round_trip_keeps_argv(case, tmp_path):
    """xml2argv of the canonical XML equals xml2argv of the input."""
    canonical = convert.xml2xml(convert.load(case.source)).text
    (tmp_path / "canonical.xml").write_text(canonical)
    assert argv_of(tmp_path / "canonical.xml", case.name) == argv_of(case.source, case.name)


@pytest.mark.parametrize("case", discover(PLAN_DIR), ids=lambda c: c.name)
def test_round_trip_keeps_the_plan(case, tmp_path):
    """The plan of the canonical XML equals the plan of the input (what `define` then `plan NAME` shows)."""
    facts = {"runtime_dir": golden.DEFAULT_RUNTIME_DIR, "host_caps": golden.PINNED_HOST_CAPS,
             "bridge_helper": golden.plan_bridge_helper(case.name)}
    canonical = convert.xml2xml(convert.load(case.source)).text
    via_xml = convert.plan(loaded_from_text(canonical, tmp_path), "json", **facts).text
    assert via_xml == convert.plan(convert.load(case.source), "json", **facts).text


def test_enough_cases():
    argv_cases = discover(ARGV_DIR)
    args = [c for c in argv_cases if os.path.exists(REPO / c.path(".args"))]
    errs = [c for c in argv_cases if os.path.exists(REPO / c.path(".err"))]
    assert len(args) + len(errs) + len(xml_cases()) >= 40
    assert len(errs) >= 15
    assert (ARGV_DIR / "net-eth-unmanaged-tap.xml").exists(), "the seed case must be a golden"


DRIVEN_TYPES = {"ethernet", "bridge", "direct", "user", "server", "client", "mcast", "udp", "vhostuser"}


def test_plan_goldens_cover_every_interface_type_virtnet_drives():
    cases = discover(PLAN_DIR)
    assert all(case.kinds == ("plan", "plan-json") for case in cases), "each plan case has .plan and .plan.json"
    seen, flavours = set(), set()
    for case in cases:
        domain = convert.load(case.source).domain
        for iface in domain.interfaces:
            seen.add(iface.type)
            if iface.type == "ethernet":
                flavours.add("unmanaged" if iface.unmanaged else "managed")
                flavours.update({"template"} if "%d" in (iface.target_dev or "") else set())
                flavours.update({"script"} if iface.script else set())
                flavours.update({"host-ip"} if iface.source is not None and iface.source.host_ips else set())
            flavours.update({"passt"} if iface.uses_passt else set())
            flavours.update({"multiqueue"} if iface.queue_count > 1 else set())
            flavours.update({"link-down"} if iface.link_state == "down" else set())
        if golden.plan_bridge_helper(case.name):
            flavours.add("bridge-helper")
        if "open-vhost" in convert.plan(convert.load(case.source), "json", runtime_dir="/run/virtnet",
                                        host_caps=golden.PINNED_HOST_CAPS).text:
            flavours.add("vhost-net")
    assert DRIVEN_TYPES <= seen, f"no plan golden for: {sorted(DRIVEN_TYPES - seen)}"
    expected = {"managed", "unmanaged", "template", "script", "host-ip", "passt", "multiqueue", "link-down",
                "bridge-helper", "vhost-net"}
    assert expected <= flavours, f"no plan golden for: {sorted(expected - flavours)}"


def _instances(domain):
    """Every model object reachable from a domain, by class."""
    from virtnet.conf import domain as model

    found = {cls: [] for cls in model.MODEL_CLASSES}
    found[model.Domain].append(domain)
    # Every device's <address> (PCI, drive, virtio-serial): one model class serves them all.
    devices = domain.node.find("devices")
    found[model.Address] += [model.Address(a) for a in (devices.iterfind("*/address") if devices is not None else ())]
    for iface in domain.interfaces:
        found[model.Interface].append(iface)
        if iface.source is not None:
            found[model.Source].append(iface.source)
            found[model.IPAddress] += iface.source.host_ips
            found[model.Route] += iface.source.host_routes
        found[model.Offloads] += [o for o in (iface.host_offloads, iface.guest_offloads) if o is not None]
        found[model.IPAddress] += iface.guest_ips
        found[model.Route] += iface.guest_routes
        for fwd in iface.port_forwards:
            found[model.PortForward].append(fwd)
            found[model.PortRange] += fwd.ranges
    return found


def unexercised_attributes(model, sources, objects_of):
    """The attributes of MODEL's classes (MODEL_CLASSES) that no document of SOURCES sets, as
    "Class.name (path)"; OBJECTS_OF(domain) gives a document's model objects by class."""
    from virtnet.conf.domain import Domain
    from virtnet.conf.xmlparse import parse_file
    from virtnet.errors import XMLInputError

    seen = set()
    for source in sources:
        try:
            _, tree = parse_file(str(source))
        except XMLInputError:
            continue  # malformed on purpose: exercises the parser, not the model
        for cls, objs in objects_of(Domain(tree.getroot())).items():
            for name, prop in cls.declared_props().items():
                if any(prop.raw(obj) is not None for obj in objs):
                    seen.add((cls.__name__, name))
    return [f"{cls.__name__}.{name} ({prop.path})" for cls in model.MODEL_CLASSES
            for name, prop in cls.declared_props().items() if (cls.__name__, name) not in seen]


def test_every_modelled_attribute_is_exercised():
    """A modelled attribute no golden input uses is untested: fail and name it."""
    from virtnet.conf import domain as model

    sources = [case.source for case in discover(ARGV_DIR) + discover(XML_DIR) + discover(PLAN_DIR)]
    missing = unexercised_attributes(model, sources, _instances)
    assert not missing, "modelled but exercised by no golden input: " + ", ".join(missing)
