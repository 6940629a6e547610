#!/usr/bin/env bash
# The whole pipeline offline, without an OpenAI key: the two sample transcripts,
# the project's local OpenAI-compatible server, an embedded store in a temp folder.
set -euo pipefail
cd "$(dirname "$0")"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.test.txt
export TIKTOKEN_CACHE_DIR=${TIKTOKEN_CACHE_DIR:-$PWD/.cache/tiktoken}
.venv/bin/python tools/seed_tiktoken_cache.py "$TIKTOKEN_CACHE_DIR" >/dev/null
work=$(mktemp -d)
export TRANSCRIPTS_DIR=$PWD/tests/fixtures/real CHECKPOINT_DIR=$work/checkpoints CHROMA_PATH=$work/chroma_db
export OPENAI_API_KEY=sk-local-demo OPENAI_BASE_URL=http://127.0.0.1:${DEMO_PORT:-8089}/v1
.venv/bin/python local_openai/server.py --port "${DEMO_PORT:-8089}" --latency-ms 50 &
server=$!
trap 'kill $server 2>/dev/null' EXIT
sleep 1
.venv/bin/python ingestion/generate_file_queue.py
MAX_ITERATIONS=0 .venv/bin/python ingestion/process_queue_worker.py
.venv/bin/python ingestion/optimize_chromadb.py
if [ -f ingestion/query_chromadb.py ]; then
  .venv/bin/python ingestion/query_chromadb.py "Is the penalty a tax under the Anti-Injunction Act?" -k 3
fi
echo "state in $work"
