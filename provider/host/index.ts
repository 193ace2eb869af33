/**
 * Choosing a host: the local machine, an SSH connection, or (for tests only) a fake machine stored in a file.
 */
import { createHash } from "crypto";
import { fileBackedFakeHost } from "./fake/host";
import { fakeLabKernel } from "./fake/lab";
import { LocalHost } from "./local";
import { Connection, SshHost } from "./ssh";
import { Host } from "./types";

export * from "./types";
export { LocalHost } from "./local";
export { SshHost, Connection, ConnectionError, connectionLabel } from "./ssh";
export { FakeHost, fileBackedFakeHost } from "./fake/host";
export { FakeKernel, FakeErrno, FakeHang } from "./fake/kernel";
export { fakeLabKernel, fakeKernelWithoutIommu } from "./fake/lab";

/**
 * Environment variable naming a JSON file that holds a fake machine. When set, every host is that fake machine:
 * the engine-boundary tests run the real dynamic-provider plugin against it. Never set it on a real host.
 */
export const FAKE_KERNEL_ENV = "PULUMI_VFIO_FAKE_KERNEL";

/** The host a resource's `connection` names: absent means this machine. */
export function hostFor(connection?: Connection | null): Host {
    const fake = process.env[FAKE_KERNEL_ENV];
    if (fake) return fileBackedFakeHost(fake, fakeLabKernel);
    if (connection && connection.host) return new SshHost(connection);
    return new LocalHost();
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
    if (process.env[FAKE_KERNEL_ENV]) {
        // The fake machine lives in a file that other processes change: read it afresh every time.
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
                void e.host.close();
            }, HOST_IDLE_MS);
            e.timer.unref();
        }
    }
}
