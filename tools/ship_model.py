"""Ship a named model (issue 15): write ``mambaesr_edge/assets/<file>`` from a training run's result or from outside
weights, with the model config and its provenance in the safetensors metadata.

    python tools/ship_model.py fast --run runs/named_fast                     # the run's model_best.safetensors
    python tools/ship_model.py quality --weights ../shared/weights/dvmsr/team07_DVMSR.pth \
        --provenance "DVMSR released weights (NTIRE 2024), unchanged; MIT licence: assets/LICENSE.DVMSR"

The file name is the registry's (models.py, ``weights_file``); the run's config.json and eval.json give the recipe,
steps, data and validation split recorded in the metadata (key ``mambaesr_edge.provenance``, JSON). The weights are
loaded through ``checkpoint.load_model`` (strict keys, shapes, finite values) before they are written.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mambaesr_edge.checkpoint import load_model, save_weights  # noqa: E402
from mambaesr_edge.model import count_parameters  # noqa: E402
from mambaesr_edge.models import PARAM_BUDGET, get_model  # noqa: E402
from mambaesr_edge.resources import asset_path  # noqa: E402
from mambaesr_edge.run_folder import CONFIG, EVAL, FINAL_WEIGHTS, weights_step  # noqa: E402
from mambaesr_edge.weights_format import PROVENANCE_KEY  # noqa: E402


def git_commit() -> str:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False)
    return out.stdout.strip() or "unknown"


def run_provenance(run: Path) -> tuple[Path, dict]:
    """The run's result weights and what made them (its config.json and eval.json, the weights' step).

    A run from before the validation split (eval.json without ``result``) gives its final EMA weights."""
    config = json.loads((run / CONFIG).read_text())
    result = json.loads((run / EVAL).read_text())
    train = config["train"]
    weights = run / result.get("result", FINAL_WEIGHTS)
    step = weights_step(weights) or -1
    if "result" in result:
        selected = f"{result['result']} at step {result.get('result_step')} by {result.get('selected_by')}"
    else:
        selected = (f"the EMA weights at the run's last step ({step}); no validation split (the run predates it), "
                    f"{train.get('val_dir')} scored for the record only")
    return weights, {
        "source": "distilled by mambaesr-edge train from the pruned DVMSR released weights",
        "init": train.get("init_weights"),
        "teacher": train.get("teacher"),
        "alpha": train.get("alpha"),
        "steps": step,
        "schedule": f"{train.get('schedule')} over {train.get('iterations')} steps, lr {train.get('lr')} -> {train.get('min_lr')}, "
        f"warmup {train.get('warmup')}",
        "schedule_completed": step >= int(train.get("iterations") or 0),
        "batch": f"{train.get('batch_size')} x {train.get('patch')}x{train.get('patch')} patches",
        "data": "291 images (T91 + BSD200)",
        "val_from_train": train.get("val_from_train", 0),
        "selected": selected,
        "run": run.name,
        "trained_at_commit": config.get("git", {}).get("commit", "unknown"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="registered model name (models.py)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", type=Path, help="a training run folder (config.json, eval.json, its result weights)")
    source.add_argument("--weights", type=Path, help="outside weights (.pth / .safetensors), shipped unchanged")
    parser.add_argument("--provenance", default="", help="where --weights come from (required with --weights)")
    args = parser.parse_args()

    model_entry = get_model(args.name)
    if model_entry.weights_file is None:
        parser.error(f"models.py names no weights_file for {args.name!r}: set it first")
    if args.run is not None:
        weights, provenance = run_provenance(args.run)
    else:
        if not args.provenance:
            parser.error("--weights needs --provenance (where the weights come from, and their licence)")
        weights, provenance = args.weights, {"source": args.provenance, "file": args.weights.name}
    model, _ = load_model(weights)
    params = count_parameters(model)
    if params > PARAM_BUDGET:
        parser.error(f"{args.name}: {params:,} parameters is over the {PARAM_BUDGET:,} budget")
    provenance.update({"name": args.name, "network": model_entry.network, "params": params, "shipped_at_commit": git_commit()})
    out = save_weights(model, asset_path(model_entry.weights_file), {PROVENANCE_KEY: json.dumps(provenance, sort_keys=True)})
    print(f"wrote {out} ({params:,} parameters)")
    print(json.dumps(provenance, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
