import * as pulumi from "@pulumi/pulumi";
import type { Bootloader } from "../provider/boot/loaders";
import type { InitramfsGenerator } from "../provider/boot/early";
import type { ModuleSetting } from "../provider/boot/types";
import { secretConnection, thinProvider, withSecretConnection } from "./provider";
import type { BootConfigArgs, ModuleSettingArgs } from "./generated/args";

// The Args are generated from schema/boot-config.schema.json (docs and defaults included): see scripts/gen-schema.js.
export type { BootConfigArgs, ModuleSettingArgs };

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
    public readonly modules!: pulumi.Output<ModuleSetting[]>;
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
