# Sourced by the project's scripts: puts the tools that scripts/setup.sh installed on PATH.
lungstream_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PATH="$lungstream_root/.cache/venv/bin:$PATH"
export CARGO_TERM_PROGRESS_WHEN=never
# tch builds against the libtorch inside the torch wheel that scripts/setup.sh installed.
for site in "$lungstream_root"/.cache/venv/lib/python3*/site-packages; do
    export LIBTORCH="$site/torch"
done
