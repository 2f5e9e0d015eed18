#!/usr/bin/env bash
# Makes deploy/build/hot-functions.txt again: the functions a running
# daemon executes, which build.rs has LLD lay out first in a release
# binary for x86_64 Linux (see build.rs for why).
#
#   deploy/build/hot-functions.sh          # from the repository root
#
# Needs valgrind (callgrind), curl and nm besides the Rust toolchain, and
# takes about five minutes. It builds the release binary, runs two daemons
# (text and JSON logs) under callgrind against the sandbox, drives them
# through what a production daemon does (first start, rotation, verify,
# listing, sinks of every format, a hook, the token API, /metrics, a
# reload, `rotate`, an incident `revoke`, LINE failing and answering
# again, alerts), and keeps every executed function the binary defines.
#
# Run it after larger changes and commit the list with them: a function
# missing from the list (new code) is laid out among the cold ones, which
# costs resident memory, never correctness (`linetokd bench`, file_MiB).
set -euo pipefail

cd "$(dirname "$0")/../.."
for tool in valgrind curl nm; do
    command -v "$tool" >/dev/null || { echo "hot-functions.sh: needs $tool" >&2; exit 1; }
done
[ -n "${HOT_FUNCTIONS_NO_BUILD:-}" ] || cargo build --release --locked --bin linetokd
bin=$PWD/target/release/linetokd
out=$PWD/deploy/build/hot-functions.txt
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# The port a process wrote into its log once it listens.
port_in() {
    local log=$1 pattern=$2 port=""
    for _ in $(seq 1 600); do
        port=$(grep -oE "$pattern" "$log" 2>/dev/null | head -1 | grep -oE '[0-9]+$' || true)
        [ -n "$port" ] && { echo "$port"; return; }
        sleep 0.1
    done
    echo "hot-functions.sh: no port in $log after a minute; it ends:" >&2
    tail -5 "$log" >&2
    exit 1
}

# One instance: a sandbox, then a daemon under callgrind with its logs in
# format $1.
instance() {
    local format=$1 dir=$work/$1
    mkdir -p "$dir/keys" "$dir/sinks" "$dir/state"
    : >"$dir/sandbox.toml"
    local channels=""
    for c in 1 2; do
        "$bin" keygen --out "$dir/keys" --name "ch$c" >/dev/null
        printf 'secret%026d' "$c" >"$dir/ch$c.secret"
        chmod 600 "$dir/ch$c.secret"
        cat >>"$dir/sandbox.toml" <<EOF
[[channels]]
id = "300000000$c"
secret = "$(cat "$dir/ch$c.secret")"
keys = [ { kid = "kid-ch$c", public_key_file = "$dir/keys/ch$c.public.jwk" } ]
EOF
        channels+="
[[channel]]
id = \"300000000$c\"
name = \"ch$c\"
key_file = \"$dir/keys/ch$c.private.pem\"
kid = \"kid-ch$c\"
secret_file = \"$dir/ch$c.secret\"
  [[channel.group]]
  name = \"backend\"
  api_key_file = \"$dir/api.key\"
  sinks = [ { path = \"$dir/sinks/ch$c-backend.json\", format = \"json\" },
            { path = \"$dir/sinks/ch$c-backend.env\", format = \"env\" } ]
  on_rotate = [\"/bin/true\"]
  [[channel.group]]
  name = \"vendor\"
  sinks = [ { path = \"$dir/sinks/ch$c-vendor.txt\", format = \"raw\" } ]
"
    done
    head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/api.key"
    chmod 600 "$dir/api.key"
    "$bin" sandbox --listen 127.0.0.1:0 --config "$dir/sandbox.toml" >"$dir/sandbox.log" 2>&1 &
    pids+=($!)
    local sandbox
    sandbox=$(port_in "$dir/sandbox.log" 'listening on http://127.0.0.1:[0-9]+')
    echo "http://127.0.0.1:$sandbox/_alerts" >"$dir/webhook.url"
    chmod 600 "$dir/webhook.url"
    cat >"$dir/linetokd.toml" <<EOF
[daemon]
database = "$dir/state/linetokd.db"
state_dir = "$dir/state"
line_api = "http://127.0.0.1:$sandbox"
listen = "127.0.0.1:0"
log_format = "$format"

[rotation]
token_lifetime = "2m"
rotate_before = "60s"
rotation_jitter = "10s"
verify_interval = "15s"
reconcile_interval = "15s"
max_issues_per_hour = 120

[alerts]
[[alerts.receiver]]
name = "ops"
type = "webhook"
url_file = "$dir/webhook.url"
$channels
EOF
    valgrind --tool=callgrind --demangle=no --log-file="$dir/valgrind.log" \
        --callgrind-out-file="$dir/callgrind.out" \
        "$bin" run --config "$dir/linetokd.toml" >"$dir/daemon.log" 2>&1 &
    pids+=($!)
    echo "$!" >"$dir/daemon.pid"
    echo "$sandbox" >"$dir/sandbox.port"
}

# Drives instance $1 through a daemon's life.
drive() {
    local dir=$work/$1 daemon sandbox key
    # `listen=127.0.0.1:N` in text logs, `"listen":"127.0.0.1:N"` in JSON.
    daemon=$(port_in "$dir/daemon.log" 'listen[":=]+127\.0\.0\.1:[0-9]+')
    sandbox=$(cat "$dir/sandbox.port")
    key=$(cat "$dir/api.key")
    local faults=http://127.0.0.1:$sandbox/_sandbox/faults
    sleep 20
    for _ in $(seq 1 20); do
        curl -s -H "authorization: Bearer $key" \
            "http://127.0.0.1:$daemon/v1/channels/ch1/groups/backend/token" >/dev/null || true
        curl -s "http://127.0.0.1:$daemon/metrics" >/dev/null || true
        curl -s "http://127.0.0.1:$daemon/healthz" "http://127.0.0.1:$daemon/readyz" >/dev/null || true
        sleep 1
    done
    "$bin" rotate --config "$dir/linetokd.toml" --channel ch1 --group vendor >/dev/null || true
    "$bin" revoke --config "$dir/linetokd.toml" --channel ch2 --group vendor >/dev/null || true
    kill -HUP "$(cat "$dir/daemon.pid")"
    sleep 10
    curl -s -X PUT -H 'content-type: application/json' "$faults" \
        -d '{"endpoints":{"*":{"error_rate":0.3,"rate_limit_rate":0.1,"retry_after_secs":3}}}' >/dev/null
    sleep 60
    curl -s -X PUT -H 'content-type: application/json' "$faults" -d '{"down":true,"endpoints":{}}' >/dev/null
    sleep 20
    curl -s -X PUT -H 'content-type: application/json' "$faults" -d '{"endpoints":{}}' >/dev/null
    sleep 90
    kill -TERM "$(cat "$dir/daemon.pid")"
}

instance text
instance json
drive text &
driver_text=$!
drive json &
driver_json=$!
# Each driver on its own: `wait A B` reports only B's status.
wait "$driver_text" || { echo "hot-functions.sh: the text run failed" >&2; exit 1; }
wait "$driver_json" || { echo "hot-functions.sh: the JSON run failed" >&2; exit 1; }
for format in text json; do
    # callgrind writes its profile as the daemon exits; a minute at most.
    for _ in $(seq 1 60); do
        kill -0 "$(cat "$work/$format/daemon.pid")" 2>/dev/null || break
        sleep 1
    done
    [ -s "$work/$format/callgrind.out" ] || { echo "hot-functions.sh: no profile from the $format daemon" >&2; exit 1; }
done

nm "$bin" | awk '$2 ~ /^[tTwW]$/ { print $3 }' | LC_ALL=C sort -u >"$work/defined"
grep -hoE '^c?fn=\([0-9]+\) .+' "$work"/text/callgrind.out "$work"/json/callgrind.out |
    sed -E 's/^c?fn=\([0-9]+\) //' | LC_ALL=C sort -u >"$work/executed"
LC_ALL=C comm -12 "$work/executed" "$work/defined" >"$out"
echo "hot-functions.sh: $(wc -l <"$out") functions in $out"
