/**
 * Choosing a host: the local machine, an SSH connection, or (for tests only) a fake machine stored in a file.
 */
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

/**
 * Run `fn` with the host `connection` names and always close it. A `given` host (tests, the inventory CLI) is
 * used as is and left open for its owner.
 */
export async function withHost<T>(connection: Connection | undefined | null, fn: (host: Host) => Promise<T>, given?: Host): Promise<T> {
    if (given) return fn(given);
    const host = hostFor(connection);
    try {
        return await fn(host);
    } finally {
        await host.close();
    }
}
