#!/bin/sh
# The Chroma server (render.yaml's transcripts-chroma, variant A of RENDER_INGESTION_WORKER_INSTRUCTIONS.md).
#
#   chroma_server.sh --path DIR [chroma run's other options]
#
# `chroma run` with these options, and beside it, once, ingestion/storage/chroma_sqlite.py on its
# database (DIR/chroma.sqlite3; on a new disk, as soon as the server has made it): SQLite planner
# statistics, so that the workers' lookups by metadata do not read the whole store (75 ms each at
# 620,000 vectors, 1-2 ms with them), and the full-text index's merge setting. It writes them only
# where they are missing, then exits. The server replaces this shell (it gets Render's SIGTERM).
set -eu

path=
prev=
for arg in "$@"; do
    [ "$prev" = --path ] && path=$arg
    case $arg in --path=*) path=${arg#--path=} ;; esac
    prev=$arg
done
if [ -z "$path" ]; then
    echo "usage: chroma_server.sh --path DIR [chroma run's other options]" >&2
    exit 2
fi

# The project root: this script lives in <root>/deploy/ (in the image, /app/deploy/).
root=$(cd "$(dirname "$0")/.." && pwd)
python "$root/ingestion/storage/chroma_sqlite.py" --wait "$path/chroma.sqlite3" &
exec chroma run "$@"
