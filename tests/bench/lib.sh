# Helpers of the scripts the bench VM runs (bench-in-guest,
# profile-in-guest); sourced. The caller sets $out (logs) and, for
# `synced`, $agent (the agent's pid) and $agent_log (its log).

runtime=${RTB_BENCH_RUNTIME:-8}

# secs A B: B - A, in seconds.
secs() { awk -v a="$1" -v b="$2" 'BEGIN { print b - a }'; }

# fio_json NAME DEV RW BS QD: one fio job, O_DIRECT, libaio, $runtime
# seconds; its JSON in /tmp/NAME.json.
fio_json() {
    fio --name="$1" --filename="$2" --rw="$3" --bs="$4" --iodepth="$5" \
        --ioengine=libaio --direct=1 --size=128M --runtime="$runtime" \
        --time_based --output-format=json >"/tmp/$1.json" 2>"/tmp/$1.err" ||
        { echo "bench: fio $1 failed: $(cat "/tmp/$1.err")" >&2; return 1; }
}

# listening PORT: waits (30 s at most) until a server listens on PORT.
listening() {
    local i=0
    while ! ss -Hltn "sport = :$1" | grep -q LISTEN; do
        i=$((i + 1))
        [ $i -le 300 ] || { echo "bench: nothing listens on port $1" >&2; exit 1; }
        sleep 0.1
    done
}

# synced DEV: waits until the server holds every record of DEV durably;
# fails at once if the agent ($agent) is gone (its log is $agent_log).
synced() {
    rtbackupctl sync --timeout 600 "$1" >/dev/null &
    local s=$!
    while kill -0 "$s" 2>/dev/null; do
        if ! kill -0 "$agent" 2>/dev/null; then
            kill "$s" 2>/dev/null || true
            echo "bench: the agent exited; the end of $agent_log:" >&2
            tail -20 "$agent_log" >&2
            exit 1
        fi
        sleep 0.2
    done
    wait "$s"
}

# applied STORE VOLUME: waits (10 minutes at most) until the server has
# applied the volume's journal up to its latest point.
applied() {
    local latest at i=0
    latest=$(rtbackup-server points --store "$1" --volume "$2" --json | jq '.[-1].seq')
    while at=$(rtbackup-server status --store "$1" --json | jq --arg v "$2" '.[] | select(.volume == $v) | .applied_seq') &&
        [ "$at" != "$latest" ]; do
        i=$((i + 1))
        [ $i -le 1200 ] || { echo "bench: the server did not apply up to seq $latest (at $at)" >&2; exit 1; }
        sleep 0.5
    done
}
