#!/usr/bin/env bash
# `make up`'s supervisor: the API and one worker, never one without the other. Its one
# argument is the Python to run them with.
#
# When the API or the worker ends, the other is stopped (SIGTERM: the worker finishes its
# epoch and hands its job back) and this fails, saying which one ended. Ctrl-C reaches both
# processes from the terminal, so this only waits for them then (a second signal would stop
# the worker mid-epoch), and ends with status 0: they were asked to stop, and did. Background
# jobs of a script ignore SIGINT; each process gets it back, or one still starting would miss
# Ctrl-C. `wait -n -p` needs bash 5.1.
PY=$1
if ((BASH_VERSINFO[0] * 100 + BASH_VERSINFO[1] < 501)); then
  echo "make up: needs bash 5.1 or newer, this is $BASH_VERSION" >&2
  exit 2
fi
stopping=
trap 'stopping=0' INT
trap 'stopping=143; kill -TERM $api $worker 2>/dev/null' TERM
(trap - INT QUIT; exec "$PY" -m service) & api=$!
(trap - INT QUIT; exec "$PY" -m worker) & worker=$!
ended=
while [[ -z $ended ]]; do wait -n -p ended $api $worker; status=$?; done
if [[ $ended == "$api" ]]; then name=api other=worker left=$worker
else name=worker other=api left=$api; fi
if [[ -z $stopping ]]; then
  how="exit status $status"
  ((status > 128)) && how="killed by SIG$(kill -l $((status - 128)))"
  echo "make up: the $name ended ($how); stopping the $other" >&2
  kill -TERM $left 2>/dev/null
fi
while kill -0 $left 2>/dev/null; do wait $left; done
exit ${stopping:-$((status ? status : 1))}
