#!/usr/bin/env bash
# The command-line workflow: generate a dataset, fit it with a checkpoint, score the
# model, predict every row's component, and show what the model file holds.
#
#   bash examples/command_line.sh [DIR]
#
# writes into DIR (created if missing; default: a new temporary directory, kept and named
# at the end). Run it again with the same DIR after an interruption (Ctrl-C, a killed job):
# the dataset is kept, the fit continues from its checkpoint, the outputs are replaced.
# The sizes and the cluster come from environment variables, small by default (seconds);
# full size, on a local Dask cluster of worker processes (1.2 GiB of data):
#
#   ROWS=10_000_000 FEATURES=16 COMPONENTS=8 CHUNK_ROWS=250_000 CLUSTER=local \
#       bash examples/command_line.sh big
#
# CLUSTER is what `--cluster` takes: `threads` (no cluster: Dask's threads in this
# process), `local` (a LocalCluster, one worker process per core), a scheduler address
# such as tcp://HOST:8786, or a cluster config (cluster_configs/*.yaml).
set -euo pipefail

ROWS=${ROWS:-50_000}
FEATURES=${FEATURES:-4}
COMPONENTS=${COMPONENTS:-3}
CHUNK_ROWS=${CHUNK_ROWS:-10_000}
CLUSTER=${CLUSTER:-threads}
DIR=${1:-$(mktemp -d "${TMPDIR:-/tmp}/distmix-cli-XXXXXX")}
mkdir -p "$DIR"

DATA=$DIR/data.zarr
MODEL=$DIR/model.npz

# 1. a Zarr array of rows drawn from a known mixture (its parameters in the attributes);
#    written all or nothing, so an existing one is complete: keep it
if [ ! -e "$DATA" ]; then
    distmix generate "$DATA" --rows "$ROWS" --features "$FEATURES" \
        --components "$COMPONENTS" --chunk-rows "$CHUNK_ROWS" --seed 0
fi

# 2. batch EM, the state saved after every iteration; --resume continues from the
#    checkpoint if it exists (exactly the result of an uninterrupted fit), --overwrite
#    replaces the model file of an earlier run
distmix fit "$DATA" --components "$COMPONENTS" --cluster "$CLUSTER" \
    --checkpoint "$DIR/fit-checkpoint.npz" --resume --out "$MODEL" --overwrite

# 3. mean log-likelihood per row, BIC and AIC
distmix score "$MODEL" "$DATA" --cluster "$CLUSTER"

# 4. the most probable component of every row, as a Zarr array of int64 (-1: never written)
distmix predict "$MODEL" "$DATA" --out "$DIR/labels.zarr" --overwrite --cluster "$CLUSTER"

# 5. what the model file holds
distmix info "$MODEL"

echo "command-line workflow done; files in $DIR"
