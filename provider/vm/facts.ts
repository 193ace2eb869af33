/**
 * The host facts a VM's preflight and group expansion read, for both backends: each named device's driver, IOMMU
 * group and class, its group's members, the shared memory and mdev nodes, the online CPUs, the loaded kvmfr sizes,
 * QEMU's pidfile, the groups' /dev/vfio nodes and their holders, and the host environment of
 * provider/qemu/preflight.ts. Typed {@link BatchQuery} reads: no positional offsets.
 *
 * One round trip when the groups are known beforehand (check's `hostDevices` handed to create, and the host still
 * shows those groups); two otherwise (the other group members and the /dev/vfio nodes are known only after the
 * first). A caller may add its own reads to the first batch (`query`), e.g. the backend's observation of the VM.
 */
import type { Host, Op, OpResult } from "../host/types";
import { BatchQuery, Part } from "../host/query";
import type { HostDevice, VmPaths } from "../qemu/cmdline";
import { HostEnv, envOps, parseEnv } from "../qemu/preflight";
import { LOADED_SIZES, parseModprobeConf, parseStat } from "../sysfs/kvmfr";
import { pidsOf } from "../sysfs/proc";
import { Normalized, parseCpuList, preflightWant } from "./spec";

export interface DeviceFacts {
    exists: boolean;
    driver: string | null;
    group: number | null;
    class: string;
}

export interface VmFacts {
    devices: Map<string, DeviceFacts>;
    /** Group → member addresses. */
    groups: Map<number, string[]>;
    vfioDevice: Map<number, boolean>;
    vfioOpeners: Map<number, number[]>;
    paths: Map<string, ReturnType<typeof parseStat>>;
    /** QEMU, KVM, firmware, disks, hugepages, bridge: what {@link preflightWant} asks of the host. */
    env: HostEnv;
    onlineCpus: number[] | null;
    /** Sizes the loaded kvmfr was given (our record), or null. */
    kvmfrSizes: number[] | null;
    pidFilePid: number | null;
    comm: Map<number, string>;
}

const basename = (p: string) => p.slice(p.lastIndexOf("/") + 1);

const devOps = (a: string): Op[] => [
    { op: "readlink", path: `/sys/bus/pci/devices/${a}/driver` },
    { op: "readlink", path: `/sys/bus/pci/devices/${a}/iommu_group` },
    { op: "read", path: `/sys/bus/pci/devices/${a}/class` },
];

function devFrom([driver, group, cls]: OpResult[]): DeviceFacts {
    return {
        exists: !!cls?.ok,
        driver: driver?.ok && driver.data.trim() ? basename(driver.data.trim()) : null,
        group: group?.ok ? Number(basename(group.data.trim())) : null,
        class: cls?.ok ? cls.data.trim().replace(/^0x/, "").padStart(6, "0") : "",
    };
}

const members = (r: OpResult): string[] | null => (r.ok ? r.data.split("\n").filter(Boolean).sort() : null);
const pidOf = (r: OpResult): number | null => (r.ok && /^\d+$/.test(r.data.trim()) ? Number(r.data.trim()) : null);

/** The /dev/vfio node and its holders of each group, as one part. */
function addGroupNodes(q: BatchQuery, groups: number[]): Part<Map<number, { node: boolean; openers: number[] }>> {
    const part = q.each(
        groups,
        (g): Op[] => [
            { op: "stat", path: `/dev/vfio/${g}` },
            { op: "openers", path: `/dev/vfio/${g}` },
        ],
        (g, [st, op]) => [g, { node: st.ok, openers: op.ok ? pidsOf(op) : [] }] as const,
    );
    return (r) => new Map(part(r));
}

export interface ReadVmFactsOptions {
    /** A batch the caller already filled with its own reads: the first round trip carries them (see {@link BatchQuery}). */
    query?: BatchQuery;
    /** The functions check resolved: their devices and groups' nodes are read in the first round trip. */
    known?: HostDevice[];
}

/**
 * Everything the preflight and the group expansion need (see the file's comment for the round trips). Returns the
 * facts and the first batch's results, for the caller's parts of `opts.query`.
 */
export async function readVmFacts(host: Host, n: Normalized, paths: VmPaths, opts: ReadVmFactsOptions = {}): Promise<{ facts: VmFacts; results: OpResult[] }> {
    const named = [...new Set([...n.devices.flatMap((d) => [d.address, ...(d.functions ?? [])]), ...n.mdevs.flatMap((m) => (m.address ? [m.address] : []))])];
    const hinted = [...new Set((opts.known ?? []).map((d) => d.address))].filter((a) => !named.includes(a));
    const hintedGroups = [...new Set((opts.known ?? []).flatMap((d) => (d.group === null ? [] : [d.group])))];
    const files = [...(n.sharedMemory ? [n.sharedMemory.path] : []), ...n.mdevs.filter((m) => !m.address).map((m) => `/sys/bus/mdev/devices/${m.uuid}`)];
    const want = preflightWant(n);

    const q = opts.query ?? new BatchQuery();
    const namedPart = q.each(named, (a): Op[] => [...devOps(a), { op: "list", path: `/sys/bus/pci/devices/${a}/iommu_group/devices` }], (a, [d, g, c, list]) => ({ a, dev: devFrom([d, g, c]), members: members(list) }));
    const hintedPart = q.each(hinted, devOps, (a, r) => [a, devFrom(r)] as const);
    const hintedNodes = addGroupNodes(q, hintedGroups);
    const statPart = q.each(files, (f): Op[] => [{ op: "stat", path: f }], (f, [r]) => [f, parseStat(r.ok, r.data)] as const);
    const online = q.one({ op: "read", path: "/sys/devices/system/cpu/online" }, (r) => (r.ok ? parseCpuList(r.data) : null));
    const loaded = q.one({ op: "read", path: LOADED_SIZES }, (r) => (r.ok ? parseModprobeConf(`options kvmfr static_size_mb=${r.data.trim()}`) : null));
    const pidFile = q.one({ op: "read", path: paths.pidFile }, pidOf);
    const env = q.add(envOps(want), (r) => parseEnv(want, r));
    const results = await q.run(host);

    const devices = new Map<string, DeviceFacts>();
    const groups = new Map<number, string[]>();
    for (const { a, dev, members: m } of namedPart(results)) {
        devices.set(a, dev);
        if (dev.group !== null && m) groups.set(dev.group, m);
    }
    for (const [a, d] of hintedPart(results)) if (!devices.has(a)) devices.set(a, d);
    const nodes = hintedNodes(results);
    const pidFilePid = pidFile(results);

    // What the first batch could not know: members outside the hint, nodes of groups not hinted, the process.
    const q2 = new BatchQuery();
    const othersPart = q2.each([...new Set([...groups.values()].flat())].filter((a) => !devices.has(a)), devOps, (a, r) => [a, devFrom(r)] as const);
    const nodes2 = addGroupNodes(q2, [...groups.keys()].filter((g) => !nodes.has(g)));
    const comm = pidFilePid === null ? () => null : q2.one({ op: "read", path: `/proc/${pidFilePid}/comm` }, (r) => (r.ok ? r.data.trim() : null));
    const r2 = await q2.runIfAny(host);
    for (const [a, d] of othersPart(r2)) devices.set(a, d);
    for (const [g, x] of nodes2(r2)) nodes.set(g, x);
    const commText = comm(r2);

    return {
        facts: {
            devices,
            groups,
            vfioDevice: new Map([...nodes].map(([g, x]) => [g, x.node])),
            vfioOpeners: new Map([...nodes].map(([g, x]) => [g, x.openers])),
            paths: new Map(statPart(results)),
            env: env(results),
            onlineCpus: online(results),
            kvmfrSizes: loaded(results),
            pidFilePid,
            comm: new Map(pidFilePid !== null && commText !== null ? [[pidFilePid, commText]] : []),
        },
        results,
    };
}
