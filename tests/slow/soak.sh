#!/usr/bin/env bash
# The soak: 200 client processes over TCP on 127.0.0.1 for 10 minutes of async training, with
# clients killed, frozen and restarted at random (tests/slow/churn.sh) and a hostile peer sending
# garbage all along (tests/protocol/hostile_peer.cpp). Reports and checks what churn.sh does:
# the aggregator's fds other than connections and its RSS flat (least-squares slopes over the
# churn), every counter consistent (versions = accepted updates; every task accepted, rejected,
# lost or out at the end), every restarted client back with current work, the garbage counted
# as malformed and nothing else disturbed. Clients start only while they fit in memory: on a
# smaller machine it fails saying so, with the figures (each client keeps ~61 MiB of its own,
# most of it LibTorch's relocated data; 200 fit a 23 GiB machine). Label `slow`
# (scripts/test.sh --all).
#   bash tests/slow/soak.sh PATH/TO/flotilla     (SOAK_CLIENTS, SOAK_SECONDS to scale it)
export CHURN_CLIENTS=${SOAK_CLIENTS:-200}
export CHURN_SECONDS=${SOAK_SECONDS:-600}
export CHURN_HOSTILE=1
exec bash "$(dirname "$0")/churn.sh" "$@"
