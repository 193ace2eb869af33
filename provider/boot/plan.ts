/** Planning a BootConfig: from the inputs and what was read to the files, commands and preview lines. Pure. */
import type { CheckFailure } from "../check";
import { applyParameters, missingParameters, parameterName, splitCmdline, vendorWarnings, vfioPciIds } from "./cmdline";
import { DRACUT_CONF, INITRAMFS_TOOLS_HOOK, InitramfsGenerator, MODPROBE_CONF, MODULES_LOAD_CONF, CLAIM_SCRIPT, chooseInitramfs, regenerateInitramfs, renderClaimScript, renderDracutConf, renderInitramfsHook, renderModprobeConf } from "./early";
import { Bootloader, GRUBBY, GRUB_CFG, GRUB_DROPIN, GRUB_MKCONFIG, KERNEL_CMDLINE, KERNEL_INSTALL, SDBOOT_INITRAMFS_HOOK, UPDATE_GRUB, chooseBootloader, configuredParameters, defaultEntry, predictConfigured, predictEntryOptions, renderGrubDropin, renderKernelCmdline } from "./loaders";
import { ModuleOptionValue, moduleKey, optionsLine, ownedFile } from "./modprobe";
import { BootFacts } from "./facts";
import { BootPrevious, OWNED, Settings } from "./types";
import { isVfioDriver } from "../sysfs/iommu";


export interface BootPlan {
    loader?: Bootloader;
    initramfs: InitramfsGenerator;
    problems: CheckFailure[];
    /** path → the text it must have (null: must not exist), for every file we own. */
    files: Record<string, { data: string; mode: number } | null>;
    /** Files among `files` whose text differs from the host's now. */
    changed: string[];
    /** Commands that apply the change, in order (grubby edits, initramfs and boot loader regeneration). */
    commands: string[][];
    /** The command line the boot loader will have. */
    configured: string[];
    hostModules: string[];
    previous: BootPrevious;
    lines: string[];
}

/**
 * Decide the files, commands and preview lines of a boot configuration. Pure. `previous` is what the state
 * recorded from before our first change (absent on create: taken from the host now).
 */
export function planBoot(s: Settings, f: BootFacts, opts: { previous?: BootPrevious; ours?: string[]; local: boolean }): BootPlan {
    const problems: CheckFailure[] = [];
    const lines: string[] = [];
    const fail = (property: string, reason: string) => problems.push({ property, reason });
    const chosen = chooseBootloader(s.bootloader, f);
    const initramfs = chooseInitramfs(f.present);
    const empty: BootPlan = { initramfs, problems, files: {}, changed: [], commands: [], configured: [], hostModules: [], previous: opts.previous ?? {}, lines };
    if ("problem" in chosen) {
        fail("bootloader", chosen.problem);
        return empty;
    }
    const loader = chosen.loader;
    lines.push(...vendorWarnings(s.kernelParameters, f.cpuVendor));
    if (s.reboot === "ifNeeded" && opts.local) fail("reboot", "reboot: ifNeeded needs an SSH connection: rebooting the machine pulumi runs on would end pulumi itself. Use reboot: never and reboot by hand when pendingReboot is true");

    // Early binding: every device exists, and no host driver is built in (it binds before any module loads).
    const hostModules = new Set<string>();
    for (const d of f.devices) {
        if (!d.exists) {
            fail("earlyBinding", `earlyBinding: no PCI device ${d.address} on this host; \`pulumi-vfio inventory\` lists the devices`);
            continue;
        }
        const mods = [...new Set([...(d.driverModule ? [d.driverModule] : []), ...d.aliasModules])];
        if (d.driver && !isVfioDriver(d.driver) && d.driver !== "pci-stub" && !d.driverModule) {
            fail("earlyBinding", `earlyBinding: ${d.address}'s driver ${d.driver} is built into the kernel, so it binds during PCI enumeration, before vfio-pci can claim the device; boot with ${d.driver}'s own blacklist option or initcall_blacklist, or bind the device at run time with an IommuBinding`);
        }
        for (const m of mods) if (moduleKey(m) !== "vfio_pci") hostModules.add(moduleKey(m));
    }
    // vfio-pci.ids= takes every device with those ids: refuse it when a device the host uses matches.
    const ids = vfioPciIds(s.kernelParameters);
    if (ids.length && f.pciIds) {
        const claimed = new Set(s.earlyBinding);
        const victims = f.pciIds.filter((d) => ids.includes(d.id) && !claimed.has(d.address) && d.driver && !isVfioDriver(d.driver));
        if (victims.length)
            fail(
                "kernelParameters",
                `kernelParameters: vfio-pci.ids=${ids.join(",")} would also take ${victims.map((v) => `${v.address} (${v.id}, on ${v.driver})`).join(", ")}, which the host uses: vfio-pci.ids binds every device with those ids. Claim the devices by address with earlyBinding instead`,
            );
    }
    for (const m of s.modules) {
        if (moduleKey(m.name) === "kvmfr") fail("modules", "modules: kvmfr's options are KvmfrDevice's (it writes /etc/modprobe.d/kvmfr.conf): declare a KvmfrDevice instead");
    }

    // The command line.
    const base = configuredParameters(loader, f);
    const previous: BootPrevious = { ...(opts.previous ?? {}) };
    const files: BootPlan["files"] = Object.fromEntries(OWNED.map((p) => [p, null]));
    const commands: string[][] = [];
    const paramsWanted = s.kernelParameters.length > 0 || s.removeKernelParameters.length > 0;
    let configured = base ?? [];
    if (loader === "grub") {
        if (paramsWanted) files[GRUB_DROPIN] = { data: renderGrubDropin(s.kernelParameters, s.removeKernelParameters), mode: 0o644 };
        configured = predictConfigured(base ?? [], opts.ours ?? [], s.kernelParameters, s.removeKernelParameters);
    } else if (loader === "systemd-boot") {
        if (previous.kernelCmdline === undefined) previous.kernelCmdline = f.kernelCmdline ?? null;
        const from = previous.kernelCmdline !== null ? splitCmdline(previous.kernelCmdline) : f.running;
        configured = applyParameters(from, s.kernelParameters, s.removeKernelParameters);
    } else {
        configured = predictConfigured(base ?? [], opts.ours ?? [], s.kernelParameters, s.removeKernelParameters);
        if (previous.grubbyTaken === undefined) {
            const names = new Set([...s.kernelParameters, ...s.removeKernelParameters].map(parameterName));
            previous.grubbyTaken = (base ?? []).filter((w) => names.has(parameterName(w)) && !s.kernelParameters.includes(w));
        }
    }

    // Early binding and module options.
    const optionLines = s.modules.filter((m) => Object.keys(m.options ?? {}).length).map((m) => optionsLine(m.name, m.options ?? {}));
    const modprobe = renderModprobeConf(s.earlyBinding, [...hostModules].sort(), optionLines);
    if (modprobe) files[MODPROBE_CONF] = { data: modprobe, mode: 0o644 };
    const load = s.modules.filter((m) => m.load).map((m) => m.name);
    if (load.length) files[MODULES_LOAD_CONF] = { data: ownedFile("BootConfig", load), mode: 0o644 };
    if (s.earlyBinding.length) {
        files[CLAIM_SCRIPT] = { data: renderClaimScript(s.earlyBinding), mode: 0o755 };
        if (initramfs === "initramfs-tools") files[INITRAMFS_TOOLS_HOOK] = { data: renderInitramfsHook(), mode: 0o755 };
        if (initramfs === "dracut") files[DRACUT_CONF] = { data: renderDracutConf(), mode: 0o644 };
    }

    const changed = OWNED.filter((p) => (files[p]?.data ?? undefined) !== f.owned[p]);
    const earlyChanged = changed.some((p) => p !== GRUB_DROPIN && p !== MODULES_LOAD_CONF);
    const kernelCmdlineText = loader === "systemd-boot" ? (paramsWanted ? renderKernelCmdline(configured) : previous.kernelCmdline ?? null) : undefined;
    const cmdlineChanged = loader === "systemd-boot" && (kernelCmdlineText ?? undefined) !== f.kernelCmdline;
    const grubbyChanged = loader === "grubby" && missingParameters(base ?? [], s.kernelParameters, s.removeKernelParameters).length > 0;
    const initrdCmd = regenerateInitramfs(initramfs);
    if (earlyChanged && initrdCmd) commands.push(initrdCmd);
    if (loader === "grub" && (changed.includes(GRUB_DROPIN) || !sameWords(configured, base ?? []))) commands.push(f.present.has(UPDATE_GRUB) ? [UPDATE_GRUB] : [GRUB_MKCONFIG, "-o", GRUB_CFG]);
    if (loader === "grubby" && grubbyChanged) {
        if (s.removeKernelParameters.length) commands.push([GRUBBY, "--update-kernel=ALL", `--remove-args=${s.removeKernelParameters.join(" ")}`]);
        if (s.kernelParameters.length) commands.push([GRUBBY, "--update-kernel=ALL", `--args=${s.kernelParameters.join(" ")}`]);
    }
    if (loader === "systemd-boot") commands.push(...sdbootCommands(f, cmdlineChanged, !!(earlyChanged && initrdCmd), initramfs));

    // The preview: each file's lines, each command, and what the next boot changes.
    for (const p of changed) lines.push(...fileLines(p, f.owned[p], files[p]?.data));
    if (cmdlineChanged) lines.push(...fileLines(KERNEL_CMDLINE, f.kernelCmdline, kernelCmdlineText ?? undefined));
    if (loader === "grub" && base && !sameWords(configured, base)) lines.push(`${GRUB_CFG} (regenerated): - ${base.join(" ")}`, `${GRUB_CFG} (regenerated): + ${configured.join(" ")}`);
    const entry = defaultEntry(f.entries);
    if (loader === "systemd-boot" && cmdlineChanged && entry?.path && base) {
        const next = predictEntryOptions(configured, base);
        if (!sameWords(next, base)) lines.push(`${entry.path} (regenerated): - options ${base.join(" ")}`, `${entry.path} (regenerated): + options ${next.join(" ")}`);
    }
    for (const c of commands) lines.push(`run: ${c.join(" ")}`);
    const pending = pendingReasons(s, f, configured);
    if (pending.length) lines.push(`reboot needed (${s.reboot === "ifNeeded" ? "pulumi up reboots the host" : "reboot: never, so reboot by hand"}): ${pending.join("; ")}`);
    else lines.push("no reboot needed: the running kernel already has this configuration");
    if (initramfs === "none" && s.earlyBinding.length) lines.push("note: no initramfs generator (update-initramfs, dracut) found: the early binding applies when the host driver is loaded from the root file system");

    return { loader, initramfs, problems, files, changed, commands, configured, hostModules: [...hostModules].sort(), previous, lines };
}

const sameWords = (a: string[], b: string[]) => a.length === b.length && a.every((w, i) => w === b[i]);

/**
 * What rewrites systemd-boot's entry: `kernel-install add` for the running kernel, unless the initramfs is
 * regenerated anyway and Debian's hook (SDBOOT_INITRAMFS_HOOK) runs kernel-install for every kernel it rebuilt — by
 * then /etc/kernel/cmdline is written, so that entry has the new options too.
 */
export function sdbootCommands(f: Pick<BootFacts, "present" | "kernelRelease">, cmdlineChanged: boolean, initrdRegenerated: boolean, initramfs: InitramfsGenerator): string[][] {
    const hooked = initrdRegenerated && initramfs === "initramfs-tools" && f.present.has(SDBOOT_INITRAMFS_HOOK);
    return (cmdlineChanged || initrdRegenerated) && !hooked ? [kernelInstall(f.kernelRelease)] : [];
}

export function kernelInstall(kver: string): string[] {
    return [KERNEL_INSTALL, "add", kver, `/boot/vmlinuz-${kver}`, `/boot/initrd.img-${kver}`];
}

/** `path: - old line` / `path: + new line` for the lines that differ (a new file: all `+`, a removed one: all `-`). */
export function fileLines(path: string, before: string | undefined, after: string | undefined): string[] {
    const a = (before ?? "").split("\n").filter((l) => l !== "");
    const b = (after ?? "").split("\n").filter((l) => l !== "");
    const out = a.filter((l) => !b.includes(l)).map((l) => `${path}: - ${l}`);
    out.push(...b.filter((l) => !a.includes(l)).map((l) => `${path}: + ${l}`));
    if (before === undefined && after !== undefined) out.unshift(`${path}: new file`);
    if (after === undefined && before !== undefined) out.unshift(`${path}: removed`);
    return out;
}

/** Why the running kernel is not what is configured: parameters, early-bound devices off vfio-pci, module options. */
export function pendingReasons(s: Settings, f: BootFacts, configured: string[]): string[] {
    const out = missingParameters(f.running, s.kernelParameters, s.removeKernelParameters).map((m) => `running kernel: ${m}`);
    // A configured line that lost the parameter (the user's own config overrode ours) is not something a reboot fixes.
    const notConfigured = missingParameters(configured, s.kernelParameters, s.removeKernelParameters);
    if (notConfigured.length) out.push(`configured command line: ${notConfigured.join(", ")}`);
    for (const d of f.devices) if (d.exists && !isVfioDriver(d.driver)) out.push(`${d.address} is on ${d.driver ?? "no driver"}, not vfio-pci`);
    for (const m of s.modules) {
        for (const [p, v] of Object.entries(m.options ?? {})) {
            const now = f.moduleParams[`/sys/module/${moduleKey(m.name)}/parameters/${p}`];
            if (now !== undefined && !sameParam(now, v)) out.push(`${m.name}.${p} is ${now}, not ${Array.isArray(v) ? v.join(",") : String(v)}`);
        }
    }
    return out;
}

/** A module parameter as /sys/module shows it (`Y`/`N` for booleans) against what we configure. */
function sameParam(now: string, v: ModuleOptionValue): boolean {
    const want = Array.isArray(v) ? v.join(",") : typeof v === "boolean" ? (v ? "1" : "0") : String(v);
    if (now === want) return true;
    if ((now === "Y" && (want === "1" || want === "y" || want === "Y")) || (now === "N" && (want === "0" || want === "n" || want === "N"))) return true;
    return false;
}

