#!/bin/sh
# Put the Clawpot guest init and agent into an existing ext4 image, without mounting it.
# Usage: setup-rootfs.sh IMAGE      Same as: clawpot assets inject IMAGE
set -eu
if [ $# -ne 1 ]; then
    echo "usage: $0 IMAGE.ext4" >&2
    exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
if [ -x "$here/../.venv/bin/clawpot" ]; then
    exec "$here/../.venv/bin/clawpot" assets inject "$1"
fi
exec clawpot assets inject "$1"
