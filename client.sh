#!/usr/bin/env bash
# Runs `unreliable client` against IP:PORT; any further arguments go to the client.
# Finds the binary on PATH, next to this script, or in target/release (building it if needed,
# when cargo and the sources are here); exits 127 when there is none and none can be built.
set -euo pipefail

usage() {
    echo "usage: $0 IP PORT [client options...]"
    echo "  e.g. $0 127.0.0.1 8080 --count 1000 --concurrency 8"
    echo "  the client options: unreliable client --help"
}

if [[ $# -eq 1 && ($1 == -h || $1 == --help) ]]; then
    usage
    exit 0
fi
if [[ $# -lt 2 ]]; then
    usage >&2
    exit 2
fi
port=$2
if ! [[ $port =~ ^[0-9]{1,5}$ ]] || ((10#$port < 1 || 10#$port > 65535)); then
    echo "$0: PORT must be an integer from 1 to 65535, not '$port'" >&2
    usage >&2
    exit 2
fi
if [[ -z $1 || $1 == -* ]]; then
    echo "$0: IP comes first and must be an address or hostname, not '$1'" >&2
    usage >&2
    exit 2
fi
for option in "${@:3}"; do
    case $option in
    --host | --host=* | --port | --port=*)
        # IP and PORT are the first two arguments; a second --host/--port would be a conflict.
        echo "$0: give the address as IP PORT only, not also as '$option'" >&2
        usage >&2
        exit 2
        ;;
    esac
done

script_dir=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)

if bin=$(command -v unreliable); then
    :
elif [[ -x $script_dir/unreliable && ! -d $script_dir/unreliable ]]; then
    bin=$script_dir/unreliable
elif [[ -x $script_dir/target/release/unreliable ]]; then
    bin=$script_dir/target/release/unreliable
elif [[ -f $script_dir/Cargo.toml ]] && command -v cargo >/dev/null; then
    echo "$0: building unreliable (cargo build --release)..." >&2
    if ! (cd -- "$script_dir" && cargo build --release >&2); then
        echo "$0: the build failed (see above)" >&2
        exit 127
    fi
    bin=$script_dir/target/release/unreliable
else
    echo "$0: no unreliable binary on PATH, next to this script or in target/release, and no" \
        "cargo and Cargo.toml here to build one: copy the binary next to $(basename -- "$0")" >&2
    exit 127
fi
# Whichever copy is found first is used: name it, so a stale one is noticed.
echo "$0: using $bin" >&2

exec "$bin" client --host "$1" --port "$((10#$port))" "${@:3}"
