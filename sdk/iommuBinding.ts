import * as pulumi from "@pulumi/pulumi";
import type { BindingMember } from "../provider/iommuBinding";
import { secretConnection, thinProvider, withSecretConnection } from "./provider";
import { ConnectionArgs } from "./types";

export type { BindingMember };

/** Selects a device by PCI ids instead of its address (ids in hex, e.g. `10de`). */
export interface DeviceSelectorArgs {
    /** Vendor id, e.g. `10de` (NVIDIA), `1002` (AMD), `8086` (Intel). */
    vendor: pulumi.Input<string>;
    /** Device id, e.g. `2204`. */
    device: pulumi.Input<string>;
    /** Subsystem vendor id, to tell apart boards of the same chip. */
    subsystemVendor?: pulumi.Input<string>;
    /** Subsystem device id. */
    subsystemDevice?: pulumi.Input<string>;
    /** Which match, in address order, counting from 0, when several identical devices exist. */
    index?: pulumi.Input<number>;
}

export interface IommuBindingArgs {
    /**
     * The device: a PCI address (`0000:01:00.0`, or `01:00.0` as lspci prints it), or a selector by ids that must
     * match exactly one device (the error lists the candidates otherwise). Bridges are refused.
     */
    device: pulumi.Input<string | DeviceSelectorArgs>;
    /** Driver to bind: `vfio-pci` (default), `pci-stub`, or a vfio-pci variant driver. Loaded with modprobe if needed. */
    driver?: pulumi.Input<string>;
    /**
     * Bind every non-bridge member of the device's IOMMU group too (default true), so QEMU finds the group viable
     * (the classic failure: the GPU's HDMI audio left on snd_hda_intel). false is allowed only when the rest of the
     * group is already viable.
     */
    wholeGroup?: pulumi.Input<boolean>;
    /** Allow binding the GPU the host's console runs on (`boot_vga` = 1). Default false. */
    allowBootVga?: pulumi.Input<boolean>;
    /**
     * PCI addresses of host-critical group members that may be bound anyway (default none): a host or ISA/LPC bridge
     * (class 0600/0601), an SMBus controller (0c05), the controller holding a mounted filesystem or active swap, the
     * NIC carrying the SSH session. Without it, a group containing one fails at preview naming the member and why.
     * Risk: while bound, the host has lost that function (disks, network, chipset functions).
     */
    allowHostCritical?: pulumi.Input<pulumi.Input<string>[]>;
    /**
     * Keep the binding across reboots (default false): writes `/etc/driverctl.d/pci-<address>` files, which
     * driverctl applies at boot. Requires driverctl on the host.
     */
    persistent?: pulumi.Input<boolean>;
    /** SSH connection to the host; absent means the machine running pulumi. Stored as a secret. */
    connection?: pulumi.Input<ConnectionArgs>;
}

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
    public readonly device!: pulumi.Output<string | DeviceSelectorArgs>;
    public readonly driver!: pulumi.Output<string>;
    public readonly wholeGroup!: pulumi.Output<boolean>;
    public readonly allowBootVga!: pulumi.Output<boolean>;
    /** The host-critical members allowed to be bound, normalized to `DDDD:BB:DD.F`. */
    public readonly allowHostCritical!: pulumi.Output<string[] | undefined>;
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
