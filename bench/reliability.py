"""The reliability and security report: every group of `tests/reliability/`, measured at the report's
sizes, printed as one table.

    python3 bench/reliability.py                 # all groups (~20 min: the load soak alone runs 10 min)
    python3 bench/reliability.py --quick         # the CI sizes (~3 min)
    python3 bench/reliability.py --only load     # some groups: model_faults other_faults bad_input guardrails load tenancy

Exit status 1 when a figure misses its target. docs/reliability.md records the latest table.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # models come from packages; never probe a model hub

GROUPS = ["model_faults", "other_faults", "bad_input", "guardrails", "load", "tenancy"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the CI sizes instead of the report's")
    parser.add_argument("--only", nargs="+", choices=GROUPS, default=GROUPS, metavar="GROUP")
    args = parser.parse_args()
    from tests.reliability.figures import Figure

    figures: list[Figure] = []
    for group in args.only:
        started = time.perf_counter()
        module = importlib.import_module(f"tests.reliability.{group}")
        found = module.measure(bench=not args.quick)
        figures.extend(found)
        print(f"  {group}: {len(found)} figures in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    width = max(len(f.group) for f in figures)
    print(f"{'group':<{width}}  ok  figure")
    for f in figures:
        print(f"{f.group:<{width}}  {'yes' if f.ok else 'NO ':<3} {f.value}")
    for f in figures:
        if not f.ok:
            print(f"\n{f.group} / {f.name} missed its target: " + "; ".join(f.failures[:20]))
    cores = os.cpu_count()
    print(f"\n{date.today()}, python {platform.python_version()}, {cores} cores, {platform.machine()}, {'quick' if args.quick else 'full'} sizes")
    return 0 if all(f.ok for f in figures) else 1


if __name__ == "__main__":
    raise SystemExit(main())
