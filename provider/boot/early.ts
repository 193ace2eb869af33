/**
 * Early binding by PCI address: devices claimed for vfio-pci at boot, before their host drivers (nvidia, amdgpu,
 * snd_hda_intel) bind them, without `vfio-pci.ids=` (which takes every device with those ids, an identical second
 * GPU the host keeps included).
 *
 * The mechanism is the driver_override recipe of the passthrough guides (Arch wiki, "PCI passthrough via OVMF",
 * "Using identical guest and host GPUs"), all in files we own:
 * - /etc/modprobe.d/pulumi-vfio.conf: `install vfio_pci <claim script>; modprobe --ignore-install vfio_pci`, so
 *   loading vfio-pci first writes `vfio-pci` to each address's driver_override (driver_override survives until
 *   changed and only that driver may then bind: Documentation/ABI/testing/sysfs-bus-pci), and
 *   `softdep <host driver module> pre: vfio_pci`, so loading the host driver loads vfio-pci (and the claim) first;
 * - the claim script itself;
 * - the initramfs: initramfs-tools (a hook that adds vfio-pci, the script and the modprobe.d file, and loads
 *   vfio-pci early) or dracut (force_drivers + install_items), regenerated after a change.
 * A host driver built into the kernel binds during PCI enumeration, before any of this can run: refused at check.
 */
import { ownedFile, softdepLine } from "./modprobe";

export const CLAIM_SCRIPT = "/usr/local/sbin/pulumi-vfio-claim";
export const MODPROBE_CONF = "/etc/modprobe.d/pulumi-vfio.conf";
export const MODULES_LOAD_CONF = "/etc/modules-load.d/pulumi-vfio.conf";
export const INITRAMFS_TOOLS_HOOK = "/etc/initramfs-tools/hooks/pulumi-vfio";
export const DRACUT_CONF = "/etc/dracut.conf.d/pulumi-vfio.conf";
export const UPDATE_INITRAMFS = "/usr/sbin/update-initramfs";
export const DRACUT = "/usr/bin/dracut";

export type InitramfsGenerator = "initramfs-tools" | "dracut" | "none";

export function chooseInitramfs(present: Set<string>): InitramfsGenerator {
    if (present.has(UPDATE_INITRAMFS)) return "initramfs-tools";
    if (present.has(DRACUT)) return "dracut";
    return "none";
}

/** The script modprobe runs before loading vfio-pci: driver_override = vfio-pci for each address (validated). */
export function renderClaimScript(addresses: string[]): string {
    return [
        "#!/bin/sh",
        "# Written by pulumi-vfio (BootConfig); `pulumi destroy` removes it. Run by modprobe before it loads vfio-pci",
        `# (${MODPROBE_CONF}), in the initramfs and in the root file system: these PCI functions go to vfio-pci only.`,
        `for dev in ${addresses.join(" ")}; do`,
        '    f="/sys/bus/pci/devices/$dev/driver_override"',
        '    [ -e "$f" ] && echo vfio-pci > "$f"',
        "done",
        "exit 0",
        "",
    ].join("\n");
}

/** The initramfs-tools hook (initramfs-tools(7), "Hook scripts"): vfio-pci, the claim and our modprobe.d file, loaded early. */
export function renderInitramfsHook(): string {
    return [
        "#!/bin/sh",
        "# Written by pulumi-vfio (BootConfig); `pulumi destroy` removes it. Puts vfio-pci and the early binding by",
        "# PCI address into the initramfs, and loads vfio-pci there before any host driver.",
        'PREREQ=""',
        'prereqs() { echo "$PREREQ"; }',
        'case "$1" in prereqs) prereqs; exit 0 ;; esac',
        ". /usr/share/initramfs-tools/hook-functions",
        "manual_add_modules vfio vfio_iommu_type1 vfio_pci",
        `copy_file script ${CLAIM_SCRIPT} ${CLAIM_SCRIPT}`,
        `copy_file config ${MODPROBE_CONF} ${MODPROBE_CONF}`,
        "force_load vfio_pci",
        "exit 0",
        "",
    ].join("\n");
}

/** dracut.conf(5) settings with the same effect. */
export function renderDracutConf(): string {
    return [
        "# Written by pulumi-vfio (BootConfig); `pulumi destroy` removes it.",
        'force_drivers+=" vfio vfio_iommu_type1 vfio_pci "',
        `install_items+=" ${CLAIM_SCRIPT} ${MODPROBE_CONF} "`,
        "",
    ].join("\n");
}

/** The regeneration command of a generator, for every installed kernel (hooks also apply to later kernels). */
export function regenerateInitramfs(g: InitramfsGenerator): string[] | undefined {
    if (g === "initramfs-tools") return ["update-initramfs", "-u", "-k", "all"];
    if (g === "dracut") return ["dracut", "--force", "--regenerate-all"];
    return undefined;
}

/** Our modprobe.d file: the claim hook and softdeps for early binding, then module options. */
export function renderModprobeConf(earlyBinding: string[], hostModules: string[], optionLines: string[]): string | undefined {
    const lines: string[] = [];
    if (earlyBinding.length) {
        lines.push(`# Early binding by PCI address (${earlyBinding.join(" ")}): vfio-pci first, with its driver_override claim.`);
        lines.push(`install vfio_pci ${CLAIM_SCRIPT}; /sbin/modprobe --ignore-install vfio_pci $CMDLINE_OPTS`);
        for (const m of hostModules) lines.push(softdepLine(m, "vfio_pci"));
    }
    lines.push(...optionLines);
    return lines.length ? ownedFile("BootConfig", lines) : undefined;
}
