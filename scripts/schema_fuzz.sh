#!/usr/bin/env bash
# Schema-driven fuzzing of `thermoformer serve` with schemathesis (from PyPI), against the OpenAPI
# document the server itself serves (GET /api/openapi.json, generated from the handlers' types):
#
#     bash scripts/schema_fuzz.sh [MAX_EXAMPLES]      # default 100 per operation
#
# Serves the GPT-2 fixture (tests/fixtures/import/gpt2-tied, imported), runs every phase
# (examples, coverage, fuzzing, stateful) with the checks: no 5xx, every answer inside the schema
# (status code, content type, body), then checks that the server still answers.
set -euo pipefail
cd "$(dirname "$0")/.."
MAX_EXAMPLES="${1:-100}"
venv=.venv/schemathesis
[ -x "$venv/bin/schemathesis" ] || { python3 -m venv "$venv"; "$venv/bin/pip" install -q schemathesis; }
cargo build --release -q
tmp=$(mktemp -d)
server=""
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
target/release/thermoformer import tests/fixtures/import/gpt2-tied --out "$tmp/run" >/dev/null
port=$((20000 + RANDOM % 20000))
target/release/thermoformer serve --checkpoint "$tmp/run" --port "$port" 2>"$tmp/serve.log" &
server=$!
url="http://127.0.0.1:$port"
for _ in $(seq 100); do curl -sf "$url/api/info" >/dev/null && break; sleep 0.1; done
echo "schemathesis $("$venv/bin/schemathesis" --version | awk '{print $NF}') against $url/api/openapi.json, $MAX_EXAMPLES examples per operation"
status=0
"$venv/bin/schemathesis" run "$url/api/openapi.json" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    --max-examples "$MAX_EXAMPLES" --workers 2 --request-timeout 60 --no-color \
    --report junit --report-dir "$tmp/report" || status=$?
if curl -sf "$url/api/info" >/dev/null; then
    echo "after the run the server still answers GET /api/info"
else
    echo "the server no longer answers" >&2
    status=1
fi
exit $status
