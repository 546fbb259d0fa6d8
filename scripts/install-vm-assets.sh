#!/bin/sh
# Build (or reuse from the cache) and install the guest kernel, root filesystem and Firecracker.
# Same as: clawpot assets install [OPTIONS]   (see --help; data dir: $CLAWPOT_DATA_DIR, cache: $CLAWPOT_CACHE_DIR)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
if [ -x "$here/../.venv/bin/clawpot" ]; then
    exec "$here/../.venv/bin/clawpot" assets install "$@"
fi
exec clawpot assets install "$@"
