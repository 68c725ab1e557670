"""Runtime latency: predict (batch 1/8/32) and on-device add-class, on the embedded default.

    python benchmarks/bench_runtime.py [BUNDLE] [--device auto|cpu|cuda]

Without BUNDLE it trains SimpleCIL on the embedded shapes set and exports a
bundle into a temporary directory first. Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from click.testing import CliRunner


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle", nargs="?")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    from edgecl.cli import main as cli

    runner = CliRunner()
    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle
        if bundle is None:
            from edgecl.experiment import RunConfig, run_experiment
            from export import export_run

            run_experiment(RunConfig(), out_dir=Path(tmp) / "run", log=lambda s: None)
            bundle = str(export_run(Path(tmp) / "run", Path(tmp) / "bundle").path)
        out = runner.invoke(cli, ["bench", bundle, "--device", args.device, "--batch-sizes", "1,8,32,128"])
        print(out.output, end="")


if __name__ == "__main__":
    main()
