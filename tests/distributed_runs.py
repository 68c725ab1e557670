"""Worker of tests/test_distributed.py, started by torchrun: runs each named configuration and saves its run.

    python -m torch.distributed.run --nproc-per-node 2 tests/distributed_runs.py OUT CONFIGS.json [--fail-rank R]

``CONFIGS.json`` maps a name to ``RunConfig`` fields; rank 0 writes ``OUT/NAME``. ``--fail-rank R``: rank
``R`` raises right after joining the group while the others wait in a collective (the hang test).
"""

import json
import sys
from pathlib import Path

import torch


def main(argv: list[str]) -> None:
    from edgecl import distributed
    from edgecl.experiment import RunConfig, run_experiment

    out, configs = Path(argv[0]), json.loads(Path(argv[1]).read_text())
    torch.set_num_threads(1)
    distributed.init_from_env("cpu")
    completed = False
    try:
        if "--fail-rank" in argv:
            if distributed.rank() == int(argv[argv.index("--fail-rank") + 1]):
                raise RuntimeError("injected failure")
            distributed.all_sum(torch.zeros(1))  # the other ranks wait here
        for name, fields in configs.items():
            run_experiment(RunConfig(**fields), out_dir=out / name, log=lambda s: None)
        completed = True
    finally:
        distributed.shutdown(completed)


if __name__ == "__main__":
    main(sys.argv[1:])
