#!/usr/bin/env bash
# A throwaway PostgreSQL for the test suite, on a free loopback port.
#
#   scripts/pg-test.sh -- COMMAND [ARGS...]
#       start a fresh cluster, run COMMAND with the variables below in its environment,
#       then stop the cluster and delete it whatever COMMAND's exit status (which is ours);
#   scripts/pg-test.sh
#       start one, print the variables as `export` lines, and keep it until Ctrl-C.
#
# Variables given to the command:
#   GATEWAY_TEST_POSTGRES_URL  postgresql+psycopg://gateway:PASSWORD@127.0.0.1:PORT/gateway_test
#                              (a superuser: the tests create a database per test)
#   GATEWAY_TEST_POSTGRES_CTL  a command taking `stop` or `start`, to stop the server and
#                              start it again (outage tests)
#
# initdb and pg_ctl come from PATH, else from the newest /usr/lib/postgresql/*/bin (the
# Debian package, installed first when missing and we are root). PostgreSQL refuses to
# run as root: as root the server runs as the `postgres` user (PG_TEST_USER overrides)
# through `runuser`, in a temporary directory it owns. The cluster trades durability for
# speed (fsync off): it is for tests only.
set -euo pipefail

usage() {
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

command_given=0
if [[ $# -gt 0 ]]; then
    [[ $1 == -- ]] || usage
    shift
    [[ $# -gt 0 ]] || usage
    command_given=1
fi

find_bin() {
    if command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then
        # Through symlinks (Debian's /usr/local/bin links): psql sits beside the real one.
        dirname "$(readlink -f "$(command -v pg_ctl)")"
        return
    fi
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [[ -n $dir && -x $dir/initdb && -x $dir/pg_ctl ]]; then
        echo "$dir"
        return
    fi
    return 1
}

# A new machine may not have the server: as root on Debian, install its package (without
# the package's own cluster: ours is the only one).
install_server() {
    [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null || return 1
    echo "pg-test: installing PostgreSQL from Debian's packages" >&2
    mkdir -p /etc/postgresql-common/createcluster.d
    echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.d/pg-test.conf
    apt-get update -qq >&2 &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
}

if ! BIN=$(find_bin); then
    if ! install_server || ! BIN=$(find_bin); then
        echo "pg-test: initdb/pg_ctl not found on PATH nor in /usr/lib/postgresql/*/bin;" \
            "install PostgreSQL (Debian: apt-get install postgresql)" >&2
        exit 1
    fi
fi
PSQL=$BIN/psql
[[ -x $PSQL ]] || PSQL=$(command -v psql) || {
    echo "pg-test: psql not found" >&2
    exit 1
}
PYTHON=${PYTHON:-python3}

as_server_user=()
if [[ $(id -u) -eq 0 ]]; then
    user=${PG_TEST_USER:-postgres}
    if ! id "$user" >/dev/null 2>&1; then
        echo "pg-test: running as root needs a user '$user' for the server (PG_TEST_USER)" >&2
        exit 1
    fi
    as_server_user=(runuser -u "$user" --)
fi

# /tmp, not $TMPDIR: the server's user must be able to reach the directory.
WORK=$(mktemp -d "${PG_TEST_TMPDIR:-/tmp}/pg-test.XXXXXX")
DATA=$WORK/data
LOG=$WORK/server.log
CTL=$WORK/ctl

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [[ -f $DATA/postmaster.pid ]]; then
        (cd "$WORK" && "${as_server_user[@]}" "$BIN/pg_ctl" -D "$DATA" -m immediate -w stop) \
            >/dev/null 2>&1 || true
    fi
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
    "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

PASSWORD=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
printf '%s\n' "$PASSWORD" >"$WORK/pwfile"
chmod 700 "$WORK"
if [[ ${#as_server_user[@]} -gt 0 ]]; then
    chown -R "$user" "$WORK"
fi

(cd "$WORK" && "${as_server_user[@]}" "$BIN/initdb" -D "$DATA" -U gateway \
    --pwfile="$WORK/pwfile" --auth=scram-sha-256 -E UTF8 --locale=C --no-sync) \
    >"$WORK/initdb.log" 2>&1 || {
    cat "$WORK/initdb.log" >&2
    exit 1
}
rm -f "$WORK/pwfile"

# The control script the tests use to stop and restart the server.
cat >"$CTL" <<EOF
#!/usr/bin/env bash
# Stop or start the test PostgreSQL of scripts/pg-test.sh: \$0 stop|start
set -euo pipefail
cd "$WORK"
case "\${1:-}" in
    stop) exec ${as_server_user[*]} "$BIN/pg_ctl" -D "$DATA" -m fast -w -t 60 stop ;;
    start) exec ${as_server_user[*]} "$BIN/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 start ;;
    *) echo "usage: \$0 stop|start" >&2; exit 2 ;;
esac
EOF
chmod 755 "$CTL"
if [[ ${#as_server_user[@]} -gt 0 ]]; then
    chown "$user" "$CTL"
fi

started=0
for _ in 1 2 3; do
    PORT=$(free_port)
    # Loopback only, the socket in our own directory, and speed over durability.
    cat >>"$DATA/postgresql.conf" <<EOF
port = $PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK'
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
    if "$CTL" start >/dev/null; then
        started=1
        break
    fi
    # The port was taken between our probe and the server's bind: try another.
done
if [[ $started -ne 1 ]]; then
    echo "pg-test: the server did not start; its log:" >&2
    cat "$LOG" >&2 || true
    exit 1
fi

PGPASSWORD=$PASSWORD "$PSQL" -q -h 127.0.0.1 -p "$PORT" -U gateway -d postgres \
    -v ON_ERROR_STOP=1 -c 'CREATE DATABASE gateway_test' >/dev/null

export GATEWAY_TEST_POSTGRES_URL="postgresql+psycopg://gateway:$PASSWORD@127.0.0.1:$PORT/gateway_test"
export GATEWAY_TEST_POSTGRES_CTL=$CTL
echo "pg-test: PostgreSQL $("$BIN/pg_ctl" --version | awk '{print $3}') on 127.0.0.1:$PORT" \
    "(data in $DATA)" >&2

if [[ $command_given -eq 1 ]]; then
    set +e
    "$@"
    status=$?
    set -e
    exit "$status"
fi

echo "export GATEWAY_TEST_POSTGRES_URL='$GATEWAY_TEST_POSTGRES_URL'"
echo "export GATEWAY_TEST_POSTGRES_CTL='$GATEWAY_TEST_POSTGRES_CTL'"
echo "pg-test: running until Ctrl-C" >&2
while true; do sleep 3600 & wait $!; done
