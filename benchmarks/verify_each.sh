#!/usr/bin/env bash
# Verify, one at a time and signed, every submission under a tree whose newest successful record
# of SEED was made on this machine's CPU kind and that has no verification yet; each verify is
# stopped after LIMIT seconds (SIGINT). A record made on another CPU kind (AVX2 vs AVX512) would
# only come back `not_comparable` after a full re-run, so it is left for a machine of its kind.
# Resumable like run_each.sh, and it waits while $RUN_EACH_HOLD (default /tmp/run_each.hold) exists.
#     benchmarks/verify_each.sh submissions/gsm-symbolic 1 600 /work/maintainer-key/maintainer_ed25519
set -uo pipefail
tree=${1:?usage: verify_each.sh TREE SEED LIMIT_SECONDS KEY}
seed=${2:?seed}
limit=${3:?limit}
key=${4:?signing key}
cd "$(dirname "$0")/.."
[ -r "$key" ] || { echo "verify_each.sh: cannot read the signing key $key" >&2; exit 2; }
folders=$(.venv/bin/python - "$tree" "$seed" <<'EOF'
import json, sys
from pathlib import Path

import torch

tree, seed = Path(sys.argv[1]), int(sys.argv[2])
here = torch.backends.cpu.get_cpu_capability()
for manifest in sorted(tree.rglob("manifest.json")):
    folder = manifest.parent
    if any((folder / "verifications").glob("*.json")):
        continue
    records = sorted((folder / "runs").glob(f"*-s{seed}-*.json"))
    succeeded = [json.loads(p.read_text()) for p in records]
    succeeded = [r for r in succeeded if r.get("status") == "success"]
    if succeeded and succeeded[-1]["environment"].get("cpu_capability") == here:
        print(folder)
EOF
)
for folder in $folders; do
  while [ -e "${RUN_EACH_HOLD:-/tmp/run_each.hold}" ]; do sleep 5; done
  timeout -s INT -k 60 "$limit" .venv/bin/peftrepro verify "$folder" --seed "$seed" --sign-with "$key" \
    || echo "$folder: exit $?"
done
