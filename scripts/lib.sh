# Shared helpers for the scripts in this directory. Source it; do not run it.

step() { printf '\n\033[1m==> %s\033[0m\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null; then sudo "$@"
    else echo "error: '$*' needs root; run as root or install sudo" >&2; return 1
    fi
}

# ensure_packages PKG...: installs the Debian packages that are not installed yet.
ensure_packages() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "installing: ${missing[*]}" >&2
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "already installed: $*" >&2
    fi
}

# The POSIX suite switches to these accounts to test permissions.
ensure_test_users() {
    getent group tests >/dev/null || as_root groupadd tests
    getent passwd tests >/dev/null || as_root useradd -M -N -g tests -s /usr/sbin/nologin tests
    getent group nogroup >/dev/null || as_root groupadd nogroup
    getent passwd nobody >/dev/null || as_root useradd -M -N -g nogroup -s /usr/sbin/nologin nobody
}

# /dev/fuse usable by every user, as Debian's fuse3 udev rule makes it.
ensure_fuse_device() {
    if [ -c /dev/fuse ] && [ "$(stat -c %a /dev/fuse)" != 666 ]; then
        echo "making /dev/fuse usable by ordinary users (mode 0666, as udev does)" >&2
        as_root chmod 0666 /dev/fuse
    fi
}

# /dev/net/tun usable by every user, as systemd's udev rules make it (opening
# it grants nothing: creating a device needs CAP_NET_ADMIN in the network
# namespace, which a rootless sandbox has only in its own).
ensure_tun_device() {
    if [ ! -c /dev/net/tun ]; then
        as_root mkdir -p /dev/net
        as_root mknod -m 0666 /dev/net/tun c 10 200
    elif [ "$(stat -c %a /dev/net/tun)" != 666 ]; then
        echo "making /dev/net/tun usable by ordinary users (mode 0666, as udev does)" >&2
        as_root chmod 0666 /dev/net/tun
    fi
}

# ensure_postgres ROLE PASSWORD: Debian's PostgreSQL installed and running, with a
# login ROLE (password PASSWORD) that may create databases, for tests that need a
# real server (the flag server's PostgreSQL store). Idempotent; the cluster listens
# on 127.0.0.1 at its configured port (5432 unless changed).
ensure_postgres() {
    local role="$1" password="$2" cluster version name port status
    ensure_packages postgresql
    cluster="$(pg_lsclusters -h | head -n1)"
    if [ -z "$cluster" ]; then
        version="$(ls /usr/lib/postgresql | sort -V | tail -n1)"
        echo "creating PostgreSQL cluster $version/main" >&2
        as_root pg_createcluster "$version" main >/dev/null
        cluster="$(pg_lsclusters -h | head -n1)"
    fi
    read -r version name port status _ <<<"$cluster"
    if [ "$status" != online ]; then
        echo "starting PostgreSQL cluster $version/$name" >&2
        as_root pg_ctlcluster "$version" "$name" start
    fi
    # From /, which the postgres user can read, whatever the caller's directory.
    (cd / && as_root su postgres -c "psql -p $port -q -v ON_ERROR_STOP=1") <<SQL
DO \$\$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$role') THEN
        CREATE ROLE $role;
    END IF;
END \$\$;
ALTER ROLE $role LOGIN CREATEDB PASSWORD '$password';
SQL
}
