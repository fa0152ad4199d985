#!/usr/bin/env bash
# Sensitivity of the prototype probes to J (prototypes per class): mAP vs J, binarized vs float.
#
#   scripts/j_sweep.sh BANK OUT [LR_PROTOBIN] [LR_PROTOFLOAT]
#
# Trains protobin and protofloat for J in {1, 2, 5, 10, 20, 40} with seeds 0-2 on BANK (resuming:
# finished runs are skipped), then plots OUT/map_vs_prototypes_per_class.png with `patchprobe plot`.
# Default learning rates are the ones the demo's search picked on tiny-mae (see docs/probes.md).
set -euo pipefail
bank=${1:?usage: scripts/j_sweep.sh BANK OUT [LR_PROTOBIN] [LR_PROTOFLOAT]}
out=${2:?usage: scripts/j_sweep.sh BANK OUT [LR_PROTOBIN] [LR_PROTOFLOAT]}
declare -A lr=([protobin]=${3:-0.1} [protofloat]=${4:-0.1})
for probe in protobin protofloat; do
  for J in 1 2 5 10 20 40; do
    for seed in 0 1 2; do
      run="$out/$probe/J=$J/seed=$seed"
      [ -f "$run/metrics.json" ] && continue
      patchprobe train --bank "$bank" --probe "$probe" --prototypes-per-class "$J" \
        --lr "${lr[$probe]}" --seed "$seed" --out "$run" --quiet > /dev/null
      echo "$probe J=$J seed=$seed: $(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['test']['map'])" "$run/metrics.json")"
    done
  done
done
patchprobe plot "$out" --x prototypes_per_class --metric map
