"""Runs the command line like ``python -m bertft``, then writes this process's rank, weight digest and metrics.

Lightning's DDP launcher starts the other ranks by running this same command again, so each rank reports, to
``$BERTFT_RESULT_DIR/rank<N>.json`` (files, because ranks printing to one stdout interleave).
"""

import hashlib
import json
import os
import sys
from pathlib import Path

from bertft.cli import main

if __name__ == "__main__":
    cli = main(sys.argv[1:])
    digest = hashlib.sha256()
    for _, value in sorted(cli.model.state_dict().items()):
        digest.update(value.detach().float().cpu().numpy().tobytes())
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    result = {"rank": cli.trainer.global_rank, "sha256": digest.hexdigest(), "metrics": metrics}
    path = Path(os.environ["BERTFT_RESULT_DIR"]) / f"rank{cli.trainer.global_rank}.json"
    path.write_text(json.dumps(result))
