#!/usr/bin/env bash
# Posts a JSON-lines file of events (e.g. `swabstream simulate`'s
# events.jsonl) to the ingest gateway, as a device would:
#   post-events.sh EVENTS.jsonl
# in arrays of BATCH events (default 1000, the gateway's limit per request),
# one request at a time and in file order, so that each person's events reach
# Kafka in the order of the file.
#
# Environment: GATEWAY_URL (default http://gateway:8080), TOKEN (default: the
# contents of TOKEN_FILE, /var/lib/swabstream/tokens/sim.token), BATCH.
#
# 429 and 503 are retried after the Retry-After the gateway sends, by curl's
# --retry; a retry is safe because the pipeline dedupes by event_id (events of
# a 503 that Kafka had acknowledged come back as duplicates, counted in
# city_daily.duplicates). A 400 (some events invalid, the others accepted) is
# reported and the posting goes on; any other answer stops it.
set -euo pipefail
shopt -s nullglob

file=${1:?usage: post-events.sh EVENTS.jsonl}
url=${GATEWAY_URL:-http://gateway:8080}/v1/events
batch=${BATCH:-1000}
if [ -z "${TOKEN:-}" ]; then
  TOKEN=$(cat "${TOKEN_FILE:-/var/lib/swabstream/tokens/sim.token}")
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
split -l "$batch" -d -a 6 "$file" "$tmp/chunk-"

requests=0 accepted=0 invalid=0 events=0
started=$(date +%s)
for chunk in "$tmp"/chunk-*; do
  # JSON lines → one JSON array: the lines joined by commas, in brackets.
  { printf '['; paste -s -d, "$chunk"; printf ']'; } >"$chunk.json"
  n=$(wc -l <"$chunk")
  status=$(curl -sS -o "$tmp/answer" -w '%{http_code}' \
    --retry 10 --retry-connrefused --retry-max-time 600 \
    -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
    --data-binary @"$chunk.json" "$url") || status=000
  got=$(sed -n 's/.*"accepted": *\([0-9][0-9]*\).*/\1/p' "$tmp/answer" | head -n 1)
  case $status in
    202) ;;
    400)
      echo "post-events: request $((requests + 1)) (events $((events + 1))-$((events + n))): ${got:-0} of $n accepted, the others invalid:" >&2
      head -c 2000 "$tmp/answer" >&2
      echo >&2
      invalid=$((invalid + n - ${got:-0})) ;;
    *)
      echo "post-events: request $((requests + 1)) (events $((events + 1))-$((events + n))) answered $status:" >&2
      cat "$tmp/answer" >&2 2>/dev/null || true
      echo >&2
      echo "post-events: stopped after $requests requests, $accepted events accepted" >&2
      exit 1 ;;
  esac
  requests=$((requests + 1)) events=$((events + n)) accepted=$((accepted + ${got:-0}))
  rm -f "$chunk" "$chunk.json"
  if [ $((requests % 50)) -eq 0 ]; then
    echo "post-events: $accepted events accepted in $requests requests"
  fi
done

elapsed=$(($(date +%s) - started))
echo "post-events: $accepted of $events events accepted ($invalid invalid) in $requests requests, ${elapsed}s"
[ "$invalid" -eq 0 ]
