#!/bin/sh
# Install (or upgrade) xrelay as a system service on this host.  Run as root:
#
#   contrib/install.sh [SOURCE]
#
# SOURCE is what pip installs: a source tree, a wheel, or a requirement such as
# "xrelay==1.2"; by default the source tree this script belongs to.  It is idempotent:
# run it again with the same SOURCE and nothing changes; with a newer one it upgrades in
# place and keeps the state (/var/lib/xrelay) and the configuration (/etc/xrelay).
#
# What it makes:
#   user and group   xrelay (system, no login, home /var/lib/xrelay)
#   /opt/xrelay      a Python venv with xrelay; docs in /opt/xrelay/share/doc/xrelay
#   /etc/xrelay      root:xrelay 0750; every file in it root:xrelay 0640
#   /var/lib/xrelay  xrelay:xrelay 0700 (spool, token cache, keys/cache.key)
#   /usr/local/bin/xrelay           the admin command, run as the user xrelay
#   /etc/systemd/system/xrelay.service
#
# Environment: PYTHON (default the system's /usr/bin/python3; 3.11 or newer, with its
# venv module: Debian's python3-venv).  It must be one the service user can run (the
# venv keeps using it): a Python built under /root (pyenv) is refused with the reason.
# pip's own settings (PIP_INDEX_URL, /etc/pip.conf, ...) apply.  The script ends with a
# self-test run as the service user, and fails loudly when that does not work.
set -eu

PREFIX=/opt/xrelay
CONFIG_DIR=/etc/xrelay
STATE_DIR=/var/lib/xrelay
UNIT=/etc/systemd/system/xrelay.service
COMMAND=/usr/local/bin/xrelay
SERVICE_USER=xrelay
if [ -z "${PYTHON:-}" ]; then
  if [ -x /usr/bin/python3 ]; then PYTHON=/usr/bin/python3; else PYTHON=python3; fi
fi

HERE=$(cd "$(dirname "$0")/.." && pwd)
SOURCE=${1:-$HERE}
CHANGED=0

say() { printf 'xrelay install: %s\n' "$*"; }
die() { printf 'xrelay install: %s\n' "$*" >&2; exit 1; }
changed() { CHANGED=1; say "$*"; }

[ "$(id -u)" = 0 ] || die "run me as root (I create a user, /opt/xrelay and a unit)"
"$PYTHON" -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null ||
  die "$PYTHON is missing, older than 3.11, or has no venv module (Debian: apt-get install python3 python3-venv); set PYTHON=..."

# put SOURCE-FILE DEST MODE OWNER: copy only when the content differs, so that a re-run
# leaves every file (and its modification time) as it was.
put() {
  if ! cmp -s "$1" "$2"; then
    install -m "$3" -o "${4%:*}" -g "${4#*:}" "$1" "$2"
    changed "wrote $2"
  fi
  chown "$4" "$2"
  chmod "$3" "$2"
}

# -- the service user ---------------------------------------------------------------
if ! getent group "$SERVICE_USER" >/dev/null; then
  groupadd --system "$SERVICE_USER"
  changed "created group $SERVICE_USER"
fi
if ! getent passwd "$SERVICE_USER" >/dev/null; then
  useradd --system --gid "$SERVICE_USER" --home-dir "$STATE_DIR" --no-create-home \
    --shell /usr/sbin/nologin --comment "xrelay SMTP relay" "$SERVICE_USER"
  changed "created user $SERVICE_USER"
fi

# -- a Python the service user can run --------------------------------------------------
# The venv runs on this interpreter for ever: root being able to run it is not enough.
PYTHON_PATH=$(command -v "$PYTHON" 2>/dev/null) || die "$PYTHON not found; set PYTHON=..."
if ! why=$(cd / && runuser -u "$SERVICE_USER" -- "$PYTHON_PATH" -c 'import sys, venv, ssl, sqlite3' 2>&1); then
  die "refused: the service user $SERVICE_USER cannot run $PYTHON_PATH ($(printf '%s' "$why" | tail -n 1)); the relay would run on it.  Use the system Python (unset PYTHON, or PYTHON=/usr/bin/python3 with Debian's python3-venv) or one installed where $SERVICE_USER can read it (not under /root)"
fi

# -- folders: created once, their modes and owners restored on every run -------------
for spec in "$CONFIG_DIR 0750 root:$SERVICE_USER" "$STATE_DIR 0700 $SERVICE_USER:$SERVICE_USER"; do
  set -- $spec
  [ -d "$1" ] || changed "created $1"
  install -d -m "$2" -o "${3%:*}" -g "${3#*:}" "$1"
done
# The service reads its configuration and secrets through the group, never writes them.
for file in $(find "$CONFIG_DIR" -type f \( ! -user root -o ! -group "$SERVICE_USER" \
    -o ! -perm 0640 \) -print); do
  chown "root:$SERVICE_USER" "$file"
  chmod 0640 "$file"
  changed "made $file root:$SERVICE_USER 0640"
done

# -- the venv and the package ---------------------------------------------------------
if [ ! -x "$PREFIX/bin/python" ]; then
  "$PYTHON" -m venv "$PREFIX"
  changed "created the venv $PREFIX"
fi
PIP="$PREFIX/bin/python -m pip --disable-pip-version-check --quiet"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

if [ -d "$SOURCE" ]; then
  # Build the wheel from a clean copy: the tree may be read-only or hold a dev venv.
  mkdir "$WORK/src"
  for part in pyproject.toml setup.cfg README.md twisted xrelay; do
    cp -R "$SOURCE/$part" "$WORK/src/"
  done
  find "$WORK/src" -name __pycache__ -prune -exec rm -rf {} +
  $PIP wheel --no-deps --wheel-dir "$WORK/wheel" "$WORK/src" >/dev/null
  SOURCE=$(ls "$WORK"/wheel/xrelay-*.whl)
fi
case "$SOURCE" in
  *.whl)
    # A wheel's identity is its RECORD (every file's hash), not its bytes: the same
    # tree built twice gives different zip timestamps and the same RECORD.
    identity=$("$PREFIX/bin/python" - "$SOURCE" <<'EOF'
import hashlib, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel:
    record = next(n for n in wheel.namelist() if n.endswith(".dist-info/RECORD"))
    lines = sorted(wheel.read(record).decode().splitlines())
print(hashlib.sha256("\n".join(lines).encode()).hexdigest())
EOF
)
    if [ "$(cat "$PREFIX/xrelay-installed" 2>/dev/null)" != "$identity" ]; then
      $PIP install --upgrade "$SOURCE"
      printf '%s\n' "$identity" >"$PREFIX/xrelay-installed"
      changed "installed $(basename "$SOURCE") into $PREFIX"
    fi
    ;;
  *)
    before=$($PIP freeze --all | sha256sum)
    $PIP install --upgrade "$SOURCE"
    [ "$before" = "$($PIP freeze --all | sha256sum)" ] || changed "installed $SOURCE into $PREFIX"
    ;;
esac
# Fill Twisted's plugin cache while root: the service cannot write /opt.  (Twisted
# rewrites it only when a plugin changed, so a re-run leaves it alone.)
"$PREFIX/bin/python" -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"

# -- documentation the unit points at, and an example configuration -------------------
install -d -m 0755 "$PREFIX/share" "$PREFIX/share/doc" "$PREFIX/share/doc/xrelay"
put "$HERE/README.md" "$PREFIX/share/doc/xrelay/README.md" 0644 root:root
put "$HERE/docs/configuration.md" "$PREFIX/share/doc/xrelay/configuration.md" 0644 root:root
put "$HERE/contrib/xrelay.toml.example" "$PREFIX/share/doc/xrelay/xrelay.toml.example" 0644 root:root

# -- the admin command, as the service user ------------------------------------------
cat >"$WORK/xrelay" <<EOF
#!/bin/sh
# The xrelay admin command (written by contrib/install.sh).  Run by root it runs as the
# service user $SERVICE_USER, so that files it writes (token cache, spool) stay the
# daemon's, and check-config reads the configuration as the daemon does.
if [ "\$(id -u)" = 0 ]; then
  exec runuser -u $SERVICE_USER -- $PREFIX/bin/xrelay "\$@"
fi
exec $PREFIX/bin/xrelay "\$@"
EOF
put "$WORK/xrelay" "$COMMAND" 0755 root:root

# -- the unit -------------------------------------------------------------------------
unit_before=$(cat "$UNIT" 2>/dev/null || true)
install -d -m 0755 /etc/systemd/system
put "$HERE/contrib/systemd/xrelay.service" "$UNIT" 0644 root:root
if [ -d /run/systemd/system ]; then
  [ "$unit_before" = "$(cat "$UNIT")" ] || systemctl daemon-reload
  # An upgrade takes effect now; a relay that is not running stays stopped.
  [ "$CHANGED" = 0 ] || systemctl try-restart xrelay.service
fi

# -- self-test: the installed command, as the service user ----------------------------
if ! why=$(cd / && runuser -u "$SERVICE_USER" -- "$PREFIX/bin/xrelay" --version 2>&1); then
  die "self-test failed: the service user $SERVICE_USER cannot run $PREFIX/bin/xrelay ($(printf '%s' "$why" | tail -n 1)); the service would not start.  Rebuild $PREFIX on a Python $SERVICE_USER can run: rm -rf $PREFIX and run this script again with PYTHON=/usr/bin/python3"
fi

if [ "$CHANGED" = 0 ]; then
  say "nothing to change; xrelay is installed"
elif [ ! -f "$CONFIG_DIR/xrelay.toml" ]; then
  say "next: write $CONFIG_DIR/xrelay.toml (example: $PREFIX/share/doc/xrelay/xrelay.toml.example),"
  say "      run xrelay check-config, then systemctl enable --now xrelay"
fi
