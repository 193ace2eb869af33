/**
 * PassthroughVm: what happens on `pulumi preview` / `up` / `refresh` / `destroy` for "this QEMU VM runs with these
 * devices passed through".
 *
 * - check: validate, expand every passed-through device to the functions of its IOMMU group (read from the host),
 *   refuse what QEMU's start would fail on and no other resource of the same `up` can provide (QEMU itself, KVM,
 *   OVMF, disks, hugepages, bridge: provider/qemu/preflight.ts, read in the same batch), and return the exact QEMU
 *   argv as `commandLine`, so the preview shows what will run and what changes.
 * - create: under the host lock, preflight (every group viable and bound to vfio-pci, /dev/vfio/N present and
 *   free, mdevs present, the shared memory of the right kind and size, firmware, disks, KVM, hugepages), then
 *   start QEMU daemonized with a pidfile and a QMP socket (0600) in a 0700 run dir, wait for QMP, and check with
 *   query-status and query-pci that every device is there; pin vCPU threads (query-cpus-fast). On any failure
 *   QEMU is stopped and its stderr reported.
 * - read: the process, its QMP status and its devices; a VM that died is drift (`status: stopped`) for `up`.
 * - update: a new command line restarts the VM gracefully; `running` starts or stops it; a paused VM continues.
 * - delete: `system_powerdown`, wait for SHUTDOWN up to shutdownTimeoutSeconds, then `quit`, then SIGTERM and
 *   SIGKILL; remove the per-VM files.
 *
 * Every function takes an optional last `onHost` (tests); the dynamic provider gets the host from `connection`.
 */
import { CheckFailure, CheckResult, containsUnknown, isUnknown, schemaDefault, validate, withoutProvider } from "./check";
import { PlanError } from "./errors";
import { withHost } from "./host";
import { pidsOf } from "./sysfs/proc";
import { Connection, hostIdentity } from "./host/ssh";
import { BatchQuery } from "./host/query";
import { Host, Op, OpResult } from "./host/types";
import {
    HostDevice,
    VM_NAME,
    VmPaths,
    VmSpec,
    buildCommandLine,
    expectedDevices,
    layoutProblems,
    systemdUnit,
    vmPaths,
} from "./qemu/cmdline";
import { HostEnv, PreflightWant, envOps, envProblems, parseEnv } from "./qemu/preflight";
import { QmpClient, QmpCpu, QmpTimeout, flattenPci } from "./qemu/qmp";
import { LOADED_SIZES, parseModprobeConf, parseStat } from "./sysfs/kvmfr";
import { isVfioDriver, memberViable } from "./sysfs/iommu";
import { firstFailure, isBridge, parseAddress } from "./sysfs/pci";
import type { DiskInput, MdevInput, PassthroughDeviceInput, PassthroughVmSchemaInputs } from "./generated/inputs";

// ------------------------------------------------------------------------------------------------ inputs

// The shapes are generated from schema/passthrough-vm.schema.json (provider/generated/inputs.ts).
export type { DiskInput, MdevInput, PassthroughDeviceInput };

/** The schema's inputs and what check adds. */
/**
 * A VM's status: QEMU's RunState as QMP `query-status` reports it (qapi/run-state.json), or ours: `stopped` (no
 * QEMU process), `unresponsive` (the process lives, QMP does not answer), `unknown` (QMP answered without a status).
 */
export type VmStatus =
    | "running" | "paused" | "prelaunch" | "inmigrate" | "postmigrate" | "finish-migrate" | "suspended" | "shutdown"
    | "guest-panicked" | "internal-error" | "io-error" | "watchdog" | "debug" | "restore-vm" | "save-vm" | "colo"
    | "stopped" | "unresponsive" | "unknown";

export interface PassthroughVmInputs extends PassthroughVmSchemaInputs {
    /** Set by check: the functions that will be passed through, with their groups. */
    hostDevices?: HostDevice[];
    /** Set by check: the QEMU argv. */
    commandLine?: string[];
}

export interface PassthroughVmOutputs extends PassthroughVmInputs {
    name: string;
    running: boolean;
    autostart: boolean;
    shutdownTimeoutSeconds: number;
    hostDevices: HostDevice[];
    commandLine: string[];
    runDir: string;
    pidFile: string;
    qmpSocket: string;
    /** The per-VM copy of the OVMF VARS file, or null without firmware. */
    varsFile: string | null;
    /** The systemd unit written for autostart, or null. */
    unit: string | null;
    /** What the host shows (see {@link VmStatus}). */
    status: VmStatus;
    pid: number | null;
    /** Host thread id of each vCPU (query-cpus-fast), in vCPU order. */
    vcpuThreads: number[];
    /** Expected devices query-pci did not list (drift). */
    missingDevices: string[];
    /** vCPU threads are on the CPUs `cpu.pinning` names (true without pinning). */
    pinningOk: boolean;
}

const SCHEMA = "passthrough-vm.schema.json";
/** The schema's default of a PassthroughVm input (see schemaDefault). */
const dflt = <T>(at: string): T => schemaDefault<T>(SCHEMA, at);

/**
 * The inputs with defaults applied: the QEMU builder's VmSpec before devices are resolved and paths chosen, plus
 * pinning and the lifecycle fields the builder does not see.
 */
type Normalized = Omit<VmSpec, "hostDevices" | "paths" | "cpu"> & {
    cpu: VmSpec["cpu"] & { pinning?: number[] };
    devices: PassthroughDeviceInput[];
    running: boolean;
    autostart: boolean;
    shutdownTimeoutSeconds: number;
    /** The input field of each disk's path (`disks[0]` or `disks[0].path`), for messages. */
    diskFields: string[];
};

/** Defaults applied, shorthand forms expanded. Pure. */
export function normalize(i: PassthroughVmInputs): Normalized {
    const accel = i.accel ?? dflt<"kvm" | "tcg">("accel");
    const cpu = i.cpu ?? {};
    return {
        name: i.name,
        machine: i.machine ?? dflt<string>("machine"),
        accel,
        cpu: { model: cpu.model ?? (accel === "kvm" ? "host" : "max"), sockets: cpu.sockets ?? dflt<number>("cpu.sockets"), cores: cpu.cores ?? dflt<number>("cpu.cores"), threads: cpu.threads ?? dflt<number>("cpu.threads"), pinning: cpu.pinning },
        memoryMb: i.memoryMb ?? dflt<number>("memoryMb"),
        hugepages: i.hugepages ?? dflt<boolean>("hugepages"),
        firmware: i.firmware,
        disks: (i.disks ?? []).map((d) => {
            const o = typeof d === "string" ? { path: d } : d;
            return { path: o.path, format: o.format ?? (/\.qcow2$/.test(o.path) ? "qcow2" : "raw"), bus: o.bus ?? dflt<"virtio" | "sata" | "nvme">("/$defs/disk/oneOf/1/properties/bus"), readOnly: o.readOnly ?? dflt<boolean>("/$defs/disk/oneOf/1/properties/readOnly") };
        }),
        cdrom: i.cdrom,
        network: { mode: i.network?.mode ?? dflt<"user" | "bridge" | "none">("network.mode"), bridge: i.network?.bridge, model: i.network?.model ?? dflt<string>("network.model"), mac: i.network?.mac?.toLowerCase() },
        devices: (i.devices ?? []).map((d) => (typeof d === "string" ? { address: parseAddress(d) } : { ...d, address: parseAddress(d.address), functions: d.functions?.map(parseAddress) })),
        mdevs: (i.mdevs ?? []).map((m) => (typeof m === "string" ? { uuid: m.toLowerCase() } : { ...m, uuid: m.uuid.toLowerCase(), ...(m.address ? { address: parseAddress(m.address) } : {}) })),
        sharedMemory: i.sharedMemory,
        hideHypervisor: i.hideHypervisor ?? dflt<boolean>("hideHypervisor"),
        hvVendorId: i.hvVendorId ?? dflt<string>("hvVendorId"),
        uuid: i.uuid?.toLowerCase(),
        running: i.running ?? dflt<boolean>("running"),
        autostart: i.autostart ?? dflt<boolean>("autostart"),
        shutdownTimeoutSeconds: i.shutdownTimeoutSeconds ?? dflt<number>("shutdownTimeoutSeconds"),
        extraArgs: i.extraArgs ?? [],
        diskFields: (i.disks ?? []).map((d, k) => (typeof d === "string" ? `disks[${k}]` : `disks[${k}].path`)),
    };
}

/** What the VM asks of its host beyond devices (see provider/qemu/preflight.ts). Pure. */
export function preflightWant(n: Normalized): PreflightWant {
    const paths = vmPaths(n.name);
    return {
        accel: n.accel,
        memoryMb: n.memoryMb,
        hugepages: n.hugepages,
        firmware: n.firmware ? { code: n.firmware.code, vars: n.firmware.vars, copy: paths.varsFile } : undefined,
        disks: n.disks.map((d, k) => ({ path: d.path, field: n.diskFields[k] })),
        cdrom: n.cdrom,
        romfiles: n.devices.flatMap((d, k) => (d.romfile ? [{ path: d.romfile, field: `devices[${k}].romfile` }] : [])),
        bridge: n.network.mode === "bridge" ? n.network.bridge : undefined,
    };
}

/** Field checks the schema cannot express (they name the field and the fix). Pure. */
export function inputProblems(n: Normalized): CheckFailure[] {
    const out: CheckFailure[] = [];
    const vcpus = n.cpu.sockets * n.cpu.cores * n.cpu.threads;
    if (n.cpu.pinning && n.cpu.pinning.length !== vcpus) {
        out.push({ property: "cpu.pinning", reason: `cpu.pinning lists ${n.cpu.pinning.length} host CPU(s) for ${vcpus} vCPU(s) (sockets × cores × threads): give one host CPU per vCPU` });
    }
    if (n.accel === "tcg" && n.cpu.model === "host") out.push({ property: "cpu.model", reason: `cpu.model "host" needs accel "kvm"; with tcg use "max" or a named model` });
    if (n.hideHypervisor && n.hvVendorId.length > 12) out.push({ property: "hvVendorId", reason: `hvVendorId ${JSON.stringify(n.hvVendorId)} is longer than 12 characters (Hyper-V's vendor id field)` });
    if (n.network.mode === "bridge" && !n.network.bridge) out.push({ property: "network.bridge", reason: `network.mode "bridge" needs network.bridge (e.g. "br0", allowed in /etc/qemu/bridge.conf)` });
    if (n.hugepages && n.memoryMb % 2 !== 0) out.push({ property: "memoryMb", reason: `memoryMb ${n.memoryMb} is not a multiple of the 2 MiB hugepage size` });
    if (n.sharedMemory) {
        const s = n.sharedMemory;
        if (!/^\/dev\/kvmfr\d$/.test(s.path) && !/^\/dev\/shm\/[A-Za-z0-9_.-]+$/.test(s.path)) {
            out.push({ property: "sharedMemory.path", reason: `sharedMemory.path ${JSON.stringify(s.path)} must be a kvmfr device (/dev/kvmfrN) or a file in /dev/shm (e.g. /dev/shm/looking-glass)` });
        }
        if (!(Number.isInteger(s.sizeMb) && s.sizeMb > 0 && (s.sizeMb & (s.sizeMb - 1)) === 0)) out.push({ property: "sharedMemory.sizeMb", reason: `sharedMemory.sizeMb ${s.sizeMb} is not a power of two (Looking Glass sizes: 32, 64, 128, ...)` });
    }
    const seen = new Set<string>();
    for (const m of n.mdevs) {
        if (seen.has(m.uuid)) out.push({ property: "mdevs", reason: `mdev ${m.uuid} is listed twice` });
        seen.add(m.uuid);
    }
    const nvidia = n.mdevs.filter((m) => (m.type ?? "").startsWith("nvidia-"));
    if (n.uuid && nvidia.length && !nvidia.some((m) => m.uuid === n.uuid)) {
        out.push({ property: "uuid", reason: `uuid ${n.uuid} differs from the NVIDIA vGPU mdev ${nvidia[0].uuid}: NVIDIA's guest driver needs the VM's UUID to be the mdev's; leave uuid unset` });
    }
    return out;
}

// ------------------------------------------------------------------------------------------------ host facts

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

function parseCpuList(text: string): number[] {
    return text
        .trim()
        .split(",")
        .filter(Boolean)
        .flatMap((r) => {
            const [a, b] = r.split("-").map(Number);
            return b === undefined ? [a] : Array.from({ length: b - a + 1 }, (_, i) => a + i);
        });
}

const devOps = (a: string): Op[] => [
    { op: "readlink", path: `/sys/bus/pci/devices/${a}/driver` },
    { op: "readlink", path: `/sys/bus/pci/devices/${a}/iommu_group` },
    { op: "read", path: `/sys/bus/pci/devices/${a}/class` },
];

function devFrom([driver, group, cls]: OpResult[]): DeviceFacts {
    const klass = cls?.ok ? cls.data.trim().replace(/^0x/, "").padStart(6, "0") : "";
    return { exists: !!cls?.ok, driver: driver?.ok && driver.data.trim() ? basename(driver.data.trim()) : null, group: group?.ok ? Number(basename(group.data.trim())) : null, class: klass };
}

/**
 * Everything the preflight and the group expansion need, in two round trips whatever the number of devices: the
 * named devices with their group lists, files, CPUs and the host environment (QEMU, KVM, firmware, disks,
 * hugepages: {@link envOps}); then the other group members and the groups' /dev/vfio nodes and holders.
 */
export async function readVmFacts(host: Host, n: Normalized, paths: VmPaths): Promise<VmFacts> {
    const addresses = [...new Set([...n.devices.flatMap((d) => [d.address, ...(d.functions ?? [])]), ...n.mdevs.flatMap((m) => (m.address ? [m.address] : []))])];
    const files = [...(n.sharedMemory ? [n.sharedMemory.path] : []), ...n.mdevs.filter((m) => !m.address).map((m) => `/sys/bus/mdev/devices/${m.uuid}`)];
    const want = preflightWant(n);

    const q1 = new BatchQuery();
    const named = q1.each(
        addresses,
        (a) => [...devOps(a), { op: "list", path: `/sys/bus/pci/devices/${a}/iommu_group/devices` }],
        (a, [driver, group, cls, members]) => ({ address: a, device: devFrom([driver, group, cls]), members: members.ok ? members.data.split("\n").filter(Boolean).sort() : undefined }),
    );
    const fileStats = q1.each(files, (f) => [{ op: "stat", path: f }], (f, [st]) => [f, parseStat(st.ok, st.data)] as const);
    const online = q1.one({ op: "read", path: "/sys/devices/system/cpu/online" }, (r) => (r.ok ? parseCpuList(r.data) : null));
    const loaded = q1.one({ op: "read", path: LOADED_SIZES }, (r) => (r.ok ? parseModprobeConf(`options kvmfr static_size_mb=${r.data.trim()}`) : null));
    const pidFile = q1.one({ op: "read", path: paths.pidFile }, (r) => (r.ok && /^\d+$/.test(r.data.trim()) ? Number(r.data.trim()) : null));
    const environment = q1.add(envOps(want), (r) => parseEnv(want, r));
    const r1 = await q1.run(host);

    const devices = new Map<string, DeviceFacts>();
    const groups = new Map<number, string[]>();
    for (const { address, device, members } of named(r1)) {
        devices.set(address, device);
        if (device.group !== null && members) groups.set(device.group, members);
    }
    const pidFilePid = pidFile(r1);

    const q2 = new BatchQuery();
    const others = q2.each(
        [...new Set([...groups.values()].flat())].filter((a) => !devices.has(a)),
        devOps,
        (a, r) => [a, devFrom(r)] as const,
    );
    const nodes = q2.each(
        [...groups.keys()],
        (g) => [
            { op: "stat", path: `/dev/vfio/${g}` },
            { op: "openers", path: `/dev/vfio/${g}` },
        ],
        (g, [node, openers]) => ({ group: g, exists: node.ok, openers: openers.ok ? pidsOf(openers) : [] }),
    );
    const qemuComm = pidFilePid === null ? () => undefined : q2.one({ op: "read", path: `/proc/${pidFilePid}/comm` }, (r) => (r.ok ? r.data.trim() : undefined));
    const r2 = await q2.run(host);

    for (const [a, d] of others(r2)) devices.set(a, d);
    const comm = new Map<number, string>();
    const c = qemuComm(r2);
    if (pidFilePid !== null && c !== undefined) comm.set(pidFilePid, c);
    return {
        devices,
        groups,
        vfioDevice: new Map(nodes(r2).map((x) => [x.group, x.exists])),
        vfioOpeners: new Map(nodes(r2).map((x) => [x.group, x.openers])),
        paths: new Map(fileStats(r1)),
        env: environment(r1),
        onlineCpus: online(r1),
        kvmfrSizes: loaded(r1),
        pidFilePid,
        comm,
    };
}

// ------------------------------------------------------------------------------------------------ planning

/**
 * The functions each device entry passes: its `functions`, else every non-bridge member of its IOMMU group (the
 * GPU and its HDMI audio), else (device unknown to the host) just the address. Pure.
 */
export function resolveHostDevices(devices: PassthroughDeviceInput[], facts: Pick<VmFacts, "devices" | "groups"> | undefined): HostDevice[] {
    const out: HostDevice[] = [];
    const seen = new Set<string>();
    for (const d of devices) {
        const f = facts?.devices.get(d.address);
        const group = f?.group ?? null;
        const members = d.functions ?? (group !== null ? (facts?.groups.get(group) ?? [d.address]) : [d.address]);
        for (const a of members) {
            const m = facts?.devices.get(a);
            if (m && m.exists && isBridge({ class: m.class }) && a !== d.address) continue;
            if (seen.has(a)) continue;
            seen.add(a);
            const extra = a === d.address ? { ...(d.xVga ? { xVga: true } : {}), ...(d.romfile ? { romfile: d.romfile } : {}) } : {};
            out.push({ address: a, group: m?.group ?? group, ...extra });
        }
    }
    return out;
}

export function specOf(n: Normalized, hostDevices: HostDevice[]): VmSpec {
    const paths = vmPaths(n.name);
    return {
        name: n.name,
        machine: n.machine,
        accel: n.accel,
        cpu: { model: n.cpu.model, sockets: n.cpu.sockets, cores: n.cpu.cores, threads: n.cpu.threads },
        memoryMb: n.memoryMb,
        hugepages: n.hugepages,
        firmware: n.firmware ? { code: n.firmware.code, vars: paths.varsFile } : undefined,
        disks: n.disks,
        cdrom: n.cdrom,
        network: n.network,
        hostDevices,
        mdevs: n.mdevs,
        sharedMemory: n.sharedMemory,
        hideHypervisor: n.hideHypervisor,
        hvVendorId: n.hvVendorId,
        uuid: n.uuid,
        extraArgs: n.extraArgs,
        paths,
    };
}

/** Problems that make the preview fail: things no later resource in the same `up` can fix. Pure. */
export function structuralProblems(n: Normalized, facts: VmFacts): CheckFailure[] {
    const out: CheckFailure[] = [];
    n.devices.forEach((d, i) => {
        const f = facts.devices.get(d.address);
        if (f?.exists && isBridge({ class: f.class })) out.push({ property: `devices[${i}]`, reason: `${d.address} is a PCI bridge; pass the device behind it` });
    });
    if (n.cpu.pinning && facts.onlineCpus) {
        const bad = n.cpu.pinning.filter((c) => !facts.onlineCpus!.includes(c));
        if (bad.length) out.push({ property: "cpu.pinning", reason: `host CPU(s) ${bad.join(", ")} are not online on this host (online: ${facts.onlineCpus.join(",")})` });
    }
    return out;
}

/**
 * Everything that would make QEMU fail, found before starting it, each naming the field and the fix: the devices
 * (bound, viable, free), mdevs and shared memory, then the host environment ({@link envProblems}, also checked at
 * preview). Pure. `ownPid` is a QEMU of this VM that is being replaced (its holds do not count), and
 * `heldHugepagesMb` the hugepage memory that QEMU gives back when it stops.
 */
export function preflightProblems(n: Normalized, hostDevices: HostDevice[], facts: VmFacts, ownPid?: number, heldHugepagesMb = 0): CheckFailure[] {
    const out = structuralProblems(n, facts);
    const fail = (property: string, reason: string) => out.push({ property, reason });
    const groups = new Set<number>();
    for (const d of hostDevices) {
        const f = facts.devices.get(d.address);
        if (!f || !f.exists) {
            fail("devices", `no PCI device ${d.address} on this host`);
            continue;
        }
        if (f.group === null) {
            fail("devices", `${d.address} has no IOMMU group: the IOMMU is off (intel_iommu=on / amd_iommu=on on the kernel command line, VT-d/AMD-Vi in the firmware)`);
            continue;
        }
        if (!isVfioDriver(f.driver)) fail("devices", `${d.address} is bound to ${f.driver ?? "no driver"}, not vfio-pci: bind its group first (an IommuBinding with wholeGroup: true), and make the VM depend on it`);
        groups.add(f.group);
    }
    for (const g of groups) {
        const members = facts.groups.get(g) ?? [];
        const bad = members.filter((a) => {
            const m = facts.devices.get(a);
            return m && !memberViable({ driver: m.driver });
        });
        const passed = new Set(hostDevices.map((d) => d.address));
        const badOthers = bad.filter((a) => !passed.has(a));
        if (badOthers.length) fail("devices", `IOMMU group ${g} is not viable: ${badOthers.map((a) => `${a} is bound to ${facts.devices.get(a)!.driver}`).join(", ")} (QEMU: "group ${g} is not viable"); bind the whole group to vfio-pci`);
        if (!facts.vfioDevice.get(g)) fail("devices", `/dev/vfio/${g} does not exist: no member of IOMMU group ${g} is bound to vfio-pci`);
        const holders = (facts.vfioOpeners.get(g) ?? []).filter((p) => p !== ownPid);
        if (holders.length) fail("devices", `IOMMU group ${g} is in use: /dev/vfio/${g} is held open by PID ${holders.join(", ")} (another VM?)`);
    }
    for (const m of n.mdevs) {
        if (m.address) {
            if (!facts.devices.get(m.address)?.exists) fail("mdevs", `the vGPU VF ${m.address} of mdev ${m.uuid} does not exist: enable the VFs and create the vGPU first (an MdevInstance)`);
        } else if (facts.paths.get(`/sys/bus/mdev/devices/${m.uuid}`)?.kind === "absent") {
            fail("mdevs", `mdev ${m.uuid} does not exist (/sys/bus/mdev/devices/${m.uuid}): create it first (an MdevInstance) and make the VM depend on it`);
        }
    }
    if (n.sharedMemory) {
        const s = n.sharedMemory;
        const st = facts.paths.get(s.path)!;
        const kvmfr = /^\/dev\/kvmfr(\d)$/.exec(s.path);
        if (kvmfr) {
            if (st.kind === "absent") fail("sharedMemory", `${s.path} does not exist: the kvmfr module is not loaded with a device ${kvmfr[1]} (a KvmfrDevice with index ${kvmfr[1]}); starting QEMU now would create a regular file there`);
            else if (st.kind === "file") fail("sharedMemory", `${s.path} is a regular file, not kvmfr's character device: a QEMU started before the kvmfr module was loaded created it. Delete it and reload kvmfr (KvmfrDevice does), then apply again`);
            else if (st.kind !== "char") fail("sharedMemory", `${s.path} is not a character device`);
            else {
                const have = facts.kvmfrSizes?.[Number(kvmfr[1])];
                if (have !== undefined && have !== s.sizeMb) fail("sharedMemory.sizeMb", `${s.path} is ${have} MiB but sharedMemory.sizeMb is ${s.sizeMb}: QEMU's size must equal the device's (use the KvmfrDevice's sizeMb output)`);
            }
        } else if (st.kind === "char" || st.kind === "other") {
            fail("sharedMemory", `${s.path} exists and is not a regular file`);
        } else if (st.kind === "file" && (st.size ?? 0) > 0 && (st.size ?? 0) < s.sizeMb * 1024 * 1024) {
            fail("sharedMemory", `${s.path} is ${st.size} bytes, smaller than sharedMemory.sizeMb (${s.sizeMb} MiB): QEMU refuses it ("backing store size does not match"); delete it so QEMU creates it at the new size`);
        }
    }
    out.push(...envProblems(preflightWant(n), facts.env, heldHugepagesMb));
    return out;
}

export type VmAction = "start" | "stop" | "cont" | "pin";

export interface VmObserved {
    /** `absent`: no QEMU of this VM; `alive`: its process exists. */
    process: "absent" | "alive";
    /** QMP answered (status known) or not. */
    qmp: boolean;
    status?: VmStatus;
    /** The argv the running QEMU was started with (from the state). */
    commandLine?: string[];
    missingDevices: string[];
    pinningOk: boolean;
}

export interface VmDesired {
    running: boolean;
    commandLine: string[];
    pinning?: number[];
}

/** QMP states a VM does not come back from by itself (-no-shutdown, a panic, an I/O or internal error). */
const DEAD_STATES = new Set(["shutdown", "guest-panicked", "internal-error", "io-error"]);

/**
 * The VM's state machine: what to do to get from what the host shows to what the inputs say. Pure.
 * A restart is `stop` then `start`; `stop` itself is graceful (powerdown → quit → SIGTERM → SIGKILL).
 */
export function planVm(desired: VmDesired, observed: VmObserved): { actions: VmAction[]; reason: string } {
    const pin: VmAction[] = desired.pinning?.length ? ["pin"] : [];
    if (!desired.running) {
        return observed.process === "absent" ? { actions: [], reason: "stopped, as wanted" } : { actions: ["stop"], reason: "running: false" };
    }
    if (observed.process === "absent") return { actions: ["start", ...pin], reason: "not running" };
    if (!observed.qmp) return { actions: ["stop", "start", ...pin], reason: "QEMU does not answer QMP" };
    if (JSON.stringify(observed.commandLine ?? []) !== JSON.stringify(desired.commandLine)) return { actions: ["stop", "start", ...pin], reason: "the command line changed" };
    if (observed.status && DEAD_STATES.has(observed.status)) return { actions: ["stop", "start", ...pin], reason: `the guest is in state ${observed.status}` };
    if (observed.missingDevices.length) return { actions: ["stop", "start", ...pin], reason: `devices missing: ${observed.missingDevices.join(", ")}` };
    const actions: VmAction[] = [];
    if (observed.status && observed.status !== "running") actions.push("cont");
    if (!observed.pinningOk) actions.push("pin");
    return { actions, reason: actions.length ? `status ${observed.status}${observed.pinningOk ? "" : ", vCPU pinning lost"}` : "running as wanted" };
}

// ------------------------------------------------------------------------------------------------ QMP on a host

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function qmpConnect(host: Host, socket: string, timeoutMs: number): Promise<QmpClient> {
    const stream = await host.openUnixSocket(socket);
    return QmpClient.connect(stream, timeoutMs);
}

/** Connect, retrying while QEMU sets up its socket (it listens before -daemonize returns; a retry covers slow hosts). */
async function qmpWait(host: Host, socket: string, totalMs: number): Promise<QmpClient> {
    const until = Date.now() + totalMs;
    let last: Error | undefined;
    for (;;) {
        try {
            return await qmpConnect(host, socket, Math.max(1000, Math.min(5000, until - Date.now())));
        } catch (e) {
            last = e as Error;
            if (Date.now() + 200 > until) break;
            await sleep(200);
        }
    }
    throw new Error(`QMP socket ${socket} did not answer within ${totalMs} ms: ${last?.message}`);
}

async function processAlive(host: Host, pid: number): Promise<boolean> {
    const [r] = await host.run([{ op: "read", path: `/proc/${pid}/comm` }]);
    return r.ok && r.data.startsWith("qemu-system");
}

async function waitGone(host: Host, pid: number, ms: number): Promise<boolean> {
    const until = Date.now() + ms;
    for (;;) {
        if (!(await processAlive(host, pid))) return true;
        if (Date.now() > until) return false;
        await sleep(200);
    }
}

export interface StopReport {
    /** How the VM ended: the guest shut down, QMP quit, SIGTERM, SIGKILL, or it was not running. */
    how: "guest-shutdown" | "quit" | "sigterm" | "sigkill" | "not-running";
    ms: number;
}

/**
 * Graceful stop: `system_powerdown` only asks the guest (ACPI); a guest without an OS never answers, so after
 * `timeoutS` without a SHUTDOWN event QEMU is told to `quit`, then signalled.
 */
export async function stopQemu(host: Host, paths: VmPaths, pid: number | null, timeoutS: number, knownAlive = false): Promise<StopReport> {
    const t0 = Date.now();
    const done = (how: StopReport["how"]): StopReport => ({ how, ms: Date.now() - t0 });
    if (pid === null || (!knownAlive && !(await processAlive(host, pid)))) return done("not-running");
    let client: QmpClient | undefined;
    try {
        client = await qmpConnect(host, paths.qmpSocket, 5000);
    } catch {
        client = undefined;
    }
    let how: StopReport["how"] | undefined;
    if (client) {
        try {
            const from = client.events.length;
            await client.execute("system_powerdown", undefined, 5000).catch(() => undefined);
            const ev = await client.waitForEvent("SHUTDOWN", timeoutS * 1000, from);
            if (ev) {
                how = "guest-shutdown";
                await client.waitClosed(10_000);
            } else if (!client.isClosed) {
                await client.execute("quit", undefined, 5000).catch(() => undefined);
                how = "quit";
                await client.waitClosed(10_000);
            }
        } finally {
            client.close();
        }
        if (how && (await waitGone(host, pid, 5000))) return done(how);
    }
    await host.run([{ op: "exec", argv: ["kill", "-s", "TERM", String(pid)], optional: true }]);
    if (await waitGone(host, pid, 5000)) return done("sigterm");
    await host.run([{ op: "exec", argv: ["kill", "-s", "KILL", String(pid)], optional: true }]);
    if (await waitGone(host, pid, 10_000)) return done("sigkill");
    throw new Error(`QEMU PID ${pid} is still alive after SIGKILL (blocked in the kernel, D state?); check dmesg`);
}

interface Running {
    pid: number;
    status: VmStatus;
    vcpuThreads: number[];
    missingDevices: string[];
}

/**
 * Query a running QEMU: status, which expected devices it has, vCPU threads. query-pci walks a bridge only once the
 * guest firmware has programmed its secondary bus number (QEMU's qmp_query_pci_bridge), so right after start the
 * functions behind our root ports are not in it yet; QEMU's device tree (`qom-list /machine/peripheral`, every
 * realized -device by id) is the witness for those.
 */
async function inspect(client: QmpClient, spec: VmSpec): Promise<Omit<Running, "pid">> {
    const status = await client.execute("query-status");
    const pciTree = await client.execute("query-pci");
    const peripheral = await client.execute("qom-list", { path: "/machine/peripheral" });
    const cpus: QmpCpu[] = await client.execute("query-cpus-fast");
    const ids = new Set([...flattenPci(pciTree).map((d) => d.qdev_id), ...peripheral.filter((p) => p.type.startsWith("child<")).map((p) => p.name)]);
    const missing = expectedDevices(spec).filter((d) => !ids.has(d.id)).map((d) => `${d.id} (${d.what})`);
    return { status: status.status as VmStatus, vcpuThreads: [...cpus].sort((a, b) => a["cpu-index"] - b["cpu-index"]).map((c) => c["thread-id"]), missingDevices: missing };
}

/** Pin each vCPU thread to its host CPU with taskset and read the affinity back. Returns the mismatches. */
async function pinVcpus(host: Host, pid: number, threads: number[], pinning: number[]): Promise<string[]> {
    const ops: Op[] = threads.map((tid, i): Op => ({ op: "exec", argv: ["taskset", "-p", "-c", String(pinning[i]), String(tid)] }));
    const q = new BatchQuery();
    const pinned = q.add(ops, (r) => firstFailure(ops, r));
    const status = q.add(
        threads.map((tid): Op => ({ op: "read", path: `/proc/${pid}/task/${tid}/status` })),
        (r) => r,
    );
    const r = await q.run(host);
    const f = pinned(r);
    if (f) return [f.message];
    return pinningMismatches(status(r), threads, pinning);
}

function pinningMismatches(status: OpResult[], threads: number[], pinning: number[]): string[] {
    return threads.flatMap((tid, i) => {
        const m = status[i]?.ok ? /Cpus_allowed_list:\s*(\S+)/.exec(status[i].data) : null;
        const have = m ? parseCpuList(m[1]) : [];
        return have.length === 1 && have[0] === pinning[i] ? [] : [`vCPU ${i} (thread ${tid}) runs on CPUs ${m?.[1] ?? "?"}, not ${pinning[i]}`];
    });
}

/**
 * Start QEMU and check it: the per-VM dirs (0700), the VARS copy (kept across restarts: it holds the UEFI boot
 * entries), QEMU daemonized (argv, never a shell), the QMP socket made 0600, then QMP: status and every device.
 * On failure QEMU is stopped and the error carries its stderr.
 */
async function startQemu(host: Host, n: Normalized, spec: VmSpec, argv: string[], facts: VmFacts): Promise<Running> {
    const p = spec.paths;
    const ops: Op[] = [
        { op: "mkdir", path: p.runDir, mode: 0o700 },
        { op: "exec", argv: ["chmod", "0700", p.runDir] },
        { op: "mkdir", path: p.stateDir, mode: 0o700 },
        { op: "remove", path: p.pidFile },
        { op: "remove", path: p.qmpSocket },
    ];
    if (n.firmware && facts.env.nodes.get(p.varsFile) !== "file") ops.push({ op: "exec", argv: ["cp", "--", n.firmware.vars, p.varsFile] }, { op: "exec", argv: ["chmod", "0600", p.varsFile] });
    const socketOp: Op = { op: "exec", argv: ["chmod", "0600", p.qmpSocket] };
    const q = new BatchQuery();
    const prepared = q.add(ops, (r) => firstFailure(ops, r));
    const qemu = q.one({ op: "exec", argv, timeoutMs: 120_000 }, (r) => r);
    const socket = q.one(socketOp, (r) => firstFailure([socketOp], [r]));
    const pidText = q.one({ op: "read", path: p.pidFile }, (r) => (r.ok ? Number(r.data.trim()) : NaN));
    const r = await q.run(host, { stopOnError: true });
    const prepFailure = prepared(r);
    if (prepFailure) throw prepFailure;
    const started = qemu(r);
    if (!started.ok) {
        const stderr = (started.message ?? "").replace(/ \| /g, "\n").trim();
        throw new Error(`QEMU for VM ${spec.name} did not start (status ${started.code}):\n${stderr || "(no output)"}`);
    }
    const pid = pidText(r);
    try {
        const socketFailure = socket(r);
        if (socketFailure) throw socketFailure;
        if (!Number.isInteger(pid)) throw new Error(`QEMU started but wrote no pidfile ${p.pidFile}`);
        const client = await qmpWait(host, p.qmpSocket, 15_000);
        let info: Omit<Running, "pid">;
        try {
            info = await inspect(client, spec);
        } finally {
            client.close();
        }
        if (info.missingDevices.length) throw new Error(`query-pci does not list ${info.missingDevices.join(", ")}`);
        if (info.status !== "running") throw new Error(`QEMU reports status ${info.status}, not running`);
        if (n.cpu.pinning?.length) {
            const bad = await pinVcpus(host, pid, info.vcpuThreads, n.cpu.pinning);
            if (bad.length) throw new Error(`pinning vCPUs failed: ${bad.join("; ")}`);
        }
        return { pid, ...info };
    } catch (e) {
        const stop = await stopQemu(host, p, Number.isInteger(pid) ? pid : null, 0).catch((x) => ({ how: `not stopped: ${(x as Error).message}` }));
        throw new Error(`VM ${spec.name}: QEMU started but ${(e as Error).message}; QEMU was stopped (${stop.how})`);
    }
}

// ------------------------------------------------------------------------------------------------ check / diff

/** MiB of hugepages the QEMU started from these (previous) inputs holds while it runs. */
function hugepagesHeldBy(previous: Record<string, any> | undefined): number {
    return previous?.hugepages === true ? (typeof previous.memoryMb === "number" ? previous.memoryMb : 4096) : 0;
}

function safeNormalize(i: PassthroughVmInputs): { n?: Normalized; failures: CheckFailure[] } {
    try {
        const n = normalize(i);
        return { n, failures: inputProblems(n) };
    } catch (e) {
        return { failures: [{ property: "devices", reason: (e as Error).message }] };
    }
}

/**
 * Validate, expand devices to their groups (reading the host, changing nothing) and return the command line.
 * With unknown inputs (values computed in the same `up`) the host is not read and `commandLine` stays unknown.
 */
export async function check(olds: Record<string, any>, news: Record<string, any>, onHost?: Host): Promise<CheckResult<PassthroughVmInputs>> {
    const { inputs, failures } = validate<PassthroughVmInputs>("passthrough-vm.schema.json", news);
    if (typeof inputs.name === "string" && !isUnknown(inputs.name) && !VM_NAME.test(inputs.name)) {
        const i = failures.findIndex((f) => f.property === "name");
        const reason = `name ${JSON.stringify(inputs.name)} is not a VM name: letters, digits, '_', '.', '-', at most 64, starting with a letter or digit (it names /run/pulumi-vfio/vm/<name>)`;
        if (i >= 0) failures[i] = { property: "name", reason };
        else failures.push({ property: "name", reason });
    }
    if (failures.length) return { inputs, failures };
    delete inputs.commandLine;
    delete inputs.hostDevices;
    const userInputs = { ...inputs };
    delete (userInputs as any).__provider;
    if (containsUnknown(userInputs)) return { inputs, failures };
    const { n, failures: problems } = safeNormalize(inputs);
    if (problems.length || !n) return { inputs, failures: problems };
    try {
        await withHost(
            inputs.connection,
            async (host) => {
                const facts = await readVmFacts(host, n, vmPaths(n.name));
                const hostDevices = resolveHostDevices(n.devices, facts);
                const spec = specOf(n, hostDevices);
                // What would fail at start and no other resource of this up can provide: refused at preview. A QEMU of
                // this VM that runs now gives its hugepages back before the new one starts.
                const running = facts.pidFilePid !== null && (facts.comm.get(facts.pidFilePid) ?? "").startsWith("qemu-system");
                const layout = layoutProblems(spec);
                failures.push(...structuralProblems(n, facts), ...envProblems(preflightWant(n), facts.env, running ? hugepagesHeldBy(olds) : 0), ...layout);
                if (layout.length) return;
                inputs.hostDevices = hostDevices;
                inputs.commandLine = buildCommandLine(spec);
            },
            onHost,
        );
    } catch (e) {
        failures.push({ property: "connection", reason: (e as Error).message });
    }
    return { inputs, failures };
}


/** The inputs that matter to the VM, canonical, for change detection. */
function canonical(i: PassthroughVmInputs): string {
    const c: any = { ...i };
    for (const k of ["connection", "__provider", "commandLine", "hostDevices", "status", "pid", "vcpuThreads", "missingDevices", "pinningOk", "runDir", "pidFile", "qmpSocket", "varsFile", "unit"]) delete c[k];
    return JSON.stringify(normalizeForDiff(c));
}

function normalizeForDiff(i: PassthroughVmInputs): unknown {
    try {
        return normalize(i);
    } catch {
        return i;
    }
}

/**
 * Another name or host → replace (the old VM is stopped first); anything else → update, which restarts only when
 * the command line changed. Drift from refresh (VM dead, paused, devices gone, pinning lost) → update.
 */
export function diff(_id: string, olds: PassthroughVmOutputs, news: PassthroughVmInputs): { changes: boolean; replaces: string[]; deleteBeforeReplace: boolean } {
    const replaces: string[] = [];
    if (isUnknown(news.name) || news.name !== olds.name) replaces.push("name");
    if (containsUnknown(news.connection) || hostIdentity(news.connection) !== hostIdentity(olds.connection)) replaces.push("connection");
    let changes = replaces.length > 0 || containsUnknown(news);
    if (!changes && canonical(news) !== canonical(olds)) changes = true;
    if (news.commandLine === undefined || JSON.stringify(news.commandLine) !== JSON.stringify(olds.commandLine)) changes = true;
    const wantRunning = news.running ?? dflt<boolean>("running");
    if (wantRunning && (olds.status !== "running" || (olds.missingDevices ?? []).length > 0 || olds.pinningOk === false)) changes = true;
    if (!wantRunning && olds.status !== "stopped") changes = true;
    return { changes, replaces, deleteBeforeReplace: true };
}

// ------------------------------------------------------------------------------------------------ apply

interface Observation extends VmObserved {
    pid: number | null;
    vcpuThreads: number[];
    autostartEnabled: boolean;
}

/**
 * What the host shows for this VM: one round trip (pidfile, the process, vCPU affinities, the unit), then QMP; a
 * second round trip only when the pid changed (systemd started it at boot) and pinning is to be checked.
 */
async function observe(host: Host, spec: VmSpec, n: Normalized, known?: { pid: number | null; vcpuThreads: number[]; commandLine?: string[] }): Promise<Observation> {
    const p = spec.paths;
    const kp = known?.pid ?? null;
    const q = new BatchQuery();
    const pidFile = q.one({ op: "read", path: p.pidFile }, (r) => (r.ok && /^\d+$/.test(r.data.trim()) ? Number(r.data.trim()) : null));
    const unit = q.one({ op: "stat", path: p.unitFile }, (r) => r.ok);
    const knownIsQemu = kp === null ? () => false : q.one({ op: "read", path: `/proc/${kp}/comm` }, (r) => r.ok && r.data.startsWith("qemu-system"));
    const knownThreads = q.add(
        kp === null ? [] : (known?.vcpuThreads ?? []).map((t): Op => ({ op: "read", path: `/proc/${kp}/task/${t}/status` })),
        (r) => r,
    );
    const r = await q.run(host);
    const autostartEnabled = unit(r);
    const pid = pidFile(r) ?? kp;
    const base: Observation = { process: "absent", qmp: false, pid: null, vcpuThreads: [], missingDevices: [], pinningOk: true, autostartEnabled, commandLine: known?.commandLine };
    if (pid === null) return base;
    const alive = pid === kp ? knownIsQemu(r) : await processAlive(host, pid);
    if (!alive) return base;
    let info: Omit<Running, "pid"> | undefined;
    try {
        const client = await qmpConnect(host, p.qmpSocket, 5000);
        try {
            const name = await client.execute("query-name");
            if (name.name !== undefined && name.name !== spec.name) throw new Error(`the QEMU on ${p.qmpSocket} is ${name.name}`);
            info = await inspect(client, spec);
        } finally {
            client.close();
        }
    } catch (e) {
        if (!(e instanceof QmpTimeout) && !/cannot connect|ECONNREFUSED|ENOENT|open failed|is /.test((e as Error).message)) throw e;
        return { ...base, process: "alive", pid, qmp: false };
    }
    let pinningOk = true;
    const pinning = n.cpu.pinning;
    if (pinning?.length) {
        const sameThreads = pid === kp && JSON.stringify(info.vcpuThreads) === JSON.stringify(known?.vcpuThreads ?? []);
        const status = sameThreads ? knownThreads(r) : await host.run(info.vcpuThreads.map((t): Op => ({ op: "read", path: `/proc/${pid}/task/${t}/status` })));
        pinningOk = pinningMismatches(status, info.vcpuThreads, pinning).length === 0;
    }
    return { ...base, process: "alive", qmp: true, pid, status: info.status, vcpuThreads: info.vcpuThreads, missingDevices: info.missingDevices, pinningOk };
}

function outputsOf(inputs: PassthroughVmInputs, n: Normalized, spec: VmSpec, argv: string[], o: { status: VmStatus; pid: number | null; vcpuThreads: number[]; missingDevices: string[]; pinningOk: boolean }): PassthroughVmOutputs {
    const p = spec.paths;
    return {
        ...withoutProvider(inputs),
        name: n.name,
        running: n.running,
        autostart: n.autostart,
        shutdownTimeoutSeconds: n.shutdownTimeoutSeconds,
        hostDevices: spec.hostDevices,
        commandLine: argv,
        runDir: p.runDir,
        pidFile: p.pidFile,
        qmpSocket: p.qmpSocket,
        varsFile: n.firmware ? p.varsFile : null,
        unit: n.autostart ? p.unitName : null,
        ...o,
    };
}

/** The unit for autostart: written and enabled, or disabled and removed. */
async function syncUnit(host: Host, n: Normalized, spec: VmSpec, argv: string[], enabledNow: boolean): Promise<void> {
    const p = spec.paths;
    const ops: Op[] = n.autostart
        ? [
              { op: "put", path: p.unitFile, data: systemdUnit(spec, argv, n.shutdownTimeoutSeconds), mode: 0o644 },
              { op: "exec", argv: ["systemctl", "daemon-reload"] },
              { op: "exec", argv: ["systemctl", "enable", p.unitName] },
          ]
        : enabledNow
          ? [{ op: "exec", argv: ["systemctl", "disable", p.unitName], optional: true }, { op: "remove", path: p.unitFile }, { op: "exec", argv: ["systemctl", "daemon-reload"], optional: true }]
          : [];
    if (!ops.length) return;
    const r = await host.run(ops, { stopOnError: true });
    const f = firstFailure(ops, r);
    if (f) throw new Error(`autostart: ${f.message}`);
}

/** Resolve devices against the host and run the preflight, under the lock. Throws PlanError with every problem. */
async function prepare(host: Host, n: Normalized, ownPid?: number): Promise<{ spec: VmSpec; argv: string[]; facts: VmFacts }> {
    const facts = await readVmFacts(host, n, vmPaths(n.name));
    const hostDevices = resolveHostDevices(n.devices, facts);
    const spec = specOf(n, hostDevices);
    const problems = preflightProblems(n, hostDevices, facts, ownPid);
    if (problems.length) throw new PlanError(problems[0].property, `VM ${n.name} cannot start: ${problems.map((p) => p.reason).join("; ")}`);
    return { spec, argv: buildCommandLine(spec), facts };
}

/** Bring the host to the inputs from what `observe` shows, through the state machine ({@link planVm}). */
async function converge(host: Host, inputs: PassthroughVmInputs, previous?: PassthroughVmOutputs): Promise<PassthroughVmOutputs> {
    const { n, failures } = safeNormalize(inputs);
    if (!n || failures.length) throw new PlanError(failures[0].property, failures.map((f) => f.reason).join("; "));
    const paths = vmPaths(n.name);
    // What runs now is described by the previous outputs: their devices are what query-pci should list.
    const oldSpec = previous ? specOf(safeNormalize(previous).n ?? n, previous.hostDevices ?? []) : specOf(n, []);
    const seen = await observe(host, oldSpec, n, previous ? { pid: previous.pid, vcpuThreads: previous.vcpuThreads ?? [], commandLine: previous.commandLine } : undefined);
    if (!previous && seen.process === "alive") {
        throw new PlanError("name", `a QEMU for VM ${n.name} is already running (PID ${seen.pid}, ${paths.pidFile}) and this stack did not start it: stop it, or choose another name`);
    }
    let spec: VmSpec;
    let argv: string[];
    let actions: VmAction[];
    if (seen.process === "absent" && n.running) {
        // Nothing runs, so nothing to compare or to stop first: the facts are read once, under the lock, at start.
        spec = specOf(n, inputs.hostDevices ?? []);
        argv = inputs.commandLine ?? buildCommandLine(spec);
        actions = planVm({ running: true, commandLine: argv, pinning: n.cpu.pinning }, seen).actions;
    } else {
        const facts = await readVmFacts(host, n, paths);
        spec = specOf(n, resolveHostDevices(n.devices, facts));
        argv = buildCommandLine(spec);
        actions = planVm({ running: n.running, commandLine: argv, pinning: n.cpu.pinning }, seen).actions;
        if (actions.includes("start")) {
            // Refuse before stopping a VM that works: the new one must be able to start (its old self's holds aside).
            const problems = preflightProblems(n, spec.hostDevices, facts, seen.pid ?? undefined, hugepagesHeldBy(previous));
            if (problems.length) throw new PlanError(problems[0].property, `VM ${n.name} cannot start: ${problems.map((p) => p.reason).join("; ")}`);
        }
    }
    let run: Running | undefined;
    let stopped = seen.process === "absent";
    for (const a of actions) {
        if (a === "stop") {
            await stopQemu(host, paths, seen.pid, n.shutdownTimeoutSeconds, true);
            stopped = true;
        } else if (a === "start") {
            run = await host.withLock(async (host) => {
                // Again under the lock: a binding may have changed while the old VM shut down.
                const again = await prepare(host, n);
                spec = again.spec;
                argv = again.argv;
                return startQemu(host, n, spec, argv, again.facts);
            });
            stopped = false;
        } else if (a === "cont") {
            const client = await qmpConnect(host, paths.qmpSocket, 5000);
            try {
                await client.execute("cont");
            } finally {
                client.close();
            }
        } else if (a === "pin" && !run) {
            // A fresh start pins in startQemu; this is a running VM whose threads were moved.
            const bad = await pinVcpus(host, seen.pid!, seen.vcpuThreads, n.cpu.pinning!);
            if (bad.length) throw new Error(`VM ${n.name}: pinning vCPUs failed: ${bad.join("; ")}`);
        }
    }
    await syncUnit(host, n, spec, argv, seen.autostartEnabled);
    if (stopped) {
        await host.run([{ op: "remove", path: paths.pidFile }, { op: "remove", path: paths.qmpSocket }]);
        return outputsOf(inputs, n, spec, argv, { status: "stopped", pid: null, vcpuThreads: [], missingDevices: [], pinningOk: true });
    }
    if (run) return outputsOf(inputs, n, spec, argv, { status: run.status, pid: run.pid, vcpuThreads: run.vcpuThreads, missingDevices: run.missingDevices, pinningOk: true });
    // Kept running (nothing to do, or cont/pin): read it back.
    const now = await observe(host, spec, n, { pid: seen.pid, vcpuThreads: seen.vcpuThreads, commandLine: argv });
    const status = now.process === "absent" ? "stopped" : now.qmp ? now.status ?? "unknown" : "unresponsive";
    return outputsOf(inputs, n, spec, argv, { status, pid: now.pid, vcpuThreads: now.vcpuThreads, missingDevices: now.missingDevices, pinningOk: now.pinningOk });
}

export async function create(inputs: PassthroughVmInputs, onHost?: Host): Promise<{ id: string; outs: PassthroughVmOutputs }> {
    const outs = await withHost(inputs.connection, (host) => converge(host, inputs), onHost);
    return { id: outs.name, outs };
}

export async function update(_id: string, olds: PassthroughVmOutputs, news: PassthroughVmInputs, onHost?: Host): Promise<{ outs: PassthroughVmOutputs }> {
    return { outs: await withHost(news.connection, (host) => converge(host, news, olds), onHost) };
}

/** The VM as the host shows it. Its files gone and no process → gone; a dead or changed VM → drift. */
export async function read(id: string, props: PassthroughVmOutputs, onHost?: Host): Promise<{ id: string; props?: PassthroughVmOutputs }> {
    return withHost(
        props.connection,
        async (host) => {
            const n = normalize(props);
            const spec = specOf(n, props.hostDevices ?? []);
            const o = await observe(host, spec, n, { pid: props.pid ?? null, vcpuThreads: props.vcpuThreads ?? [], commandLine: props.commandLine });
            const status = o.process === "absent" ? "stopped" : o.qmp ? o.status ?? "unknown" : "unresponsive";
            return { id, props: { ...props, status, pid: o.pid, vcpuThreads: o.process === "absent" ? [] : o.vcpuThreads, missingDevices: o.missingDevices, pinningOk: o.pinningOk } };
        },
        onHost,
    );
}

/** Stop gracefully (powerdown → quit → signals), then remove the unit, the run dir and the VARS copy. */
export async function remove(_id: string, props: PassthroughVmOutputs, onHost?: Host): Promise<void> {
    await withHost(
        props.connection,
        async (host) => {
            const paths = vmPaths(props.name);
            // The pidfile and the process the state knows, in one round trip; systemd may have restarted it (new pid).
            const known = props.pid ?? null;
            const [pidText, comm] = await host.run([{ op: "read", path: paths.pidFile }, ...(known !== null ? [{ op: "read", path: `/proc/${known}/comm` } as Op] : [])]);
            const filePid = pidText.ok && /^\d+$/.test(pidText.data.trim()) ? Number(pidText.data.trim()) : null;
            const pid = filePid ?? known;
            const alive = pid !== null && pid === known && !!comm?.ok && comm.data.startsWith("qemu-system");
            await stopQemu(host, paths, pid, props.shutdownTimeoutSeconds ?? dflt<number>("shutdownTimeoutSeconds"), alive);
            const ops: Op[] = [];
            if (props.unit) ops.push({ op: "exec", argv: ["systemctl", "disable", paths.unitName], optional: true }, { op: "remove", path: paths.unitFile }, { op: "exec", argv: ["systemctl", "daemon-reload"], optional: true });
            ops.push(
                { op: "remove", path: paths.pidFile },
                { op: "remove", path: paths.qmpSocket },
                { op: "remove", path: paths.serialLog },
                { op: "remove", path: paths.varsFile },
                { op: "exec", argv: ["rmdir", "--ignore-fail-on-non-empty", paths.runDir], optional: true },
                { op: "exec", argv: ["rmdir", "--ignore-fail-on-non-empty", paths.stateDir], optional: true },
            );
            const r = await host.run(ops);
            const f = firstFailure(ops, r);
            if (f) throw new Error(`VM ${props.name} stopped, but removing its files failed: ${f.message}`);
        },
        onHost,
    );
}

export const passthroughVm = { check, diff, create, read, update, delete: remove };
