#!/usr/bin/env bash
# The POPGym campaign of docs/POPGYM.md with every cell at once: 4 envs x {mamba, gru} x seeds
# 0 1 2, one single-cell sweep per process (each steps its own vector env on one CPU core; all
# train on the one GPU). Each process stops after MAX_WALL_S seconds with a checkpoint (status
# time_limit); running the script again resumes the unfinished cells and reuses the finished
# ones, so a campaign longer than a machine's time limit goes in pieces. Then one results.md per
# env (MMER mean +- std over seeds per controller) from the cells' results.csv.
#
#   MAX_WALL_S=480 bash scripts/popgym_campaign.sh runs/popgym
#
# Optional: ENVS, CONTROLLERS, SEEDS (space-separated) pick a subset; EXTRA adds train.py options
# (e.g. EXTRA="--set device=cpu"); OUT, a folder that receives one tarball of the run files
# without checkpoints (a remote machine that returns only a few files).
set -uo pipefail
root=${1:-runs/popgym}
max_wall=${MAX_WALL_S:-480}
envs=(${ENVS:-repeat_first_easy repeat_previous_easy count_recall_easy position_only_cartpole_easy})
controllers=(${CONTROLLERS:-mamba gru})
seeds=(${SEEDS:-0 1 2})
py=${PYTHON:-python}
for env in "${envs[@]}"; do
    for controller in "${controllers[@]}"; do
        for seed in "${seeds[@]}"; do
            cell="$root/$env/${controller}_$seed"
            mkdir -p "$cell"
            # shellcheck disable=SC2086  # EXTRA holds several options
            $py train.py --config "configs/popgym_$env.yaml" --controllers "$controller" --seeds "$seed" \
                --sweep-dir "$cell" --set "max_wall_time_s=$max_wall" ${EXTRA:-} > "$cell.log" 2>&1 &
        done
    done
done
failed=0
for job in $(jobs -p); do
    wait "$job" || failed=$((failed + 1))
done
$py scripts/popgym_table.py "$root"
if [ -n "${OUT:-}" ]; then
    tar czf "$OUT/popgym_runs.tgz" --exclude='*.pt' "$root"
fi
echo "$failed cell process(es) failed (see $root/<env>/<cell>.log)"
[ "$failed" -eq 0 ]
