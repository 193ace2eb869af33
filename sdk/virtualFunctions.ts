import * as pulumi from "@pulumi/pulumi";
import type { VirtualFunction } from "../provider/virtualFunctions";
import { secretConnection, thinProvider, withSecretConnection } from "./provider";
import type { VirtualFunctionsArgs } from "./generated/args";
import { ConnectionArgs } from "./types";

export type { VirtualFunction };

// The Args are generated from schema/virtual-functions.schema.json (docs and defaults included): see scripts/gen-schema.js.
export type { VirtualFunctionsArgs };

/**
 * Enables SR-IOV virtual functions on a physical function (`sriov_numvfs`), each a PCI device with its own IOMMU
 * group that an IommuBinding can hand to a VM; destroying it removes the VFs.
 *
 * `pulumi preview` shows the VF addresses that will appear and refuses a count above `sriov_totalvfs`, a device
 * without SR-IOV and a PF whose driver cannot create VFs; `pulumi up` writes `sriov_drivers_autoprobe` and then the
 * count (through 0 when it changes), reading the `virtfnN` links back; `pulumi refresh` shows a changed count.
 *
 * ## Example Usage
 *
 * ```typescript
 * import * as vfio from "pulumi-vfio";
 *
 * const vfs = new vfio.VirtualFunctions("nic-vfs", { physicalFunction: "0000:03:00.0", count: 2 });
 * // The first VF goes to vfio-pci for a VM.
 * const vf0 = new vfio.IommuBinding("vf0", { device: vfs.addresses[0] });
 * ```
 */
export class VirtualFunctions extends pulumi.dynamic.Resource {
    /** The PF address, normalized; also the resource id. */
    public readonly physicalFunction!: pulumi.Output<string>;
    /** VFs present (what the kernel reports). */
    public readonly count!: pulumi.Output<number>;
    /** `sriov_drivers_autoprobe` as set: whether host drivers may bind the new VFs (default false). */
    public readonly autoprobe!: pulumi.Output<boolean>;
    /** `sriov_totalvfs`: the most VFs this PF can have. */
    public readonly totalVfs!: pulumi.Output<number>;
    /** VF addresses in `virtfnN` order. */
    public readonly addresses!: pulumi.Output<string[]>;
    /** Each VF's IOMMU group, in the same order. */
    public readonly groups!: pulumi.Output<(number | null)[]>;
    /** Each VF: index, address, driver, group. */
    public readonly virtualFunctions!: pulumi.Output<VirtualFunction[]>;
    /** The planned writes at the last check. */
    public readonly plan!: pulumi.Output<string[]>;

    constructor(name: string, args: VirtualFunctionsArgs, opts?: pulumi.CustomResourceOptions) {
        super(
            thinProvider("virtualFunctions"),
            name,
            {
                ...args,
                // Optional inputs are outputs too: list them so their Output exists even when unset.
                physicalFunction: args.physicalFunction,
                count: args.count,
                autoprobe: args.autoprobe,
                connection: secretConnection(args.connection),
                totalVfs: undefined,
                addresses: undefined,
                groups: undefined,
                virtualFunctions: undefined,
                previousAutoprobe: undefined,
                plan: undefined,
            },
            withSecretConnection(opts),
            "vfio",
            "VirtualFunctions",
        );
    }
}
