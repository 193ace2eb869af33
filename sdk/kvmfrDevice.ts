import * as pulumi from "@pulumi/pulumi";
import type { KvmfrActual } from "../provider/kvmfrDevice";
import { secretConnection, thinProvider, withSecretConnection } from "./provider";
import { ConnectionArgs } from "./types";

export type { KvmfrActual };

export interface KvmfrDeviceArgs {
    /** N of `/dev/kvmfrN`, 0–9. kvmfr numbers devices by position, so index 1 needs a KvmfrDevice for index 0 (dependOn it). */
    index: pulumi.Input<number>;
    /** Size in MiB, a power of two (32, 64, 128, ...). Give this, or `width` and `height`. */
    sizeMb?: pulumi.Input<number>;
    /** Largest guest resolution's width in pixels: the size is computed with Looking Glass's formula (1920×1080 → 32 MiB). */
    width?: pulumi.Input<number>;
    /** Largest guest resolution's height in pixels. */
    height?: pulumi.Input<number>;
    /** Size for HDR frames (8 bytes per pixel). Default false. */
    hdr?: pulumi.Input<boolean>;
    /** Looking Glass's sizing formula: `b7` (default; w×h×bpp×2 + 10 MiB) or `current` (rows padded to 256 bytes, ×3, + 4 MiB). */
    formula?: pulumi.Input<"b7" | "current">;
    /** Owner of the device: the user running the Looking Glass client. Default `root`. */
    owner?: pulumi.Input<string>;
    /** Group of the device. Default `kvm`. */
    group?: pulumi.Input<string>;
    /** Octal mode. Default `0660`; a mode with any permission for others (e.g. `0664`) is refused. */
    mode?: pulumi.Input<string>;
    /** SSH connection to the host; absent means the machine running pulumi. Stored as a secret. */
    connection?: pulumi.Input<ConnectionArgs>;
}

/**
 * Makes a Looking Glass shared-memory device `/dev/kvmfrN` with Looking Glass's kvmfr module: its size in the
 * module's `static_size_mb` array (shared by every KvmfrDevice of the host, merged under a host lock), its udev
 * permissions, and the module loaded at boot.
 *
 * `pulumi up` writes `/etc/modprobe.d/kvmfr.conf`, `/etc/modules-load.d/kvmfr.conf` and a udev rule, loads (or
 * reloads) the module — refused while a VM holds any `/dev/kvmfr*` — and checks that `/dev/kvmfrN` is a character
 * device of the right size (a regular file there means a QEMU started before the module). A host without the
 * module gets an error telling how to install Looking Glass's DKMS module. A PassthroughVm (QEMU run directly)
 * needs nothing more; a libvirt domain also needs the device in qemu.conf's `cgroup_device_acl` and AppArmor
 * (`/dev/kvmfr0 rw,`), which this resource does not touch.
 *
 * ## Example Usage
 *
 * ```typescript
 * import * as vfio from "pulumi-vfio";
 *
 * const lg = new vfio.KvmfrDevice("looking-glass", { index: 0, width: 2560, height: 1440, owner: "alice" });
 * export const shmPath = lg.path;    // "/dev/kvmfr0"
 * export const shmSize = lg.sizeMb;  // 64
 * ```
 */
export class KvmfrDevice extends pulumi.dynamic.Resource {
    public readonly index!: pulumi.Output<number>;
    /** Size in MiB (given, or computed from the resolution). */
    public readonly sizeMb!: pulumi.Output<number>;
    /** Size in bytes (what libvirt's JSON `size` wants). */
    public readonly sizeBytes!: pulumi.Output<number>;
    /** `/dev/kvmfrN`. */
    public readonly path!: pulumi.Output<string>;
    /** The QEMU arguments that give a VM this device (`-object memory-backend-file,... -device ivshmem-plain,...`). */
    public readonly qemuArgs!: pulumi.Output<string[]>;
    public readonly owner!: pulumi.Output<string>;
    public readonly group!: pulumi.Output<string>;
    public readonly mode!: pulumi.Output<string>;
    /** What the host shows (kind, loaded size, uid/gid/mode); a difference from the inputs is drift. */
    public readonly actual!: pulumi.Output<KvmfrActual>;
    /** The planned file and module changes at the last check. */
    public readonly plan!: pulumi.Output<string[]>;

    constructor(name: string, args: KvmfrDeviceArgs, opts?: pulumi.CustomResourceOptions) {
        super(
            thinProvider("kvmfrDevice"),
            name,
            {
                ...args,
                // Optional inputs are outputs too: list them so their Output exists even when unset.
                index: args.index,
                sizeMb: args.sizeMb,
                owner: args.owner,
                group: args.group,
                mode: args.mode,
                connection: secretConnection(args.connection),
                path: undefined,
                sizeBytes: undefined,
                qemuArgs: undefined,
                uid: undefined,
                gid: undefined,
                actual: undefined,
                plan: undefined,
            },
            withSecretConnection(opts),
            "vfio",
            "KvmfrDevice",
        );
    }
}
