import * as pulumi from "@pulumi/pulumi";
import type { BindingMember } from "../provider/iommuBinding";
import { secretConnection, thinProvider, withSecretConnection } from "./provider";
import type { DeviceSelectorArgs, IommuBindingArgs } from "./generated/args";
import { ConnectionArgs } from "./types";

export type { BindingMember };

// The Args are generated from schema/iommu-binding.schema.json (docs and defaults included): see scripts/gen-schema.js.
export type { DeviceSelectorArgs, IommuBindingArgs };

/**
 * Binds a PCI device, and by default every other non-bridge member of its IOMMU group, to vfio-pci (or another
 * driver) with a per-address `driver_override`, as driverctl does; destroying it gives every member back to the
 * driver it had before.
 *
 * `pulumi preview` lists every device whose driver will change (the `plan` output); `pulumi up` binds them under
 * a host-wide lock, reading every `driver` link back and restoring everything on failure; `pulumi refresh` shows a
 * member that went back to its host driver, which the next `pulumi up` repairs; `pulumi destroy` refuses while a
 * VM holds `/dev/vfio/<group>`.
 *
 * ## Example Usage
 *
 * ```typescript
 * import * as vfio from "pulumi-vfio";
 *
 * // The second GPU and its HDMI audio (same IOMMU group) go to vfio-pci.
 * const gpu = new vfio.IommuBinding("gpu", { device: "0000:01:00.0", persistent: true });
 * export const vfioGroup = gpu.vfioDevice; // "/dev/vfio/14"
 * ```
 */
export class IommuBinding extends pulumi.dynamic.Resource {
    /** The resolved PCI address (`DDDD:BB:DD.F`), also the resource id. */
    public readonly address!: pulumi.Output<string>;
    /** The device as given: a PCI address or an ids selector (see `address` for the one it resolved to). */
    public readonly device!: pulumi.Output<string | DeviceSelectorArgs>;
    /** The driver the group's managed members are bound to (default `vfio-pci`). */
    public readonly driver!: pulumi.Output<string>;
    /** Whether every non-bridge member of the IOMMU group is bound too (default true). */
    public readonly wholeGroup!: pulumi.Output<boolean>;
    /** Whether taking the host's console GPU (`boot_vga` = 1) was allowed (default false). */
    public readonly allowBootVga!: pulumi.Output<boolean>;
    /** The host-critical members allowed to be bound, normalized to `DDDD:BB:DD.F`. */
    public readonly allowHostCritical!: pulumi.Output<string[] | undefined>;
    /** Whether the binding is kept across reboots through `/etc/driverctl.d/pci-<address>` (default false). */
    public readonly persistent!: pulumi.Output<boolean>;
    /** IOMMU group number. */
    public readonly group!: pulumi.Output<number>;
    /** `/dev/vfio/<group>` for vfio drivers (what QEMU opens), null for others. */
    public readonly vfioDevice!: pulumi.Output<string | null>;
    /** Every member of the group: address, ids, class, previous and current driver, whether it is managed. */
    public readonly members!: pulumi.Output<BindingMember[]>;
    /** The SSH connection, if any (secret). */
    public readonly connection!: pulumi.Output<ConnectionArgs | undefined>;
    /** The per-device driver changes planned at the last check, one line per member. */
    public readonly plan!: pulumi.Output<string[]>;

    constructor(name: string, args: IommuBindingArgs, opts?: pulumi.CustomResourceOptions) {
        super(
            thinProvider("iommuBinding"),
            name,
            {
                ...args,
                // Optional inputs are outputs too: list them so their Output exists even when unset.
                device: args.device,
                driver: args.driver,
                wholeGroup: args.wholeGroup,
                allowBootVga: args.allowBootVga,
                allowHostCritical: args.allowHostCritical,
                persistent: args.persistent,
                connection: secretConnection(args.connection),
                address: undefined,
                group: undefined,
                vfioDevice: undefined,
                members: undefined,
                plan: undefined,
            },
            withSecretConnection(opts),
            "vfio",
            "IommuBinding",
        );
    }
}
