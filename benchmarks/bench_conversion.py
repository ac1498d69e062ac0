"""Conversion: one `virtnet xml2argv FILE` process against interpreter floors, and a batch of 1000
generated domains converted in one process.

Driver entry points: single(ctx), batch(ctx). Child modes (run by the driver, print JSON):
  bench_conversion.py phases-single FILE     where one conversion's time goes, step by step
  bench_conversion.py schema-once FILE...    how often the RelaxNG grammar is compiled
  bench_conversion.py modules FILE           sys.modules after xml2argv
  bench_conversion.py phases-batch DIR       per-domain cost of each pipeline stage
  bench_conversion.py inproc DIR VARIANT     xml2argv DIR in-process, optionally with an experiment
"""

import hashlib
import importlib
import io
import json
import pstats
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402
import domaingen  # noqa: E402

SEED = "examples/net-eth-unmanaged-tap.xml"
FORBIDDEN = ("pyroute2", "jinja2")


def seed_file(workdir):
    return benchlib.REPO / SEED


# ------------------------------------------------------------------ single conversion


def single(ctx):
    seed = seed_file(ctx.workdir)
    res = {"seed": str(seed.relative_to(benchlib.REPO) if seed.is_relative_to(benchlib.REPO) else seed)}
    commands = {
        "python -c pass": [benchlib.PY, "-c", "pass"],
        "python -c 'import lxml.etree'": [benchlib.PY, "-c", "import lxml.etree"],
        "virtnet xml2argv": [benchlib.VIRTNET, "xml2argv", str(seed)],
    }
    reason = benchlib.libvirt_reason()
    if reason is None:
        commands["virsh domxml-to-native qemu-argv"] = ["virsh", "-c", "qemu:///system", "domxml-to-native",
                                                        "qemu-argv", str(seed)]
    else:
        res["virsh_skipped"] = reason
    reps = max(5, round(40 * ctx.scale))
    res["reps"] = reps
    envs = {"bytecode cached": benchlib.python_env(ctx.pycache),
            "no bytecode cache": benchlib.python_env(None)}
    res["series"] = {}
    for env_name, env in envs.items():
        series = {label: benchlib.Series(label) for label in commands}
        for label, argv in commands.items():  # warm-up (and bytecode cache fill)
            for _ in range(3):
                benchlib.run(argv, env=env, cwd=ctx.workdir)
        labels = list(commands)
        for rep in range(reps):
            for label in labels[rep % len(labels):] + labels[:rep % len(labels)]:  # rotate the order
                run = benchlib.run(commands[label], env=env, cwd=ctx.workdir)
                series[label].add(run.wall)
        for label, argv in commands.items():
            series[label].add_rss(benchlib.peak_rss_kib(argv, env=env, cwd=ctx.workdir))
        res["series"][env_name] = {label: s.as_dict() for label, s in series.items()}
    env = envs["bytecode cached"]
    # Checks: what the process imports, and how often it compiles the schema.
    run = benchlib.run([benchlib.PY, "-X", "importtime", benchlib.VIRTNET, "xml2argv", str(seed)], env=env)
    res["importtime"] = parse_importtime(run.stderr.decode(errors="replace"))
    run = benchlib.run([benchlib.PY, __file__, "modules", str(seed)], env=env, capture=True)
    res["modules"] = json.loads(run.stdout)
    files = [str(seed)] + [str(p) for p in domaingen.write_mixed(ctx.workdir / "schema-once", 9)]
    run = benchlib.run([benchlib.PY, __file__, "schema-once", *files], env=env, capture=True)
    res["schema_once"] = json.loads(run.stdout)
    phases = []
    for _ in range(max(3, round(15 * ctx.scale))):
        run = benchlib.run([benchlib.PY, __file__, "phases-single", str(seed)], env=env, capture=True)
        phases.append(json.loads(run.stdout))
    res["phases"] = {key: sorted(p[key] for p in phases)[len(phases) // 2] for key in phases[0]}
    return res


def parse_importtime(text):
    """Modules from `python -X importtime` (self and cumulative µs; nesting from the indentation)."""
    modules = []
    for line in text.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, cumulative, name = line[len("import time:"):].split("|", 2)
        stripped = name.rstrip()
        depth = (len(stripped) - len(stripped.lstrip()) - 1) // 2
        modules.append({"name": stripped.strip(), "self_us": int(self_us), "cumulative_us": int(cumulative),
                        "depth": depth})
    forbidden = sorted({m["name"] for m in modules
                        if m["name"].split(".")[0] in FORBIDDEN})
    top = [m for m in modules if m["depth"] == 0]
    return {"count": len(modules), "forbidden": forbidden,
            "top_level": sorted(top, key=lambda m: -m["cumulative_us"])[:12]}


def _child_modules(seed):
    from virtnet.cli import main

    with _quiet():
        main(["xml2argv", seed])
    loaded = sorted(sys.modules)
    print(json.dumps({"count": len(loaded), "forbidden": [m for m in loaded if m.split(".")[0] in FORBIDDEN],
                      "virtnet": [m for m in loaded if m.startswith("virtnet")]}))


def _child_schema_once(files):
    from lxml import etree

    counts = {"relaxng": 0, "rng_parses": 0}
    real_relaxng, real_parse = etree.RelaxNG, etree.parse

    def counting_relaxng(*args, **kwargs):
        counts["relaxng"] += 1
        return real_relaxng(*args, **kwargs)

    def counting_parse(source, *args, **kwargs):
        if str(source).endswith(".rng"):
            counts["rng_parses"] += 1
        return real_parse(source, *args, **kwargs)

    etree.RelaxNG, etree.parse = counting_relaxng, counting_parse
    from virtnet.cli import main
    from virtnet.conf import schema

    with _quiet():
        status = main(["xml2argv", "--host-caps", "none", *files])
    info = schema._compile.cache_info()
    print(json.dumps({"files": len(files), "status": status, "relaxng_compiles": counts["relaxng"],
                      "rng_file_parses": counts["rng_parses"], "compile_cache_misses": info.misses,
                      "compile_cache_hits": info.hits}))


class _quiet:
    """Swallow stdout and stderr (the conversion output and its warnings)."""

    def __enter__(self):
        self.saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = io.StringIO(), io.StringIO()
        return sys.stdout

    def __exit__(self, *exc):
        self.text = sys.stdout.getvalue()
        sys.stdout, sys.stderr = self.saved


def _child_phases_single(seed):
    """Step by step what `virtnet xml2argv FILE` does, each step timed once, in a fresh process."""
    t = [time.perf_counter()]
    out = {}

    def mark(name):
        t.append(time.perf_counter())
        out[name] = t[-1] - t[-2]

    import virtnet.cli as cli
    mark("import virtnet.cli (argparse)")
    args = cli.build_parser().parse_args(["xml2argv", seed])
    mark("build the argparse parser, parse argv")
    load = importlib.import_module
    load("lxml.etree")
    mark("import lxml.etree")
    load("virtnet.conf.load")
    mark("import virtnet.conf (model, checks, defaults, schema)")
    for module in ("virtnet.qemu.argv", "virtnet.qemu.render", "virtnet.runpaths"):
        load(module)
    mark("import virtnet.qemu.argv, render, runpaths")
    load("virtnet.qemu.launch")
    mark("import virtnet.qemu.launch (for qmp_options: socket, subprocess, qmp)")
    from virtnet.conf import schema
    schema.schema()
    mark("compile the RelaxNG schema")
    with _quiet():
        cli.cmd_xml2argv(args)
    mark("convert: read, parse, validate, model, checks, defaults, argv, render")
    print(json.dumps(out))


# ------------------------------------------------------------------ batch conversion


EXPERIMENTS = {
    "baseline": "virtnet as it is (in-process, after startup)",
    "child-index": "model properties find elements through a per-element tag → child dict",
    "child-index+lists": "… and `domain.interfaces` (Children lists) built once per document",
    "child-index+lists+plain-read": "… and the file read whole after an fstat size check",
}


def batch(ctx):
    count = max(100, round(1000 * min(ctx.scale, 1.0)))
    folder = ctx.workdir / "batch"
    folder.mkdir()
    domaingen.write_mixed(folder, count)
    env = benchlib.python_env(ctx.pycache)
    cpu = 1 if (len(__import__("os").sched_getaffinity(0)) > 1) else 0
    res = {"domains": count, "nics_per_domain": 4, "cpu": cpu,
           "kinds": list(domaingen.MIXED_KINDS)}
    argv = [benchlib.VIRTNET, "xml2argv", str(folder)]
    check = benchlib.run(argv, env=env, capture=True, cpu=cpu)
    headers = sum(1 for line in check.stdout.decode().splitlines() if line.startswith("# "))
    assert headers == count, f"expected {count} command lines, got {headers}"
    res["stderr_lines"] = len(check.stderr.decode().splitlines())
    series = benchlib.Series("virtnet xml2argv DIR")
    floor = benchlib.Series("python -c 'import lxml.etree'")
    for _ in range(max(3, round(7 * ctx.scale))):
        series.add(benchlib.run(argv, env=env, cpu=cpu).wall)
        floor.add(benchlib.run([benchlib.PY, "-c", "import lxml.etree"], env=env, cpu=cpu).wall)
    series.add_rss(benchlib.peak_rss_kib(argv, env=env, cpu=cpu))
    floor.add_rss(benchlib.peak_rss_kib([benchlib.PY, "-c", "import lxml.etree"], env=env, cpu=cpu))
    res["wall"] = series.as_dict()
    res["floor"] = floor.as_dict()
    # Per-stage cost, unprofiled.
    stages = []
    for _ in range(3):
        run = benchlib.run([benchlib.PY, __file__, "phases-batch", str(folder)], env=env, capture=True, cpu=cpu)
        stages.append(json.loads(run.stdout))
    res["stages_us"] = {key: sorted(s[key] for s in stages)[1] for key in stages[0]}
    # Experiments (in-process, same inputs, output compared byte for byte with the unchanged code).
    runs = {variant: [] for variant in EXPERIMENTS}
    for _ in range(max(3, round(5 * ctx.scale))):
        for variant in EXPERIMENTS:  # interleaved, so load on the machine hits every variant alike
            run = benchlib.run([benchlib.PY, __file__, "inproc", str(folder), variant], env=env, capture=True,
                               cpu=cpu)
            runs[variant].append(json.loads(run.stdout))
    variants = {variant: {"seconds": statistics.median(r["seconds"] for r in rs),
                          "all": [r["seconds"] for r in rs],
                          "min": min(r["seconds"] for r in rs), "max": max(r["seconds"] for r in rs),
                          "sha256": {r["sha256"] for r in rs}.pop() if len({r["sha256"] for r in rs}) == 1
                          else "differs between runs", "rss_mib": max(r["vmhwm_kib"] for r in rs) / 1024}
                for variant, rs in runs.items()}
    res["experiments"] = variants
    # cProfile of the whole process.
    prof = ctx.workdir / "batch.prof"
    benchlib.run([benchlib.PY, "-m", "cProfile", "-o", str(prof), "-m", "virtnet", "xml2argv", str(folder)],
                 env=env, cpu=cpu)
    res["profile"] = profile_summary(prof, count)
    return res


def profile_summary(path, per=1, limit=14):
    """Top functions by own time and by cumulative time (µs per unit of work), from a .prof file."""
    stats = pstats.Stats(str(path))
    total = stats.total_tt
    rows = []
    for (filename, line, func), (cc, nc, tt, ct, _callers) in stats.stats.items():
        rows.append({"function": _short(filename, line, func), "calls": nc, "tottime": tt, "cumtime": ct})
    by_tt = sorted(rows, key=lambda r: -r["tottime"])[:limit]
    by_ct = sorted((r for r in rows if "virtnet" in r["function"] and "<module>" not in r["function"]),
                   key=lambda r: -r["cumtime"])[:limit]
    imports = sorted((r for r in rows if r["function"].endswith("(<module>)")), key=lambda r: -r["cumtime"])
    return {"total": total, "per": per, "by_tottime": by_tt, "by_cumtime": by_ct, "imports": imports[:limit]}


def _short(filename, line, func):
    if filename == "~":
        return func  # a builtin, e.g. {method 'recv' of '_socket.socket' objects}
    for marker in ("/virtnet/", "/site-packages/", "/benchmarks/"):
        if marker in filename:
            filename = marker.strip("/") + "/" + filename.split(marker, 1)[1]
            if marker == "/site-packages/":
                filename = filename.split("/", 1)[1]
            break
    else:
        filename = re.sub(r"^.*/lib/python3\.\d+/", "", filename)
    return f"{filename}:{line}({func})"


STAGES = (("virtnet.conf.xmlparse", "read_source", "read file"),
          ("virtnet.conf.xmlparse", "parse_bytes", "parse (lxml, hardened)"),
          ("virtnet.conf.schema", "validate", "RelaxNG validate"),
          ("virtnet.conf.checks", "check_domain", "semantic checks"),
          ("virtnet.conf.defaults", "apply_defaults", "defaults (MACs, PCI addresses)"),
          ("virtnet.qemu.argv", "build_argv", "build argv (props)"),
          ("virtnet.qemu.render", "shell_lines", "render (shell quoting)"),
          ("virtnet.qemu.argv", "unrendered_devices", "unrendered-device scan"))


def _child_phases_batch(folder):
    """`xml2argv DIR` in-process with each pipeline stage wrapped in a timer (µs per domain)."""
    from virtnet.cli import main

    totals = {label: 0.0 for _, _, label in STAGES}
    clock = time.perf_counter

    def timed(function, label):
        def wrapper(*args, **kwargs):
            start = clock()
            try:
                return function(*args, **kwargs)
            finally:
                totals[label] += clock() - start
        return wrapper

    for module_name, attr, label in STAGES:
        module = importlib.import_module(module_name)
        setattr(module, attr, timed(getattr(module, attr), label))
    count = len(list(Path(folder).glob("*.xml")))
    from virtnet.conf import schema

    schema.schema()  # compiled once per process; not a per-domain cost
    start = clock()
    with _quiet():
        main(["xml2argv", folder])
    whole = clock() - start
    out = {label: value / count * 1e6 for label, value in totals.items()}
    out["everything else (model, file list, output)"] = (whole - sum(totals.values())) / count * 1e6
    print(json.dumps(out))


def _install_child_index():
    """Experiment (not virtnet's code): a model property finds its element through a tag → child
    dict built once per element, instead of an lxml ElementPath find() per read; the dicts are
    dropped whenever the tree may change (any property write, defaults, the next document)."""
    from virtnet.conf import defaults, load, xmlmodel

    index = {}

    def find(self, node):
        for tag in self.elements:
            children = index.get(node)
            if children is None:
                children = {}
                for child in node:
                    if isinstance(child.tag, str):
                        children.setdefault(child.tag, child)
                index[node] = children
            node = children.get(tag)
            if node is None:
                return None
        return node

    xmlmodel.Prop.find = find
    prop_set = xmlmodel.Prop.__set__

    def set_(self, obj, value):
        index.clear()
        prop_set(self, obj, value)

    xmlmodel.Prop.__set__ = set_
    apply_defaults, load_tree = defaults.apply_defaults, load.load_tree

    def apply_defaults_(domain):  # edits the tree directly as well as through Prop
        index.clear()
        try:
            return apply_defaults(domain)
        finally:
            index.clear()

    def load_tree_(tree, filename):
        index.clear()
        return load_tree(tree, filename)

    defaults.apply_defaults, load.load_tree = apply_defaults_, load_tree_


def _install_list_cache():
    """Experiment (not virtnet's code): `domain.interfaces` and the other Children lists are built
    once per document instead of at every access (the checks ask for them ~48 times a domain)."""
    from virtnet.conf import defaults, load, xmlmodel

    lists = {}
    children_get = xmlmodel.Children.__get__

    def get(self, obj, owner=None):
        if obj is None:
            return self
        key = (obj.node, self)
        value = lists.get(key)
        if value is None:
            value = lists[key] = children_get(self, obj, owner)
        return value

    xmlmodel.Children.__get__ = get
    apply_defaults, load_tree = defaults.apply_defaults, load.load_tree

    def apply_defaults_(domain):
        lists.clear()
        try:
            return apply_defaults(domain)
        finally:
            lists.clear()

    def load_tree_(tree, filename):
        lists.clear()
        return load_tree(tree, filename)

    defaults.apply_defaults, load.load_tree = apply_defaults_, load_tree_


def _install_plain_read():
    """Experiment: size-check with fstat and read the file whole instead of read(1 MiB + 1)."""
    import os

    from virtnet.conf import xmlparse

    read_source = xmlparse.read_source

    def read_source_(path):
        if path == "-":
            return read_source(path)
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size > xmlparse.MAX_BYTES:
                return read_source(path)
            return path, f.read()

    xmlparse.read_source = read_source_


def _child_inproc(folder, variant):
    if "child-index" in variant:
        _install_child_index()
    if "lists" in variant:
        _install_list_cache()
    if "plain-read" in variant:
        _install_plain_read()
    from virtnet.cli import main

    quiet = _quiet()
    start = time.perf_counter()
    with quiet:
        main(["xml2argv", folder])
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "sha256": hashlib.sha256(quiet.text.encode()).hexdigest(),
                      "vmhwm_kib": benchlib.own_peak_rss_kib()}))


if __name__ == "__main__":
    mode, rest = sys.argv[1], sys.argv[2:]
    if mode == "phases-single":
        _child_phases_single(rest[0])
    elif mode == "schema-once":
        _child_schema_once(rest)
    elif mode == "modules":
        _child_modules(rest[0])
    elif mode == "phases-batch":
        _child_phases_batch(rest[0])
    elif mode == "inproc":
        _child_inproc(rest[0], rest[1])
    else:
        sys.exit(f"unknown mode {mode}")
