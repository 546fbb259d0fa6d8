#!/usr/bin/env bash
# Generate Python code (+ typing stubs) for the API in proto/ into src/clawpot/v1/, and the E2B envd
# services (proto/e2b/envd, E2B's public .proto files) into src/clawpot/e2b/envd/gen/ with the same
# generators the e2b SDK uses (protoc-gen-py: protobuf-py messages; protoc-gen-connectrpc: Connect stubs).
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
  # envd: the proto root is proto/e2b/envd so the files keep E2B's names (process/process.proto).
  local envd="$out/clawpot/e2b/envd/gen"
  mkdir -p "$envd"
  "$PY" -m grpc_tools.protoc -Iproto/e2b/envd \
    --py_out="$envd" --connectrpc_out="$envd" \
    --plugin=protoc-gen-py=.venv/bin/protoc-gen-py \
    --plugin=protoc-gen-connectrpc=.venv/bin/protoc-gen-connectrpc \
    process/process.proto filesystem/filesystem.proto
  cat > "$envd/__init__.py" <<'PYEOF'
"""Generated from proto/e2b/envd (E2B's envd .proto files) by scripts/gen-proto.sh — do not edit."""
PYEOF
}

if [[ "${1:-}" == "--check" ]]; then
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  generate "$tmp"
  for dir in clawpot/v1 clawpot/e2b/envd/gen; do
    if ! diff -r -x __pycache__ "$tmp/$dir" "src/$dir" >/dev/null; then
      echo "src/$dir is out of date with proto/: run scripts/gen-proto.sh" >&2
      diff -r -x __pycache__ "$tmp/$dir" "src/$dir" | head -20 >&2
      exit 1
    fi
  done
  echo "generated code in sync"
else
  generate src
  echo "generated src/clawpot/v1 and src/clawpot/e2b/envd/gen"
fi
