"""Keep some residual groups of a trained network: the starting point for distilling a smaller student.

Usage: python tools/prune_groups.py WEIGHTS --keep 0 1 2 --out init.safetensors
Group i of the input becomes group k of the output, for the k-th index in --keep; everything outside the groups
(first conv, norms, conv after body, upsampler) is kept as is. The output carries its ModelConfig, so
`mambaesr-edge train --init init.safetensors` builds the smaller network from it. How the shipped default model
was made from DVMSR this way is in MODEL_CARD.md.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from mambaesr_edge.checkpoint import load_model, save_weights
from mambaesr_edge.model import MambaSR, count_parameters

GROUP_KEY = re.compile(r"^layers\.(\d+)\.(.*)$")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights", type=Path)
    parser.add_argument("--keep", type=int, nargs="+", required=True, help="indices of the groups to keep, in order")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    source, _ = load_model(args.weights, scan_impl="reference")
    if len(set(args.keep)) != len(args.keep) or not all(0 <= g < source.config.groups for g in args.keep):
        raise SystemExit(f"--keep must list distinct group indices in 0..{source.config.groups - 1}")
    new_index = {old: new for new, old in enumerate(args.keep)}
    state = {}
    for key, tensor in source.state_dict().items():
        match = GROUP_KEY.match(key)
        if match is None:
            state[key] = tensor
        elif int(match.group(1)) in new_index:
            state[f"layers.{new_index[int(match.group(1))]}.{match.group(2)}"] = tensor
    pruned = MambaSR(source.config.replace(groups=len(args.keep)))
    pruned.load_state_dict(state, strict=True)
    save_weights(pruned, args.out, {"pruned_from": args.weights.name, "kept_groups": ",".join(map(str, args.keep))})
    print(f"{args.out}: groups {args.keep} of {args.weights.name}, {count_parameters(pruned):,} parameters")


if __name__ == "__main__":
    main()
