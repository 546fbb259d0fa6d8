#!/usr/bin/env bash
# Generate Python code (+ typing stubs) for the API in proto/ into src/clawpot/v1/.
# `--check` regenerates into a temp dir and fails if the committed code differs (CI runs this).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY=.venv/bin/python

generate() {
  local out="$1"
  mkdir -p "$out"
  "$PY" -m grpc_tools.protoc -Iproto \
    --python_out="$out" --grpc_python_out="$out" \
    --mypy_out="$out" --mypy_grpc_out="$out" \
    --plugin=protoc-gen-mypy=.venv/bin/protoc-gen-mypy \
    --plugin=protoc-gen-mypy_grpc=.venv/bin/protoc-gen-mypy_grpc \
    proto/clawpot/v1/*.proto
  cat > "$out/clawpot/v1/__init__.py" <<'PYEOF'
"""Generated from proto/clawpot/v1 by scripts/gen-proto.sh — do not edit."""
PYEOF
}

if [[ "${1:-}" == "--check" ]]; then
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  generate "$tmp"
  if ! diff -r -x __pycache__ "$tmp/clawpot/v1" src/clawpot/v1 >/dev/null; then
    echo "src/clawpot/v1 is out of date with proto/: run scripts/gen-proto.sh" >&2
    diff -r -x __pycache__ "$tmp/clawpot/v1" src/clawpot/v1 | head -20 >&2
    exit 1
  fi
  echo "generated code in sync"
else
  generate src
  echo "generated src/clawpot/v1"
fi
