/**
 * The VM specification, one for both backends (QEMU started by us, or a libvirt domain): the inputs' types, their
 * defaults applied ({@link normalize}), the field checks the schema cannot express ({@link inputProblems}) and what
 * the VM asks of its host ({@link preflightWant}). Pure: nothing here touches a host.
 */
import { CheckFailure, schemaDefault, withoutProvider } from "../check";
import type { HostDevice, VmSpec } from "../qemu/cmdline";
import { QEMU_BINARY, vmPaths } from "../qemu/cmdline";
import type { PreflightWant } from "../qemu/preflight";
import { parseAddress } from "../sysfs/pci";
import type { DiskInput, MdevInput, PassthroughDeviceInput, PassthroughVmSchemaInputs } from "../generated/inputs";

// The shapes are generated from schema/passthrough-vm.schema.json (provider/generated/inputs.ts).
export type { DiskInput, MdevInput, PassthroughDeviceInput };

/**
 * A VM's status: QEMU's RunState as QMP `query-status` reports it (qapi/run-state.json), or ours: `stopped` (no
 * QEMU process, or a libvirt domain that is defined and shut off), `unresponsive` (the process lives, QMP does not
 * answer), `unknown` (QMP answered without a status). A libvirt domain's `virsh domstate` maps onto these
 * (running, paused, shutdown, crashed → guest-panicked, pmsuspended → suspended, shut off → stopped).
 */
export type VmStatus =
    | "running" | "paused" | "prelaunch" | "inmigrate" | "postmigrate" | "finish-migrate" | "suspended" | "shutdown"
    | "guest-panicked" | "internal-error" | "io-error" | "watchdog" | "debug" | "restore-vm" | "save-vm" | "colo"
    | "stopped" | "unresponsive" | "unknown";

/** Which program runs the VM: `qemu` (we start QEMU, with a systemd unit for autostart) or `libvirt` (a domain). */
export type VmBackend = NonNullable<PassthroughVmSchemaInputs["backend"]>;

/** The schema's inputs and what check adds. */
export interface PassthroughVmInputs extends PassthroughVmSchemaInputs {
    /** Set by check: the functions that will be passed through, with their groups. */
    hostDevices?: HostDevice[];
    /** Set by check: the QEMU argv (backend qemu; empty for libvirt). */
    commandLine?: string[];
    /** Set by check: the libvirt domain XML (backend libvirt; empty for qemu). */
    domainXml?: string;
}

export interface PassthroughVmOutputs extends PassthroughVmInputs {
    name: string;
    backend: VmBackend;
    running: boolean;
    autostart: boolean;
    shutdownTimeoutSeconds: number;
    hostDevices: HostDevice[];
    commandLine: string[];
    domainXml: string;
    /** libvirt: the parts of the defined domain that differ from ours (e.g. `devices/hostdev[1]`), after refresh. */
    domainDrift: string[];
    runDir: string;
    pidFile: string;
    qmpSocket: string;
    /** The per-VM copy of the OVMF VARS file (libvirt: the domain's nvram file), or null without firmware. */
    varsFile: string | null;
    /** The systemd unit written for autostart, or null (always null for libvirt: it autostarts the domain). */
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

export const SCHEMA = "passthrough-vm.schema.json";
/** The schema's default of a PassthroughVm input (see schemaDefault). */
export const dflt = <T>(at: string): T => schemaDefault<T>(SCHEMA, at);

/**
 * The inputs with defaults applied: the QEMU builder's VmSpec before devices are resolved and paths chosen, plus
 * the backend, pinning and the lifecycle fields the builder does not see.
 */
export type Normalized = Omit<VmSpec, "hostDevices" | "paths" | "cpu"> & {
    backend: VmBackend;
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
        backend: i.backend ?? dflt<VmBackend>("backend"),
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
        // libvirt runs QEMU from its <emulator> (provider/libvirt/domainXml.ts's EMULATOR) and makes the tap itself.
        ...(n.backend === "libvirt" ? { emulator: `/usr/bin/${QEMU_BINARY}`, bridgeHelper: false } : {}),
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
    if (n.backend === "libvirt") {
        n.devices.forEach((d, k) => {
            if (d.xVga) out.push({ property: `devices[${k}].xVga`, reason: `xVga (QEMU's x-vga=on) has no libvirt hostdev form: use backend "qemu" for a primary GPU under SeaBIOS, or OVMF firmware without xVga` });
        });
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

/** MiB of hugepages the VM started from these (previous) inputs holds while it runs. */
export function hugepagesHeldBy(previous: Record<string, any> | undefined): number {
    return previous?.hugepages === true ? (typeof previous.memoryMb === "number" ? previous.memoryMb : 4096) : 0;
}

/** {@link normalize} and {@link inputProblems}, a malformed address reported as a failure instead of thrown. */
export function safeNormalize(i: PassthroughVmInputs): { n?: Normalized; failures: CheckFailure[] } {
    try {
        const n = normalize(i);
        return { n, failures: inputProblems(n) };
    } catch (e) {
        return { failures: [{ property: "devices", reason: (e as Error).message }] };
    }
}

/** `0-3,8` → [0, 1, 2, 3, 8] (the kernel's cpulist format, /sys/devices/system/cpu/online). */
export function parseCpuList(text: string): number[] {
    return text
        .trim()
        .split(",")
        .filter(Boolean)
        .flatMap((r) => {
            const [a, b] = r.split("-").map(Number);
            return b === undefined ? [a] : Array.from({ length: b - a + 1 }, (_, i) => a + i);
        });
}

/** What the host showed, for {@link outputsOf}. */
export interface Shown {
    status: VmStatus;
    pid: number | null;
    vcpuThreads: number[];
    missingDevices: string[];
    pinningOk: boolean;
    domainDrift?: string[];
}

/** libvirt's QEMU driver: its run dir (pidfiles) and where it keeps per-domain NVRAM (libvirt's formatdomain, `<nvram>`). */
export const LIBVIRT_RUN_DIR = "/run/libvirt/qemu";
export const LIBVIRT_NVRAM_DIR = "/var/lib/libvirt/qemu/nvram";

/**
 * Full outputs (every key set, none undefined: the engine's Struct refuses an undefined field). The QEMU backend's
 * run dir, pidfile and QMP socket are ours; libvirt's are its own: the pidfile libvirt's QEMU driver writes
 * (/run/libvirt/qemu/<name>.pid) and no QMP socket of ours (`virsh qemu-monitor-command` reaches its monitor).
 */
export function outputsOf(inputs: PassthroughVmInputs, n: Normalized, hostDevices: HostDevice[], built: { commandLine: string[]; domainXml: string }, o: Shown): PassthroughVmOutputs {
    const p = vmPaths(n.name);
    const lv = n.backend === "libvirt";
    const { domainDrift, ...shown } = o;
    return {
        ...withoutProvider(inputs),
        name: n.name,
        backend: n.backend,
        running: n.running,
        autostart: n.autostart,
        shutdownTimeoutSeconds: n.shutdownTimeoutSeconds,
        hostDevices,
        commandLine: built.commandLine,
        domainXml: built.domainXml,
        domainDrift: domainDrift ?? [],
        runDir: lv ? LIBVIRT_RUN_DIR : p.runDir,
        pidFile: lv ? `${LIBVIRT_RUN_DIR}/${n.name}.pid` : p.pidFile,
        qmpSocket: lv ? "" : p.qmpSocket,
        varsFile: n.firmware ? (lv ? `${LIBVIRT_NVRAM_DIR}/${n.name}_VARS.fd` : p.varsFile) : null,
        unit: n.autostart && !lv ? p.unitName : null,
        ...shown,
    };
}
