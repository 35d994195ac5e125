#!/usr/bin/env bash
# Run every submission under a tree, one at a time, for one seed, each stopped after LIMIT seconds
# (SIGINT: the run leaves a `cancelled` record, as any interrupted run). A design candidate's
# corpus: records are written as each run ends; a folder that already has a record for the seed
# is skipped, so an interrupted sweep resumes where it stopped. While the file $RUN_EACH_HOLD
# (default /tmp/run_each.hold) exists, no new run starts: a timing elsewhere gets idle cores.
# With RUN_EACH_AFTER_SEED=K, only folders that already have a seed-K record run (more seeds of
# the rows a corpus has, before its new rows).
#     benchmarks/run_each.sh submissions/gsm-symbolic 1 900
set -uo pipefail
tree=${1:?usage: run_each.sh TREE SEED [LIMIT_SECONDS]}
seed=${2:?seed}
limit=${3:-900}
cd "$(dirname "$0")/.."
for manifest in $(find "$tree" -name manifest.json | sort); do
  folder=$(dirname "$manifest")
  if compgen -G "$folder/runs/*-s$seed-*.json" >/dev/null; then
    continue
  fi
  if [ -n "${RUN_EACH_AFTER_SEED:-}" ] && ! compgen -G "$folder/runs/*-s$RUN_EACH_AFTER_SEED-*.json" >/dev/null; then
    continue
  fi
  while [ -e "${RUN_EACH_HOLD:-/tmp/run_each.hold}" ]; do sleep 5; done
  timeout -s INT -k 60 "$limit" .venv/bin/peftrepro run "$folder" --seed "$seed" || echo "$folder: exit $?"
done
