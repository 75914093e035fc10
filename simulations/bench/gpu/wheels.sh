#!/bin/bash
# Wheels of what the bench needs and a lent GPU machine's image lacks (the tool library's
# device/KINDS.md lists what it has: torch, numpy, rich, matplotlib, scipy, scikit-learn,
# grpcio, protobuf, pyyaml, requests, typer, ...), into .whl/ at the repository's root
# (ignored by git), for that machine's Python (3.12 unless PY says otherwise). Versions
# are this checkout's .venv's. Pure-Python packages published only as sources are built
# into wheels here. Run here, then carry `.whl` (see run.sh).
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
grep -qsx '/.whl/' .git/info/exclude || echo /.whl/ >>.git/info/exclude
py=${PY:-3.12}
venv=${VENV:-.venv/bin/python}
# Imported by the plain, inprocess and vectorized runners (found by running them with
# only these on top of the image's packages: simulations/bench/gpu/README.md).
names=(flwr hydra-core omegaconf antlr4-python3-runtime pydantic pydantic-core
       annotated-types typing-inspection mnist1d iterators tomli tomli-w pycryptodome
       cryptography cffi pycparser)
pins=()
for name in "${names[@]}"; do
  version=$("$venv" -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p')
  [ -n "$version" ] || { echo "not in $venv: $name" >&2; exit 1; }
  pins+=("$name==$version")
done
rm -rf .whl && mkdir .whl
platforms=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux1 \
           manylinux_2_34 manylinux_2_31 manylinux_2_24; do
  platforms+=(--platform "${tag}_x86_64")
done
for pin in "${pins[@]}"; do
  if ! python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$py" \
      --implementation cp "${platforms[@]}" -d .whl "$pin" 2>/dev/null; then
    # Published as source only: a pure-Python wheel, built here.
    python3 -m pip wheel -q --no-deps -w .whl "$pin"
  fi
done
ls .whl
du -sh .whl
