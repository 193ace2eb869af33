/** BootConfig's inputs, outputs and defaults (schema/boot-config.schema.json), shared by its reader, planner and resource. */
import type { Bootloader } from "./loaders";
import type { InitramfsGenerator } from "./early";
import { CLAIM_SCRIPT, DRACUT, DRACUT_CONF, INITRAMFS_TOOLS_HOOK, MODPROBE_CONF, MODULES_LOAD_CONF, UPDATE_INITRAMFS } from "./early";
import { BOOTCTL, GRUBBY, GRUB_CFG, GRUB_DEFAULT, GRUB_DROPIN, GRUB_MKCONFIG, KERNEL_INSTALL, SDBOOT_INITRAMFS_HOOK, UPDATE_GRUB } from "./loaders";
import { schemaDefault } from "../check";
import type { BootConfigSchemaInputs, ModuleSettingInput } from "../generated/inputs";
import { parseAddress } from "../sysfs/pci";

/** One module's boot settings (schema/boot-config.schema.json `modules` items, generated). */
export type ModuleSetting = ModuleSettingInput;

/** The schema's inputs (provider/generated/inputs.ts, from schema/boot-config.schema.json) and what check adds. */
export interface BootConfigInputs extends BootConfigSchemaInputs {
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

const SCHEMA = "boot-config.schema.json";
/** Every input with the schema's default where it is unset (an older state, diff, read: validate() did not fill it). */
export const defaults = (i: BootConfigInputs) => ({
    kernelParameters: i.kernelParameters ?? schemaDefault<string[]>(SCHEMA, "kernelParameters"),
    removeKernelParameters: i.removeKernelParameters ?? schemaDefault<string[]>(SCHEMA, "removeKernelParameters"),
    earlyBinding: (i.earlyBinding ?? schemaDefault<string[]>(SCHEMA, "earlyBinding")).map((a) => parseAddress(a)),
    modules: i.modules ?? schemaDefault<ModuleSetting[]>(SCHEMA, "modules"),
    bootloader: i.bootloader ?? schemaDefault<"auto" | Bootloader>(SCHEMA, "bootloader"),
    reboot: i.reboot ?? schemaDefault<"never" | "ifNeeded">(SCHEMA, "reboot"),
    rebootTimeout: i.rebootTimeout ?? schemaDefault<number>(SCHEMA, "rebootTimeout"),
});
export type Settings = ReturnType<typeof defaults>;

export const OWNED = [GRUB_DROPIN, MODPROBE_CONF, MODULES_LOAD_CONF, CLAIM_SCRIPT, INITRAMFS_TOOLS_HOOK, DRACUT_CONF];
export const PROBED = [GRUB_DEFAULT, UPDATE_GRUB, GRUB_MKCONFIG, GRUB_CFG, GRUBBY, BOOTCTL, KERNEL_INSTALL, SDBOOT_INITRAMFS_HOOK, UPDATE_INITRAMFS, DRACUT];
export const BOOT_ID = "/proc/sys/kernel/random/boot_id";
