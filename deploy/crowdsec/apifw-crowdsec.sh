#!/bin/sh
# Feed CrowdSec decisions into apifw: a minimal bouncer that polls the Local API's decision
# stream and turns each ban decision into `apifw ban add` (and each deletion into `apifw ban
# del`), so CrowdSec's verdicts are enforced in XDP. See deploy/crowdsec/README.md.
#
# Needs curl and jq. Settings from the environment:
#   CROWDSEC_LAPI_URL   default http://127.0.0.1:8080
#   CROWDSEC_API_KEY    required: `cscli bouncers add apifw` prints it
#   APIFW_SOCKET        default /run/apifw/apifw.sock
#   POLL_SECS           default 10
set -eu

LAPI=${CROWDSEC_LAPI_URL:-http://127.0.0.1:8080}
KEY=${CROWDSEC_API_KEY:?set CROWDSEC_API_KEY (cscli bouncers add apifw)}
SOCKET=${APIFW_SOCKET:-/run/apifw/apifw.sock}
POLL=${POLL_SECS:-10}
APIFW=${APIFW_BIN:-apifw}

# The first request asks for every active decision; later ones only for changes.
startup=true
while :; do
    if body=$(curl -fsS --max-time 30 -H "X-Api-Key: $KEY" \
        "$LAPI/v1/decisions/stream?startup=$startup&scopes=ip,range"); then
        startup=false
        # Bans: "value duration" per line, the duration without its fractional seconds
        # ("3h59m12.3s" -> "3h59m12s"); expired ones (negative) skipped.
        echo "$body" | jq -r '(.new // [])[] | select(.type == "ban")
                | select(.duration | startswith("-") | not)
                | "\(.value) \(.duration | sub("\\.[0-9]+s$"; "s"))"' |
        while read -r value duration; do
            "$APIFW" ban add "$value" --ttl "$duration" --comment "crowdsec" \
                --socket "$SOCKET" > /dev/null ||
                echo "apifw-crowdsec: cannot ban $value" >&2
        done
        echo "$body" | jq -r '(.deleted // [])[] | select(.type == "ban") | .value' |
        while read -r value; do
            # Exit code 4: already gone (expired in apifw first).
            "$APIFW" ban del "$value" --socket "$SOCKET" > /dev/null || [ $? -eq 4 ] ||
                echo "apifw-crowdsec: cannot unban $value" >&2
        done
    else
        # The LAPI is down or restarting: keep the bans apifw holds, ask again for everything.
        echo "apifw-crowdsec: cannot reach $LAPI; retrying" >&2
        startup=true
    fi
    sleep "$POLL"
done
