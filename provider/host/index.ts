/**
 * Choosing a host: the local machine or an SSH connection. Tests put another machine behind every host (a fake
 * kernel in a state file, shared with the plugin process they drive) with {@link setHostFactory}; nothing in the
 * package does, and no environment variable does.
 */
import { createHash } from "crypto";
import { LocalHost } from "./local";
import { baseHost } from "./lock";
import { Connection, SshHost } from "./ssh";
import { Host } from "./types";

export * from "./types";
export { LocalHost } from "./local";
export { SshHost, Connection, ConnectionError, connectionLabel } from "./ssh";

/** How hosts are made from connections. */
export interface HostFactory {
    /** The host `connection` names. `privileged` false: this machine without sudo (the read-only CLI commands). */
    make(connection: Connection | null | undefined, privileged: boolean): Host;
    /** True: hosts are shared within the program (see {@link withHost}). False: one host per operation, closed after
     *  it, for a machine that other processes change between operations (a test's fake kernel in a file). */
    pooled: boolean;
}

const REAL_HOSTS: HostFactory = {
    make: (connection, privileged) => (connection && connection.host ? new SshHost(connection) : new LocalHost(privileged ? {} : { sudo: false })),
    pooled: true,
};
let factory: HostFactory = REAL_HOSTS;

/**
 * Replace how hosts are made (undefined: back to the real local and SSH hosts). The test seam: the engine tests
 * load a test-only module into the dynamic-provider plugin (`node --require`) that calls this with a fake machine.
 */
export function setHostFactory(f?: HostFactory): void {
    factory = f ?? REAL_HOSTS;
    for (const [key, e] of pool) {
        pool.delete(key);
        if (e.timer) clearTimeout(e.timer);
        dropHost(e.host);
    }
}

/** The host a resource's `connection` names: absent means this machine (`privileged` false: without sudo). */
export function hostFor(connection?: Connection | null, privileged = true): Host {
    return factory.make(connection, privileged);
}

/** How long a host nobody uses stays open for the next operation on the same machine, in milliseconds. An idle
 *  host never keeps the program alive, and its interpreter ends when the program does. */
export const HOST_IDLE_MS = 30_000;

const pool = new Map<string, { host: Host; users: number; timer?: NodeJS.Timeout }>();

/** Which pooled host serves a connection: every field counts (another key is another login). Hashed, so the pool
 *  never holds a password or key as a map key. */
function poolKey(connection?: Connection | null): string {
    if (!connection || !connection.host) return "local";
    const fields = Object.entries(connection)
        .filter(([, v]) => v !== undefined && v !== null)
        .sort(([a], [b]) => a.localeCompare(b));
    return "ssh:" + createHash("sha256").update(JSON.stringify(fields)).digest("hex");
}

/**
 * Run `fn` with the host `connection` names. Hosts are shared within the program: every resource operation on one
 * machine (the engine's check, diff, create and read of all resources) reuses one SSH connection and one
 * interpreter, closed after {@link HOST_IDLE_MS} without use. A `given` host (tests, the inventory CLI) is used as
 * is and left open for its owner.
 */
export async function withHost<T>(connection: Connection | undefined | null, fn: (host: Host) => Promise<T>, given?: Host): Promise<T> {
    if (given) return fn(given);
    if (!factory.pooled) {
        const host = hostFor(connection);
        try {
            return await fn(host);
        } finally {
            await host.close();
        }
    }
    const key = poolKey(connection);
    let entry = pool.get(key);
    if (!entry) pool.set(key, (entry = { host: hostFor(connection), users: 0 }));
    const e = entry;
    e.users++;
    if (e.timer) clearTimeout(e.timer);
    try {
        return await fn(e.host);
    } finally {
        if (--e.users === 0) {
            e.timer = setTimeout(() => {
                if (pool.get(key) === e) pool.delete(key);
                dropHost(e.host);
            }, HOST_IDLE_MS);
            e.timer.unref();
        }
    }
}

function dropHost(host: Host): void {
    observed.delete(host);
    void host.close();
}

// ------------------------------------------------------------------------------------------------ observations

/**
 * What a read saw of a machine, kept for a later operation on the same machine in this program: `pulumi up` runs
 * check and then create in one process, and create acts on what check read instead of reading it again. The
 * module that reads decides what it keeps and derives from it the guards (reads with `expect`, see the Host seam)
 * behind which a later batch may act on it: a cached value is a hint, never the host's truth.
 */
export interface Observations<T> {
    get(key: string): T | undefined;
    set(key: string, value: T): void;
    delete(key: string): void;
}

/** How many observations one host keeps (of all kinds); the least recently stored go first. */
export const OBSERVATIONS_PER_HOST = 64;

/** Per host (the unlocked one: check reads outside the lock, create acts inside), kind and key → value. Dropped with
 *  the host when the pool closes it. */
const observed = new WeakMap<Host, Map<string, unknown>>();

/** The observations of `kind` (`iommu-group`) kept for `host`, by key (a PCI address). */
export function observations<T>(host: Host, kind: string): Observations<T> {
    const base = baseHost(host);
    const entries = () => {
        let m = observed.get(base);
        if (!m) observed.set(base, (m = new Map()));
        return m;
    };
    const at = (key: string) => `${kind}\0${key}`;
    return {
        get: (key) => entries().get(at(key)) as T | undefined,
        set: (key, value) => {
            const m = entries();
            m.delete(at(key));
            m.set(at(key), value);
            for (const oldest of m.keys()) {
                if (m.size <= OBSERVATIONS_PER_HOST) break;
                m.delete(oldest);
            }
        },
        delete: (key) => void entries().delete(at(key)),
    };
}
