/**
 * Pure planning for both backends: which functions each device entry passes ({@link resolveHostDevices}), the
 * builder's spec ({@link specOf}), what would make the VM's start fail ({@link preflightProblems}, each naming the
 * field and the fix) and the QEMU backend's state machine ({@link planVm}).
 */
import type { CheckFailure } from "../check";
import { HostDevice, VmSpec, vmPaths } from "../qemu/cmdline";
import { envProblems } from "../qemu/preflight";
import { isVfioDriver, memberViable } from "../sysfs/iommu";
import { isBridge } from "../sysfs/pci";
import type { VmFacts } from "./facts";
import { Normalized, PassthroughDeviceInput, VmStatus, preflightWant } from "./spec";

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
