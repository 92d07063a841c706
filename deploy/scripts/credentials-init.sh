#!/usr/bin/env bash
# The stack's one-shot gateway credentials, run in the swabstream image.
#
# The gateway refuses to start without at least one device in its
# credentials file, so on first start this makes the device `sim` (allowed
# every event type, any site) for publishing simulated days:
#   /etc/swabstream/credentials.toml      the entry, holding only the SHA-256 of the secret
#   /var/lib/swabstream/tokens/sim.token  the bearer token, for `post-events.sh`
# Both are volumes; the gateway mounts the first read-only and never the
# second. Once the file exists this does nothing, so a restart keeps the
# devices (and tokens) already handed out.
set -euo pipefail

credentials=${CREDENTIALS_FILE:-/etc/swabstream/credentials.toml}
tokens=${TOKENS_DIR:-/var/lib/swabstream/tokens}
device=sim

if [ -s "$credentials" ]; then
  echo "credentials-init: $credentials exists ($(grep -c '^\[\[device\]\]' "$credentials") devices); nothing to do"
  exit 0
fi

umask 077
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# `credential` prints the file entry on stdout and, on stderr, a line of
# explanation followed by the token itself on the last line.
swabstream credential --device "$device" \
  --event-types CodeIssued,RelativeCodeAudited,SampleScanned \
  >"$tmp/entry" 2>"$tmp/stderr" || { cat "$tmp/stderr" >&2; exit 1; }
tail -n 1 "$tmp/stderr" >"$tmp/token"
case $(cat "$tmp/token") in
  "$device".[0-9a-f]*) ;;
  *) echo "credentials-init: unexpected output of swabstream credential:" >&2
     cat "$tmp/stderr" >&2
     exit 1 ;;
esac

mkdir -p "$tokens"
mv "$tmp/token" "$tokens/$device.token"
# The credentials file last: its presence is what marks the work as done.
cat "$tmp/entry" >"$credentials.tmp"
mv "$credentials.tmp" "$credentials"
echo "credentials-init: made device $device; its token is in $tokens/$device.token"
