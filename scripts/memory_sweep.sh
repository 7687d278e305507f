#!/usr/bin/env bash
# The delayed 4-bit memory task, Mamba against GRU as the delay grows: for each horizon H, controller
# and seed a single-cell sweep (train.py --config configs/h<H>_gpu.yaml --horizons H --controllers C
# --seeds S --sweep-dir ROOT/h<H>/C_S), PARALLEL cells at once on the one GPU. Both controllers train
# for the same number of updates at an H (UPDATES; target_accuracy=null), so for the same env-steps.
#
# A cell takes its next steps in each run of this script (scripts/sweep_table.py --next-step says which):
#   train     at most MAX_WALL_S seconds of training without evaluation, then a checkpoint; again
#             until the cell has its UPDATES
#   evaluate  the final evaluation only, from the checkpoint: 1,000 episodes greedy and 1,000 sampled
#             at H, the preset's eval_horizons and 2H, 5H, 10H; at H=20000 that is 2 x 375,000 steps.
#             The episodes run by blocks of steps through the trunk's sequence path (docs/TRAINING.md,
#             "Evaluation, at any horizon"), one trunk pass for both modes.
#   done, failed (diverged)   left alone
# A train piece that reaches UPDATES goes on to the evaluation in the same run when STEPS has both.
# so a run lasts about ceil(cells / PARALLEL) x (MAX_WALL_S + a minute of start-up) when it trains.
# GPU memory: a cell at H=5000 peaks at about 4 GB (gpu/max_memory_allocated_gb in progress.csv), and
# the peak grows with H, so at H=20000 six cells may not fit an 80 GB GPU (PARALLEL=4 there).
# At STOP_AT_S seconds after the start every cell still running gets SIGTERM (a training piece saves
# its checkpoint, an evaluation is dropped and runs again next time), so the tables and tarballs are
# written within a command's time limit. Run the script again until every cell is done.
#
#   MAX_WALL_S=420 bash scripts/memory_sweep.sh runs/sweep24
#   HORIZONS=20000 CONTROLLERS=gru STEPS=evaluate PARALLEL=3 bash scripts/memory_sweep.sh runs/sweep24
#
# Variables (space-separated lists):
#   HORIZONS, CONTROLLERS, SEEDS   the cells (default 1000 5000 10000 20000 / mamba gru / 0 1 2)
#   UPDATES      the budget: "H:N" pairs, or one N for every horizon (default below)
#   STEPS        the steps to run this time: "train evaluate" (default), "train" or "evaluate"
#   PARALLEL     cells at once (default 6); MAX_WALL_S (default 420); STOP_AT_S (default 540)
#   CONFIG       one preset for every horizon instead of configs/h<H>_gpu.yaml
#   EXTRA        more train.py options, before the script's own --set (e.g. "--set device=cpu")
#   OUT          a folder that receives sweep_runs.tgz (ROOT without checkpoint.pt files, with each
#                finished cell's policy.pt from sweep_table.py) and, while cells
#                are unfinished, sweep_resume.tgz.part0, .part1, ... (those cells whole, checkpoints
#                included, in pieces of 15 MiB). To go on elsewhere, unpack both in the repository:
#                  tar xzf sweep_runs.tgz && cat sweep_resume.tgz.part* | tar xzf -
#                and bring ROOT along (a device run's carry: ["runs/sweep24"]).
set -uo pipefail
root=${1:-runs/sweep24}
horizons=(${HORIZONS:-1000 5000 10000 20000})
controllers=(${CONTROLLERS:-mamba gru})
seeds=(${SEEDS:-0 1 2})
updates_spec=${UPDATES:-1000:200 5000:125 10000:80 20000:60}
steps=" ${STEPS:-train evaluate} "
parallel=${PARALLEL:-6}
max_wall=${MAX_WALL_S:-420}
stop_at=${STOP_AT_S:-540}
py=${PYTHON:-python}

# the budget of horizon $1 from UPDATES
updates_for() {
    local pair
    for pair in $updates_spec; do
        case $pair in
        "$1":*) echo "${pair#*:}" && return 0 ;;
        *:*) ;;
        *) echo "$pair" && return 0 ;;
        esac
    done
    echo "UPDATES='$updates_spec' has no budget for horizon $1 (give H:N pairs or one N)" >&2
    return 1
}

for horizon in "${horizons[@]}"; do
    updates_for "$horizon" > /dev/null || exit 2
done

failed=0
stopped=0
# timeout's status 124: the cell got SIGTERM at STOP_AT_S and stopped cleanly
reap() {
    wait -n
    local rc=$?
    case $rc in
    0) ;;
    124) stopped=$((stopped + 1)) ;;
    *) failed=$((failed + 1)) ;;
    esac
}
# the cell $1 at horizon $2 with budget $3: its steps in order (a finished train piece goes on to the
# evaluation in the same run) while each can still have a minute before STOP_AT_S
run_cell() {
    local cell=$1 horizon=$2 updates=$3 step rc sets
    local config=${CONFIG:-configs/h${horizon}_gpu.yaml}
    while :; do
        step=$($py scripts/sweep_table.py --next-step "$updates" "$cell")
        [[ $steps == *" $step "* ]] || return 0
        if [ $((stop_at - SECONDS)) -lt 60 ]; then
            echo "$cell: not started ($step), STOP_AT_S=$stop_at is near"
            return 0
        fi
        sets=(--set "num_updates=$updates" --set target_accuracy=null --set "max_wall_time_s=$max_wall")
        [ "$step" = train ] && sets+=(--set eval_episodes=0)
        mkdir -p "$cell"
        echo "== $(date -u +%FT%TZ) $step to $updates updates" >> "$cell.log"
        echo "$cell: $step (log $cell.log)"
        # shellcheck disable=SC2086  # EXTRA holds several options
        timeout --signal=TERM --kill-after=45 $((stop_at - SECONDS)) \
            $py train.py --config "$config" --horizons "$horizon" --controllers "$controller" --seeds "$seed" \
            --sweep-dir "$cell" ${EXTRA:-} "${sets[@]}" >> "$cell.log" 2>&1
        rc=$?
        [ $rc -eq 0 ] && [ "$step" = train ] && continue
        return $rc
    done
}
for horizon in "${horizons[@]}"; do
    updates=$(updates_for "$horizon")
    for controller in "${controllers[@]}"; do
        for seed in "${seeds[@]}"; do
            cell="$root/h$horizon/${controller}_$seed"
            step=$($py scripts/sweep_table.py --next-step "$updates" "$cell")
            [[ $steps == *" $step "* ]] || continue
            while [ "$(jobs -rp | wc -l)" -ge "$parallel" ]; do
                reap
            done
            run_cell "$cell" "$horizon" "$updates" &
        done
    done
done
while [ -n "$(jobs -rp)" ]; do
    reap
done

$py scripts/sweep_table.py "$root"
# what each cell of ROOT needs next, for the summary and the resume tarball
declare -A counts=()
unfinished=()
for cell in "$root"/h*/*_*/; do
    cell=${cell%/}
    horizon=${cell#"$root"/h}
    horizon=${horizon%%/*}
    if updates=$(updates_for "$horizon" 2> /dev/null); then
        step=$($py scripts/sweep_table.py --next-step "$updates" "$cell")
    else
        step="of unknown budget (no UPDATES for its H)"
    fi
    counts[$step]=$((${counts[$step]:-0} + 1))
    case $step in
    done | failed) ;;
    train | evaluate) unfinished+=("$cell") ;;
    *) compgen -G "$cell/*/checkpoint.pt" > /dev/null && unfinished+=("$cell") ;;
    esac
done
if [ -n "${OUT:-}" ]; then
    tar czf "$OUT/sweep_runs.tgz" --exclude=checkpoint.pt "$root"
    if [ "${#unfinished[@]}" -gt 0 ]; then
        tar czf - "${unfinished[@]}" | split -b 15M -d -a 1 - "$OUT/sweep_resume.tgz.part"
    fi
    ls -l "$OUT"
fi
for step in "${!counts[@]}"; do
    echo "cells of $root with next step '$step': ${counts[$step]}"
done
echo "this time: $stopped cell(s) stopped at STOP_AT_S, $failed exited with an error (see the cells' .log);" \
    "run again while cells are to train or evaluate"
[ "$failed" -eq 0 ]
