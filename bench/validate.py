"""How long `rill validate` takes in a fresh process (target: under 0.5 s on 2 cores).

    python bench/validate.py [FLOW ...]     # default: every flow in flows/

Peers need 0.65-1.4 s here just to import and build a pipeline. Validating imports no model backend:
tests/test_compiler.py checks that torch, llama_cpp, qdrant_client and the scheduler stay unloaded.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = 7


def time_validate(path: Path) -> list[float]:
    samples = []
    for _ in range(RUNS):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", "from rillflow.runtime.cli import main; main()", "validate", str(path)],
                              capture_output=True, text=True, check=False)
        samples.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise SystemExit(f"{path} is not valid:\n{done.stdout}{done.stderr}")
    return samples


def main() -> None:
    paths = [Path(p) for p in sys.argv[1:]] or sorted((ROOT / "flows").glob("*.yaml"))
    bare = []
    for _ in range(RUNS):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        bare.append(time.perf_counter() - start)
    print(f"{'flow':<40} {'median':>8} {'best':>8}")
    print(f"{'(python3 -c pass, for scale)':<40} {statistics.median(bare):>7.3f}s {min(bare):>7.3f}s")
    for path in paths:
        samples = time_validate(path)
        print(f"{path.name:<40} {statistics.median(samples):>7.3f}s {min(samples):>7.3f}s")


if __name__ == "__main__":
    main()
