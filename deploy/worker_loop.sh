#!/bin/sh
# The background worker's loop (render.worker.yaml, variant B of RENDER_INGESTION_WORKER_INSTRUCTIONS.md).
#
#   worker_loop.sh [PAUSE_SECONDS]        (default 300)
#
# A Render background worker that exits is started again, so the worker runs this loop:
# refresh the queue (new or changed transcripts of a new deploy), work until the queue is
# empty (MAX_ITERATIONS=0), pause, again. Each step runs in the background and the loop
# waits for it, so that this shell (PID 1 in the container, started by run-as-ingest) can
# pass Render's SIGTERM on: the worker forwards it to the file's process, which gives the
# file back to pending (exit code 7); then the loop ends. A step that fails (a store busy
# with another writer, the embeddings API down, a refused key) is logged and tried again
# after the pause.
set -u

pause=${1:-300}
case $pause in
    '' | *[!0-9]*) echo "usage: worker_loop.sh [PAUSE_SECONDS]" >&2; exit 2 ;;
esac

# The project root: this script lives in <root>/deploy/ (in the image, /app/deploy/).
cd "$(dirname "$0")/.." || exit 2

stop=0
pid=
rc=0

on_term() {
    stop=1
    [ -z "$pid" ] || kill -TERM "$pid" 2>/dev/null
}
trap on_term TERM INT

# run CMD [ARG...]: start CMD in the background and wait until it has really exited (a
# signal interrupts `wait`; the trap then forwards it and we wait again). Sets rc.
run() {
    "$@" &
    pid=$!
    [ "$stop" = 0 ] || kill -TERM "$pid" 2>/dev/null  # a signal that came before pid was known
    rc=0
    wait "$pid" || rc=$?
    while kill -0 "$pid" 2>/dev/null; do
        rc=0
        wait "$pid" || rc=$?
    done
    pid=
}

say() {
    echo "worker_loop: $*"
}

while [ "$stop" = 0 ]; do
    run python ingestion/generate_file_queue.py
    [ "$rc" = 0 ] || say "generate_file_queue.py exited $rc"
    [ "$stop" = 0 ] || break
    run python ingestion/process_queue_worker.py
    case $rc in
        0) ;;
        7) say "process_queue_worker.py was interrupted (exit 7: file released)" ;;
        *) say "process_queue_worker.py exited $rc (see its last lines); next try in ${pause}s" ;;
    esac
    [ "$stop" = 0 ] || break
    run sleep "$pause"
done
say "stopped by a signal"
exit 0
