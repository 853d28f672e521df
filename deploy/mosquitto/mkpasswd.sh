#!/bin/sh
# Create or update a mosquitto password file for mschedule users.
#
#   mkpasswd.sh PASSWD_FILE CREDENTIALS_FILE [USER[:PASSWORD]...]
#
# For each USER: the password given after ':', else the one CREDENTIALS_FILE already
# holds for USER (so re-running is harmless), else a new random one (128 bits, hex).
# PASSWD_FILE gets the hashes (mosquitto_passwd -U); users not named keep their lines.
# CREDENTIALS_FILE (mode 0600) gets the plain "user:password" lines, to hand each
# credential to its machine: agents and the master put it in their broker URL
# (mqtt://user:password@host:port), render.py reads the bridges' from it.
# Passwords never appear on a command line of mosquitto_passwd (visible in ps).
#
# Users: an agent's username is its agent id (uuid4 hex); the master's is
# mschedule-master; a datacenter's bridge is mschedule-bridge-<DC>; operators by name.
set -eu

if [ $# -lt 2 ]; then
    echo "usage: $0 PASSWD_FILE CREDENTIALS_FILE [USER[:PASSWORD]...]" >&2
    exit 2
fi
command -v mosquitto_passwd >/dev/null || { echo "$0: mosquitto_passwd not found (apt-get install mosquitto)" >&2; exit 2; }

passwd_file=$1
creds_file=$2
shift 2

umask 077
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM
[ -e "$creds_file" ] || : > "$creds_file"
[ -e "$passwd_file" ] || : > "$passwd_file"
if [ $# -eq 0 ]; then
    echo "$passwd_file: no users named; files exist"
    exit 0
fi
: > "$tmp/new"

for spec in "$@"; do
    user=${spec%%:*}
    case $user in
        ''|*[!A-Za-z0-9_.@-]*) echo "$0: bad username '$user' (letters, digits, _ . @ - only)" >&2; exit 2 ;;
    esac
    if [ "$spec" != "$user" ]; then
        password=${spec#*:}
    else
        password=$(awk -F: -v u="$user" '$1 == u { print substr($0, length(u) + 2); exit }' "$creds_file")
    fi
    if [ -z "$password" ]; then
        password=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
    fi
    case $password in
        *[[:space:]]*) echo "$0: the password of '$user' holds white space" >&2; exit 2 ;;
    esac
    printf '%s:%s\n' "$user" "$password" >> "$tmp/new"
done

# Drop the named users' old lines from both files, then append the new ones.
cut -d: -f1 "$tmp/new" > "$tmp/users"
keep_others() { awk -F: 'NR == FNR { named[$1] = 1; next } !($1 in named)' "$tmp/users" "$1"; }

keep_others "$creds_file" > "$tmp/creds"
cat "$tmp/new" >> "$tmp/creds"

cp "$tmp/new" "$tmp/hashed"
mosquitto_passwd -U "$tmp/hashed"
keep_others "$passwd_file" > "$tmp/passwd"
cat "$tmp/hashed" >> "$tmp/passwd"

# Rewrite in place: the files keep their owner and mode (e.g. root:mosquitto 0640), except
# that the plain credentials are never left readable by group or others.
chmod go-rwx "$creds_file"
cat "$tmp/creds" > "$creds_file"
cat "$tmp/passwd" > "$passwd_file"
echo "$passwd_file: $(wc -l < "$tmp/new") user(s) set; plain credentials in $creds_file"
