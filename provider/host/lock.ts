/**
 * The host-wide lock: util-linux flock(1) on this file, held by the batch interpreter (see `batch.ts`), so two
 * resources or two `pulumi up`s never interleave their sysfs sequences on one host. Created mode 0600.
 */
export const LOCK_PATH = "/run/lock/pulumi-vfio.lock";
/** How long taking the lock waits by default, in milliseconds. */
export const LOCK_TIMEOUT_MS = 120_000;
