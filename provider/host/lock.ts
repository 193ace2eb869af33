/**
 * The host-wide lock: flock(2) on this file, held by the batch interpreter (see `batch.sh`), so two resources or two
 * `pulumi up`s never interleave their sysfs sequences on one host. Created mode 0600.
 */
import type { Host, Op, OpResult, RunOptions } from "./types";

export const LOCK_PATH = "/run/lock/pulumi-vfio.lock";
/** How long taking the lock waits by default, in milliseconds. */
export const LOCK_TIMEOUT_MS = 120_000;

/** The host each locked view was made from (see {@link baseHost}). */
const bases = new WeakMap<Host, Host>();

/**
 * The Host that {@link Host.withLock} hands to its callback: its batches go through `run` (the locked section's, which
 * takes the lock in its first round trip), everything else is `base`'s. The view is good for its section only: once
 * `end` was called a batch through it throws, since it would run without the lock. A `withLock` of the view runs
 * its callback at once with the same view (the lock is already held); `close` leaves the host to its owner.
 */
export function lockedHost(base: Host, run: (ops: Op[], opts?: RunOptions) => Promise<OpResult[]>): { host: Host; end(): void } {
    let open = true;
    const host: Host = {
        name: base.name,
        get roundTrips() {
            return base.roundTrips;
        },
        run: (ops, opts) => {
            if (!open) return Promise.reject(new Error(`a batch for ${base.name} was sent through a locked section's host after the section ended, so without the host lock`));
            return run(ops, opts);
        },
        withLock: (fn) => fn(host),
        openUnixSocket: (path) => base.openUnixSocket(path),
        close: async () => undefined,
    };
    bases.set(host, base);
    return { host, end: () => (open = false) };
}

/** The host a locked view was made from, or `host` itself: the key for what a program remembers of a machine across
 *  its locked sections. */
export function baseHost(host: Host): Host {
    return bases.get(host) ?? host;
}

/**
 * The `withLock` of a Host that wraps another (a fault injector, a recorder): `fn` runs in `inner`'s locked section
 * with a locked view of `outer`, whose batches go through `run` with `inner`'s locked host, so the wrapper sees (and
 * may cut) the section's batches like any others.
 */
export function withLockThrough<T>(outer: Host, inner: Host, run: (locked: Host, ops: Op[], opts?: RunOptions) => Promise<OpResult[]>, fn: (locked: Host) => Promise<T>, timeoutMs?: number): Promise<T> {
    return inner.withLock(async (locked) => {
        const view = lockedHost(outer, (ops, opts) => run(locked, ops, opts));
        try {
            return await fn(view.host);
        } finally {
            view.end();
        }
    }, timeoutMs);
}
