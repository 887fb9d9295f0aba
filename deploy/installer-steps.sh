# shellcheck shell=bash
# shellcheck disable=SC2034 # the variables set here are read by the installers that source it
# Steps shared by install-relay.sh and install-vault.sh (sourced, not run).
#
# Every step is idempotent: it compares what is there with what it would write and
# does nothing when they match, so a second run changes no byte, mode or owner
# (tests/deploy/test_deploy_installers.py hashes the whole staging root to prove it).
# With --root DIR everything lands under DIR and no systemctl is called; without it
# the host is changed and systemd is told.
#
# The sourcing script sets: NAME (unit, user and directory name), PROGRAM (console
# script in the venv), REPO (this checkout), ROOT ("" for the host), and
# optionally UNIT_NAME when the unit is not called NAME.service.

set -euo pipefail

log() { printf '%s: %s\n' "$NAME" "$*"; }
die() { printf '%s: error: %s\n' "$NAME" "$*" >&2; exit 1; }

paths() {
    PREFIX="$ROOT/opt/$NAME"
    VENV="$PREFIX/venv"
    CONF_DIR="$ROOT/etc/$NAME"
    CRED_DIR="$CONF_DIR/credentials"
    STATE_DIR="$ROOT/var/lib/$NAME"
    UNIT_DIR="$ROOT/etc/systemd/system"
    UNIT_NAME="${UNIT_NAME:-$NAME}"
    UNIT="$UNIT_DIR/$UNIT_NAME.service"
    WANTS="$UNIT_DIR/multi-user.target.wants/$UNIT_NAME.service"
    SYSUSERS="$ROOT/usr/lib/sysusers.d/$NAME.conf"
}

# install_file SRC DEST MODE: copy only when the content or mode differs.
install_file() {
    local src=$1 dest=$2 mode=$3
    mkdir -p "$(dirname "$dest")"
    if ! cmp -s "$src" "$dest" 2>/dev/null; then
        install -m "$mode" "$src" "$dest"
        log "wrote ${dest#"$ROOT"}"
    elif [[ $(stat -c %a "$dest") != "${mode#0}" ]]; then
        chmod "$mode" "$dest"
    fi
}

ensure_dir() {
    local dir=$1 mode=$2
    mkdir -p "$dir"
    chmod "$mode" "$dir"
}

# The service user, from a sysusers.d file: the systemd-native way, it works on a
# staging root (systemd-sysusers --root) and is a no-op when the user exists.
ensure_user() {
    install_file "$REPO/systemd/sysusers.d/$NAME.conf" "$SYSUSERS" 0644
    if command -v systemd-sysusers >/dev/null 2>&1; then
        mkdir -p "$ROOT/etc"
        if [[ -n $ROOT ]]; then
            systemd-sysusers --root="$ROOT" "$SYSUSERS" >/dev/null
        else
            systemd-sysusers "$SYSUSERS" >/dev/null
        fi
    elif [[ -z $ROOT ]] && ! id -u "$NAME" >/dev/null 2>&1; then
        useradd --system --user-group --home-dir "/var/lib/$NAME" \
            --shell /usr/sbin/nologin "$NAME"
    fi
}

# The uid:gid of the service user inside ROOT (the staging root has its own passwd).
service_owner() {
    local passwd="$ROOT/etc/passwd" uid gid
    uid=$(awk -F: -v u="$NAME" '$1 == u {print $3}' "$passwd")
    gid=$(awk -F: -v u="$NAME" '$1 == u {print $4}' "$passwd")
    [[ -n $uid ]] || die "user $NAME missing from $passwd"
    printf '%s:%s' "$uid" "$gid"
}

# A fingerprint of what would be installed: a wheel directory's files, or the
# package sources of a checkout. pip runs only when it changed, so a second run
# neither rewrites files nor recompiles bytecode.
source_stamp() {
    if [[ -n $WHEEL_DIR ]]; then
        (cd "$WHEEL_DIR" && find . -maxdepth 1 -name '*.whl' -type f -print0 | sort -z |
            xargs -0 sha256sum) | sha256sum | cut -d' ' -f1
    else
        (cd "$SOURCE" && find pyproject.toml README.md envelope relay controller_vault -type f \
            \( -name '*.py' -o -name '*.toml' -o -name '*.md' -o -name '*.sql' -o -name '*.json' \
               -o -name '*.html' \) -print0 | sort -z | xargs -0 sha256sum) |
            sha256sum | cut -d' ' -f1
    fi
}

# pip install ARGS... PACKAGE, with the optional EXTRAS (the relay's `fast`: uvloop)
# when they install; without them otherwise (no wheel for this platform, an offline
# wheel directory without one): they are speed-ups the service runs without.
pip_install() {
    local package=${*: -1}
    local args=("${@:1:$#-1}")
    if [[ -n ${EXTRAS:-} ]]; then
        if "$VENV/bin/pip" install -q --disable-pip-version-check "${args[@]}" \
            "$package$EXTRAS"; then
            return
        fi
        log "the optional $EXTRAS extra did not install; installing without it"
    fi
    "$VENV/bin/pip" install -q --disable-pip-version-check "${args[@]}" "$package"
}

ensure_venv() {
    local stamp_file="$PREFIX/.installed-from" stamp
    if [[ $NO_VENV == 1 ]]; then
        log "skipping the virtual environment (--no-venv)"
        return
    fi
    stamp=$(source_stamp)
    if [[ -x $VENV/bin/$PROGRAM && -f $stamp_file && $(cat "$stamp_file") == "$stamp" ]]; then
        log "virtual environment up to date"
        return
    fi
    [[ -x $VENV/bin/python ]] || "$PYTHON" -m venv "$VENV"
    if [[ -n $WHEEL_DIR ]]; then
        pip_install --find-links "$WHEEL_DIR" compliance-relay
    else
        # Build from a clean copy of the package sources: setuptools keeps a build/
        # directory in the tree it builds, and a module deleted from the checkout
        # would otherwise still ship from there.
        local tree
        tree=$(mktemp -d)
        tar -C "$SOURCE" --exclude=__pycache__ -cf - pyproject.toml README.md envelope relay \
            controller_vault | tar -C "$tree" -xf -
        pip_install "$tree"
        rm -rf "$tree"
    fi
    printf '%s\n' "$stamp" >"$stamp_file"
    log "installed into ${VENV#"$ROOT"}"
}

# Enable = the symlink systemctl enable would make for WantedBy=multi-user.target.
ensure_unit() {
    install_file "$REPO/systemd/$UNIT_NAME.service" "$UNIT" 0644
    install_file "$REPO/deploy/README.md" "$PREFIX/README.md" 0644
    if [[ -n $ROOT ]]; then
        mkdir -p "$(dirname "$WANTS")"
        [[ -L $WANTS ]] || ln -s "/etc/systemd/system/$UNIT_NAME.service" "$WANTS"
    else
        systemctl daemon-reload
        systemctl enable "$UNIT_NAME.service" >/dev/null
    fi
    log "unit installed and enabled"
}

# Uninstall keeps config, credentials and data unless --purge: for the vault these
# are the only copy of the controller's transcripts and keys. The system user stays
# too, so no later account can inherit its uid and with it any leftover files.
uninstall() {
    if [[ -z $ROOT ]] && command -v systemctl >/dev/null 2>&1; then
        systemctl disable --now "$UNIT_NAME.service" >/dev/null 2>&1 || true
    fi
    rm -f "$WANTS" "$UNIT"
    rm -rf "$PREFIX"
    [[ -z $ROOT ]] && command -v systemctl >/dev/null 2>&1 && systemctl daemon-reload
    if [[ $PURGE == 1 ]]; then
        rm -rf "$CONF_DIR" "$STATE_DIR" "$ROOT/var/lib/private/$NAME"
        log "removed program, unit, configuration, credentials and data (--purge)"
    else
        log "removed program and unit; kept ${CONF_DIR#"$ROOT"} and ${STATE_DIR#"$ROOT"}"
    fi
}

# Options both installers take; the caller handles the rest through its own hook.
parse_common() {
    ROOT="" SOURCE="$REPO" WHEEL_DIR="" NO_VENV=0 UNINSTALL=0 PURGE=0
    PYTHON="${PYTHON:-python3}"
}
