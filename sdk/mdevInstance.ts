import * as pulumi from "@pulumi/pulumi";
import type { MdevAttr, VramBounds } from "../provider/sysfs/mdev";
import { defaultMdevUuid } from "../provider/sysfs/mdev";
import { secretConnection, thinProvider, withSecretConnection } from "./provider";
import { ConnectionArgs } from "./types";

export type { MdevAttr, VramBounds };

/** Bounds on a type's video memory, in MiB (both inclusive). */
export interface VramBoundsArgs {
    /** At least this many MiB. Default 0. */
    min?: pulumi.Input<number>;
    /** At most this many MiB. Default: no limit. */
    max?: pulumi.Input<number>;
}

/** One attribute written under `/sys/bus/mdev/devices/<uuid>/` right after create, e.g. `nvidia/vgpu_params`. */
export interface MdevAttrArgs {
    /** The file under the device (at most one directory level). */
    name: pulumi.Input<string>;
    /** The value written. */
    value: pulumi.Input<string>;
}

export interface MdevInstanceArgs {
    /**
     * The parent device: a PCI address (`0000:00:02.0`, as under /sys/class/mdev_bus) or the name of a non-PCI
     * parent there (`mtty`). For NVIDIA vGPU 17+ (Ada and later, no mdev bus): the GPU's PF (a free VF is chosen)
     * or one VF. Unknown parents fail at preview with the list of parents.
     */
    parent: pulumi.Input<string>;
    /**
     * The exact type id as under `mdev_supported_types` (`nvidia-63`, `i915-GVTg_V5_4`, `mtty-2`); for vGPU 17+
     * the numeric id or the profile name (`NVIDIA L40S-2Q`). Give this or `vram`.
     */
    type?: pulumi.Input<string>;
    /**
     * Choose the type by video memory in MiB instead, as LibVF.IO does (parsed from the type's description or
     * name): the smallest type within the bounds that still has room. Bounds matching nothing fail at preview with
     * every type's size.
     */
    vram?: pulumi.Input<VramBoundsArgs>;
    /**
     * The mdev's UUID (QEMU: `-device vfio-pci,sysfsdev=/sys/bus/mdev/devices/<uuid>`; NVIDIA guests also need
     * `-uuid <uuid>`). Default: a UUID v5 of the project, stack and resource name, the same on every run, so a
     * retried create adopts the instance it made instead of leaking another.
     */
    uuid?: pulumi.Input<string>;
    /** Attributes written in order right after create (mdevctl's `attrs`). A change replaces the mdev. */
    attrs?: pulumi.Input<pulumi.Input<MdevAttrArgs>[]>;
    /**
     * Keep the mdev across reboots (default false): writes mdevctl's config `/etc/mdevctl.d/<parent>/<uuid>`
     * (`start: auto`, mode 0644), which mdevctl starts when the parent registers at boot. Needs mdevctl; a packaged
     * udev rule that calls a missing mdevctl path (Debian 12's) is overridden in /etc/udev/rules.d.
     */
    persistent?: pulumi.Input<boolean>;
    /** SSH connection to the host; absent means the machine running pulumi. Stored as a secret. */
    connection?: pulumi.Input<ConnectionArgs>;
}

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
    public readonly attrs!: pulumi.Output<MdevAttr[]>;
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
