/** BootConfig's inputs, outputs and defaults (schema/boot-config.schema.json), shared by its reader, planner and resource. */
import type { Bootloader } from "./loaders";
import type { InitramfsGenerator } from "./early";
import type { ModuleOptionValue } from "./modprobe";
import { CLAIM_SCRIPT, DRACUT, DRACUT_CONF, INITRAMFS_TOOLS_HOOK, MODPROBE_CONF, MODULES_LOAD_CONF, UPDATE_INITRAMFS } from "./early";
import { BOOTCTL, GRUBBY, GRUB_CFG, GRUB_DEFAULT, GRUB_DROPIN, GRUB_MKCONFIG, KERNEL_INSTALL, UPDATE_GRUB } from "./loaders";
import type { Connection } from "../host/ssh";
import { parseAddress } from "../sysfs/pci";

export interface ModuleSetting {
    name: string;
    options?: Record<string, ModuleOptionValue>;
    load?: boolean;
}

export interface BootConfigInputs {
    kernelParameters?: string[];
    removeKernelParameters?: string[];
    earlyBinding?: string[];
    modules?: ModuleSetting[];
    bootloader?: "auto" | Bootloader;
    reboot?: "never" | "ifNeeded";
    rebootTimeout?: number;
    connection?: Connection;
    /** Set by check: the lines that change, per file, and what a reboot will do. */
    plan?: string[];
}

/** What the host had before our first change, for destroy to put back. */
export interface BootPrevious {
    /** /etc/kernel/cmdline's text before us (null: absent). systemd-boot only. */
    kernelCmdline?: string | null;
    /** With grubby: the words our removals and additions took off the default entry (re-added on destroy). */
    grubbyTaken?: string[];
}

export interface BootConfigOutputs extends BootConfigInputs {
    kernelParameters: string[];
    removeKernelParameters: string[];
    earlyBinding: string[];
    modules: ModuleSetting[];
    bootloader: "auto" | Bootloader;
    reboot: "never" | "ifNeeded";
    rebootTimeout: number;
    /** The boot loader in use. */
    loader: Bootloader;
    initramfs: InitramfsGenerator;
    /** The running kernel's parameters (/proc/cmdline). */
    running: string[];
    /** What the boot loader gives the kernel at the next boot. */
    configured: string[];
    /** True while the running kernel lacks what is configured (a parameter, or an early-bound device not on vfio-pci). */
    pendingReboot: boolean;
    /** Why a reboot is pending, one line each (empty when none). */
    pending: string[];
    /** Host driver modules that get `softdep <module> pre: vfio_pci`. */
    hostModules: string[];
    /** Every file we own with the text we wrote. */
    written: Record<string, string>;
    /** Those files as read at the last create/update/refresh ("" when absent): drift when it differs from `written`. */
    found: Record<string, string>;
    previous: BootPrevious;
}

export const defaults = (i: BootConfigInputs) => ({
    kernelParameters: i.kernelParameters ?? [],
    removeKernelParameters: i.removeKernelParameters ?? [],
    earlyBinding: (i.earlyBinding ?? []).map((a) => parseAddress(a)),
    modules: i.modules ?? [],
    bootloader: i.bootloader ?? ("auto" as const),
    reboot: i.reboot ?? ("never" as const),
    rebootTimeout: i.rebootTimeout ?? 600,
});
export type Settings = ReturnType<typeof defaults>;

export const OWNED = [GRUB_DROPIN, MODPROBE_CONF, MODULES_LOAD_CONF, CLAIM_SCRIPT, INITRAMFS_TOOLS_HOOK, DRACUT_CONF];
export const PROBED = [GRUB_DEFAULT, UPDATE_GRUB, GRUB_MKCONFIG, GRUB_CFG, GRUBBY, BOOTCTL, KERNEL_INSTALL, UPDATE_INITRAMFS, DRACUT];
export const BOOT_ID = "/proc/sys/kernel/random/boot_id";
