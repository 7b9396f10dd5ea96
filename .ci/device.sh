#!/usr/bin/env bash
# A lent GPU session's checks, as one script (CI never runs it): CUDA tests, demo-checkpoint training, sss-bench.
#
# From the repository root, with torch (CUDA), numpy, scipy, pytest and tqdm installed and nibabel,
# opensimplex, platformdirs importable:
#   bash .ci/device.sh full DATA OUT [TRAIN_S]           two demo runs from scratch (template alone; the four
#                                                        healthy T1s), then every sss-bench part
#   bash .ci/device.sh finetune DATA OUT TRAIN_S INIT    two template runs from INIT's weights (paper-strength
#                                                        and unit-std noise), then the noise, sss and volume parts
#   bash .ci/device.sh general SHARED_DATA OUT [TRAIN_S] [INIT]
#                                                        the general T1 checkpoint: small (from INIT, default
#                                                        resources/general_t1.pt) and medium (from scratch) side
#                                                        by side on the training T1s of resources/README.md, then
#                                                        each calibrated on the held-out two (half precision, 3-D
#                                                        regions) and sss-eval on the lesion-dev tumour cases at
#                                                        noise seeds 0-2 (LAMBDA, 100); every brain aligned first
#   bash .ci/device.sh bench - OUT [REV]                 no training: the volume part (the UNet as it is and
#                                                        compiled), the noise and sss parts, the CUDA tests, the
#                                                        volume stages on the GPU beside REV's on the host
#                                                        (.ci/side_by_side.py) and the compile part
# DATA holds the healthy T1s named in resources/README.md (<name>/t1.nii.gz); OUT receives logs, the trained
# model.pt files and bench.json. Runs live in /tmp (full checkpoints are large). A dry run on a CPU:
#   DEV=cpu BENCH=--quick bash .ci/device.sh full DATA OUT 20
#   DEV=cpu BATCH=4 INIT=resources/demo_small.pt bash .ci/device.sh general ../shared/data OUT 40
set -u
MODE=$1 DATA=$2 OUT=$3 TRAIN_S=${4:-240} INIT=${5:-${INIT:-}}
DEV=${DEV:-cuda} BENCH=${BENCH:-} BATCH=${BATCH:-64}
RUNS=/tmp/sss-runs T1=$DATA/mni152-2009a/t1.nii.gz
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 SSS_VIEWER_CACHE_DIR=/tmp/sss-cache
mkdir -p "$OUT" "$RUNS"
stage() { echo "== [$SECONDS s] $*"; }

train() {   # name, sss-train options...; SIGINT at the end of the budget saves model.pt (EMA weights)
    local name=$1; shift
    timeout -s INT -k 60 "$TRAIN_S" python3 -m trainer.cli --out "$RUNS/$name" --preset small --batch-size "$BATCH" \
        --steps 1000000 --lr 2e-4 --save-every 2000 --preview-every 2000 --log-every 50 --seed 0 "$@" \
        >"$OUT/train-$name.log" 2>&1
}

stage "machine"
python3 -c "import nibabel, opensimplex, platformdirs, tqdm, scipy, SimpleITK, sss_viewer.cli.bench, sss_viewer.cli.detect, \
trainer.cli, trainer.demo" || exit 3
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
python3 -c "import torch, platform; print(platform.python_version(), torch.__version__, torch.cuda.get_device_name())"

if [ "$MODE" = general ]; then   # DATA is ../shared/data; the lists are resources/README.md's
    H=$DATA/healthy W=$DATA/healthy-with-skull LAMBDA=${LAMBDA:-100} INIT=${INIT:-resources/general_t1.pt}
    # voxelmorph-test is left out: an identity affine over LIA voxels, its "axial" slices are coronal
    TRAIN="$H/mni152-2009a/t1.nii.gz $H/nfbs-A00028185/t1.nii.gz $H/ixi002/t1.nii.gz
           $H/brainchop/t1.nii.gz $H/freesurfer-brainmask/t1.nii.gz $W/colin27/t1.nii.gz $W/ixi012-hh-1211/t1.nii.gz
           $W/ixi013-hh-1212/t1.nii.gz $W/ixi014-hh-1236/t1.nii.gz $W/ixi015-hh-1258/t1.nii.gz
           $W/ixi033-hh-1259/t1.nii.gz $W/ixi034-hh-1260/t1.nii.gz $W/studyforrest-sub-02/t1.nii.gz
           $W/pycortex-s1/t1.nii.gz $W/dcm2nii-trio-b17/t1.nii.gz"   # the last three: brains extracted by deepbet
    HELD_OUT="$W/ixi039-hh-1261/t1.nii.gz $W/niivue-fs-norm/t1.nii.gz"
    stage "general: small from $INIT and medium from scratch, side by side for $TRAIN_S s"
    # shellcheck disable=SC2086
    ALIGN="--align mni-affine --max-timestep 400"
    # shellcheck disable=SC2086
    train general-small --modality t1 --unit-noise $ALIGN --init "$INIT" --data $TRAIN &
    # shellcheck disable=SC2086
    train general-medium --modality t1 --unit-noise $ALIGN --preset medium --data $TRAIN &
    wait
    for name in general-small general-medium; do
        tail -2 "$OUT/train-$name.log"; tail -1 "$RUNS/$name/log.jsonl"
        stage "$name: calibrated on the held-out healthy scans at lambda $LAMBDA, half precision"
        # shellcheck disable=SC2086
        for budget in 0.005 0.02 0.1; do    # a looser budget when a model flags more than that everywhere
            # shellcheck disable=SC2086
            timeout 120 python3 -m trainer.calibrate "$RUNS/$name/model.pt" --healthy $HELD_OUT --out "$OUT/$name.pt" \
                --timestep "$LAMBDA" --budget $budget --persist 3 --half --device "$DEV" > "$OUT/calibrate-$name.json" && break
        done
        grep -A3 '"threshold"' "$OUT/calibrate-$name.json"
        for mod in t1 t1ce; do
            timeout 120 python3 -m trainer.evaluate --manifest "$DATA/lesion-dev/manifest.csv" --modality $mod \
                --cases brats25-00000,tcga-du-7294$([ $mod = t1ce ] && echo ,brats_2013_pat0001_1,brats_2013_pat0002_1,brats_2013_pat0003_1) \
                --checkpoint "$OUT/$name.pt" --methods "sss${LAMBDA}_pp,sss${LAMBDA}_3d3_pp,sss300_pp" --device "$DEV" \
                --seeds 0,1,2 --out "$RUNS/eval-$name-$mod" | tail -4   # one seed's row can be luck
        done
    done
    tar czf "$OUT/runs.tgz" -C "$RUNS" --exclude='*.pt' .
    ls -la "$OUT"
    exit 0
fi

if [ "$MODE" = bench ]; then   # the target first; each stage capped so that one cannot eat the lease
    REV=${4:-9caabd9}
    stage "sss-bench volume ($DEV): both presets, the UNet as it is and compiled"
    timeout 240 python3 -m sss_viewer.cli.bench --device "$DEV" --parts volume --json "$OUT/bench-volume.json" $BENCH
    stage "sss-bench noise, sss ($DEV)"
    timeout 120 python3 -m sss_viewer.cli.bench --device "$DEV" --parts noise,sss --json "$OUT/bench.json" $BENCH
    stage "CUDA tests"
    timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tail -25
    if git cat-file -e "$REV^{commit}" 2>/dev/null; then
        stage "volume stages: $REV on the host, the current code on $DEV"
        timeout 60 python3 .ci/side_by_side.py "$REV" volume --device "$DEV" | tee "$OUT/side-by-side-volume.txt"
    else
        stage "no git history here: the side-by-side volume stages left out"
    fi
    stage "sss-bench compile ($DEV): compiled UNet throughput against the matmul peak"
    timeout 150 python3 -m sss_viewer.cli.bench --device "$DEV" --parts compile --json "$OUT/bench-compile.json" $BENCH
    exit 0
fi

stage "$MODE: two sss-train runs side by side for $TRAIN_S s (a small UNet alone leaves the GPU idle)"
if [ "$MODE" = full ]; then
    NAMES="mixed template"
    train mixed --data "$T1" "$DATA/voxelmorph-test/t1.nii.gz" "$DATA/brainchop/t1.nii.gz" \
        "$DATA/freesurfer-brainmask/t1.nii.gz" &
    train template --data "$T1" &
else
    NAMES="tuned tuned-unit"
    train tuned --init "$INIT" --data "$T1" &
    train tuned-unit --init "$INIT" --unit-noise --data "$T1" &
fi
stage "CUDA tests, meanwhile"
python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tail -25
wait
for name in $NAMES; do
    tail -2 "$OUT/train-$name.log"; tail -1 "$RUNS/$name/log.jsonl"
    cp "$RUNS/$name/model.pt" "$OUT/$name.pt"
done

stage "demo quality ($DEV)"
for name in $NAMES; do
    timeout 60 python3 -m trainer.demo "$T1" --check "$OUT/$name.pt" --device "$DEV" | tee "$RUNS/check-$name.json"
done

if [ "$MODE" = full ]; then
    stage "sss-detect on the demo volume ($DEV)"
    timeout 60 python3 -m sss_viewer.cli.detect resources/demo_t1.nii.gz --out "$RUNS/detect" \
        --checkpoint "$OUT/mixed.pt" --device "$DEV" && head -40 "$RUNS/detect/demo_t1.json"
    stage "sss-bench ($DEV)"
    timeout $(( 560 - SECONDS > 30 ? 560 - SECONDS : 30 )) python3 -m sss_viewer.cli.bench --device "$DEV" \
        --json "$OUT/bench.json" $BENCH
else
    stage "sss-bench noise, sss, volume ($DEV)"
    python3 -m sss_viewer.cli.bench --device "$DEV" --parts noise,sss,volume --json "$OUT/bench.json" $BENCH
fi

stage "packing"
tar czf "$OUT/runs.tgz" -C "$RUNS" --exclude='*.pt' .
ls -la "$OUT"
