/**
 * PCI devices and drivers through sysfs (Documentation/ABI/testing/sysfs-bus-pci): addresses, device attributes,
 * and the driverctl bind sequence — load the module if missing, unbind, set `driver_override`, `drivers_probe`,
 * read the `driver` link back — plus its inverse for rollback and restore.
 */
import { Host, Op, OpResult, isGuardRead } from "../host/types";
import { SysfsError } from "../errors";
import { BatchQuery, Part } from "../host/query";

export const PCI_DEVICES = "/sys/bus/pci/devices";
export const PCI_DRIVERS = "/sys/bus/pci/drivers";

const BDF = /^(?:([0-9a-f]{4}):)?([0-9a-f]{2}):([01][0-9a-f])\.([0-7])$/;

/**
 * Normalizes a PCI address to `DDDD:BB:DD.F` (lower case), accepting the short `BB:DD.F` as domain 0000, as
 * lspci prints it. Throws for anything else — this is the gate every address passes before it becomes a path.
 * @throws Error naming the value and the expected form.
 */
export function parseAddress(input: string): string {
    const s = typeof input === "string" ? input.trim().toLowerCase() : "";
    const m = BDF.exec(s);
    if (!m || typeof input !== "string" || input.trim() !== input) {
        throw new Error(`${JSON.stringify(input)} is not a PCI address: write it as DDDD:BB:DD.F (e.g. 0000:01:00.0) or BB:DD.F as lspci prints it`);
    }
    return `${m[1] ?? "0000"}:${m[2]}:${m[3]}.${m[4]}`;
}

export function isAddress(input: unknown): boolean {
    try {
        parseAddress(input as string);
        return true;
    } catch {
        return false;
    }
}

const DRIVER_NAME = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$/;

/** Driver names become path components (`/sys/bus/pci/drivers/<name>`): letters, digits, `_`, `-`, `.` only. */
export function assertDriverName(name: string): void {
    if (!DRIVER_NAME.test(name)) throw new Error(`${JSON.stringify(name)} is not a driver name (letters, digits, '_', '-', '.')`);
}

/** A PCI device as sysfs describes it. Ids are lower-case hex without `0x` (`1234`), class is 6 hex digits. */
export interface PciDevice {
    address: string;
    vendor: string;
    device: string;
    subsystemVendor: string;
    subsystemDevice: string;
    /** 24-bit class code, hex, e.g. `030000` (VGA), `040300` (HD audio), `060400` (PCI bridge). */
    class: string;
    /** Bound driver (from the `driver` link), or null when unbound. */
    driver: string | null;
    /** `driver_override`, or null when unset (`(null)`). */
    override: string | null;
    /** IOMMU group number, or null when the IOMMU is off. */
    group: number | null;
    /** True for the GPU the firmware used as console (`boot_vga` = 1). */
    bootVga: boolean;
    /** `reset_method` (e.g. `flr bus`), empty when the device has no reset. */
    resetMethods: string[];
    numaNode: number;
    /** SR-IOV: `sriov_totalvfs`/`sriov_numvfs` of a physical function. */
    sriovTotalVfs?: number;
    sriovNumVfs?: number;
    /** The PF of a virtual function (`physfn` link). */
    physfn?: string;
}

/** `driver_override` text → the override, null when unset (the kernel shows `(null)`). */
export function overrideOf(text: string): string | null {
    const v = text.trim();
    return v === "" || v === "(null)" ? null : v;
}

const ATTRS = ["vendor", "device", "subsystem_vendor", "subsystem_device", "class", "driver_override", "boot_vga", "reset_method", "numa_node", "sriov_totalvfs", "sriov_numvfs"] as const;
const LINKS = ["driver", "iommu_group", "physfn"] as const;
type Attr = (typeof ATTRS)[number];
type Link = (typeof LINKS)[number];

/** What binding a device needs of it (identity, class, driver state, boot VGA, group): fewer reads than the
 *  full view, for the reads made under the host lock (reset methods included: destroy's reset is decided then).
 *  NUMA node and SR-IOV counts stay unread. */
const BINDING_ATTRS: readonly Attr[] = ["vendor", "device", "subsystem_vendor", "subsystem_device", "class", "driver_override", "boot_vga", "reset_method"];
const BINDING_LINKS: readonly Link[] = ["driver", "iommu_group"];

function readOps(address: string, attrs: readonly Attr[], links: readonly Link[]): Op[] {
    const base = `${PCI_DEVICES}/${address}`;
    return [...attrs.map((a): Op => ({ op: "read", path: `${base}/${a}` })), ...links.map((l): Op => ({ op: "readlink", path: `${base}/${l}` }))];
}

/** Ops that read one device; parse the results with {@link parseDevice}. */
export function deviceReadOps(address: string): Op[] {
    return readOps(address, ATTRS, LINKS);
}

/** Ops that read what binding needs of a device; parse the results with {@link parseBindingDevice}. */
export function bindingReadOps(address: string): Op[] {
    return readOps(address, BINDING_ATTRS, BINDING_LINKS);
}

/**
 * Add one device's reads to a query: all of {@link deviceReadOps} (`full`), or only what binding needs
 * ({@link bindingReadOps}); the part is the device, or null when it does not exist.
 */
export function deviceQuery(q: BatchQuery, address: string, view: "full" | "binding" = "full"): Part<PciDevice | null> {
    return view === "full" ? q.add(deviceReadOps(address), (r) => parseDevice(address, r)) : q.add(bindingReadOps(address), (r) => parseBindingDevice(address, r));
}

const basename = (p: string) => p.slice(p.lastIndexOf("/") + 1);
const hexId = (v: string) => v.trim().replace(/^0x/, "").toLowerCase();

/** The device from the results of {@link deviceReadOps}, or null when the device does not exist. */
export function parseDevice(address: string, r: OpResult[]): PciDevice | null {
    return parseWith(address, r, ATTRS, LINKS);
}

/** The device from the results of {@link bindingReadOps} (NUMA node -1, no SR-IOV counts). */
export function parseBindingDevice(address: string, r: OpResult[]): PciDevice | null {
    return parseWith(address, r, BINDING_ATTRS, BINDING_LINKS);
}

function parseWith(address: string, r: OpResult[], attrs: readonly Attr[], links: readonly Link[]): PciDevice | null {
    const get = (name: Attr) => {
        const i = attrs.indexOf(name);
        const x = i < 0 ? undefined : r[i];
        return x?.ok ? x.data.trim() : undefined;
    };
    const link = (name: Link) => {
        const i = links.indexOf(name);
        const x = i < 0 ? undefined : r[attrs.length + i];
        return x?.ok && x.data.trim() ? basename(x.data.trim()) : null;
    };
    const vendor = get("vendor");
    if (vendor === undefined) return null;
    const override = get("driver_override");
    const group = link("iommu_group");
    const total = get("sriov_totalvfs");
    const num = get("sriov_numvfs");
    const d: PciDevice = {
        address,
        vendor: hexId(vendor),
        device: hexId(get("device") ?? ""),
        subsystemVendor: hexId(get("subsystem_vendor") ?? ""),
        subsystemDevice: hexId(get("subsystem_device") ?? ""),
        class: hexId(get("class") ?? "").padStart(6, "0"),
        driver: link("driver"),
        override: override === undefined ? null : overrideOf(override),
        group: group === null ? null : Number(group),
        bootVga: get("boot_vga") === "1",
        resetMethods: (get("reset_method") ?? "").split(/\s+/).filter(Boolean),
        numaNode: Number(get("numa_node") ?? -1),
    };
    if (total !== undefined) d.sriovTotalVfs = Number(total);
    if (num !== undefined) d.sriovNumVfs = Number(num);
    const pf = link("physfn");
    if (pf) d.physfn = pf;
    return d;
}

/** Read several devices in one round trip. Missing devices map to null. */
export async function readDevices(host: Host, addresses: string[]): Promise<Map<string, PciDevice | null>> {
    const q = new BatchQuery();
    const devices = q.each(addresses, deviceReadOps, (a, r) => [a, parseDevice(a, r)] as const);
    return new Map(devices(await q.run(host)));
}

/**
 * Bridges a binding leaves as they are: host bridges (0600, the root complex) and PCI-to-PCI bridges (0604, and the
 * semi-transparent 0609), on pcieport or on no driver. They are never handed to a VM, and VFIO counts them as
 * harmless group members. Not the ISA/LPC bridge (0601): that is a chipset function with a host driver (lpc_ich)
 * whose group cannot be bound without taking it from the host, see `sysfs/critical.ts`.
 */
export function isBridge(d: Pick<PciDevice, "class">): boolean {
    return ["0600", "0604", "0609"].includes(d.class.slice(0, 4));
}

export function classLabel(cls: string): string {
    const known: Record<string, string> = {
        "0300": "VGA controller",
        "0302": "3D controller",
        "0380": "Display controller",
        "0403": "Audio device",
        "0401": "Multimedia audio",
        "0604": "PCI bridge",
        "0600": "Host bridge",
        "0601": "ISA bridge",
        "0100": "SCSI storage controller",
        "0101": "IDE controller",
        "0104": "RAID controller",
        "0107": "SAS controller",
        "0108": "NVMe controller",
        "0106": "SATA controller",
        "0c05": "SMBus",
        "0c03": "USB controller",
        "0200": "Ethernet controller",
        "0280": "Network controller",
        "00ff": "Unclassified device",
    };
    return known[cls.slice(0, 4)] ?? `class ${cls}`;
}

/** Kernel module name for a driver name, as modprobe resolves it (`vfio-pci` → `vfio_pci`). */
export function moduleOf(driver: string): string {
    return driver.replace(/-/g, "_");
}

// ----------------------------------------------------------------------------------------------- sequences

export interface DeviceState {
    driver: string | null;
    override: string | null;
    /** As a restore target: no override, and whichever driver the kernel's matching picks (`drivers_probe`); for
     *  a member whose own driver nobody recorded. `driver` is then null. */
    probe?: boolean;
}

/**
 * A member's driver change in two halves: `leave` takes it off the driver it is on, `enter` hands it to the next
 * one. Between them the device is on no driver: a step that needs it so (a reset before the host driver takes it
 * back) runs there.
 */
export interface DriverSequence {
    leave: Op[];
    enter: Op[];
}

/**
 * driverctl's `set-override`, for one device: unbind from the current driver, set `driver_override`, and ask the
 * bus to probe. `drivers_probe` is optional: it has been seen to fail with EINVAL and still leave the override
 * (canonical/lxd#12128); the `driver` link read afterwards is the verdict.
 */
export function bindSequence(address: string, from: DeviceState, driver: string): DriverSequence {
    if (from.driver === driver) {
        return { leave: [], enter: from.override !== driver ? [{ op: "write", path: `${PCI_DEVICES}/${address}/driver_override`, data: driver }] : [] };
    }
    return {
        leave: from.driver ? [{ op: "write", path: `${PCI_DRIVERS}/${from.driver}/unbind`, data: address }] : [],
        enter: [
            { op: "write", path: `${PCI_DEVICES}/${address}/driver_override`, data: driver },
            { op: "write", path: "/sys/bus/pci/drivers_probe", data: address, optional: true },
        ],
    };
}

/** {@link bindSequence} as one list of ops. */
export function bindOps(address: string, from: DeviceState, driver: string): Op[] {
    const s = bindSequence(address, from, driver);
    return [...s.leave, ...s.enter];
}

/**
 * The inverse: leave the device as `to` says (driver and override), from whatever it is bound to now. The
 * previous driver is bound explicitly, so the device goes back to exactly that driver, not whatever matches first;
 * a `probe` target is driverctl's `unset-override` (clear the override, unbind, `drivers_probe`).
 * Every step is optional: a restore goes as far as it can and the read-back tells what stuck.
 */
export function restoreSequence(address: string, now: DeviceState, to: DeviceState): DriverSequence {
    const leave: Op[] = [];
    const enter: Op[] = [];
    if (to.probe) {
        // The kernel's own choice, as a boot would make it: no override, off the driver we bound, then probe.
        if (now.override !== null) leave.push({ op: "write", path: `${PCI_DEVICES}/${address}/driver_override`, data: "\n", optional: true });
        if (now.driver) leave.push({ op: "write", path: `${PCI_DRIVERS}/${now.driver}/unbind`, data: address, optional: true });
        enter.push({ op: "write", path: "/sys/bus/pci/drivers_probe", data: address, optional: true });
        return { leave, enter };
    }
    if (now.driver && now.driver !== to.driver) leave.push({ op: "write", path: `${PCI_DRIVERS}/${now.driver}/unbind`, data: address, optional: true });
    if (now.override !== to.override) {
        // Writing a newline clears the override (`echo > driver_override`); an empty write would not reach the kernel.
        enter.push({ op: "write", path: `${PCI_DEVICES}/${address}/driver_override`, data: to.override ?? "\n", optional: true });
    }
    if (to.driver && now.driver !== to.driver) {
        enter.push({ op: "write", path: `${PCI_DRIVERS}/${to.driver}/bind`, data: address, optional: true });
    }
    return { leave, enter };
}

/** {@link restoreSequence} as one list of ops. */
export function restoreOps(address: string, now: DeviceState, to: DeviceState): Op[] {
    const s = restoreSequence(address, now, to);
    return [...s.leave, ...s.enter];
}

export function driverLinkOp(address: string): Op {
    return { op: "readlink", path: `${PCI_DEVICES}/${address}/driver` };
}

export function driverFromLink(r: OpResult | undefined): string | null {
    return r?.ok && r.data.trim() ? basename(r.data.trim()) : null;
}

/** A {@link SysfsError} for the first guard read among `ops` that did not find what it expected (a step read back
 *  right after its write: the kernel took the write but the state is not what it should be). */
export function failedGuard(ops: Op[], results: OpResult[]): SysfsError | undefined {
    for (let i = 0; i < ops.length; i++) {
        const r = results[i];
        const op = ops[i];
        if (!r || r.skipped || r.ok || !isGuardRead(op)) continue;
        return new SysfsError(op.path, undefined, `${op.path} reads ${JSON.stringify((r.message ?? "").replace(/^found /, ""))} right after it was written, not ${JSON.stringify(op.expect)}`, "the kernel did not take the change; check dmesg");
    }
    return undefined;
}

/** Throw a {@link SysfsError} for the first failed, non-optional op of a batch. */
export function firstFailure(ops: Op[], results: OpResult[]): SysfsError | undefined {
    for (let i = 0; i < ops.length; i++) {
        const r = results[i];
        const op = ops[i];
        if (!r || r.skipped) continue;
        if (!r.ok && !("optional" in op && op.optional) && op.op !== "read" && op.op !== "readlink" && op.op !== "list" && op.op !== "stat") {
            return SysfsError.from(op, r);
        }
    }
    return undefined;
}
