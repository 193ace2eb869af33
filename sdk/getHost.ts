import * as pulumi from "@pulumi/pulumi";
import { withHost } from "../provider/host";
import { Connection } from "../provider/host/ssh";
import { HostInventory, getHostInventory } from "../provider/inventory";
import type { ConnectionArgs } from "./types";

export type { HostInventory, InventoryDevice, InventoryGroup, KvmfrDevice, MdevParent, MdevType } from "../provider/inventory";

export interface GetHostArgs {
    /** SSH connection to the host, as plain values; absent means the machine running pulumi. */
    connection?: ConnectionArgs;
}

export interface GetHostOutputArgs {
    /** SSH connection to the host (may hold Outputs, e.g. a secret key); absent means the machine running pulumi. */
    connection?: pulumi.Input<ConnectionArgs>;
}

const FIELDS = ["host", "port", "user", "password", "privateKey", "privateKeyPassword", "agentSocketPath", "hostKey", "hostKeyCheck", "perDialTimeout", "dialErrorLimit"] as const;

/** The plain {@link Connection} for plain (or promised) connection args. Outputs are refused: use getHostOutput. */
async function plainConnection(args: ConnectionArgs | undefined): Promise<Connection | undefined> {
    if (args === undefined || args === null) return undefined;
    const out: Record<string, unknown> = {};
    for (const f of FIELDS) {
        const v = (args as Record<string, unknown>)[f];
        if (pulumi.Output.isInstance(v)) throw new Error(`getHost: connection.${f} is a pulumi.Output; call getHostOutput() for connections built from Outputs`);
        const value = await v;
        if (value !== undefined && value !== null) out[f] = value;
    }
    if (typeof out.host !== "string" || out.host === "") throw new Error("getHost: connection.host is required when a connection is given");
    return out as unknown as Connection;
}

/**
 * Read what a host offers for passthrough: IOMMU state (with the fix when it is off), IOMMU groups and their
 * viability, PCI devices with names, drivers, SR-IOV and mdev types, vfio modules and kvmfr devices. Read-only;
 * at most three round trips to the host.
 *
 * ```typescript
 * const inv = await vfio.getHost();
 * const gpu = inv.devices.find((d) => d.class.startsWith("03") && !d.bootVga);
 * ```
 */
export async function getHost(args: GetHostArgs = {}): Promise<HostInventory> {
    const connection = await plainConnection(args.connection);
    return withHost(connection, getHostInventory);
}

/**
 * {@link getHost} for inputs that are Outputs. The result is secret when the connection is (a secret key makes the
 * whole inventory secret, as Pulumi propagates secrecy through `apply`); wrap uses in `pulumi.unsecret` when the
 * inventory is to be shown.
 */
export function getHostOutput(args: GetHostOutputArgs = {}): pulumi.Output<HostInventory> {
    return pulumi.output(args).apply((a) => getHost(a as GetHostArgs));
}
