#!/bin/sh
# The sandbox container's processes: agent-runtime (envd) as root, the code-interpreter service
# as `user` with its home as the default cwd. When either exits, the other is stopped and the
# container exits with its status, so Kubernetes restarts or replaces the sandbox.
set -eu
agent-runtime &
runtime=$!
setpriv --reuid=user --regid=user --init-groups \
    env HOME=/home/user USER=user LOGNAME=user \
    code-interpreter --workdir /home/user &
interpreter=$!
trap 'kill -TERM "$runtime" "$interpreter" 2>/dev/null' TERM INT
status=0
while kill -0 "$runtime" 2>/dev/null && kill -0 "$interpreter" 2>/dev/null; do
    sleep 1
done
kill -TERM "$runtime" "$interpreter" 2>/dev/null || true
wait "$runtime" || status=$?
wait "$interpreter" || status=$?
exit "$status"
