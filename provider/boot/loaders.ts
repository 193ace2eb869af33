/**
 * Boot loaders: which one a host boots with, what command line it is configured to give the kernel, and how to
 * change that without touching the user's own settings. Pure: the host facts are read beforehand (bootConfig.ts).
 *
 * - GRUB, Debian/Ubuntu: grub-mkconfig (update-grub) sources /etc/default/grub and then /etc/default/grub.d/*.cfg
 *   in name order (a Debian patch, grub2's debian/patches); parameters of normal boots are GRUB_CMDLINE_LINUX_DEFAULT,
 *   of every entry GRUB_CMDLINE_LINUX. We add one drop-in sorted last, so the user's files stay as they are.
 * - grubby (Fedora, RHEL): `grubby --update-kernel=ALL --args=... --remove-args=...` edits every entry;
 *   `grubby --info=DEFAULT` prints the default entry's `args="..."`.
 * - systemd-boot: kernel-install(8) takes the command line from /etc/kernel/cmdline (else /proc/cmdline) and
 *   writes the loader entry on the ESP; `bootctl list --json=short` shows the entries with their `options`.
 */
import { applyParameters, parameterName, splitCmdline } from "./cmdline";

export type Bootloader = "grub" | "grubby" | "systemd-boot";

export const GRUB_DEFAULT = "/etc/default/grub";
export const GRUB_DROPIN_DIR = "/etc/default/grub.d";
/** Sorted after every other drop-in (`z` after digits and letters), so its removals see the user's additions. */
export const GRUB_DROPIN = `${GRUB_DROPIN_DIR}/zz-pulumi-vfio.cfg`;
export const GRUB_CFG = "/boot/grub/grub.cfg";
export const UPDATE_GRUB = "/usr/sbin/update-grub";
export const GRUB_MKCONFIG = "/usr/sbin/grub-mkconfig";
export const GRUBBY = "/usr/sbin/grubby";
export const BOOTCTL = "/usr/bin/bootctl";
export const KERNEL_INSTALL = "/usr/bin/kernel-install";
export const KERNEL_CMDLINE = "/etc/kernel/cmdline";
/**
 * Debian's systemd-boot package hooks initramfs-tools: after `update-initramfs` writes an initrd, this script runs
 * `kernel-install add <version> /boot/vmlinuz-<version> <initrd>` for it (seen on Debian 12's systemd-boot 252).
 */
export const SDBOOT_INITRAMFS_HOOK = "/etc/initramfs/post-update.d/systemd-boot";

/** What the detection looked at, for the error when nothing matched. */
export const LOOKED_FOR = [
    "systemd-boot (`bootctl is-installed` succeeds, with kernel-install)",
    `grubby (${GRUBBY})`,
    `GRUB with Debian's drop-ins (${GRUB_DEFAULT}, ${UPDATE_GRUB} or ${GRUB_MKCONFIG}, ${GRUB_CFG})`,
];

/** One boot loader entry as `bootctl list --json=short` prints it (the fields we use). */
export interface LoaderEntry {
    id?: string;
    path?: string;
    version?: string;
    linux?: string;
    options?: string;
    isDefault?: boolean;
    isSelected?: boolean;
}

export interface LoaderFacts {
    /** Paths among the probed ones that exist. */
    present: Set<string>;
    /** `bootctl is-installed` exited 0. */
    systemdBootInstalled: boolean;
    /** `bootctl list --json=short`, when it ran. */
    entries?: LoaderEntry[];
    /** `grubby --info=DEFAULT`, when it ran. */
    grubbyInfo?: string;
    grubCfg?: string;
    grubDropin?: string;
    kernelCmdline?: string;
    /** The running kernel's words (/proc/cmdline without BOOT_IMAGE/initrd). */
    running: string[];
    kernelRelease: string;
}

/** The boot loader to use, or the reason none can be. `wanted` auto detects. */
export function chooseBootloader(wanted: "auto" | Bootloader, f: LoaderFacts): { loader: Bootloader } | { problem: string } {
    const detected: Record<Bootloader, boolean> = {
        "systemd-boot": f.systemdBootInstalled && f.present.has(KERNEL_INSTALL),
        grubby: f.present.has(GRUBBY),
        grub: f.present.has(GRUB_DEFAULT) && (f.present.has(UPDATE_GRUB) || f.present.has(GRUB_MKCONFIG)) && f.present.has(GRUB_CFG),
    };
    if (wanted !== "auto") {
        if (detected[wanted]) return { loader: wanted };
        return { problem: `bootloader: ${wanted} is not set up on this host (looked for ${LOOKED_FOR[["systemd-boot", "grubby", "grub"].indexOf(wanted)]}); use bootloader: auto to detect the one it has` };
    }
    for (const l of ["systemd-boot", "grubby", "grub"] as Bootloader[]) if (detected[l]) return { loader: l };
    return { problem: `bootloader: no supported boot loader found on this host; looked for ${LOOKED_FOR.join("; ")}. Other boot loaders: add the parameters by hand` };
}

/** The words after the kernel image on the first `linux` line of a grub.cfg (the default entry's). */
export function grubCfgParameters(text: string | undefined): string[] | undefined {
    for (const line of (text ?? "").split("\n")) {
        const words = splitCmdline(line.trim());
        if (words[0] === "linux" || words[0] === "linuxefi") return words.slice(2);
    }
    return undefined;
}

/** The `args="..."` of `grubby --info=DEFAULT`. */
export function grubbyParameters(info: string | undefined): string[] | undefined {
    const m = /^args="?(.*?)"?$/m.exec(info ?? "");
    return m ? splitCmdline(m[1]) : undefined;
}

/**
 * The entry the next boot takes, of `bootctl list --json=short`: the default, else the selected (booted) one, else the
 * first. Only entries that boot a kernel count: bootctl also lists its own (`auto-reboot-to-firmware-setup`), and
 * systemd 252 marks none as default or selected in this output.
 */
export function defaultEntry(entries: LoaderEntry[] | undefined): LoaderEntry | undefined {
    const kernels = (entries ?? []).filter((e) => e.linux !== undefined || e.options !== undefined);
    return kernels.find((e) => e.isDefault) ?? kernels.find((e) => e.isSelected) ?? kernels[0];
}

/** What the boot loader gives the kernel at the next boot, as configured now; undefined when it cannot be read. */
export function configuredParameters(loader: Bootloader, f: LoaderFacts): string[] | undefined {
    switch (loader) {
        case "grub":
            return grubCfgParameters(f.grubCfg);
        case "grubby":
            return grubbyParameters(f.grubbyInfo);
        case "systemd-boot": {
            const e = defaultEntry(f.entries);
            return e?.options !== undefined ? splitCmdline(e.options) : undefined;
        }
    }
}

// ------------------------------------------------------------------------------------------------ GRUB drop-in

/** A shell `case` pattern matching a parameter word of this name, `-` and `_` alike (the names are validated). */
function casePattern(name: string): string {
    const n = name.replace(/[-_]/g, "[-_]");
    return `${n}|${n}=*`;
}

/**
 * Our drop-in for Debian's GRUB: drops the words named in `remove` from both GRUB_CMDLINE_LINUX and
 * GRUB_CMDLINE_LINUX_DEFAULT (wherever the user set them), then appends `add` to GRUB_CMDLINE_LINUX_DEFAULT (normal
 * boots; the recovery entry stays as the user has it). Every word was validated (no spaces, quotes or shell
 * characters), so the text is a constant shape around them.
 */
export function renderGrubDropin(add: string[], remove: string[]): string {
    const lines = ["# Written by pulumi-vfio (BootConfig); `pulumi destroy` removes it. Sourced by grub-mkconfig after", `# ${GRUB_DEFAULT}; edit the Pulumi program, not this file.`];
    if (remove.length) {
        const pattern = remove.map(casePattern).join("|");
        for (const v of ["GRUB_CMDLINE_LINUX", "GRUB_CMDLINE_LINUX_DEFAULT"]) {
            lines.push(
                "pulumi_vfio_keep=",
                `for pulumi_vfio_w in $${v}; do`,
                `  case "$pulumi_vfio_w" in ${pattern}) ;; *) pulumi_vfio_keep="$pulumi_vfio_keep $pulumi_vfio_w" ;; esac`,
                "done",
                `${v}="\${pulumi_vfio_keep# }"`,
            );
        }
        lines.push("unset pulumi_vfio_keep pulumi_vfio_w");
    }
    if (add.length) lines.push(`GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT ${add.join(" ")}"`);
    return lines.join("\n") + "\n";
}

/** The parameters a drop-in of ours adds (to show drift and what a destroy takes away). */
export function dropinAdds(text: string | undefined): string[] {
    const m = /^GRUB_CMDLINE_LINUX_DEFAULT="\$GRUB_CMDLINE_LINUX_DEFAULT (.*)"$/m.exec(text ?? "");
    return m ? m[1].split(" ").filter(Boolean) : [];
}

/**
 * The command line the boot loader will have after our change, predicted from what it has now without our own
 * earlier change (`ours`: what we added before, taken off first; what we removed before cannot be predicted back
 * and is left to the regeneration's read-back).
 */
export function predictConfigured(configured: string[], ours: string[], add: string[], remove: string[]): string[] {
    const mine = new Set(ours);
    const base = configured.filter((w) => !mine.has(w));
    return applyParameters(base, add, remove);
}

/**
 * The loader entry's options after `kernel-install add` from /etc/kernel/cmdline's `words`: its loader-entry plugin
 * (90-loaderentry.install) appends `systemd.machine_id=<id>` when entries are named after the machine id, which an
 * entry that has that word now shows.
 */
export function predictEntryOptions(words: string[], current: string[] | undefined): string[] {
    const machineId = (current ?? []).find((w) => w.startsWith("systemd.machine_id="));
    return machineId && !words.some((w) => w.startsWith("systemd.machine_id=")) ? [...words, machineId] : words;
}

/** The kernel-install command line file's text for systemd-boot. */
export function renderKernelCmdline(words: string[]): string {
    return words.join(" ") + "\n";
}

/** Names, for messages: `intel_iommu=on iommu=pt` → `intel_iommu, iommu`. */
export const namesOf = (words: string[]) => words.map(parameterName).join(", ");
