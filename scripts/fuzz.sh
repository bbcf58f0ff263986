#!/usr/bin/env bash
# Coverage-guided fuzzing of every parser of untrusted input (src/untrusted.rs), with libFuzzer
# through cargo fuzz, each target for SECONDS (default 60):
#
#     bash scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Seeds come from the test fixtures. Every crash, timeout or out-of-memory input a target finds is
# copied to tests/fixtures/fuzz/TARGET/, which the ordinary test suite feeds again
# (tests/fuzz_regressions.rs). At the end: a table of executions, coverage and findings.
#
# cargo fuzz needs a nightly compiler's flags; on a stable toolchain RUSTC_BOOTSTRAP=1 lets it
# build (no sanitizer: the code is safe Rust, and a panic, hang or allocation past the limit is
# what is looked for).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET="${1:-60}"
shift || true
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
    TARGETS=(run_config safetensors torch_zip meta_pickle tokenizer token_header json_lines api_body)
fi
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
# Only for cargo fuzz (fuzz/ has its own target folder): set for the main build, it would change
# the build's fingerprint and rebuild everything there.
(cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz build -s none --release --fuzz-dir . >/dev/null)

# Seeds: real files of each kind.
seeds=fuzz/corpus
mkdir -p "$seeds"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cargo build --release -q
bin=target/release/thermoformer
THERMOFORMER_CACHE="$tmp/cache" $bin import tests/fixtures/import/gpt2-tied --out "$tmp/run" >/dev/null
head -c 2000 data/tinyshakespeare.txt > "$tmp/corpus.txt"
THERMOFORMER_CACHE="$tmp/cache" $bin train --corpus "$tmp/corpus.txt" --out "$tmp/char" --steps 1 --layers 1 --heads 1 --d-model 8 \
    --context 8 --batch-size 2 --eval-every 1 --eval-batches 1 --sample-tokens 0 --no-progress >/dev/null
seed() { mkdir -p "$seeds/$1"; cp "$2" "$seeds/$1/$(basename "$2")"; }
seed run_config "$tmp/run/config.json"
seed safetensors "$tmp/char/model.safetensors"
seed torch_zip tests/fixtures/import/nanogpt-bias/ckpt.pt
seed meta_pickle tests/fixtures/import/meta.pkl
seed tokenizer "$tmp/char/tokenizer.json"
seed tokenizer tests/fixtures/import/gpt2-tied/tokenizer.json
for f in "$tmp"/cache/tokens-*.bin; do head -c 4096 "$f" > "$tmp/header.bin"; seed token_header "$tmp/header.bin"; break; done
printf '{"text": "one document"}\n\n{"text": "two", "id": 2}\n' > "$tmp/docs.jsonl"; seed json_lines "$tmp/docs.jsonl"
mkdir -p "$seeds/api_body"
printf '\000{"text": "First", "temperatures": {"0.1": 0.5}}' > "$seeds/api_body/score"
printf '\001{"prompt": "Fi", "tokens": 5, "top_k": 3, "seed": 2}' > "$seeds/api_body/generate"
printf '\002{"text": "First", "temperatures": [0.5, 2]}' > "$seeds/api_body/sweep"
printf '\003{"text": "First", "layers": [1], "heads": [0]}' > "$seeds/api_body/response"
printf '\004{"text": "First", "grid": [0.1, 10, 5]}' > "$seeds/api_body/phase"

report="$tmp/report.md"
echo "| target | seconds | executions | exec/s | coverage (edges) | features | corpus | findings |" > "$report"
echo "|---|---|---|---|---|---|---|---|" >> "$report"
for t in "${TARGETS[@]}"; do
    log="$tmp/$t.log"
    mkdir -p "fuzz/artifacts/$t"
    # -rss_limit_mb: an input that makes a parser hold 2 GiB is a finding; -timeout: so is one
    # that takes 10 s.
    (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run -s none --release --fuzz-dir . "$t" "corpus/$t" -- \
        -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
        -artifact_prefix="artifacts/$t/" >"$log" 2>&1) || true
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    last=$(grep -E '^#[0-9]+' "$log" | grep -o 'cov: [0-9]* ft: [0-9]* corp: [0-9]*' | tail -1)
    cov=$(echo "$last" | awk '{print $2}'); ft=$(echo "$last" | awk '{print $4}'); corp=$(echo "$last" | awk '{print $6}')
    found=()
    for f in fuzz/artifacts/"$t"/*; do
        [ -f "$f" ] || continue
        mkdir -p "tests/fixtures/fuzz/$t"
        cp "$f" "tests/fixtures/fuzz/$t/"
        found+=("$(basename "$f")")
    done
    echo "| $t | $SECONDS_PER_TARGET | ${execs:-?} | ${rate:-?} | ${cov:-?} | ${ft:-?} | ${corp:-?} | ${found[*]:-none} |" >> "$report"
    if [ ${#found[@]} -gt 0 ]; then
        echo "$t: findings saved to tests/fixtures/fuzz/$t/ (the log: fuzz/artifacts/$t.log)" >&2
        cp "$log" "fuzz/artifacts/$t.log"
    fi
done
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
cat "$report"
