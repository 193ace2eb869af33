import * as pulumi from "@pulumi/pulumi";
import type { KvmfrActual } from "../provider/kvmfrDevice";
import { secretConnection, thinProvider, withSecretConnection } from "./provider";
import type { KvmfrDeviceArgs } from "./generated/args";

export type { KvmfrActual };

// The Args are generated from schema/kvmfr-device.schema.json (docs and defaults included): see scripts/gen-schema.js.
export type { KvmfrDeviceArgs };

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
    /** N of `/dev/kvmfrN`: the position in kvmfr's `static_size_mb`. */
    public readonly index!: pulumi.Output<number>;
    /** Size in MiB (given, or computed from the resolution). */
    public readonly sizeMb!: pulumi.Output<number>;
    /** Size in bytes (what libvirt's JSON `size` wants). */
    public readonly sizeBytes!: pulumi.Output<number>;
    /** `/dev/kvmfrN`. */
    public readonly path!: pulumi.Output<string>;
    /** The QEMU arguments that give a VM this device (`-object memory-backend-file,... -device ivshmem-plain,...`). */
    public readonly qemuArgs!: pulumi.Output<string[]>;
    /** The device node's owner (user name), e.g. the user running looking-glass-client. */
    public readonly owner!: pulumi.Output<string>;
    /** The device node's group (default `kvm`). */
    public readonly group!: pulumi.Output<string>;
    /** The device node's mode as four octal digits (default `0660`; nothing for other users). */
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
