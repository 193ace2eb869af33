import * as pulumi from "@pulumi/pulumi";
import type { Bootloader } from "../provider/boot/loaders";
import type { InitramfsGenerator } from "../provider/boot/early";
import { secretConnection, thinProvider, withSecretConnection } from "./provider";
import { ConnectionArgs } from "./types";

export interface ModuleSettingArgs {
    /** Module name as modprobe knows it, e.g. `kvm`, `kvm_intel`, `vfio_pci`. */
    name: pulumi.Input<string>;
    /** Module parameters, e.g. `{ ignore_msrs: 1 }`; an array becomes `a,b,c`, a boolean `1`/`0`. Default none. */
    options?: pulumi.Input<Record<string, pulumi.Input<string | number | boolean | (string | number)[]>>>;
    /** Load the module at boot (`/etc/modules-load.d/pulumi-vfio.conf`). Default false. */
    load?: pulumi.Input<boolean>;
}

export interface BootConfigArgs {
    /**
     * Kernel parameters to add to the command line of normal boots, one per item: `intel_iommu=on`, `iommu=pt`,
     * `video=efifb:off`, `initcall_blacklist=sysfb_init`, `kvm.ignore_msrs=1`, `hugepagesz=1G`, `hugepages=8`. The
     * user's own parameters are kept; ours come after them, so the kernel takes ours for a name given twice.
     * Refused at preview: white space, quotes, shell characters (Documentation/admin-guide/kernel-parameters.rst).
     */
    kernelParameters?: pulumi.Input<pulumi.Input<string>[]>;
    /** Names of parameters to take off the command line wherever they come from (`nomodeset`). Default none. */
    removeKernelParameters?: pulumi.Input<pulumi.Input<string>[]>;
    /**
     * PCI addresses claimed for vfio-pci at boot, before their host drivers (nvidia, amdgpu, snd_hda_intel):
     * `driver_override` written by a modprobe `install` hook of vfio-pci, `softdep <host driver> pre: vfio_pci`, both
     * also in the initramfs (initramfs-tools or dracut, regenerated). By address, never by ids, so an identical
     * second GPU stays with the host. Typically an IommuBinding's `members` addresses.
     */
    earlyBinding?: pulumi.Input<pulumi.Input<string>[]>;
    /** Module options and modules to load at boot (`/etc/modprobe.d/pulumi-vfio.conf`, `/etc/modules-load.d`). */
    modules?: pulumi.Input<pulumi.Input<ModuleSettingArgs>[]>;
    /** `auto` (default: detect systemd-boot, grubby, Debian's GRUB), or one of `grub`, `grubby`, `systemd-boot`. */
    bootloader?: pulumi.Input<"auto" | Bootloader>;
    /**
     * `never` (default): write and regenerate; `pendingReboot` says a reboot is due. `ifNeeded`: reboot the host when
     * the running kernel lacks the configuration, wait for it (SSH) and verify `/proc/cmdline` and the early
     * bindings; SSH connections only.
     */
    reboot?: pulumi.Input<"never" | "ifNeeded">;
    /** Seconds to wait for the host after a reboot. Default 600. */
    rebootTimeout?: pulumi.Input<number>;
    /** SSH connection to the host; absent means the machine running pulumi. Stored as a secret. */
    connection?: pulumi.Input<ConnectionArgs>;
}

/**
 * Boot-time configuration of a passthrough host: kernel command line parameters through the host's boot loader,
 * devices claimed for vfio-pci by PCI address before their host drivers load, and module options.
 *
 * `pulumi preview` lists every line that changes in each file (our GRUB drop-in, `/etc/kernel/cmdline`, the
 * modprobe.d file, the initramfs hook) and whether a reboot is needed; `pulumi up` writes them, regenerates the
 * initramfs and the boot loader configuration, and on any failure puts every file back; `pendingReboot` is true
 * until the running kernel has it all; `pulumi destroy` removes what it wrote.
 *
 * ## Example Usage
 *
 * ```typescript
 * import * as vfio from "pulumi-vfio";
 *
 * const boot = new vfio.BootConfig("boot", {
 *     kernelParameters: ["intel_iommu=on", "iommu=pt"],
 *     earlyBinding: ["0000:01:00.0", "0000:01:00.1"],   // the GPU and its HDMI audio, on vfio-pci from boot
 * });
 * export const rebootNeeded = boot.pendingReboot;
 * ```
 */
export class BootConfig extends pulumi.dynamic.Resource {
    /** The parameters this resource adds, as given (see BootConfigArgs). */
    public readonly kernelParameters!: pulumi.Output<string[]>;
    /** The parameter names this resource takes off the command line, as given. */
    public readonly removeKernelParameters!: pulumi.Output<string[]>;
    /** The early-bound addresses, normalized (`0000:01:00.0`). */
    public readonly earlyBinding!: pulumi.Output<string[]>;
    /** The module settings written to /etc/modprobe.d/pulumi-vfio.conf and /etc/modules-load.d/pulumi-vfio.conf. */
    public readonly modules!: pulumi.Output<{ name: string; options?: Record<string, string | number | boolean | (string | number)[]>; load?: boolean }[]>;
    /** The boot loader in use: `grub`, `grubby` or `systemd-boot`. */
    public readonly loader!: pulumi.Output<Bootloader>;
    /** The initramfs generator: `initramfs-tools`, `dracut` or `none`. */
    public readonly initramfs!: pulumi.Output<InitramfsGenerator>;
    /** The running kernel's parameters (`/proc/cmdline`, without BOOT_IMAGE and initrd). */
    public readonly running!: pulumi.Output<string[]>;
    /** The parameters the boot loader gives the kernel at the next boot. */
    public readonly configured!: pulumi.Output<string[]>;
    /** True while the running system lacks the configuration: a reboot is due. */
    public readonly pendingReboot!: pulumi.Output<boolean>;
    /** Why a reboot is due, one line each (empty when none). */
    public readonly pending!: pulumi.Output<string[]>;
    /** Host driver modules that load vfio-pci first (`softdep <module> pre: vfio_pci`). */
    public readonly hostModules!: pulumi.Output<string[]>;
    /** The lines the last preview showed: the files' changes, the commands, the reboot. */
    public readonly plan!: pulumi.Output<string[]>;

    constructor(name: string, args: BootConfigArgs, opts?: pulumi.CustomResourceOptions) {
        super(
            thinProvider("bootConfig"),
            name,
            {
                ...args,
                // Optional inputs are outputs too: list them so their Output exists even when unset.
                kernelParameters: args.kernelParameters,
                removeKernelParameters: args.removeKernelParameters,
                earlyBinding: args.earlyBinding,
                modules: args.modules,
                bootloader: args.bootloader,
                reboot: args.reboot,
                rebootTimeout: args.rebootTimeout,
                connection: secretConnection(args.connection),
                loader: undefined,
                initramfs: undefined,
                running: undefined,
                configured: undefined,
                pendingReboot: undefined,
                pending: undefined,
                hostModules: undefined,
                written: undefined,
                found: undefined,
                previous: undefined,
                plan: undefined,
            },
            withSecretConnection(opts),
            "vfio",
            "BootConfig",
        );
    }
}
