/**
 * What a host offers for passthrough, read in at most three round trips (the boot configuration rides in the first): the IOMMU state (with the fix when it is
 * off), the kernel release, every IOMMU group with its members and VFIO viability, every PCI device (ids, names
 * from pci.ids, driver, override, boot VGA, reset methods, SR-IOV), the mdev types of every mdev parent, the
 * vfio-related modules and the Looking Glass `/dev/kvmfr*` devices.
 *
 * Each group says whether binding it is refused because it holds host-critical functions (the chipset's LPC/SMBus,
 * the disk the host runs from, the SSH session's NIC; see `sysfs/critical.ts`) or is a group to bind.
 *
 * Round trips: (1) directory listings, kernel facts, where pci.ids is, the host's mounts, swaps and SSH session;
 * (2) every device's attributes, every group's member list, every mdev parent's type list, every kvmfr node's type,
 * the sysfs links of the mounted block devices and the session's interface (a stacked device such as dm or md costs
 * one more per level); (3) only when there is something
 * to look up: the pci.ids lines for the ids found, the attributes of the mdev types found, the driver of any group
 * member that is not a PCI device. The PCI device reads are the ones of `sysfs/pci.ts`; this does not go through
 * `scanHost` because its second round trip cannot carry the mdev type listings, which would cost a fourth.
 *
 * pci.ids is 1.3 MB; reading it whole takes ~240 ms locally through the batch interpreter and sends 1.3 MB over
 * SSH. When the host has `awk`, a constant awk program (ids passed as data with `-v`) prints only the needed
 * lines (~0.6 KB, ~11 ms); without awk (the fake kernel, minimal images) the file is read whole.
 */
import { Host, Op, OpResult } from "./host/types";
import { IOMMU_GROUPS, IOMMU_OFF_FIX, iommuStatusOps, memberViable, parseIommuStatus, viabilityProblems } from "./sysfs/iommu";
import { PCI_DEVICES, PciDevice, classLabel, deviceReadOps, isAddress, isBridge, parseDevice } from "./sysfs/pci";
import { BootSummary, bootSummary } from "./boot/summary";
import { bootFactsQuery } from "./boot/facts";
import { defaults as bootDefaults } from "./boot/types";
import { BatchQuery } from "./host/query";
import { ResetCapability, busSiblings, resetCapability } from "./reset/capability";
import { criticalReadOps, hostCriticalReason, linkOps, parseCriticalReads, traceUses } from "./sysfs/critical";

/** Where distributions install pci.ids (Debian/Ubuntu `pci.ids`, Fedora/Arch/Alpine `hwdata`), in lookup order. */
export const PCI_IDS_PATHS = ["/usr/share/misc/pci.ids", "/usr/share/hwdata/pci.ids"];

export const MDEV_BUS = "/sys/class/mdev_bus";

/** One mdev type a parent offers (`mdev_supported_types/<id>/`). */
export interface MdevType {
    /** Type id, e.g. `nvidia-63`, `i915-GVTg_V5_4`, `mtty-2`: what an mdev resource names. */
    id: string;
    /** `name`, when the driver provides it. */
    name: string | null;
    /** `description` (NVIDIA puts framebuffer size and max instances here). */
    description: string | null;
    /** `available_instances`: how many more can be created now. */
    availableInstances: number | null;
    /** `device_api`, e.g. `vfio-pci`. */
    deviceApi: string | null;
}

export interface MdevParent {
    /** Entry under /sys/class/mdev_bus: a PCI address, or a name such as `mtty`. */
    parent: string;
    /** True when the parent is a PCI device (listed in `devices` with these types). */
    pci: boolean;
    types: MdevType[];
}

export interface InventoryDevice {
    /** `DDDD:BB:DD.F`. */
    address: string;
    /** 24-bit class code, 6 hex digits (`030000`). */
    class: string;
    /** Class name: the pci.ids subclass name when known (`VGA compatible controller`), else a built-in label. */
    className: string;
    /** Ids, 4 lower-case hex digits without `0x`. */
    vendor: string;
    device: string;
    subsystemVendor: string;
    subsystemDevice: string;
    /** Names from the host's pci.ids; null when the host has no pci.ids or it does not know the id. */
    vendorName: string | null;
    deviceName: string | null;
    subsystemName: string | null;
    /** Bound driver, null when unbound. */
    driver: string | null;
    /** `driver_override`, null when unset. */
    driverOverride: string | null;
    /** IOMMU group, null when the IOMMU is off. */
    group: number | null;
    /** The firmware's console GPU (`boot_vga` = 1): binding it away takes the host's display. */
    bootVga: boolean;
    /** `reset_method`, e.g. `["flr", "bus"]`; empty when the device cannot be reset. */
    resetMethods: string[];
    /** Whether one of those resets can reset this function alone when a VM lets go of it (see reset/capability.ts). */
    reset: ResetCapability;
    numaNode: number;
    /** SR-IOV physical function: totals and the VFs enabled now; null when not SR-IOV capable. */
    sriov: { totalVfs: number; numVfs: number; vfs: string[] } | null;
    /** The PF of a virtual function, null otherwise. */
    physfn: string | null;
    /** mdev types this device offers (empty when it is no mdev parent). */
    mdevTypes: MdevType[];
}

export interface InventoryGroup {
    number: number;
    /** Member addresses (non-PCI members by their sysfs name), in order. */
    members: string[];
    /** True when QEMU could use the group as it is: every member on a vfio driver, pci-stub, pcieport or none. */
    viable: boolean;
    /** One line per member that spoils viability (`0000:01:00.1 is bound to snd_hda_intel`). */
    problems: string[];
    /** `/dev/vfio/<n>` when it exists (a member is bound to vfio-pci), else null. */
    vfioDevice: string | null;
    /**
     * Members an IommuBinding of this group would take from the host although the host needs them (the chipset's
     * ISA/LPC bridge or SMBus, the controller of a mounted filesystem or swap, the SSH session's NIC), with why; the
     * binding is refused unless `allowHostCritical` lists them. Bridges are left as they are and never listed.
     */
    hostCritical: { address: string; reason: string }[];
    /**
     * What binding the group means: `host-critical` (refused, see `hostCritical`), `bind` (nothing host-critical;
     * binding makes it viable), `viable` (usable as it is), `bridges` (only bridges: nothing to pass through).
     */
    verdict: "host-critical" | "bind" | "viable" | "bridges";
}

export interface KvmfrDevice {
    path: string;
    /** False when it is not a character device (QEMU started before the module and created a regular file). */
    isCharDevice: boolean;
}

export interface HostInventory {
    /** The host label (`local`, `root@10.0.0.5:22`). */
    host: string;
    /** `uname -r`, null when unreadable. */
    kernelRelease: string | null;
    /** `/proc/cmdline`, null when unreadable. */
    kernelCmdline: string | null;
    iommu: {
        enabled: boolean;
        /** When off: what to do about it (firmware setting and kernel command line); null when on. */
        fix: string | null;
    };
    groups: InventoryGroup[];
    /** Every PCI device, in address order. */
    devices: InventoryDevice[];
    /** Every mdev parent (PCI or not) with its types. */
    mdev: MdevParent[];
    /** vfio-related kernel modules present (loaded or built in): vfio*, mdev, kvmfr, pci_stub. */
    modules: string[];
    kvmfr: KvmfrDevice[];
    /** The pci.ids file names came from, null when the host has none. */
    pciIds: string | null;
    /** The boot loader, the running and the configured command line, and whether a reboot would change it. */
    boot: BootSummary;
}

// ------------------------------------------------------------------------------------------------ pci.ids

/** Names looked up in pci.ids. Keys: `vvvv`, `vvvv:dddd`, `vvvv:dddd:ssss:tttt`, class `cc`, subclass `ccss`. */
export interface PciNames {
    vendors: Map<string, string>;
    devices: Map<string, string>;
    subsystems: Map<string, string>;
    classes: Map<string, string>;
    subclasses: Map<string, string>;
}

export interface PciIdWants {
    vendors: Set<string>;
    devices: Set<string>;
    subsystems: Set<string>;
}

const HEX4 = /^[0-9a-f]{4}$/;

/** The ids to look up for these devices (only well-formed hex ids: they travel to the host as awk data). */
export function pciIdWants(devices: Pick<PciDevice, "vendor" | "device" | "subsystemVendor" | "subsystemDevice">[]): PciIdWants {
    const w: PciIdWants = { vendors: new Set(), devices: new Set(), subsystems: new Set() };
    for (const d of devices) {
        if (!HEX4.test(d.vendor) || !HEX4.test(d.device)) continue;
        w.vendors.add(d.vendor);
        w.devices.add(`${d.vendor}:${d.device}`);
        if (HEX4.test(d.subsystemVendor) && HEX4.test(d.subsystemDevice)) {
            w.vendors.add(d.subsystemVendor);
            w.subsystems.add(`${d.vendor}:${d.device}:${d.subsystemVendor}:${d.subsystemDevice}`);
        }
    }
    return w;
}

/**
 * A constant awk program printing only the pci.ids lines for the wanted ids, plus the class section, in file
 * order (so {@link parsePciIds} reads its output like the whole file). Regexes avoid `{n}` intervals, which old
 * mawk lacks.
 */
export const PCI_IDS_AWK = [
    'BEGIN { n = split(vendors, a, " "); for (i = 1; i <= n; i++) V[a[i]] = 1',
    '  n = split(devices, a, " "); for (i = 1; i <= n; i++) D[a[i]] = 1',
    '  n = split(subsystems, a, " "); for (i = 1; i <= n; i++) S[a[i]] = 1 }',
    "/^C / { c = 1; print; next }",
    "c { if ($0 ~ /^\\t[0-9a-f][0-9a-f]  /) print; next }",
    '/^[0-9a-f][0-9a-f][0-9a-f][0-9a-f]  / { v = substr($0, 1, 4); d = ""; if (v in V) print; next }',
    '/^\\t[0-9a-f][0-9a-f][0-9a-f][0-9a-f]  / { d = v ":" substr($0, 2, 4); if (d in D) print; next }',
    '/^\\t\\t[0-9a-f][0-9a-f][0-9a-f][0-9a-f] [0-9a-f][0-9a-f][0-9a-f][0-9a-f]  / { if ((d ":" substr($0, 3, 4) ":" substr($0, 8, 4)) in S) print }',
].join("\n");

/** The argv that runs {@link PCI_IDS_AWK} over `path` for `wants`. */
export function pciIdsAwkArgv(path: string, wants: PciIdWants): string[] {
    const list = (s: Set<string>) => [...s].filter((x) => /^[0-9a-f:]+$/.test(x)).join(" ");
    return ["awk", "-v", `vendors=${list(wants.vendors)}`, "-v", `devices=${list(wants.devices)}`, "-v", `subsystems=${list(wants.subsystems)}`, PCI_IDS_AWK, path];
}

/**
 * Parse pci.ids text (the whole file, or the awk program's excerpt) into names, keeping only what `wants` asks
 * for when given. Format: `vvvv  Vendor`, `\tdddd  Device`, `\t\tssss tttt  Subsystem`, and after the first
 * `C cc  Class` line, `\tss  Subclass` (and `\t\tpp  prog-if`, ignored).
 */
export function parsePciIds(text: string, wants?: PciIdWants): PciNames {
    const names: PciNames = { vendors: new Map(), devices: new Map(), subsystems: new Map(), classes: new Map(), subclasses: new Map() };
    let vendor = "";
    let device = "";
    let cls: string | null = null;
    for (const raw of text.split("\n")) {
        const line = raw.replace(/\r$/, "");
        if (line === "" || line.startsWith("#")) continue;
        let m: RegExpExecArray | null;
        if ((m = /^C ([0-9a-f]{2})\s+(.*)$/.exec(line))) {
            cls = m[1];
            names.classes.set(cls, m[2].trim());
            continue;
        }
        if (cls !== null) {
            if ((m = /^\t([0-9a-f]{2})\s+(.*)$/.exec(line))) names.subclasses.set(cls + m[1], m[2].trim());
            continue;
        }
        if ((m = /^([0-9a-f]{4})\s+(.*)$/.exec(line))) {
            vendor = m[1];
            device = "";
            if (!wants || wants.vendors.has(vendor)) names.vendors.set(vendor, m[2].trim());
        } else if ((m = /^\t([0-9a-f]{4})\s+(.*)$/.exec(line))) {
            device = `${vendor}:${m[1]}`;
            if (!wants || wants.devices.has(device)) names.devices.set(device, m[2].trim());
        } else if ((m = /^\t\t([0-9a-f]{4}) ([0-9a-f]{4})\s+(.*)$/.exec(line))) {
            const key = `${device}:${m[1]}:${m[2]}`;
            if (!wants || wants.subsystems.has(key)) names.subsystems.set(key, m[3].trim());
        }
    }
    return names;
}

// ------------------------------------------------------------------------------------------------ reading

const lines = (r: OpResult | undefined) => (r?.ok ? r.data.split("\n").map((s) => s.trim()).filter(Boolean) : []);
const text = (r: OpResult | undefined) => (r?.ok ? r.data.trim() : null);
const basename = (p: string) => p.slice(p.lastIndexOf("/") + 1);
const num = (s: string | null) => (s !== null && /^-?\d+$/.test(s) ? Number(s) : null);

/** Directory entries that may become path components (sysfs names; never `.`/`..` or odd characters). */
const SAFE_NAME = /^[A-Za-z0-9_@+,:=.-]+$/;
const safeName = (n: string) => SAFE_NAME.test(n) && n !== "." && n !== "..";

const MODULE = /^(vfio.*|mdev|kvmfr|pci_stub|vendor_reset)$/;
const MDEV_ATTRS = ["name", "description", "available_instances", "device_api"] as const;

/** Everything the host offers for passthrough. At most three round trips, whatever the number of devices. */
export async function getHostInventory(host: Host): Promise<HostInventory> {
    // ---- round trip 1: what exists
    const q1 = new BatchQuery();
    const addressList = q1.one({ op: "list", path: PCI_DEVICES }, (r) => lines(r).filter(isAddress).sort());
    const iommuPart = q1.add(iommuStatusOps(), parseIommuStatus);
    const releasePart = q1.one({ op: "read", path: "/proc/sys/kernel/osrelease" }, text);
    const cmdlinePart = q1.one({ op: "read", path: "/proc/cmdline" }, text);
    const modulesPart = q1.one({ op: "list", path: "/sys/module" }, (r) => lines(r).filter((m) => MODULE.test(m)).sort());
    const vfioPart = q1.one({ op: "list", path: "/dev/vfio" }, (r) => new Set(lines(r)));
    const kvmfrNodes = q1.one({ op: "list", path: "/dev" }, (r) =>
        lines(r)
            .filter((n) => /^kvmfr\d+$/.test(n))
            .sort((x, y) => Number(x.slice(5)) - Number(y.slice(5)))
            .map((n) => `/dev/${n}`),
    );
    const parentsPart = q1.one({ op: "list", path: MDEV_BUS }, (r) => lines(r).filter(safeName).sort());
    const pciIdsPart = q1.add(
        PCI_IDS_PATHS.map((path): Op => ({ op: "stat", path })),
        (r) => PCI_IDS_PATHS.find((_, i) => r[i]?.ok && r[i].data.startsWith("regular file")) ?? null,
    );
    const awkPart = q1.one({ op: "exec", argv: ["awk", "BEGIN { exit 0 }"], optional: true, timeoutMs: 10_000 }, (r) => r.ok);
    const criticalPart = q1.add(criticalReadOps(), parseCriticalReads);
    // The boot loader and command lines ride in the same round trip.
    const bootFacts = bootFactsQuery(q1, bootDefaults({}));
    const r1 = await q1.run(host);
    const reads = criticalPart(r1);
    const boot = bootSummary(bootFacts(r1));
    const addresses = addressList(r1);
    const iommu = iommuPart(r1);
    const kernelRelease = releasePart(r1);
    const kernelCmdline = cmdlinePart(r1);
    const modules = modulesPart(r1);
    const vfioNodes = vfioPart(r1);
    const kvmfrPaths = kvmfrNodes(r1);
    const mdevParents = parentsPart(r1);
    const pciIds = pciIdsPart(r1);
    const haveAwk = awkPart(r1);
    const groupNumbers = iommu.enabled ? iommu.groups : [];

    // ---- round trip 2: every device, group, mdev parent and kvmfr node
    const q2 = new BatchQuery();
    const devicesPart = q2.each(addresses, deviceReadOps, parseDevice);
    const groupsPart = q2.each(groupNumbers, (g): Op[] => [{ op: "list", path: `${IOMMU_GROUPS}/${g}/devices` }], (_, [r]) => lines(r));
    const typesPart = q2.each(mdevParents, (p): Op[] => [{ op: "list", path: `${MDEV_BUS}/${p}/mdev_supported_types` }], (_, [r]) => lines(r).filter(safeName).sort());
    const kvmfrPart = q2.each(kvmfrPaths, (path): Op[] => [{ op: "stat", path }], (path, [r]): KvmfrDevice => ({ path, isCharDevice: !!r?.ok && r.data.startsWith("character special file") }));
    // What the host's mounts, swaps and SSH session lead to; stacked devices (dm, md) only cost more round trips.
    const linksPart = q2.add(linkOps(reads.uses), (r) => r);
    const r2 = await q2.runIfAny(host);
    const pciDevices = devicesPart(r2).filter((d): d is PciDevice => d !== null);
    const groupLists = groupsPart(r2);
    const typeLists = typesPart(r2);
    const kvmfr = kvmfrPart(r2);
    const uses = await traceUses(host, reads, linksPart(r2));

    const byAddress = new Map(pciDevices.map((d) => [d.address, d]));
    const groupMembers = groupNumbers.map((g, i) => {
        const listed = groupLists[i].filter(safeName);
        const members = listed.length ? listed : pciDevices.filter((d) => d.group === g).map((d) => d.address);
        return members.sort();
    });
    const foreign = [...new Set(groupMembers.flatMap((ms, i) => ms.filter((m) => !byAddress.has(m)).map((m) => `${groupNumbers[i]}/${m}`)))];

    // ---- round trip 3 (only when needed): names, mdev type attributes, drivers of non-PCI group members
    const wants = pciIdWants(pciDevices);
    const q3 = new BatchQuery();
    const namesPart =
        pciIds && wants.vendors.size
            ? q3.one(haveAwk ? { op: "exec", argv: pciIdsAwkArgv(pciIds, wants), optional: true, timeoutMs: 30_000 } : { op: "read", path: pciIds, timeoutMs: 30_000 }, (r) => (r?.ok ? parsePciIds(r.data, wants) : null))
            : undefined;
    const typePaths = mdevParents.flatMap((p, i) => typeLists[i].map((t) => `${MDEV_BUS}/${p}/mdev_supported_types/${t}`));
    const typeAttrs = q3.each(
        typePaths,
        (tp) => MDEV_ATTRS.map((a): Op => ({ op: "read", path: `${tp}/${a}` })),
        (tp, [nameR, descR, availR, apiR]) => [tp, { id: basename(tp), name: text(nameR), description: text(descR), availableInstances: num(text(availR)), deviceApi: text(apiR) }] as const,
    );
    const foreignPart = q3.each(
        foreign,
        (f): Op[] => [{ op: "readlink", path: `${IOMMU_GROUPS}/${f.replace("/", "/devices/")}/driver` }],
        (f, [r]) => [f, r?.ok && r.data.trim() ? basename(r.data.trim()) : null] as const,
    );
    const r3 = await q3.runIfAny(host);
    const names: PciNames | null = namesPart?.(r3) ?? null;
    const types = new Map<string, MdevType>(typeAttrs(r3));
    const foreignDrivers = new Map<string, string | null>(foreignPart(r3));

    // ---- assemble
    const mdev: MdevParent[] = mdevParents.map((p, i) => ({
        parent: p,
        pci: byAddress.has(p),
        types: typeLists[i].map((t) => types.get(`${MDEV_BUS}/${p}/mdev_supported_types/${t}`)!),
    }));
    const vfsOf = new Map<string, string[]>();
    for (const d of pciDevices) if (d.physfn) vfsOf.set(d.physfn, [...(vfsOf.get(d.physfn) ?? []), d.address]);
    const devices: InventoryDevice[] = pciDevices.map((d) => {
        const cls = d.class;
        return {
            address: d.address,
            class: cls,
            className: names?.subclasses.get(cls.slice(0, 4)) ?? names?.classes.get(cls.slice(0, 2)) ?? classLabel(cls),
            vendor: d.vendor,
            device: d.device,
            subsystemVendor: d.subsystemVendor,
            subsystemDevice: d.subsystemDevice,
            vendorName: names?.vendors.get(d.vendor) ?? null,
            deviceName: names?.devices.get(`${d.vendor}:${d.device}`) ?? null,
            subsystemName: names?.subsystems.get(`${d.vendor}:${d.device}:${d.subsystemVendor}:${d.subsystemDevice}`) ?? null,
            driver: d.driver,
            driverOverride: d.override,
            group: iommu.enabled ? d.group : null,
            bootVga: d.bootVga,
            resetMethods: d.resetMethods,
            reset: resetCapability({ ...d, busSiblings: busSiblings(d.address, addresses), vendorResetLoaded: modules.includes("vendor_reset") }),
            numaNode: d.numaNode,
            sriov: d.sriovTotalVfs !== undefined ? { totalVfs: d.sriovTotalVfs, numVfs: d.sriovNumVfs ?? 0, vfs: (vfsOf.get(d.address) ?? []).sort() } : null,
            physfn: d.physfn ?? null,
            mdevTypes: mdev.find((p) => p.parent === d.address)?.types ?? [],
        };
    });
    const groups: InventoryGroup[] = groupNumbers.map((g, i) => {
        const members = groupMembers[i];
        const view = members.map((m) => ({ address: m, driver: byAddress.get(m)?.driver ?? foreignDrivers.get(`${g}/${m}`) ?? null }));
        // As IommuBinding plans it: bridges stay, every other member is bound (see planBinding).
        const bound = members.map((m) => byAddress.get(m)).filter((d): d is PciDevice => !!d && !isBridge(d));
        const hostCritical = bound.flatMap((d) => {
            const reason = d.driver && /vfio|pci-stub/.test(d.driver) ? null : hostCriticalReason(d, uses);
            return reason ? [{ address: d.address, reason }] : [];
        });
        const viable = view.every(memberViable);
        const onlyBridges = bound.length === 0 && members.every((m) => byAddress.has(m));
        return {
            number: g,
            members,
            viable,
            problems: viabilityProblems(view),
            vfioDevice: vfioNodes.has(String(g)) ? `/dev/vfio/${g}` : null,
            hostCritical,
            verdict: hostCritical.length ? "host-critical" : onlyBridges ? "bridges" : viable ? "viable" : "bind",
        };
    });
    return {
        host: host.name,
        kernelRelease,
        kernelCmdline,
        iommu: { enabled: iommu.enabled, fix: iommu.enabled ? null : IOMMU_OFF_FIX },
        groups,
        devices,
        mdev,
        modules,
        kvmfr,
        pciIds: names ? pciIds : null,
        boot,
    };
}

export { formatInventory, formatMdevTypes, deviceFlags } from "./inventoryReport";
