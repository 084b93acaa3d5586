#!/usr/bin/env bash
# The comparison of docs/nnunet.md: nnU-Net's default loss vs nnUNetTrainerMbLS and nnU-Net's CE
# vs nnUNetTrainerCEMbLS on the bundled MNI task, 2D, SEEDS paired seeds (same initial weights
# and batches with nnUNet_n_proc_DA=0), each run EPOCHS x ITERS iterations, then nnUNetv2_predict
# (no test-time mirroring) on the validation and test subjects and `mls-tutorial score` with
# temperature scaling fitted on the validation subjects. Needs the nnU-Net venv on PATH.
#   bash docs/evidence/nnunet/run.sh WORK        (EPOCHS=5 ITERS=8 SEEDS="1 2 3" JOBS=2 DEVICE=cpu)
# then: python docs/evidence/nnunet/table.py WORK   (writes table.md and table.json here)
set -euo pipefail
WORK=$(realpath -m "${1:?usage: run.sh WORK}")
EPOCHS=${EPOCHS:-5} ITERS=${ITERS:-8} SEEDS=${SEEDS:-"1 2 3"} JOBS=${JOBS:-2} DEVICE=${DEVICE:-cpu}
export nnUNet_raw=$WORK/raw nnUNet_preprocessed=$WORK/preprocessed nnUNet_results=$WORK/results
export nnUNet_def_n_proc=1 nnUNet_compile=0
nnUNet_extTrainer=$(mls-tutorial nnunet path 2>/dev/null)
export nnUNet_extTrainer
DS=Dataset501_MNI
mkdir -p "$WORK"
[ -d "$nnUNet_raw/$DS" ] || mls-tutorial nnunet export-mni "$nnUNet_raw/$DS"
[ -f "$nnUNet_preprocessed/$DS/nnUNetPlans.json" ] \
  || nnUNetv2_plan_and_preprocess -d 501 -c 2d -np 1 -npfp 1 > "$WORK/plan.log" 2>&1
cp "$nnUNet_raw/$DS/splits_final.json" "$nnUNet_preprocessed/$DS/"
export nnUNet_n_proc_DA=0  # after planning, which fails on 0: augmentation in the trainer's process
# the cases scored: validation subjects (temperature fit) and test subjects (reported)
mkdir -p "$WORK/eval/images" "$WORK/eval/labels"
for f in "$nnUNet_raw/$DS"/imagesTr/mni_val_* "$nnUNet_raw/$DS"/imagesTs/*; do ln -sf "$f" "$WORK/eval/images/"; done
for f in "$nnUNet_raw/$DS"/labelsTr/mni_val_* "$nnUNet_raw/$DS"/labelsTs/*; do ln -sf "$f" "$WORK/eval/labels/"; done

one() {  # one trainer name: train, predict, score (skips the finished steps)
  local tr=$1 log="$WORK/logs/$1.log"
  [ -f "$WORK/score/$tr/metrics.json" ] && return 0
  {
    nnUNetv2_train 501 2d 0 -tr "$tr" -device "$DEVICE"
    nnUNetv2_predict -i "$WORK/eval/images" -o "$WORK/pred/$tr" -d 501 -c 2d -f 0 -tr "$tr" \
      --save_probabilities --disable_tta -npp 1 -nps 1 -device "$DEVICE"
    mls-tutorial score "$WORK/pred/$tr" "$WORK/eval/labels" --out "$WORK/score/$tr" \
      --val-cases mni_val_00 mni_val_01 --no-progress
  } > "$log" 2>&1 || { echo "FAILED $tr (see $log)"; return 1; }
  echo "done $tr $(date +%T)"
}
export -f one
export WORK DEVICE
mkdir -p "$WORK/logs"
for s in $SEEDS; do
  for fam in nnUNetTrainer nnUNetTrainerMbLS nnUNetTrainerCELoss nnUNetTrainerCEMbLS; do
    echo "${fam}_${EPOCHS}epochs_${ITERS}iters_seed${s}_noval"
  done
done | xargs -P "$JOBS" -I{} bash -c 'one {}'
