/**
 * `pulumi-vfio status`: what is bound and created on a host now, read from sysfs, /dev, /etc and /run, whatever
 * any Pulumi state says — the view `driverctl list-overrides` and `mdevctl list` give, for everything pulumi-vfio
 * touches: devices with a `driver_override` or on a vfio driver (with who holds their `/dev/vfio/<group>`), mdevs,
 * PFs with VFs enabled, kvmfr devices, the persistence files (driverctl, mdevctl, kvmfr's modprobe.d / udev /
 * modules-load.d files), and the QEMU VMs PassthroughVm started (their run directories and systemd units).
 *
 * Three round trips whatever the number of devices: (1) directory listings; (2) every PCI device's attributes,
 * every mdev, every `/dev/vfio/<n>`'s openers, every file found, every VM's pidfile; (3) only when there is
 * something to name: the command of each PID found, and the mdevctl files under the parents listed.
 */
import { BatchQuery } from "./host/query";
import { Host, Op, OpResult } from "./host/types";
import { isVfioDriver } from "./sysfs/iommu";
import { PCI_DEVICES, classLabel, deviceReadOps, isAddress, parseDevice } from "./sysfs/pci";
import { MDEVCTL_DIR, MDEV_DEVICES, isUuid, mdevReadOps, parseMdevDevice, parseMdevctlConfig } from "./sysfs/mdev";
import { KVMFR_MODULE, LOADED_SIZES, MODPROBE_CONF, MODULES_LOAD_CONF, UDEV_RULES } from "./sysfs/kvmfr";
import { UNIT_DIR, VM_NAME, VM_RUN_ROOT, vmPaths } from "./qemu/cmdline";
import { DRIVERCTL_DIR } from "./iommuBinding";

/** A PCI device someone took from the host's drivers: a `driver_override` is set, or a vfio driver / pci-stub has it. */
export interface HeldDevice {
    address: string;
    /** 24-bit class code, 6 hex digits. */
    class: string;
    className: string;
    /** `vvvv:dddd`. */
    ids: string;
    driver: string | null;
    override: string | null;
    group: number | null;
}

/** A `/dev/vfio/<n>` node (a group with a member on a vfio driver) and the processes holding it open. */
export interface VfioGroupNode {
    group: number;
    path: string;
    holders: { pid: number; command: string | null }[];
}

export interface MdevStatus {
    uuid: string;
    parent: string;
    type: string;
    group: number | null;
    /** mdevctl's config for it (`/etc/mdevctl.d/<parent>/<uuid>`), with its `start`; null when none. */
    config: { path: string; start: string } | null;
}

export interface PfStatus {
    address: string;
    driver: string | null;
    numVfs: number;
    totalVfs: number;
    vfs: string[];
}

export interface KvmfrStatus {
    path: string;
    /** False when QEMU created a regular file there before the module was loaded. */
    isCharDevice: boolean;
}

/** A file that makes something come back at boot (or records what was loaded). */
export interface PersistenceFile {
    path: string;
    /** `driverctl`, `mdevctl`, `kvmfr`, `vm-unit`. */
    kind: string;
    /** One line of what it says: `vfio-pci`, `mdev_type mtty-1, start auto`, `options kvmfr static_size_mb=64`. */
    summary: string;
    /** True when the file says pulumi-vfio wrote it; null when its format is another tool's and cannot tell
     *  (driverctl's and mdevctl's files are the same whoever wrote them). */
    writtenByPulumiVfio: boolean | null;
}

export interface VmStatus {
    name: string;
    /** From the pidfile in `/run/pulumi-vfio/vm/<name>`, null when none. */
    pid: number | null;
    /** True when that PID is alive and is a QEMU (`/proc/<pid>/comm` starts with `qemu-system`). */
    running: boolean;
    command: string | null;
    /** The systemd unit for autostart, null when none was written. */
    unit: string | null;
}

export interface HostStatus {
    host: string;
    devices: HeldDevice[];
    vfioGroups: VfioGroupNode[];
    mdevs: MdevStatus[];
    pfs: PfStatus[];
    kvmfr: KvmfrStatus[];
    /** True when the kvmfr module is loaded (`/sys/module/kvmfr`). */
    kvmfrLoaded: boolean;
    /** `static_size_mb` the loaded module got, as pulumi-vfio recorded it when it loaded the module (kvmfr registers
     *  the parameter with mode 0000, so sysfs does not show it); null when unknown. */
    kvmfrSizesMb: number[] | null;
    files: PersistenceFile[];
    vms: VmStatus[];
    /** False when we read as a user other than root: another user's processes holding a `/dev/vfio` node are not
     *  seen (their `/proc/<pid>/fd` is unreadable). Null when it cannot be told. */
    seesEveryProcess: boolean | null;
}

const lines = (r: OpResult | undefined) => (r?.ok ? r.data.split("\n").map((s) => s.trim()).filter(Boolean) : []);
const text = (r: OpResult | undefined) => (r?.ok ? r.data : null);
const pidsOf = (r: OpResult | undefined) => lines(r).filter((l) => /^\d+$/.test(l)).map(Number);
const SAFE_NAME = /^[A-Za-z0-9_@+,:=.-]+$/;
const safeName = (n: string) => SAFE_NAME.test(n) && n !== "." && n !== "..";
const UNIT = /^pulumi-vfio-vm-(.+)\.service$/;
const WRITTEN_BY_US = /^# Written by pulumi-vfio\b/m;
const KVMFR_FILES = [MODPROBE_CONF, MODULES_LOAD_CONF, UDEV_RULES, LOADED_SIZES];

/** The effective uid from `/proc/self/status` (the reading process: our interpreter on that host). */
function effectiveUid(r: OpResult | undefined): number | null {
    const m = r?.ok ? /^Uid:\s+\d+\s+(\d+)/m.exec(r.data) : null;
    return m ? Number(m[1]) : null;
}

/** What is bound and created on `host` now. Three round trips at most; changes nothing. */
export async function getHostStatus(host: Host): Promise<HostStatus> {
    // ---- round trip 1: listings
    const q1 = new BatchQuery();
    const list = (path: string) => q1.one({ op: "list", path }, lines);
    const addressList = list(PCI_DEVICES);
    const uuidList = list(MDEV_DEVICES);
    const groupList = list("/dev/vfio");
    const devList = list("/dev");
    const driverctlList = list(DRIVERCTL_DIR);
    const mdevctlList = list(MDEVCTL_DIR);
    const vmList = list(VM_RUN_ROOT);
    const unitList = list(UNIT_DIR);
    const kvmfrModule = q1.one({ op: "list", path: `/sys/module/${KVMFR_MODULE}` }, (r) => !!r?.ok);
    const uidPart = q1.one({ op: "read", path: "/proc/self/status" }, effectiveUid);
    const kvmfrFilesPart = q1.each(KVMFR_FILES, (path): Op[] => [{ op: "read", path }], (path, [r]) => ({ path, text: text(r) }));
    const r1 = await q1.run(host);
    const addresses = addressList(r1).filter(isAddress).sort();
    const uuids = uuidList(r1).filter(isUuid).sort();
    const groups = groupList(r1).filter((n) => /^\d+$/.test(n)).map(Number).sort((x, y) => x - y);
    const kvmfrPaths = devList(r1)
        .filter((n) => /^kvmfr\d+$/.test(n))
        .sort((x, y) => Number(x.slice(5)) - Number(y.slice(5)))
        .map((n) => `/dev/${n}`);
    const driverctlFiles = driverctlList(r1).filter((n) => /^pci-/.test(n) && isAddress(n.slice(4))).sort().map((n) => `${DRIVERCTL_DIR}/${n}`);
    const mdevctlParents = mdevctlList(r1).filter(safeName).sort();
    const vmNames = new Set(vmList(r1).filter((n) => VM_NAME.test(n)));
    const unitNames = unitList(r1).map((n) => UNIT.exec(n)?.[1]).filter((n): n is string => !!n && VM_NAME.test(n));
    for (const n of unitNames) vmNames.add(n);
    const kvmfrLoaded = kvmfrModule(r1);
    const uid = uidPart(r1);
    const kvmfrFiles = kvmfrFilesPart(r1).filter((f) => f.text !== null);
    const loadedSizes = kvmfrLoaded ? (kvmfrFiles.find((f) => f.path === LOADED_SIZES)?.text ?? null) : null;
    const vms = [...vmNames].sort();

    // ---- round trip 2: attributes, openers, files, pidfiles
    const q2 = new BatchQuery();
    const pciPart = q2.each(addresses, deviceReadOps, parseDevice);
    const mdevPart = q2.each(uuids, mdevReadOps, parseMdevDevice);
    const openersPart = q2.each(groups, (g): Op[] => [{ op: "openers", path: `/dev/vfio/${g}` }], (_, [r]) => pidsOf(r));
    const kvmfrStatsPart = q2.each(kvmfrPaths, (path): Op[] => [{ op: "stat", path }], (_, [r]) => r);
    const driverctlPart = q2.each(driverctlFiles, (path): Op[] => [{ op: "read", path }], (_, [r]) => r);
    const mdevctlPart = q2.each(mdevctlParents, (p): Op[] => [{ op: "list", path: `${MDEVCTL_DIR}/${p}` }], (_, [r]) => lines(r).filter(isUuid).sort());
    const vmFilesPart = q2.each(
        vms,
        (n): Op[] => [
            { op: "read", path: vmPaths(n).pidFile },
            { op: "read", path: vmPaths(n).unitFile },
        ],
        (_, r) => r,
    );
    const r2 = await q2.run(host);
    const pci = pciPart(r2).filter((d): d is NonNullable<typeof d> => d !== null);
    const mdevDevices = mdevPart(r2).filter((d): d is NonNullable<typeof d> => d !== null);
    const openers = openersPart(r2);
    const kvmfrStats = kvmfrStatsPart(r2);
    const driverctlTexts = driverctlPart(r2);
    const mdevctlLists = mdevctlPart(r2);
    const vmFiles = vmFilesPart(r2);

    const vmPids = vmFiles.map(([pidR]) => {
        const t = text(pidR)?.trim() ?? "";
        return /^\d+$/.test(t) ? Number(t) : null;
    });

    // ---- round trip 3 (only when needed): commands of PIDs, mdevctl files
    const pids = [...new Set([...openers.flat(), ...vmPids.filter((p): p is number => p !== null)])].sort((x, y) => x - y);
    const mdevctlFiles = mdevctlParents.flatMap((p, i) => mdevctlLists[i].map((u) => ({ parent: p, uuid: u, path: `${MDEVCTL_DIR}/${p}/${u}` })));
    const q3 = new BatchQuery();
    const commandsPart = q3.each(pids, (p): Op[] => [{ op: "read", path: `/proc/${p}/comm` }], (p, [r]) => [p, r?.ok ? r.data.trim() : null] as const);
    const configsPart = q3.each(mdevctlFiles, (f): Op[] => [{ op: "read", path: f.path }], (f, [r]) => ({ ...f, config: parseMdevctlConfig(text(r) ?? "") }));
    const r3 = await q3.runIfAny(host);
    const commands = new Map(commandsPart(r3));
    const mdevctlConfigs = configsPart(r3);

    // ---- assemble
    const devices: HeldDevice[] = pci
        .filter((d) => d.override !== null || isVfioDriver(d.driver) || d.driver === "pci-stub")
        .map((d) => ({ address: d.address, class: d.class, className: classLabel(d.class), ids: `${d.vendor}:${d.device}`, driver: d.driver, override: d.override, group: d.group }));
    const vfsOf = new Map<string, string[]>();
    for (const d of pci) if (d.physfn) vfsOf.set(d.physfn, [...(vfsOf.get(d.physfn) ?? []), d.address]);
    const pfs: PfStatus[] = pci
        .filter((d) => (d.sriovNumVfs ?? 0) > 0)
        .map((d) => ({ address: d.address, driver: d.driver, numVfs: d.sriovNumVfs!, totalVfs: d.sriovTotalVfs ?? 0, vfs: (vfsOf.get(d.address) ?? []).sort() }));
    const mdevs: MdevStatus[] = mdevDevices.map((m) => {
        const cfg = mdevctlConfigs.find((c) => c.uuid === m.uuid && c.parent === m.parent && c.config);
        return { uuid: m.uuid, parent: m.parent, type: m.typeId, group: m.group, config: cfg ? { path: cfg.path, start: cfg.config!.start } : null };
    });
    const files: PersistenceFile[] = [
        ...driverctlFiles.map((path, i) => ({ path, kind: "driverctl", summary: text(driverctlTexts[i])?.trim() || "(unreadable)", writtenByPulumiVfio: null })),
        ...mdevctlConfigs.map((c) => ({
            path: c.path,
            kind: "mdevctl",
            summary: c.config ? `mdev_type ${c.config.type}, start ${c.config.start}${mdevDevices.some((m) => m.uuid === c.uuid) ? "" : ", not created now"}` : "(not an mdevctl config)",
            writtenByPulumiVfio: null,
        })),
        ...kvmfrFiles.map((f) => ({
            path: f.path,
            kind: "kvmfr",
            summary: f.path === LOADED_SIZES ? `sizes loaded by pulumi-vfio: ${f.text!.trim()}` : (f.text!.split("\n").find((l) => l.trim() && !l.startsWith("#")) ?? "").trim(),
            writtenByPulumiVfio: f.path === LOADED_SIZES || WRITTEN_BY_US.test(f.text!),
        })),
        ...vms.flatMap((n, i) => {
            const unit = text(vmFiles[i][1]);
            return unit === null ? [] : [{ path: vmPaths(n).unitFile, kind: "vm-unit", summary: `QEMU VM ${n} at boot`, writtenByPulumiVfio: WRITTEN_BY_US.test(unit) }];
        }),
    ];
    return {
        host: host.name,
        devices,
        vfioGroups: groups.map((g, i) => ({ group: g, path: `/dev/vfio/${g}`, holders: openers[i].map((pid) => ({ pid, command: commands.get(pid) ?? null })) })),
        mdevs,
        pfs,
        kvmfr: kvmfrPaths.map((path, i) => ({ path, isCharDevice: !!kvmfrStats[i]?.ok && kvmfrStats[i].data.startsWith("character special file") })),
        kvmfrLoaded,
        kvmfrSizesMb: loadedSizes === null ? null : loadedSizes.trim().split(",").filter(Boolean).map(Number),
        files,
        vms: vms.map((name, i) => {
            const pid = vmPids[i];
            const command = pid === null ? null : (commands.get(pid) ?? null);
            return { name, pid, running: !!command && command.startsWith("qemu-system"), command, unit: text(vmFiles[i][1]) === null ? null : vmPaths(name).unitName };
        }),
        seesEveryProcess: uid === null ? null : uid === 0,
    };
}

// ------------------------------------------------------------------------------------------------ formatting

function table(rows: string[][]): string[] {
    if (!rows.length) return [];
    const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
    return rows.map((r) => "  " + r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]))).join("  ").trimEnd());
}

const holderList = (h: VfioGroupNode["holders"]) => h.map((x) => `PID ${x.pid}${x.command ? ` (${x.command})` : ""}`).join(", ");

/** The report `pulumi-vfio status` prints: one section per kind, each saying "none" when empty. */
export function formatHostStatus(s: HostStatus): string {
    const out: string[] = [`host ${s.host}`];
    const section = (title: string, rows: string[][], none: string) => {
        out.push("", `${title}:`);
        if (rows.length) out.push(...table(rows));
        else out.push(`  ${none}`);
    };
    const holdersOf = (g: number | null) => s.vfioGroups.find((v) => v.group === g)?.holders ?? [];
    section(
        "devices taken from the host drivers (driver_override set, or on vfio-pci / pci-stub)",
        s.devices.map((d) => {
            const held = holdersOf(d.group);
            return [d.address, `${d.className} [${d.ids}]`, `driver ${d.driver ?? "none"}`, `override ${d.override ?? "-"}`, d.group === null ? "no group" : `group ${d.group}`, held.length ? `held by ${holderList(held)}` : ""];
        }),
        "none",
    );
    section(
        "VFIO group nodes",
        s.vfioGroups.map((g) => [g.path, g.holders.length ? `held by ${holderList(g.holders)}` : s.seesEveryProcess === false ? "no holder seen (not root: other users' processes are not visible)" : "not open"]),
        "none",
    );
    section("mdevs", s.mdevs.map((m) => [m.uuid, m.parent, m.type, m.group === null ? "" : `group ${m.group}`, m.config ? `mdevctl ${m.config.start}` : "not persistent"]), "none");
    section("SR-IOV physical functions with VFs enabled", s.pfs.map((p) => [p.address, `${p.numVfs}/${p.totalVfs} VFs`, `driver ${p.driver ?? "none"}`, p.vfs.join(" ")]), "none");
    section(
        "kvmfr devices",
        s.kvmfr.map((k) => {
            const size = s.kvmfrSizesMb?.[Number(k.path.replace(/^\/dev\/kvmfr/, ""))];
            return [k.path, k.isCharDevice ? "character device" : "NOT a character device (QEMU created it before kvmfr was loaded)", size !== undefined ? `${size} MiB` : ""];
        }),
        s.kvmfrLoaded ? "none" : "none (kvmfr module not loaded)",
    );
    section(
        "persistence files",
        s.files.map((f) => [f.path, f.summary, f.writtenByPulumiVfio === true ? "written by pulumi-vfio" : f.writtenByPulumiVfio === false ? "not written by pulumi-vfio" : `${f.kind} format (pulumi-vfio or ${f.kind})`]),
        "none",
    );
    section(
        "QEMU VMs (PassthroughVm)",
        s.vms.map((v) => [v.name, v.running ? `running, PID ${v.pid}` : v.pid !== null ? `not running (stale pidfile, PID ${v.pid})` : "not running", v.unit ? `unit ${v.unit}` : "no unit"]),
        "none",
    );
    return out.join("\n") + "\n";
}
