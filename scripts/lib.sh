# Shared by the scripts: paths, and making sure the local services are up.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/mechanica-target}"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# MariaDB on 127.0.0.1:3306 (root, no password), as on this kind of machine;
# started if it is installed but not running.
ensure_mariadb() {
    if mysqladmin --host=127.0.0.1 --user=root --silent ping >/dev/null 2>&1; then
        return
    fi
    log "starting MariaDB"
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- --user=mysql
    for _ in $(seq 1 60); do
        mysqladmin --host=127.0.0.1 --user=root --silent ping >/dev/null 2>&1 && return
        sleep 0.5
    done
    echo "MariaDB did not come up on 127.0.0.1:3306" >&2
    exit 1
}
