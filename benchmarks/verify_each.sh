#!/usr/bin/env bash
# Verify, one at a time and signed, every submission under a tree whose claim of SEED (its newest
# success of the current manifest) was made on this machine's CPU kind, and that no signed
# verification vouches for yet; each verify is stopped after LIMIT seconds (SIGINT). A claim made
# on another CPU kind (AVX2 vs AVX512) would only come back `not_comparable` after a full re-run,
# so it is left for a machine of its kind.
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
import sys
from pathlib import Path

import torch

from peftrepro.collect import load_submission
from peftrepro.manifest import find_manifests

tree, seed = Path(sys.argv[1]), int(sys.argv[2])
here = torch.backends.cpu.get_cpu_capability()
for manifest in find_manifests([tree]):
    sub = load_submission(manifest.parent)  # claims: the newest success per seed, current manifest
    if any(v.signer for v in sub.verifications.values()):
        continue  # a signed verification of one of its seeds already counts
    claim = sub.claims.get(seed)
    if claim is not None and claim.record.environment.get("cpu_capability") == here:
        print(sub.folder)
EOF
)
for folder in $folders; do
  while [ -e "${RUN_EACH_HOLD:-/tmp/run_each.hold}" ]; do sleep 5; done
  timeout -s INT -k 60 "$limit" .venv/bin/peftrepro verify "$folder" --seed "$seed" --sign-with "$key" \
    || echo "$folder: exit $?"
done
