/**
 * The host-wide lock, shared by the local and SSH hosts: util-linux `flock(1)` on /run/lock/pulumi-vfio.lock,
 * held by a process that prints `locked` and then waits for its stdin to close. The lock file is created 0600.
 */
export const LOCK_PATH = "/run/lock/pulumi-vfio.lock";
export const LOCK_TIMEOUT_MS = 120_000;

/** $1: seconds to wait for the lock. */
export const LOCK_SCRIPT = `
set -u
[ -d /run/lock ] || mkdir -p /run/lock
umask 077
exec 9>>${LOCK_PATH}
flock -w "$1" 9 || { echo "timed out after $1 s waiting for ${LOCK_PATH}" >&2; exit 1; }
echo locked
# Held until our stdin closes; \`read\` is a builtin, so holding costs no extra process.
while IFS= read -r _; do :; done
`;
