import * as pulumi from "@pulumi/pulumi";
import type { MdevAttr, VramBounds } from "../provider/sysfs/mdev";
import { defaultMdevUuid } from "../provider/sysfs/mdev";
import { secretConnection, thinProvider, withSecretConnection } from "./provider";
import type { MdevAttrArgs, MdevInstanceArgs, VramBoundsArgs } from "./generated/args";
import { ConnectionArgs } from "./types";

export type { MdevAttr, VramBounds };

// The Args are generated from schema/mdev-instance.schema.json (docs and defaults included): see scripts/gen-schema.js.
export type { MdevAttrArgs, MdevInstanceArgs, VramBoundsArgs };

/**
 * Creates a mediated device — a vGPU, a GVT-g slice or any mdev — of a chosen type on a parent device, or an
 * NVIDIA vGPU 17+ on a free SR-IOV VF; destroying it removes the device.
 *
 * `pulumi preview` shows the chosen type and the capacity left, and fails when the type has no instance left
 * (naming the types that have room); `pulumi up` creates it under a host-wide lock, writes its attributes and
 * removes it again if one is refused; `pulumi refresh` sees a removed mdev (gone) or a changed type (replaced on
 * the next `up`); `pulumi destroy` refuses while a VM holds `/dev/vfio/<group>`.
 *
 * ## Example Usage
 *
 * ```typescript
 * import * as pulumi from "@pulumi/pulumi";
 * import * as vfio from "pulumi-vfio";
 *
 * // The smallest vGPU with at least 2 GiB of video memory on the GPU at 0000:41:00.0, back after every reboot.
 * const vgpu = new vfio.MdevInstance("win-vgpu", { parent: "0000:41:00.0", vram: { min: 2048 }, persistent: true });
 * export const qemuDevice = pulumi.interpolate`vfio-pci,sysfsdev=${vgpu.sysfsPath}`;
 * ```
 */
export class MdevInstance extends pulumi.dynamic.Resource {
    /** The UUID (given, or derived from project, stack and resource name); also the resource id. */
    public readonly uuid!: pulumi.Output<string>;
    /** The parent as given: a PCI address or a non-PCI parent's name under /sys/class/mdev_bus. */
    public readonly parent!: pulumi.Output<string>;
    /** The parent as the kernel names it (`mtty`, `0000:00:02.0`). */
    public readonly parentDevice!: pulumi.Output<string>;
    /** The type id in use (`mtty-2`, `nvidia-63`; numeric for vGPU 17+). */
    public readonly typeId!: pulumi.Output<string>;
    /** The type's name (`Dual port serial`, `GRID P40-2Q`). */
    public readonly typeName!: pulumi.Output<string>;
    /** `mdev`, or `nvidia-vgpu` for NVIDIA's vGPU 17+ on a VF. */
    public readonly backend!: pulumi.Output<"mdev" | "nvidia-vgpu">;
    /** vGPU 17+: the VF carrying the vGPU (QEMU: `-device vfio-pci,host=<address>`); null for an mdev. */
    public readonly address!: pulumi.Output<string | null>;
    /** `/sys/bus/mdev/devices/<uuid>` (what QEMU's `sysfsdev=` takes), or the VF's sysfs directory. */
    public readonly sysfsPath!: pulumi.Output<string>;
    /** The device's IOMMU group. */
    public readonly iommuGroup!: pulumi.Output<number>;
    /** `/dev/vfio/<group>`, what a VM opens. */
    public readonly vfioDevice!: pulumi.Output<string>;
    /** Instances of this type that can still be created on the parent (after this one). */
    public readonly availableInstances!: pulumi.Output<number>;
    /** The type's video memory in MiB, when it states one. */
    public readonly vramMiB!: pulumi.Output<number | null>;
    /** The attributes written right after create, in order (`{name, value}`, mdevctl's attrs). */
    public readonly attrs!: pulumi.Output<MdevAttr[]>;
    /** Whether mdevctl's config `/etc/mdevctl.d/<parent>/<uuid>` keeps the mdev across reboots. */
    public readonly persistent!: pulumi.Output<boolean>;
    /** mdevctl's config file when persistent, else null. */
    public readonly mdevctlConfig!: pulumi.Output<string | null>;
    /** What the last check planned (create, adopt, files written), one line each. */
    public readonly plan!: pulumi.Output<string[]>;

    constructor(name: string, args: MdevInstanceArgs, opts?: pulumi.CustomResourceOptions) {
        super(
            thinProvider("mdevInstance"),
            name,
            {
                ...args,
                // Optional inputs are outputs too: list them so their Output exists even when unset.
                parent: args.parent,
                attrs: args.attrs,
                persistent: args.persistent,
                uuid: args.uuid ?? defaultMdevUuid(pulumi.getProject(), pulumi.getStack(), name),
                connection: secretConnection(args.connection),
                parentDevice: undefined,
                typeId: undefined,
                typeName: undefined,
                backend: undefined,
                address: undefined,
                sysfsPath: undefined,
                iommuGroup: undefined,
                vfioDevice: undefined,
                availableInstances: undefined,
                vramMiB: undefined,
                mdevctlConfig: undefined,
                plan: undefined,
            },
            withSecretConnection(opts),
            "vfio",
            "MdevInstance",
        );
    }
}
