import * as pulumi from "@pulumi/pulumi";
import type { KvmfrActual } from "../provider/kvmfrDevice";
import type { LibvirtAdded } from "../provider/libvirt/qemuConf";
import { secretConnection, thinProvider, withSecretConnection } from "./provider";
import type { KvmfrDeviceArgs } from "./generated/args";

export type { KvmfrActual, LibvirtAdded };

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
 * needs nothing more. For a libvirt domain, `libvirt: true` also does Looking Glass's libvirt setup: `/dev/kvmfrN` in
 * `cgroup_device_acl` of /etc/libvirt/qemu.conf (the user's setting kept, or libvirt's default list kept in one of
 * ours) and, where AppArmor confines libvirt, `/dev/kvmfrN rw,` in /etc/apparmor.d/local/abstractions/libvirt-qemu;
 * libvirtd is restarted only when qemu.conf changed and it is running; destroy takes back exactly those lines.
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
    /** With `libvirt`: what was added to qemu.conf (`acl`) and AppArmor (`apparmor`), which destroy takes back. */
    public readonly libvirtAdded!: pulumi.Output<LibvirtAdded | undefined>;

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
                libvirt: args.libvirt,
                connection: secretConnection(args.connection),
                path: undefined,
                sizeBytes: undefined,
                qemuArgs: undefined,
                uid: undefined,
                gid: undefined,
                actual: undefined,
                libvirtAdded: undefined,
                plan: undefined,
            },
            withSecretConnection(opts),
            "vfio",
            "KvmfrDevice",
        );
    }
}
