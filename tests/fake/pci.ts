/**
 * The fake kernel's PCI subsystem: devices, drivers, modules, IOMMU groups, /dev/vfio and SR-IOV, with the
 * semantics of Documentation/ABI/testing/sysfs-bus-pci as observed on the lab kernel (LAB.md):
 * - `driver_override` does not unbind and does not load a module; `(null)` when unset; a write of "\n" clears it;
 * - `unbind` of a device not bound to that driver → ENODEV; `bind` of a bound device → EBUSY, of a device whose
 *   override names another driver or that the driver does not match → ENODEV;
 * - `drivers_probe` re-runs matching (override first), succeeds even when nothing matches;
 * - `new_id` binds every *unbound* matching device, EEXIST on a duplicate, EINVAL when malformed;
 * - binding vfio-pci creates /dev/vfio/<group> at once, viable or not;
 * - unbinding vfio-pci while a process holds /dev/vfio/<group> blocks forever (the driver link is already gone);
 * - `reset_method`: only methods the device supports now (EINVAL otherwise), `default`, or "" (none); `reset`: ENOTTY
 *   when no listed method works (only `bus` and another function shares the bus: pci_parent_bus_reset);
 * - `sriov_numvfs`: ERANGE above `sriov_totalvfs`, ENOENT without an SR-IOV capable PF driver, EBUSY from one
 *   non-zero count to another.
 */
import { isVfioDriver } from "../../provider/sysfs/iommu";
import { FakeErrno, FakeHang, FakeKernel, FakeNode, FakeSubsystem, ExecResult } from "./kernel";

export interface FakePciDevice {
    address: string;
    vendor: string; // "0x1234"
    device: string;
    subsystemVendor: string;
    subsystemDevice: string;
    class: string; // "0x030000"
    driver: string | null;
    override: string | null;
    group: number;
    bootVga?: boolean;
    /** `reset_method` now (what the user or the kernel selected). */
    resetMethods: string[];
    /** The methods the kernel found at enumeration (default: the initial `resetMethods`); `default` restores them. */
    resetProbed?: string[];
    /** Fault injection: every write to `reset` fails with this errno (a GPU whose reset times out, say). */
    failReset?: string;
    /** Every reset that ran, with the method and the driver bound at that moment. */
    resetLog?: { method: string; driver: string | null }[];
    numaNode: number;
    sriov?: { totalVfs: number; numVfs: number; autoprobe: boolean; vfDevice: string; offset: number; stride: number };
    physfn?: string;
    /** The bridge this device sits behind (its sysfs directory lists the device); absent: on the root bus. */
    parent?: string;
    /** Other entries of its sysfs directory that name child devices (`virtio0`, `nvme`). */
    childDirs?: string[];
    /** The driver link vanished under a blocked unbind; /dev/vfio/<group> stays until the holder lets go. */
    stuck?: boolean;
    /** How many times a driver bound it (a DRM driver's bind registers a new framebuffer: tests/fake/console.ts). */
    binds?: number;
}

export interface FakePciDriver {
    name: string;
    module: string;
    /** "vvvv:dddd" static ids. */
    ids: string[];
    /** Class prefixes this driver claims ("0x0108" NVMe, "0x0604" bridges). */
    classes?: string[];
    dynamicIds: string[];
    /** Can the PF create VFs while bound to this driver. */
    sriov?: boolean;
    /** Probe fails on virtual functions (the emulated NVMe's VFs do not start without the PF's help). */
    failsOnVf?: boolean;
    /** Built into the kernel: always loaded, cannot be unloaded. */
    builtin?: boolean;
}

export interface FakePciState {
    iommu: boolean;
    devices: Record<string, FakePciDevice>;
    drivers: Record<string, FakePciDriver>;
    loaded: string[];
    kernelRelease: string;
    nextGroup: number;
    vfioEnableSriov: boolean;
}

const DEV = "/sys/devices/pci0000:00";

/**
 * IOMMU groups owned by other subsystems (an mdev gets its own group): listed under /sys/kernel/iommu_groups and
 * /dev/vfio next to the PCI ones. Their nodes are resolved by the subsystem that owns them.
 */
export const extraGroups: ((k: FakeKernel) => number[])[] = [];
const otherGroups = (k: FakeKernel): number[] => extraGroups.flatMap((f) => f(k));
const VFIO_MAJOR = 244;

export function pci(k: FakeKernel): FakePciState {
    return k.ext<FakePciState>("pci", () => ({ iommu: true, devices: {}, drivers: {}, loaded: [], kernelRelease: "6.1.0-fake-amd64", nextGroup: 100, vfioEnableSriov: false }));
}


function driverMatches(drv: FakePciDriver, d: FakePciDevice): boolean {
    const id = `${d.vendor.slice(2)}:${d.device.slice(2)}`;
    if (drv.ids.includes(id) || drv.dynamicIds.includes(id)) return true;
    return (drv.classes ?? []).some((c) => d.class.startsWith(c));
}

function moduleLoaded(s: FakePciState, drv: FakePciDriver): boolean {
    return !!drv.builtin || s.loaded.includes(drv.module);
}

function groupMembers(s: FakePciState, group: number): FakePciDevice[] {
    return Object.values(s.devices).filter((d) => d.group === group);
}

function groupOpen(k: FakeKernel, group: number): boolean {
    return k.openers(`/dev/vfio/${group}`).length > 0;
}

function vfioGroupPresent(s: FakePciState, group: number): boolean {
    return groupMembers(s, group).some((d) => isVfioDriver(d.driver) || d.stuck);
}

function aloneOnBus(s: FakePciState, d: FakePciDevice): boolean {
    const bus = d.address.slice(0, d.address.lastIndexOf(":"));
    return !Object.keys(s.devices).some((a) => a !== d.address && a.startsWith(bus + ":"));
}

/** What the kernel found at enumeration, kept the first time the device is looked at. */
function supported(d: FakePciDevice): string[] {
    return (d.resetProbed ??= [...d.resetMethods]);
}

/** The enumerated methods whose probe passes now (`bus` only while the function is alone on its bus). */
function probeResets(s: FakePciState, d: FakePciDevice): string[] {
    return supported(d).filter((m) => (m === "bus" || m === "cxl_bus" ? aloneOnBus(s, d) : true));
}

function mustDevice(s: FakePciState, bdf: string): FakePciDevice {
    const d = s.devices[bdf.trim()];
    if (!d) throw new FakeErrno("ENODEV");
    return d;
}

/**
 * What the driver core does for an unbound device: `device_attach` (drivers_probe) tries every loaded driver,
 * `driver_attach` (a driver registering, or new_id) tries only that driver. The override, when set, is the only
 * driver allowed.
 */
function attach(k: FakeKernel, d: FakePciDevice, only?: FakePciDriver): void {
    const s = pci(k);
    if (d.driver || d.stuck) return;
    let candidates: FakePciDriver[];
    if (d.override !== null) {
        const drv = s.drivers[d.override];
        candidates = drv && moduleLoaded(s, drv) && (!only || only === drv) ? [drv] : [];
    } else {
        candidates = (only ? [only] : Object.values(s.drivers)).filter((drv) => moduleLoaded(s, drv) && driverMatches(drv, d));
    }
    for (const drv of candidates) {
        if (d.physfn && drv.failsOnVf) continue;
        if (!isVfioDriver(drv.name) && drv.name !== "pci-stub" && groupOpen(k, d.group)) continue;
        d.driver = drv.name;
        d.binds = (d.binds ?? 0) + 1;
        return;
    }
}

function unbind(k: FakeKernel, d: FakePciDevice): void {
    if (isVfioDriver(d.driver) && groupOpen(k, d.group)) {
        d.driver = null;
        d.stuck = true;
        throw new FakeHang(`unbind of ${d.address} (vfio group ${d.group} is open)`);
    }
    if (d.sriov && d.sriov.numVfs > 0) setNumVfs(k, d, 0);
    d.driver = null;
}

function setNumVfs(k: FakeKernel, pf: FakePciDevice, n: number): void {
    const s = pci(k);
    const sr = pf.sriov!;
    if (n === sr.numVfs) return;
    if (n === 0) {
        for (const vf of vfsOf(s, pf)) {
            if (isVfioDriver(vf.driver) && groupOpen(k, vf.group)) throw new FakeHang(`removing VF ${vf.address} (vfio group ${vf.group} is open)`);
        }
        for (const vf of vfsOf(s, pf)) delete s.devices[vf.address];
        sr.numVfs = 0;
        return;
    }
    const [dom, bus, devfn] = splitBdf(pf.address);
    for (let i = 0; i < n; i++) {
        const rid = devfn + sr.offset + i * sr.stride;
        const addr = `${dom}:${hex2((bus + (rid >> 8)) & 0xff)}:${hex2((rid & 0xff) >> 3)}.${rid & 7}`;
        const vf: FakePciDevice = {
            address: addr,
            vendor: pf.vendor,
            device: sr.vfDevice,
            subsystemVendor: pf.subsystemVendor,
            subsystemDevice: pf.subsystemDevice,
            class: pf.class,
            driver: null,
            override: null,
            group: s.nextGroup++,
            resetMethods: ["flr"],
            numaNode: pf.numaNode,
            physfn: pf.address,
            parent: pf.parent,
        };
        s.devices[addr] = vf;
        if (sr.autoprobe) attach(k, vf);
    }
    sr.numVfs = n;
}

function vfsOf(s: FakePciState, pf: FakePciDevice): FakePciDevice[] {
    return Object.values(s.devices)
        .filter((d) => d.physfn === pf.address)
        .sort((a, b) => routingId(a.address) - routingId(b.address));
}

function splitBdf(bdf: string): [string, number, number] {
    const m = /^([0-9a-f]{4}):([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])$/.exec(bdf)!;
    return [m[1], parseInt(m[2], 16), (parseInt(m[3], 16) << 3) | parseInt(m[4], 10)];
}

function routingId(bdf: string): number {
    const [, bus, devfn] = splitBdf(bdf);
    return (bus << 8) | devfn;
}

const hex2 = (n: number) => n.toString(16).padStart(2, "0");

const file = (read: () => string, write?: (data: string) => void, mode = 0o644): FakeNode => ({ kind: "file", read, write, mode });
const wo = (write: (data: string) => void): FakeNode => ({ kind: "file", write, mode: 0o200 });
const dir = (list: () => string[]): FakeNode => ({ kind: "dir", list });
const link = (target: string): FakeNode => ({ kind: "link", target });
const arg = (data: string) => data.replace(/\n$/, "");

function deviceNode(k: FakeKernel, d: FakePciDevice, rest: string[]): FakeNode | undefined {
    const s = pci(k);
    const attrs: Record<string, () => FakeNode | undefined> = {
        vendor: () => file(() => d.vendor + "\n"),
        device: () => file(() => d.device + "\n"),
        subsystem_vendor: () => file(() => d.subsystemVendor + "\n"),
        subsystem_device: () => file(() => d.subsystemDevice + "\n"),
        class: () => file(() => d.class + "\n"),
        numa_node: () => file(() => d.numaNode + "\n"),
        modalias: () => file(() => modalias(d) + "\n"),
        driver_override: () =>
            file(
                () => (d.override ?? "(null)") + "\n",
                (data) => {
                    const v = arg(data);
                    d.override = v === "" ? null : v;
                },
            ),
        driver: () => (d.driver ? link(`../../../bus/pci/drivers/${d.driver}`) : undefined),
        iommu_group: () => (s.iommu ? link(`../../../kernel/iommu_groups/${d.group}`) : undefined),
        boot_vga: () => (d.class.startsWith("0x0300") ? file(() => (d.bootVga ? "1\n" : "0\n")) : undefined),
        // reset_method_store (drivers/pci/pci-sysfs.c, 6.1): "" disables every method, `default` re-probes the kernel's
        // list, else each name must be one the device supports *now* (its probe passes; `bus` fails with another
        // function on the bus) or the whole write is EINVAL. The files exist when the kernel found a method at
        // enumeration, and stay after a user disabled them all.
        reset_method: () =>
            supported(d).length
                ? file(
                      () => (d.resetMethods.length ? d.resetMethods.join(" ") + "\n" : ""),
                      (data) => {
                          const v = arg(data).trim();
                          if (v === "") d.resetMethods = [];
                          else if (v === "default") d.resetMethods = probeResets(s, d);
                          else {
                              const names = v.split(/\s+/);
                              const ok = probeResets(s, d);
                              if (names.some((n) => !ok.includes(n)) || new Set(names).size !== names.length) throw new FakeErrno("EINVAL");
                              d.resetMethods = names;
                          }
                      },
                  )
                : undefined,
        // pci_reset_function: the first listed method that works; none listed, or a bus reset (the only method left)
        // with another function on the bus (pci_parent_bus_reset / pci_dev_reset_slot_function) → ENOTTY, as the
        // lab's 01:00.0 answers. Each reset is logged (resetLog) with the driver the device had then.
        reset: () =>
            supported(d).length
                ? wo(() => {
                      if (d.failReset) throw new FakeErrno(d.failReset);
                      const m = d.resetMethods.find((x) => (x === "bus" || x === "cxl_bus" ? aloneOnBus(s, d) : true));
                      if (!m) throw new FakeErrno("ENOTTY");
                      (d.resetLog ??= []).push({ method: m, driver: d.driver });
                  })
                : undefined,
        physfn: () => (d.physfn ? link(`../${d.physfn}`) : undefined),
        sriov_totalvfs: () => (d.sriov ? file(() => d.sriov!.totalVfs + "\n") : undefined),
        sriov_numvfs: () =>
            d.sriov
                ? file(
                      () => d.sriov!.numVfs + "\n",
                      (data) => {
                          const n = Number(arg(data).trim());
                          if (!/^\d+$/.test(arg(data).trim())) throw new FakeErrno("EINVAL");
                          const sr = d.sriov!;
                          const drv = d.driver ? s.drivers[d.driver] : undefined;
                          const capable = drv && (drv.sriov || (isVfioDriver(drv.name) && s.vfioEnableSriov));
                          // sriov_numvfs_store's order (drivers/pci/iov.c): range, same count, driver, busy.
                          if (n > sr.totalVfs) throw new FakeErrno("ERANGE");
                          if (n === sr.numVfs) return;
                          if (!capable) throw new FakeErrno("ENOENT");
                          if (n !== 0 && sr.numVfs !== 0) throw new FakeErrno("EBUSY");
                          setNumVfs(k, d, n);
                      },
                  )
                : undefined,
        sriov_drivers_autoprobe: () =>
            d.sriov
                ? file(
                      () => (d.sriov!.autoprobe ? "1\n" : "0\n"),
                      (data) => {
                          const v = arg(data).trim();
                          if (v !== "0" && v !== "1") throw new FakeErrno("EINVAL");
                          d.sriov!.autoprobe = v === "1";
                      },
                  )
                : undefined,
        sriov_offset: () => (d.sriov ? file(() => d.sriov!.offset + "\n") : undefined),
        sriov_stride: () => (d.sriov ? file(() => d.sriov!.stride + "\n") : undefined),
    };
    if (rest.length === 0) {
        return dir(() => {
            const names = Object.keys(attrs).filter((n) => attrs[n]() !== undefined);
            // A bridge's directory holds the devices behind it, as /sys/devices/pci0000:00/<bridge>/<device>.
            names.push(...(d.childDirs ?? []), ...Object.values(s.devices).filter((c) => c.parent === d.address).map((c) => c.address));
            if (d.sriov) for (const [i] of vfsOf(s, d).entries()) names.push(`virtfn${i}`);
            return names;
        });
    }
    if (rest.length === 1) {
        const m = /^virtfn(\d+)$/.exec(rest[0]);
        if (m && d.sriov) {
            const vf = vfsOf(s, d)[Number(m[1])];
            return vf ? link(`../${vf.address}`) : undefined;
        }
        return attrs[rest[0]]?.();
    }
    return undefined;
}

function driverNode(k: FakeKernel, drv: FakePciDriver, rest: string[]): FakeNode | undefined {
    const s = pci(k);
    if (rest.length === 0) {
        return dir(() => ["bind", "unbind", "new_id", "remove_id", "module", ...Object.values(s.devices).filter((d) => d.driver === drv.name).map((d) => d.address)]);
    }
    if (rest.length > 1) return undefined;
    switch (rest[0]) {
        case "module":
            return link(`../../../../module/${drv.module}`);
        case "unbind":
            return wo((data) => {
                const d = mustDevice(s, arg(data));
                if (d.driver !== drv.name) throw new FakeErrno("ENODEV");
                unbind(k, d);
            });
        case "bind":
            return wo((data) => {
                const d = mustDevice(s, arg(data));
                if (d.driver) throw new FakeErrno("EBUSY");
                if (d.override !== null && d.override !== drv.name) throw new FakeErrno("ENODEV");
                if (d.override === null && !driverMatches(drv, d)) throw new FakeErrno("ENODEV");
                if (!isVfioDriver(drv.name) && drv.name !== "pci-stub" && groupOpen(k, d.group)) throw new FakeErrno("EBUSY");
                if (d.physfn && drv.failsOnVf) throw new FakeErrno("ENODEV");
                d.driver = drv.name;
                d.binds = (d.binds ?? 0) + 1;
            });
        case "new_id":
            return wo((data) => {
                const m = /^([0-9a-fA-F]{1,4})\s+([0-9a-fA-F]{1,4})(\s.*)?$/.exec(arg(data).trim());
                if (!m) throw new FakeErrno("EINVAL");
                const id = `${m[1].toLowerCase().padStart(4, "0")}:${m[2].toLowerCase().padStart(4, "0")}`;
                if (drv.dynamicIds.includes(id) || drv.ids.includes(id)) throw new FakeErrno("EEXIST");
                drv.dynamicIds.push(id);
                for (const d of Object.values(s.devices)) attach(k, d, drv);
            });
        case "remove_id":
            return wo((data) => {
                const m = /^([0-9a-fA-F]{1,4})\s+([0-9a-fA-F]{1,4})/.exec(arg(data).trim());
                if (!m) throw new FakeErrno("EINVAL");
                const id = `${m[1].toLowerCase().padStart(4, "0")}:${m[2].toLowerCase().padStart(4, "0")}`;
                if (!drv.dynamicIds.includes(id)) throw new FakeErrno("ENODEV");
                drv.dynamicIds = drv.dynamicIds.filter((x) => x !== id);
            });
        default: {
            const d = s.devices[rest[0]];
            return d && d.driver === drv.name ? link(`../../../../devices/pci0000:00/${d.address}`) : undefined;
        }
    }
}

export const pciSubsystem: FakeSubsystem = {
    resolve(k, path) {
        const s = pci(k);
        const p = path.split("/").filter(Boolean);
        const at = (prefix: string) => path === prefix || path.startsWith(prefix + "/");
        if (at(DEV)) {
            const rest = p.slice(3);
            if (rest.length === 0) return dir(() => Object.keys(s.devices));
            const d = s.devices[rest[0]];
            return d ? deviceNode(k, d, rest.slice(1)) : undefined;
        }
        if (at("/sys/bus/pci")) {
            const rest = p.slice(3);
            if (rest.length === 0) return dir(() => ["devices", "drivers", "drivers_probe", "rescan"]);
            if (rest[0] === "devices") {
                if (rest.length === 1) return dir(() => Object.keys(s.devices));
                if (rest.length === 2 && s.devices[rest[1]]) return link(`../../../devices/pci0000:00/${rest[1]}`);
                return undefined;
            }
            if (rest[0] === "drivers") {
                const loaded = Object.values(s.drivers).filter((d) => moduleLoaded(s, d));
                if (rest.length === 1) return dir(() => loaded.map((d) => d.name));
                const drv = loaded.find((d) => d.name === rest[1]);
                return drv ? driverNode(k, drv, rest.slice(2)) : undefined;
            }
            if (rest[0] === "drivers_probe" && rest.length === 1) {
                return wo((data) => attach(k, mustDevice(s, arg(data))));
            }
            if (rest[0] === "rescan" && rest.length === 1) return wo(() => undefined);
            return undefined;
        }
        if (at("/sys/kernel/iommu_groups")) {
            if (!s.iommu) return path === "/sys/kernel/iommu_groups" ? dir(() => []) : undefined;
            const groups = [...new Set(Object.values(s.devices).map((d) => d.group))].sort((a, b) => a - b);
            const rest = p.slice(3);
            if (rest.length === 0) return dir(() => [...groups, ...otherGroups(k)].map(String));
            const g = Number(rest[0]);
            if (!groups.includes(g) || String(g) !== rest[0]) return undefined;
            if (rest.length === 1) return dir(() => ["devices", "type", "reserved_regions"]);
            if (rest[1] === "type" && rest.length === 2) return file(() => "DMA\n");
            if (rest[1] === "reserved_regions" && rest.length === 2) return file(() => "0x00000000fee00000 0x00000000feefffff msi\n");
            if (rest[1] === "devices") {
                if (rest.length === 2) return dir(() => groupMembers(s, g).map((d) => d.address));
                if (rest.length === 3 && s.devices[rest[2]]?.group === g) return link(`../../../../devices/pci0000:00/${rest[2]}`);
            }
            return undefined;
        }
        if (at("/sys/class/iommu")) {
            if (path === "/sys/class/iommu") return dir(() => (s.iommu ? ["dmar0"] : []));
            return s.iommu && p[3] === "dmar0" && p.length === 4 ? dir(() => ["devices", "intel-iommu"]) : undefined;
        }
        if (at("/sys/module")) {
            if (path === "/sys/module") return dir(() => s.loaded);
            const mod = p[2];
            if (!s.loaded.includes(mod) && !Object.values(s.drivers).some((d) => d.builtin && d.module === mod)) return undefined;
            const builtin = Object.values(s.drivers).some((d) => d.builtin && d.module === mod);
            if (p.length === 3) return dir(() => (builtin ? ["parameters"] : ["parameters", "refcnt", "initstate"]));
            // Only a loadable module has an initstate (kernel/module/sysfs.c); a built-in one shows parameters alone.
            if (p[3] === "initstate" && p.length === 4 && !builtin) return file(() => "live\n");
            if (p[3] === "refcnt" && p.length === 4) {
                return file(() => Object.values(s.devices).filter((d) => d.driver && s.drivers[d.driver]?.module === mod).length + "\n");
            }
            if (p[3] === "parameters" && p.length === 4) return dir(() => (mod === "vfio_pci" ? ["enable_sriov", "ids"] : []));
            if (mod === "vfio_pci" && p[3] === "parameters" && p[4] === "enable_sriov" && p.length === 5) return file(() => (s.vfioEnableSriov ? "Y\n" : "N\n"));
            return undefined;
        }
        if (path === "/dev/vfio") {
            return dir(() => ["vfio", ...[...new Set(Object.values(s.devices).map((d) => d.group))].filter((g) => vfioGroupPresent(s, g)).map(String), ...otherGroups(k).map(String)]);
        }
        if (path === "/dev/vfio/vfio" && s.loaded.includes("vfio")) return { kind: "char", major: 10, minor: 196, mode: 0o666 };
        const vg = /^\/dev\/vfio\/(\d+)$/.exec(path);
        if (vg && vfioGroupPresent(s, Number(vg[1]))) return { kind: "char", major: VFIO_MAJOR, minor: Number(vg[1]), mode: 0o600 };
        if (path === "/proc/sys/kernel/osrelease") return file(() => s.kernelRelease + "\n");
        return undefined;
    },
    extraEntries(k, d) {
        return d === "/dev" ? ["vfio"] : d === "/proc/sys/kernel" ? ["osrelease"] : [];
    },
    exec(k, argv) {
        if (argv[0] === "modprobe") return modprobe(k, argv.slice(1));
        if (argv[0] === "uname" && argv[1] === "-r") return { code: 0, stdout: pci(k).kernelRelease + "\n" };
        return undefined;
    },
};

/** Loading a module registers its drivers, which attach to unbound devices (override first, as the kernel does). */
function modprobe(k: FakeKernel, args: string[]): ExecResult {
    const s = pci(k);
    if (args[0] === "-R" || args[0] === "--resolve-alias") {
        // The modules whose aliases match (modules.alias and modules.builtin.alias): by id table or class here.
        const d = Object.values(s.devices).find((x) => modalias(x) === args[1]);
        const mods = d ? [...new Set(Object.values(s.drivers).filter((drv) => drv.ids.length + (drv.classes?.length ?? 0) > 0 && driverMatches(drv, d)).map((drv) => drv.module))] : [];
        return mods.length ? { code: 0, stdout: mods.join("\n") + "\n" } : { code: 1, stderr: `modprobe: FATAL: Module ${args[1]} not found in directory /lib/modules/${s.kernelRelease}` };
    }
    const flags = args.filter((a) => a.startsWith("-"));
    const names = args.filter((a) => !a.startsWith("-"));
    const dryRun = flags.includes("-n") || flags.includes("--dry-run");
    const remove = flags.includes("-r") || flags.includes("--remove");
    const params = names.slice(1);
    const mod = (names[0] ?? "").replace(/-/g, "_");
    const drivers = Object.values(s.drivers).filter((d) => d.module === mod);
    const known = drivers.length > 0 || ["vfio", "vfio_iommu_type1", "mdev", "kvm"].includes(mod) || (k.state.ext.modulesAvailable ?? []).includes(mod);
    if (!known) return { code: 1, stderr: `modprobe: FATAL: Module ${names[0]} not found in directory /lib/modules/${s.kernelRelease}` };
    if (dryRun) return { code: 0 };
    if (remove) {
        if (drivers.some((drv) => drv.builtin)) return { code: 1, stderr: `modprobe: FATAL: Module ${mod} is builtin.` };
        if (Object.values(s.devices).some((d) => drivers.some((drv) => drv.name === d.driver))) return { code: 1, stderr: `modprobe: FATAL: Module ${mod} is in use.` };
        s.loaded = s.loaded.filter((m) => m !== mod);
        return { code: 0 };
    }
    if (drivers.some((d) => d.builtin) || s.loaded.includes(mod)) return { code: 0 };
    if (mod === "vfio_pci") {
        for (const dep of ["vfio", "vfio_iommu_type1", "vfio_pci_core"]) if (!s.loaded.includes(dep)) s.loaded.push(dep);
        if (params.includes("enable_sriov=1")) s.vfioEnableSriov = true;
    }
    s.loaded.push(mod);
    for (const drv of drivers) for (const d of Object.values(s.devices)) attach(k, d, drv);
    return { code: 0 };
}

/** A device's `modalias` (drivers/pci/pci-sysfs.c: `pci:v%08Xd%08Xsv%08Xsd%08Xbc%02Xsc%02Xi%02X`). */
export function modalias(d: FakePciDevice): string {
    const hex8 = (v: string) => v.replace(/^0x/, "").toUpperCase().padStart(8, "0");
    const c = d.class.replace(/^0x/, "").toUpperCase().padStart(6, "0");
    return `pci:v${hex8(d.vendor)}d${hex8(d.device)}sv${hex8(d.subsystemVendor)}sd${hex8(d.subsystemDevice)}bc${c.slice(0, 2)}sc${c.slice(2, 4)}i${c.slice(4, 6)}`;
}

/**
 * What a reboot does to PCI: every override and binding is gone, `claimed` addresses get `vfio-pci` in
 * driver_override before any driver loads (the initramfs's early binding), and drivers then attach as at boot,
 * vfio-pci first when anything is claimed.
 */
export function bootPci(k: FakeKernel, claimed: string[], bootModules: string[]): void {
    const s = pci(k);
    for (const d of Object.values(s.devices)) {
        d.driver = null;
        d.override = claimed.includes(d.address) ? "vfio-pci" : null;
        d.stuck = false;
    }
    s.loaded = [];
    if (claimed.length) modprobe(k, ["vfio_pci"]);
    for (const m of bootModules) modprobe(k, [m]);
    for (const d of Object.values(s.devices)) attach(k, d);
}
