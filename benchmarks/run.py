"""Run virtnet's benchmarks and write benchmarks/results.md (`make bench`).

  .venv/bin/python benchmarks/run.py [--quick] [--only SECTION,...] [--out FILE]

Sections: single, batch, taps, start, store (memory is reported for each). Host sections need
root and skip with the reason otherwise; libvirt comparisons skip when no daemon answers. All
namespaces, taps, QEMU processes and temporary folders the run creates are removed again.
Raw numbers and profiles go to benchmarks/.work/ (ignored by git).
"""

import argparse
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402

SECTIONS = ("single", "batch", "taps", "start", "store")


@dataclass
class Context:
    scale: float
    workdir: Path
    pycache: Path
    tap_sizes: tuple = (1, 16, 256)
    notes: list = field(default_factory=list)


def _section(name):
    if name in ("single", "batch"):
        import bench_conversion

        return getattr(bench_conversion, name)
    if name == "taps":
        import bench_taps

        return bench_taps.measure
    if name == "start":
        import bench_start

        return bench_start.measure
    if name == "store":
        import bench_store

        return bench_store.measure
    raise ValueError(name)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and smaller sizes (a smoke run)")
    parser.add_argument("--only", help="comma list of sections: " + ", ".join(SECTIONS))
    parser.add_argument("--out", default=str(benchlib.BENCH_DIR / "results.md"), help="the Markdown report")
    parser.add_argument("--raw", default=str(benchlib.BENCH_DIR / ".work" / "results.json"),
                        help="raw numbers (JSON)")
    parser.add_argument("--report-only", metavar="RAW", help="only rewrite --out from a raw results JSON")
    args = parser.parse_args(argv)
    if args.report_only:
        import report

        Path(args.out).write_text(report.render(json.loads(Path(args.report_only).read_text())))
        return 0
    sections = args.only.split(",") if args.only else list(SECTIONS)
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    if benchlib.VIRTNET is None:
        sys.exit("benchmarks: .venv/bin/virtnet is missing; run `make venv` (or `make bench`) first")

    started = time.monotonic()
    results = {"machine": benchlib.machine_line(), "date": time.strftime("%Y-%m-%d %H:%M %Z"),
               "quick": args.quick, "sections": {}, "loadavg_start": os.getloadavg()}
    benchlib.log(f"machine: {results['machine']}")
    with benchlib.temp_dir("run") as workdir:
        ctx = Context(scale=0.3 if args.quick else 1.0, workdir=workdir, pycache=workdir / "pycache")
        for name in sections:
            benchlib.log(f"[{time.monotonic() - started:6.1f}s] {name} ...")
            section_dir = workdir / name
            section_dir.mkdir()
            ctx.workdir = section_dir
            try:
                results["sections"][name] = _section(name)(ctx)
            except Exception:
                results["sections"][name] = {"error": traceback.format_exc()}
                benchlib.log(traceback.format_exc())
            skipped = results["sections"][name].get("skipped")
            if skipped:
                benchlib.log(f"  skipped: {skipped}")
    results["seconds"] = time.monotonic() - started
    results["loadavg_end"] = os.getloadavg()
    raw = Path(args.raw)
    raw.parent.mkdir(parents=True, exist_ok=True)
    benchlib.dump_json(raw, results)
    import report

    Path(args.out).write_text(report.render(results))
    benchlib.log(f"[{results['seconds']:6.1f}s] wrote {args.out} and {raw}")
    failed = [name for name, data in results["sections"].items() if "error" in data]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
