/**
 * BootConfig: what happens on `pulumi preview` / `up` / `refresh` / `destroy` for "this host boots with these kernel
 * parameters, these devices claimed for vfio-pci by address, and these module options".
 *
 * - check: validate the inputs, read the host in one batch (boot loader, the running and configured command line,
 *   the files we own, each early-bound device's driver and host driver module) and refuse what cannot work (no known
 *   boot loader, a device missing, a host driver built into the kernel, `vfio-pci.ids=` that would also take a device
 *   the host uses, a local reboot). `plan` lists the exact lines that change in each file and whether a reboot is due.
 * - create/update: under the host lock, one stopOnError batch writes the files that differ, regenerates the
 *   initramfs when the early binding changed and the boot loader's configuration when the parameters changed, and
 *   reads the result back. Any failure puts every file back as it was (its content was read first) and regenerates
 *   again from those; the error names the command and what it printed. With `reboot: ifNeeded`, the host is
 *   rebooted, waited for over SSH and verified.
 * - read: the running command line, the configured one, the files' contents: drift for `up` to repair.
 * - delete: remove what we wrote, put back what we edited, regenerate.
 *
 * Each function takes an optional last `onHost` (tests: a fake or the lab's kernel).
 */
import { CheckFailure, CheckResult, DiffResult, containsUnknown, isUnknown, validate, withoutProvider } from "./check";
import { applyParameters, missingParameters, parameterName, parameterProblem, runningParameters, splitCmdline, vendorWarnings, vfioPciIds } from "./boot/cmdline";
import {
    CLAIM_SCRIPT,
    DRACUT_CONF,
    INITRAMFS_TOOLS_HOOK,
    InitramfsGenerator,
    MODPROBE_CONF,
    MODULES_LOAD_CONF,
    DRACUT,
    UPDATE_INITRAMFS,
    chooseInitramfs,
    regenerateInitramfs,
    renderClaimScript,
    renderDracutConf,
    renderInitramfsHook,
    renderModprobeConf,
} from "./boot/early";
import {
    BOOTCTL,
    Bootloader,
    GRUBBY,
    GRUB_CFG,
    GRUB_DEFAULT,
    GRUB_DROPIN,
    GRUB_DROPIN_DIR,
    GRUB_MKCONFIG,
    KERNEL_CMDLINE,
    KERNEL_INSTALL,
    LoaderEntry,
    LoaderFacts,
    UPDATE_GRUB,
    chooseBootloader,
    configuredParameters,
    predictConfigured,
    renderGrubDropin,
    renderKernelCmdline,
} from "./boot/loaders";
import { ModuleOptionValue, moduleKey, optionsLine, ownedFile } from "./boot/modprobe";
import { Connection, hostIdentity } from "./host/ssh";
import { hostFor, withHost } from "./host";
import { BatchQuery, textOf } from "./host/query";
import { Host, Op, OpResult } from "./host/types";
import { PCI_DEVICES, driverFromLink, parseAddress } from "./sysfs/pci";
import { isVfioDriver } from "./sysfs/iommu";

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

const defaults = (i: BootConfigInputs) => ({
    kernelParameters: i.kernelParameters ?? [],
    removeKernelParameters: i.removeKernelParameters ?? [],
    earlyBinding: (i.earlyBinding ?? []).map((a) => parseAddress(a)),
    modules: i.modules ?? [],
    bootloader: i.bootloader ?? ("auto" as const),
    reboot: i.reboot ?? ("never" as const),
    rebootTimeout: i.rebootTimeout ?? 600,
});
type Settings = ReturnType<typeof defaults>;

const OWNED = [GRUB_DROPIN, MODPROBE_CONF, MODULES_LOAD_CONF, CLAIM_SCRIPT, INITRAMFS_TOOLS_HOOK, DRACUT_CONF];
const PROBED = [GRUB_DEFAULT, UPDATE_GRUB, GRUB_MKCONFIG, GRUB_CFG, GRUBBY, BOOTCTL, KERNEL_INSTALL, UPDATE_INITRAMFS, DRACUT];
const BOOT_ID = "/proc/sys/kernel/random/boot_id";

// ------------------------------------------------------------------------------------------------ host facts

interface DeviceFacts {
    address: string;
    exists: boolean;
    driver: string | null;
    /** The loadable module behind the current driver (null: built into the kernel, or no driver). */
    driverModule: string | null;
    /** Modules whose aliases match the device (`modprobe -R <modalias>`). */
    aliasModules: string[];
    id: string;
}

export interface BootFacts extends LoaderFacts {
    owned: Record<string, string | undefined>;
    devices: DeviceFacts[];
    cpuVendor?: string;
    bootId: string;
    /** Module parameters now (`/sys/module/<m>/parameters/<p>`), undefined when not loaded or not readable. */
    moduleParams: Record<string, string | undefined>;
    /** vendor:device → addresses and drivers of every PCI device, when `vfio-pci.ids=` is asked for. */
    pciIds?: { address: string; id: string; driver: string | null }[];
}

const present = (r: OpResult) => r.ok;

/** Everything check, create, read and delete need, in one round trip (two when `vfio-pci.ids=` asks for a scan). */
export async function readBootFacts(host: Host, s: Settings): Promise<BootFacts> {
    const q = new BatchQuery();
    const probed = q.add(PROBED.map((path): Op => ({ op: "stat", path })), (rs) => new Set(PROBED.filter((_, i) => present(rs[i]))));
    const sdBoot = q.one({ op: "exec", argv: [BOOTCTL, "is-installed", "--quiet"], optional: true }, (r) => r.ok);
    const entries = q.one({ op: "exec", argv: [BOOTCTL, "list", "--json=short", "--no-pager"], optional: true }, (r) => parseEntries(r));
    const grubby = q.one({ op: "exec", argv: [GRUBBY, "--info=DEFAULT"], optional: true }, (r) => (r.ok ? r.data : undefined));
    const grubCfg = q.one({ op: "read", path: GRUB_CFG }, textOf);
    const kernelCmdline = q.one({ op: "read", path: KERNEL_CMDLINE }, textOf);
    const proc = q.one({ op: "read", path: "/proc/cmdline" }, (r) => textOf(r) ?? "");
    const release = q.one({ op: "read", path: "/proc/sys/kernel/osrelease" }, (r) => (textOf(r) ?? "").trim());
    const bootId = q.one({ op: "read", path: BOOT_ID }, (r) => (textOf(r) ?? "").trim());
    const cpu = q.one({ op: "read", path: "/proc/cpuinfo" }, (r) => /^vendor_id\s*:\s*(\S+)/m.exec(textOf(r) ?? "")?.[1]);
    const owned = q.add(OWNED.map((path): Op => ({ op: "read", path })), (rs) => Object.fromEntries(OWNED.map((p, i) => [p, textOf(rs[i])])));
    const devices = s.earlyBinding.map((address) =>
        q.add(
            [
                { op: "readlink", path: `${PCI_DEVICES}/${address}/driver` },
                { op: "readlink", path: `${PCI_DEVICES}/${address}/driver/module` },
                // A loadable module has an initstate; a driver built into the kernel has none (or no module at all).
                { op: "read", path: `${PCI_DEVICES}/${address}/driver/module/initstate` },
                { op: "read", path: `${PCI_DEVICES}/${address}/vendor` },
                { op: "read", path: `${PCI_DEVICES}/${address}/device` },
                { op: "read", path: `${PCI_DEVICES}/${address}/modalias` },
            ],
            ([drv, mod, initstate, vendor, device, modalias]): DeviceFacts & { modalias?: string } => ({
                address,
                exists: vendor.ok,
                driver: driverFromLink(drv),
                driverModule: mod.ok && initstate.ok ? mod.data.trim().slice(mod.data.trim().lastIndexOf("/") + 1) : null,
                aliasModules: [],
                id: `${vendor.data.trim().replace(/^0x/, "")}:${device.data.trim().replace(/^0x/, "")}`,
                modalias: modalias.ok ? modalias.data.trim() : undefined,
            }),
        ),
    );
    const paramPaths = s.modules.flatMap((m) => Object.keys(m.options ?? {}).map((p) => `/sys/module/${moduleKey(m.name)}/parameters/${p}`));
    const params = q.add(paramPaths.map((path): Op => ({ op: "read", path })), (rs) => Object.fromEntries(paramPaths.map((p, i) => [p, textOf(rs[i])?.trim()])));
    const r = await q.run(host);

    const devs = devices.map((d) => d(r));
    // Which modules would drive each device: a second batch only for devices that have a modalias (one exec each).
    const aliased = devs.filter((d) => d.modalias);
    if (aliased.length) {
        const r2 = await host.run(aliased.map((d): Op => ({ op: "exec", argv: ["modprobe", "-R", d.modalias!], optional: true })));
        aliased.forEach((d, i) => (d.aliasModules = r2[i].ok ? r2[i].data.split("\n").map((x) => x.trim()).filter(Boolean) : []));
    }
    let pciIds: BootFacts["pciIds"];
    if (vfioPciIds(s.kernelParameters).length) {
        const { scanHost } = await import("./sysfs/scan");
        const scan = await scanHost(host);
        pciIds = scan.devices.map((d) => ({ address: d.address, id: `${d.vendor}:${d.device}`, driver: d.driver }));
    }
    return {
        present: probed(r),
        systemdBootInstalled: sdBoot(r),
        entries: entries(r),
        grubbyInfo: grubby(r),
        grubCfg: grubCfg(r),
        grubDropin: owned(r)[GRUB_DROPIN],
        kernelCmdline: kernelCmdline(r),
        running: runningParameters(proc(r)),
        kernelRelease: release(r),
        bootId: bootId(r),
        cpuVendor: cpu(r),
        owned: owned(r),
        devices: devs.map(({ modalias: _m, ...d }) => d),
        moduleParams: params(r),
        pciIds,
    };
}

function parseEntries(r: OpResult): LoaderEntry[] | undefined {
    if (!r.ok) return undefined;
    try {
        const v = JSON.parse(r.data);
        return Array.isArray(v) ? (v as LoaderEntry[]) : undefined;
    } catch {
        return undefined;
    }
}

// ------------------------------------------------------------------------------------------------ planning

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
    if (loader === "systemd-boot" && (cmdlineChanged || (earlyChanged && initrdCmd))) commands.push(kernelInstall(f.kernelRelease));

    // The preview: each file's lines, each command, and what the next boot changes.
    for (const p of changed) lines.push(...fileLines(p, f.owned[p], files[p]?.data));
    if (cmdlineChanged) lines.push(...fileLines(KERNEL_CMDLINE, f.kernelCmdline, kernelCmdlineText ?? undefined));
    if (loader === "grub" && base && !sameWords(configured, base)) lines.push(`${GRUB_CFG} (regenerated): - ${base.join(" ")}`, `${GRUB_CFG} (regenerated): + ${configured.join(" ")}`);
    for (const c of commands) lines.push(`run: ${c.join(" ")}`);
    const pending = pendingReasons(s, f, configured);
    if (pending.length) lines.push(`reboot needed (${s.reboot === "ifNeeded" ? "pulumi up reboots the host" : "reboot: never, so reboot by hand"}): ${pending.join("; ")}`);
    else lines.push("no reboot needed: the running kernel already has this configuration");
    if (initramfs === "none" && s.earlyBinding.length) lines.push("note: no initramfs generator (update-initramfs, dracut) found: the early binding applies when the host driver is loaded from the root file system");

    return { loader, initramfs, problems, files, changed, commands, configured, hostModules: [...hostModules].sort(), previous, lines };
}

const sameWords = (a: string[], b: string[]) => a.length === b.length && a.every((w, i) => w === b[i]);

function kernelInstall(kver: string): string[] {
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

// ------------------------------------------------------------------------------------------------ check / diff

export async function check(olds: Record<string, any>, news: Record<string, any>, onHost?: Host): Promise<CheckResult<BootConfigInputs>> {
    const { inputs, failures: schemaFailures } = validate<BootConfigInputs>("boot-config.schema.json", news);
    // A parameter the pattern refuses gets a message that says what is wrong with it.
    const paramFailures: CheckFailure[] = [];
    (inputs.kernelParameters ?? []).forEach((p, i) => {
        if (typeof p !== "string" || isUnknown(p)) return;
        const why = parameterProblem(p);
        if (why) paramFailures.push({ property: "kernelParameters", reason: `kernelParameters[${i}]: ${why}` });
    });
    const failures = [...paramFailures, ...schemaFailures.filter((f) => !(paramFailures.length && f.property.startsWith("kernelParameters")))];
    if (failures.length) return { inputs, failures };
    if (containsUnknown(inputs)) {
        delete inputs.plan;
        return { inputs, failures: [] };
    }
    const s = defaults(inputs);
    try {
        await withHost(
            inputs.connection,
            async (host) => {
                const facts = await readBootFacts(host, s);
                const plan = planBoot(s, facts, { previous: olds?.previous, ours: oursOf(olds), local: !inputs.connection?.host });
                failures.push(...plan.problems);
                inputs.plan = plan.lines;
            },
            onHost,
        );
    } catch (e) {
        // Reading the boot facts fails only when the host cannot be reached or its interpreter went away.
        failures.push({ property: "connection", reason: (e as Error).message });
    }
    return { inputs, failures };
}

/** The parameters our earlier change added (taken off before predicting the new command line). */
function oursOf(olds: Record<string, any> | undefined): string[] {
    return Array.isArray(olds?.kernelParameters) ? olds!.kernelParameters : [];
}

export function diff(_id: string, olds: BootConfigOutputs, news: BootConfigInputs): DiffResult {
    const replaces: string[] = [];
    if (containsUnknown(news.connection) || hostIdentity(news.connection) !== hostIdentity(olds.connection)) replaces.push("connection");
    const n = defaults({ ...news, earlyBinding: (news.earlyBinding ?? []).filter((a) => !isUnknown(a)) });
    let changes = replaces.length > 0 || containsUnknown(news);
    for (const k of ["kernelParameters", "removeKernelParameters", "earlyBinding", "modules", "bootloader", "reboot", "rebootTimeout"] as const) {
        if (JSON.stringify(n[k]) !== JSON.stringify((olds as any)[k])) changes = true;
    }
    // Drift: a file of ours edited or removed by hand, or a reboot still due with reboot: ifNeeded.
    const drifted = Object.entries(olds.written ?? {}).some(([p, text]) => (olds.found ?? {})[p] !== text);
    if (drifted || (n.reboot === "ifNeeded" && olds.pendingReboot)) changes = true;
    return { changes, replaces, deleteBeforeReplace: true };
}

// ------------------------------------------------------------------------------------------------ apply

/** The error of a failed step: the command (or file) and what it printed. */
function stepError(op: Op, r: OpResult): string {
    if (op.op === "exec") {
        const out = [r.message, r.data].filter((x) => x && x.trim()).join(" | ").trim();
        return `\`${op.argv.join(" ")}\` failed (exit ${r.code ?? "?"})${out ? `: ${out.slice(0, 2000)}` : ""}`;
    }
    return `${op.op} ${"path" in op ? op.path : ""} failed${r.errno ? ` (${r.errno})` : ""}${r.message ? `: ${r.message}` : ""}`;
}

/** The ops that make the files as `plan.files` says, directories first. */
function fileOps(plan: BootPlan, f: BootFacts): Op[] {
    const ops: Op[] = [];
    const dirs = new Set<string>();
    for (const p of plan.changed) {
        const want = plan.files[p];
        if (want) dirs.add(p.slice(0, p.lastIndexOf("/")));
    }
    for (const d of [...dirs].sort()) ops.push({ op: "mkdir", path: d, mode: 0o755 });
    for (const p of plan.changed) {
        const want = plan.files[p];
        ops.push(want ? { op: "put", path: p, data: want.data, mode: want.mode } : { op: "remove", path: p });
    }
    void f;
    return ops;
}

/** Put back `before` (path → text, undefined: absent) and run `regenerate` again; returns what did not come back. */
async function restoreFiles(host: Host, before: Record<string, { text: string | undefined; mode: number }>, regenerate: string[][]): Promise<string[]> {
    const ops: Op[] = Object.entries(before).map(([path, b]): Op => (b.text === undefined ? { op: "remove", path, optional: true } : { op: "put", path, data: b.text, mode: b.mode, optional: true }));
    ops.push(...regenerate.map((argv): Op => ({ op: "exec", argv, optional: true })));
    const r = await host.run(ops);
    return r.flatMap((x, i) => (x.ok ? [] : [stepError(ops[i], x)]));
}

async function converge(host: Host, inputs: BootConfigInputs, olds?: BootConfigOutputs): Promise<BootConfigOutputs> {
    const s = defaults(inputs);
    const local = !inputs.connection?.host;
    const outs = await host.withLock(async () => {
        const facts = await readBootFacts(host, s);
        const plan = planBoot(s, facts, { previous: olds?.previous, ours: olds ? oursOf(olds) : [], local });
        if (plan.problems.length) throw new Error(plan.problems.map((p) => p.reason).join("; "));
        const loader = plan.loader!;
        const kernelCmdlineText = loader === "systemd-boot" ? (s.kernelParameters.length || s.removeKernelParameters.length ? renderKernelCmdline(plan.configured) : plan.previous.kernelCmdline ?? null) : undefined;

        const ops = fileOps(plan, facts);
        const before: Record<string, { text: string | undefined; mode: number }> = {};
        for (const p of plan.changed) before[p] = { text: facts.owned[p], mode: plan.files[p]?.mode ?? 0o644 };
        if (loader === "systemd-boot" && (kernelCmdlineText ?? undefined) !== facts.kernelCmdline) {
            before[KERNEL_CMDLINE] = { text: facts.kernelCmdline, mode: 0o644 };
            if (kernelCmdlineText !== null) ops.push({ op: "mkdir", path: "/etc/kernel", mode: 0o755 });
            ops.push(kernelCmdlineText === null ? { op: "remove", path: KERNEL_CMDLINE } : { op: "put", path: KERNEL_CMDLINE, data: kernelCmdlineText!, mode: 0o644 });
        }
        const cmdOps = plan.commands.map((argv): Op => ({ op: "exec", argv, timeoutMs: 600_000 }));
        if (ops.length + cmdOps.length) {
            const all = [...ops, ...cmdOps];
            const r = await host.run(all, { stopOnError: true });
            const bad = r.findIndex((x) => !x.ok && !x.skipped);
            if (bad >= 0) {
                // Put every file back and regenerate from them, so the next boot is the one the host had.
                const regen = plan.commands.filter((c) => c[0] !== GRUBBY);
                const left = await restoreFiles(host, before, regen);
                const restored = left.length ? ` Restoring failed too: ${left.join("; ")}; the files as they were: ${Object.keys(before).join(", ")}` : ` Every file was put back as it was (${Object.keys(before).join(", ") || "none had changed"}) and regenerated.`;
                throw new Error(`boot configuration not applied: ${stepError(all[bad], r[bad])}.${restored}`);
            }
        }
        return outputsFrom(host, inputs, s, plan);
    });
    if (s.reboot === "ifNeeded" && outs.pendingReboot) {
        // The reboot ends this host's connection without telling it (its TCP peer is gone until it answers with a
        // reset): drop it now, so the next operation on this host in the same program connects afresh.
        await host.close();
        return rebootAndVerify(inputs, s, outs);
    }
    return outs;
}

/** Read the host after a change (or at refresh) and make the outputs. */
async function outputsFrom(host: Host, inputs: BootConfigInputs, s: Settings, plan: BootPlan): Promise<BootConfigOutputs> {
    const after = await readBootFacts(host, s);
    const loader = plan.loader!;
    const configured = configuredParameters(loader, after) ?? plan.configured;
    const pending = pendingReasons(s, after, configured);
    const written = Object.fromEntries(Object.entries(plan.files).filter(([, v]) => v).map(([p, v]) => [p, v!.data]));
    return {
        ...withoutProvider(inputs),
        ...s,
        loader,
        initramfs: plan.initramfs,
        running: after.running,
        configured,
        pendingReboot: pending.length > 0,
        pending,
        hostModules: plan.hostModules,
        written,
        found: Object.fromEntries(Object.keys(written).map((p) => [p, after.owned[p] ?? ""])),
        previous: plan.previous,
        plan: plan.lines,
    };
}

/**
 * Reboot through SSH and wait for the host to come back with another boot id, then verify the running command line
 * and the early bindings. The old connection dies with the host: every probe uses a fresh one.
 */
async function rebootAndVerify(inputs: BootConfigInputs, s: Settings, outs: BootConfigOutputs): Promise<BootConfigOutputs> {
    const probe = async <T>(fn: (h: Host) => Promise<T>): Promise<T> => {
        const h = hostFor(inputs.connection);
        try {
            return await fn(h);
        } finally {
            await h.close().catch(() => undefined);
        }
    };
    const bootBefore = await probe(async (h) => ((await h.run([{ op: "read", path: BOOT_ID }]))[0].data ?? "").trim());
    await probe((h) => h.run([{ op: "exec", argv: ["systemctl", "reboot"], optional: true, timeoutMs: 20_000 }])).catch(() => undefined);
    const deadline = Date.now() + s.rebootTimeout * 1000;
    let facts: BootFacts | undefined;
    while (Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 3000));
        try {
            const f = await probe((h) => readBootFacts(h, s));
            if (f.bootId && f.bootId !== bootBefore) {
                facts = f;
                break;
            }
        } catch {
            // Not back yet.
        }
    }
    if (!facts) throw new Error(`rebooted ${inputs.connection?.host} but it did not come back within ${s.rebootTimeout} s (rebootTimeout); the configuration is written (pendingReboot) — check the host's console`);
    const pending = pendingReasons(s, facts, outs.configured);
    if (pending.length) throw new Error(`rebooted ${inputs.connection?.host}, but the running system does not have the configuration: ${pending.join("; ")}. /proc/cmdline: ${facts.running.join(" ")}`);
    return { ...outs, running: facts.running, pendingReboot: false, pending: [] };
}

export async function create(inputs: BootConfigInputs, onHost?: Host): Promise<{ id: string; outs: BootConfigOutputs }> {
    const outs = await withHost(inputs.connection, (host) => converge(host, inputs), onHost);
    return { id: "boot", outs };
}

export async function update(_id: string, olds: BootConfigOutputs, news: BootConfigInputs, onHost?: Host): Promise<{ outs: BootConfigOutputs }> {
    const outs = await withHost(news.connection, (host) => converge(host, news, olds), onHost);
    return { outs };
}

export async function read(id: string, props: BootConfigOutputs, onHost?: Host): Promise<{ id: string; props?: BootConfigOutputs }> {
    return withHost(
        props.connection,
        async (host) => {
            const s = defaults(props);
            const f = await readBootFacts(host, s);
            const loader = props.loader;
            const configured = configuredParameters(loader, f) ?? props.configured;
            const pending = pendingReasons(s, f, configured);
            const found = Object.fromEntries(Object.keys(props.written ?? {}).map((p) => [p, f.owned[p] ?? ""]));
            return { id, props: { ...props, running: f.running, configured, pendingReboot: pending.length > 0, pending, found } };
        },
        onHost,
    );
}

/** Remove what we wrote, put back what we edited, regenerate. A reboot then brings the host's own configuration back. */
export async function remove(_id: string, props: BootConfigOutputs, onHost?: Host): Promise<void> {
    await withHost(
        props.connection,
        (host) =>
            host.withLock(async () => {
                const s = defaults(props);
                const f = await readBootFacts(host, { ...s, earlyBinding: [], modules: [] });
                const ops: Op[] = [];
                const before: Record<string, { text: string | undefined; mode: number }> = {};
                let earlyFiles = false;
                for (const p of OWNED) {
                    if (f.owned[p] === undefined) continue;
                    before[p] = { text: f.owned[p], mode: p === CLAIM_SCRIPT || p === INITRAMFS_TOOLS_HOOK ? 0o755 : 0o644 };
                    ops.push({ op: "remove", path: p });
                    if (p !== GRUB_DROPIN && p !== MODULES_LOAD_CONF) earlyFiles = true;
                }
                const commands: string[][] = [];
                const initrd = regenerateInitramfs(chooseInitramfs(f.present));
                if (earlyFiles && initrd) commands.push(initrd);
                if (props.loader === "grub" && before[GRUB_DROPIN]) commands.push(f.present.has(UPDATE_GRUB) ? [UPDATE_GRUB] : [GRUB_MKCONFIG, "-o", GRUB_CFG]);
                if (props.loader === "grubby") {
                    if (s.kernelParameters.length) commands.push([GRUBBY, "--update-kernel=ALL", `--remove-args=${s.kernelParameters.join(" ")}`]);
                    if (props.previous?.grubbyTaken?.length) commands.push([GRUBBY, "--update-kernel=ALL", `--args=${props.previous.grubbyTaken.join(" ")}`]);
                }
                if (props.loader === "systemd-boot") {
                    const prev = props.previous?.kernelCmdline;
                    if (prev !== undefined && (prev ?? undefined) !== f.kernelCmdline) {
                        before[KERNEL_CMDLINE] = { text: f.kernelCmdline, mode: 0o644 };
                        ops.push(prev === null ? { op: "remove", path: KERNEL_CMDLINE } : { op: "put", path: KERNEL_CMDLINE, data: prev, mode: 0o644 });
                        commands.push(kernelInstall(f.kernelRelease));
                    } else if (earlyFiles && initrd) commands.push(kernelInstall(f.kernelRelease));
                }
                const all = [...ops, ...commands.map((argv): Op => ({ op: "exec", argv, timeoutMs: 600_000 }))];
                if (!all.length) return;
                const r = await host.run(all, { stopOnError: true });
                const bad = r.findIndex((x) => !x.ok && !x.skipped);
                if (bad >= 0) {
                    const left = await restoreFiles(host, before, commands.filter((c) => c[0] !== GRUBBY));
                    throw new Error(`removing the boot configuration failed: ${stepError(all[bad], r[bad])}.${left.length ? ` Restoring failed too: ${left.join("; ")}` : " Every file was put back; `pulumi destroy` can be run again."}`);
                }
            }),
        onHost,
    );
}

export const bootConfig = { check, diff, create, read, update, delete: remove };
