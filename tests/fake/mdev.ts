/**
 * The fake kernel's mediated-device framework (drivers/vfio/mdev) with the kernel's sample parents as the lab loads
 * them, and NVIDIA's vGPU 17+ layout on SR-IOV VFs. Semantics as observed on the lab kernel (6.1):
 * - `/sys/class/mdev_bus/<parent>` links to the parent device; its `mdev_supported_types/<type>/` holds `create`,
 *   `name`, `description` (mtty has none), `device_api`, `available_instances` and `devices/`;
 * - writing a UUID to `create`: EINVAL unless it is a UUID (upper case is accepted, the device is named in lower
 *   case), EEXIST when any mdev has that UUID, ENOSPC when the type has no instance left;
 * - instances share the parent's capacity: mtty has 24 ports (mtty-1 takes 1, mtty-2 takes 2), mbochs 256 MB of
 *   video memory (small 4, medium 16, large 64), so creating one type lowers the others' `available_instances`;
 * - each mdev gets its own IOMMU group and `/dev/vfio/<group>` at once; `vendor/` holds read-only attributes
 *   (writing one fails with EACCES at open);
 * - `remove`: `1` removes, `0` does nothing, non-numbers → EINVAL; it blocks while a process holds the group;
 * - NVIDIA vGPU 17+: each VF of a PF has `nvidia/creatable_vgpu_types` (`<id> : <name>` lines) and
 *   `nvidia/current_vgpu_type` (`0` = none). The errnos of refused writes there are our assumption (EINVAL for a type
 *   not creatable on the VF, EBUSY for a VF that already has one or is in use): no NVIDIA hardware was at hand.
 *
 * Test controls: {@link addMdevParent}, {@link addNvidiaVgpuGpu}, {@link rebootMdevs} (what a reboot does: every
 * mdev is gone; udev runs the effective 60-mdevctl.rules for each parent, and mdevctl, when the rule can find it,
 * starts the parent's `start: auto` devices from /etc/mdevctl.d).
 */
import { FakeErrno, FakeHang, FakeKernel, FakeNode, FakeSubsystem } from "./kernel";
import { FakePciDevice, extraGroups, pci } from "./pci";

export interface FakeMdevType {
    id: string;
    name: string;
    /** Absent: no `description` file (mtty). */
    description?: string;
    deviceApi: string;
    /** Units of the parent's capacity one instance takes. */
    cost: number;
    /** Read-only attributes under `vendor/`; `{uuid}` is replaced by the device's UUID. */
    vendorAttrs?: Record<string, string>;
    /** Writable attributes (path under the device → initial value), e.g. NVIDIA's `nvidia/vgpu_params`. */
    writableAttrs?: Record<string, string>;
}

export interface FakeMdevParent {
    name: string;
    /** The parent device's directory: /sys/devices/virtual/mtty/mtty, or a PCI device's. */
    devPath: string;
    /** The mdev driver that binds its devices (the `driver` link). */
    driver: string;
    capacity: number;
    types: FakeMdevType[];
}

export interface FakeMdev {
    uuid: string;
    parent: string;
    type: string;
    group: number;
    attrs: Record<string, string>;
}

export interface FakeVgpuType {
    id: string;
    name: string;
    framebufferMiB: number;
}

export interface FakeVgpuGpu {
    pf: string;
    framebufferMiB: number;
    types: FakeVgpuType[];
    /** VF address → current type id ("0" = none). */
    current: Record<string, string>;
}

export interface FakeMdevState {
    parents: Record<string, FakeMdevParent>;
    devices: Record<string, FakeMdev>;
    vgpu: Record<string, FakeVgpuGpu>;
}

export function mdev(k: FakeKernel): FakeMdevState {
    return k.ext<FakeMdevState>("mdev", () => ({ parents: {}, devices: {}, vgpu: {} }));
}

/** The parents the lab loads at boot (modules-load.d: mdev, mtty, mbochs), with the lab kernel's names and counts. */
export function labMdevParents(): FakeMdevParent[] {
    return [
        {
            name: "mbochs",
            devPath: "/sys/devices/virtual/mbochs/mbochs",
            driver: "mbochs",
            capacity: 256,
            types: [
                { id: "mbochs-large", name: "mbochs-large", description: "virtual display, 64 MB video memory", deviceApi: "vfio-pci", cost: 64, vendorAttrs: { memory: "64 MB" } },
                { id: "mbochs-medium", name: "mbochs-medium", description: "virtual display, 16 MB video memory", deviceApi: "vfio-pci", cost: 16, vendorAttrs: { memory: "16 MB" } },
                { id: "mbochs-small", name: "mbochs-small", description: "virtual display, 4 MB video memory", deviceApi: "vfio-pci", cost: 4, vendorAttrs: { memory: "4 MB" } },
            ],
        },
        {
            name: "mtty",
            devPath: "/sys/devices/virtual/mtty/mtty",
            driver: "mtty",
            capacity: 24,
            types: [
                { id: "mtty-1", name: "Single port serial", deviceApi: "vfio-pci", cost: 1, vendorAttrs: { sample_mdev_dev: "This is MDEV {uuid}" } },
                { id: "mtty-2", name: "Dual port serial", deviceApi: "vfio-pci", cost: 2, vendorAttrs: { sample_mdev_dev: "This is MDEV {uuid}" } },
            ],
        },
    ];
}

/** Debian 12's mdevctl 1.2.0 rule as installed: it calls /usr/sbin/mdevctl, but the package puts it in /usr/bin. */
export const DEBIAN_MDEVCTL_RULE = `# When registered with mdev, try to start any persistent devices. Note that
# this uevent is not triggered on older kernels.
ACTION=="change", ENV{MDEV_STATE}=="registered", TEST=="/etc/mdevctl.d/$kernel", RUN+="/bin/sh -c '{ /usr/sbin/mdevctl start-parent-mdevs %k 2>&3 | logger -t mdevctl; } 3>&1 1>&2 | logger -t mdevctl -p 2'"

# For compatibility with kernels where mdev doesn't trigger the change uevent
# on parent device registration, try to start mdevs when the device is added;
# if the device is setup early this may still work.
ACTION=="add", TEST=="/etc/mdevctl.d/$kernel", RUN+="/bin/sh -c '{ /usr/sbin/mdevctl start-parent-mdevs %k 2>&3 | logger -t mdevctl; } 3>&1 1>&2 | logger -t mdevctl -p 2'"
`;

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const arg = (data: string) => data.replace(/\n$/, "");
const file = (read: () => string, write?: (data: string) => void, mode = 0o444): FakeNode => ({ kind: "file", read, write, mode });
const wo = (write: (data: string) => void): FakeNode => ({ kind: "file", write, mode: 0o200 });
const dir = (list: () => string[]): FakeNode => ({ kind: "dir", list });
const link = (target: string): FakeNode => ({ kind: "link", target });
/** `../` from a directory back up to /sys (a link's target is relative to the directory holding it). */
const toSys = (dirPath: string) => "../".repeat(dirPath.split("/").filter(Boolean).length - 1);

function used(s: FakeMdevState, p: FakeMdevParent): number {
    return Object.values(s.devices)
        .filter((d) => d.parent === p.name)
        .reduce((n, d) => n + (p.types.find((t) => t.id === d.type)?.cost ?? 0), 0);
}

export function availableInstances(s: FakeMdevState, p: FakeMdevParent, t: FakeMdevType): number {
    return Math.floor((p.capacity - used(s, p)) / t.cost);
}

function groupOpen(k: FakeKernel, group: number): boolean {
    return k.openers(`/dev/vfio/${group}`).length > 0;
}

/** What a write to `create` does. */
export function createMdev(k: FakeKernel, parent: string, type: string, data: string): FakeMdev {
    const s = mdev(k);
    const p = s.parents[parent];
    const t = p?.types.find((x) => x.id === type);
    if (!p || !t) throw new FakeErrno("ENOENT");
    const uuid = arg(data).trim().toLowerCase();
    if (!UUID.test(uuid)) throw new FakeErrno("EINVAL");
    if (s.devices[uuid]) throw new FakeErrno("EEXIST");
    if (availableInstances(s, p, t) < 1) throw new FakeErrno("ENOSPC");
    const d: FakeMdev = { uuid, parent, type, group: pci(k).nextGroup++, attrs: { ...(t.writableAttrs ?? {}) } };
    s.devices[uuid] = d;
    return d;
}

function removeMdev(k: FakeKernel, d: FakeMdev, data: string): void {
    const v = arg(data).trim();
    if (!/^(0x[0-9a-f]+|0[0-7]*|[1-9]\d*)$/i.test(v)) throw new FakeErrno("EINVAL");
    if (Number(v) === 0) return;
    if (groupOpen(k, d.group)) throw new FakeHang(`remove of mdev ${d.uuid} (vfio group ${d.group} is open)`);
    delete mdev(k).devices[d.uuid];
}

function typeNode(k: FakeKernel, p: FakeMdevParent, t: FakeMdevType, rest: string[]): FakeNode | undefined {
    const s = mdev(k);
    const attrs: Record<string, () => FakeNode | undefined> = {
        name: () => file(() => t.name + "\n"),
        description: () => (t.description !== undefined ? file(() => t.description + "\n") : undefined),
        device_api: () => file(() => t.deviceApi + "\n"),
        available_instances: () => file(() => availableInstances(s, p, t) + "\n"),
        create: () => wo((data) => void createMdev(k, p.name, t.id, data)),
        devices: () => dir(() => Object.values(s.devices).filter((d) => d.parent === p.name && d.type === t.id).map((d) => d.uuid)),
    };
    if (rest.length === 0) return dir(() => Object.keys(attrs).filter((a) => attrs[a]() !== undefined));
    if (rest.length === 1) return attrs[rest[0]]?.();
    if (rest.length === 2 && rest[0] === "devices") {
        const d = s.devices[rest[1]];
        return d && d.parent === p.name && d.type === t.id ? link(`../../../${d.uuid}`) : undefined;
    }
    return undefined;
}

function deviceNode(k: FakeKernel, p: FakeMdevParent, d: FakeMdev, rest: string[]): FakeNode | undefined {
    const t = p.types.find((x) => x.id === d.type)!;
    const up = toSys(`${p.devPath}/${d.uuid}`);
    const vendor = t.vendorAttrs ?? {};
    const writableDirs = [...new Set(Object.keys(d.attrs).filter((a) => a.includes("/")).map((a) => a.split("/")[0]))];
    const attrs: Record<string, () => FakeNode | undefined> = {
        driver: () => link(`${up}bus/mdev/drivers/${p.driver}`),
        iommu_group: () => link(`${up}kernel/iommu_groups/${d.group}`),
        mdev_type: () => link(`../mdev_supported_types/${d.type}`),
        remove: () => wo((data) => removeMdev(k, d, data)),
        subsystem: () => link(`${up}bus/mdev`),
        uevent: () => file(() => `MDEV_TYPE=${d.type}\n`, undefined, 0o644),
        power: () => dir(() => []),
        vendor: () => (Object.keys(vendor).length ? dir(() => Object.keys(vendor)) : undefined),
    };
    for (const w of writableDirs) if (!attrs[w]) attrs[w] = () => dir(() => Object.keys(d.attrs).filter((a) => a.startsWith(w + "/")).map((a) => a.slice(w.length + 1)));
    for (const a of Object.keys(d.attrs).filter((x) => !x.includes("/"))) attrs[a] = () => writable(d, a);
    if (rest.length === 0) return dir(() => Object.keys(attrs).filter((a) => attrs[a]() !== undefined));
    if (rest.length === 1) return attrs[rest[0]]?.();
    if (rest.length === 2 && rest[0] === "vendor" && vendor[rest[1]] !== undefined) {
        // No store method: open(O_WRONLY) fails with EACCES even for root (kernfs), as on the lab kernel.
        return file(() => vendor[rest[1]].replace("{uuid}", d.uuid) + "\n", () => {
            throw new FakeErrno("EACCES");
        });
    }
    if (rest.length === 2 && d.attrs[rest.join("/")] !== undefined) return writable(d, rest.join("/"));
    return undefined;
}

function writable(d: FakeMdev, name: string): FakeNode {
    return file(
        () => d.attrs[name] + "\n",
        (data) => {
            d.attrs[name] = arg(data);
        },
        0o644,
    );
}

function parentNode(k: FakeKernel, p: FakeMdevParent, rest: string[], pciParent: boolean): FakeNode | undefined {
    const s = mdev(k);
    if (rest.length === 0) {
        // A PCI parent's own directory belongs to the PCI subsystem.
        return pciParent ? undefined : dir(() => ["mdev_supported_types", "power", "subsystem", "uevent", ...Object.values(s.devices).filter((d) => d.parent === p.name).map((d) => d.uuid)]);
    }
    if (rest[0] === "mdev_supported_types") {
        if (rest.length === 1) return dir(() => p.types.map((t) => t.id));
        const t = p.types.find((x) => x.id === rest[1]);
        return t ? typeNode(k, p, t, rest.slice(2)) : undefined;
    }
    const d = s.devices[rest[0]];
    if (d && d.parent === p.name) return deviceNode(k, p, d, rest.slice(1));
    if (!pciParent && rest.length === 1 && rest[0] === "uevent") return file(() => `MDEV_STATE=registered\n`, undefined, 0o644);
    return undefined;
}

// ------------------------------------------------------------------------------------------------ NVIDIA vGPU 17+

function vgpuOf(k: FakeKernel, vf: FakePciDevice | undefined): FakeVgpuGpu | undefined {
    return vf?.physfn ? mdev(k).vgpu[vf.physfn] : undefined;
}

/** Types creatable on a free VF: room in the framebuffer, and (time-sliced vGPUs) the same size as those running. */
export function creatableVgpuTypes(g: FakeVgpuGpu): FakeVgpuType[] {
    const active = Object.values(g.current).filter((id) => id !== "0").map((id) => g.types.find((t) => t.id === id)!);
    const usedMiB = active.reduce((n, t) => n + t.framebufferMiB, 0);
    return g.types.filter((t) => usedMiB + t.framebufferMiB <= g.framebufferMiB && active.every((a) => a.framebufferMiB === t.framebufferMiB));
}

function vgpuNode(k: FakeKernel, vf: FakePciDevice, g: FakeVgpuGpu, rest: string[]): FakeNode | undefined {
    const cur = () => g.current[vf.address] ?? "0";
    if (rest.length === 0) return dir(() => ["creatable_vgpu_types", "current_vgpu_type"]);
    if (rest.length > 1) return undefined;
    if (rest[0] === "creatable_vgpu_types") {
        return file(() => "ID    : vGPU Name\n" + (cur() === "0" ? creatableVgpuTypes(g) : []).map((t) => `${t.id}  : ${t.name}\n`).join(""));
    }
    if (rest[0] === "current_vgpu_type") {
        return file(
            () => cur() + "\n",
            (data) => {
                const v = arg(data).trim();
                if (!/^\d+$/.test(v)) throw new FakeErrno("EINVAL");
                if (v === "0") {
                    if (cur() !== "0" && k.openers(`/dev/vfio/${vf.group}`).length) throw new FakeErrno("EBUSY");
                    g.current[vf.address] = "0";
                    return;
                }
                if (cur() !== "0") throw new FakeErrno("EBUSY");
                if (!creatableVgpuTypes(g).some((t) => t.id === v)) throw new FakeErrno("EINVAL");
                g.current[vf.address] = v;
            },
            0o644,
        );
    }
    return undefined;
}

// ------------------------------------------------------------------------------------------------ subsystem

const PCI_DEV = "/sys/devices/pci0000:00";

export const mdevSubsystem: FakeSubsystem = {
    resolve(k, path) {
        const s = mdev(k);
        const parts = path.split("/").filter(Boolean);
        if (path === "/sys/class/mdev_bus") return dir(() => Object.keys(s.parents));
        if (parts[0] === "sys" && parts[1] === "class" && parts[2] === "mdev_bus" && parts.length === 4) {
            const p = s.parents[parts[3]];
            return p ? link(`../..${p.devPath.slice("/sys".length)}`) : undefined;
        }
        if (path === "/sys/bus/mdev") return dir(() => ["devices", "drivers", "drivers_autoprobe", "drivers_probe", "uevent"]);
        if (path === "/sys/bus/mdev/devices") return dir(() => Object.keys(s.devices));
        if (parts.length === 5 && path.startsWith("/sys/bus/mdev/devices/")) {
            const d = s.devices[parts[4]];
            return d ? link(`../../..${s.parents[d.parent].devPath.slice("/sys".length)}/${d.uuid}`) : undefined;
        }
        if (path === "/sys/bus/mdev/drivers") return dir(() => [...new Set(Object.values(s.parents).map((p) => p.driver))]);
        if (parts.length === 5 && path.startsWith("/sys/bus/mdev/drivers/") && Object.values(s.parents).some((p) => p.driver === parts[4])) {
            return dir(() => ["bind", "unbind", "uevent", ...Object.values(s.devices).filter((d) => s.parents[d.parent].driver === parts[4]).map((d) => d.uuid)]);
        }
        for (const p of Object.values(s.parents)) {
            if (path === p.devPath || path.startsWith(p.devPath + "/")) {
                return parentNode(k, p, path.slice(p.devPath.length).split("/").filter(Boolean), p.devPath.startsWith(PCI_DEV + "/"));
            }
        }
        // An mdev's IOMMU group (the PCI subsystem answers only for PCI groups).
        const g = /^\/sys\/kernel\/iommu_groups\/(\d+)(\/.*)?$/.exec(path);
        if (g) {
            const d = Object.values(s.devices).find((x) => String(x.group) === g[1]);
            if (!d) return undefined;
            const rest = (g[2] ?? "").split("/").filter(Boolean);
            if (rest.length === 0) return dir(() => ["devices", "type"]);
            if (rest.length === 1 && rest[0] === "type") return file(() => "unknown\n");
            if (rest[0] === "devices" && rest.length === 1) return dir(() => [d.uuid]);
            if (rest[0] === "devices" && rest.length === 2 && rest[1] === d.uuid) return link(`../../../..${s.parents[d.parent].devPath.slice("/sys".length)}/${d.uuid}`);
            return undefined;
        }
        const vg = /^\/dev\/vfio\/(\d+)$/.exec(path);
        if (vg && Object.values(s.devices).some((d) => String(d.group) === vg[1])) return { kind: "char", major: 244, minor: Number(vg[1]), mode: 0o600 };
        // NVIDIA vGPU 17+: /sys/devices/pci0000:00/<VF>/nvidia/...
        if (path.startsWith(PCI_DEV + "/") && parts[4] === "nvidia") {
            const vf = pci(k).devices[parts[3]];
            const gpu = vgpuOf(k, vf);
            return gpu ? vgpuNode(k, vf!, gpu, parts.slice(5)) : undefined;
        }
        return undefined;
    },
    exec(k, argv) {
        return undefined;
    },
};

extraGroups.push((k) => Object.values(k.state.ext.mdev?.devices ?? {}).map((d) => (d as FakeMdev).group));

/** Attach the mdev framework with the lab's parents; a fresh machine also gets Debian's mdevctl, as the lab has. */
export function addMdev(k: FakeKernel): void {
    k.use(mdevSubsystem);
    if (!k.state.ext.mdev) {
        const s = mdev(k);
        for (const p of labMdevParents()) s.parents[p.name] = p;
        k.state.files["/usr/bin/mdevctl"] = { data: "#!/fake/mdevctl 1.2.0\n", mode: 0o755 };
        k.state.files["/lib/udev/rules.d/60-mdevctl.rules"] = { data: DEBIAN_MDEVCTL_RULE, mode: 0o644 };
        if (!k.state.dirs.includes("/etc/mdevctl.d")) k.state.dirs.push("/etc/mdevctl.d");
    }
}

// ------------------------------------------------------------------------------------------------ test controls

/** Register another parent (e.g. a PCI GPU with NVIDIA's mdev types and a writable `nvidia/vgpu_params`). */
export function addMdevParent(k: FakeKernel, p: Omit<FakeMdevParent, "devPath"> & { devPath?: string }): FakeMdevParent {
    const devPath = p.devPath ?? (/^[0-9a-f]{4}:/.test(p.name) ? `${PCI_DEV}/${p.name}` : `/sys/devices/virtual/${p.name}/${p.name}`);
    const parent = { ...p, devPath };
    mdev(k).parents[p.name] = parent;
    return parent;
}

/**
 * An NVIDIA GPU with vGPU 17+ (Ada: an L40S with 48 GiB, VFs at offset 4 as on real boards), its SR-IOV VFs already
 * enabled and bound to the vGPU manager's VFIO variant driver (so each VF has /dev/vfio/<group>).
 */
export function addNvidiaVgpuGpu(
    k: FakeKernel,
    o: { pf?: string; vfs?: number; framebufferMiB?: number; types?: FakeVgpuType[] } = {},
): { pf: string; vfs: string[] } {
    const s = pci(k);
    const pf = o.pf ?? "0000:41:00.0";
    const n = o.vfs ?? 4;
    const types = o.types ?? [
        { id: "1155", name: "NVIDIA L40S-1Q", framebufferMiB: 1024 },
        { id: "1156", name: "NVIDIA L40S-2Q", framebufferMiB: 2048 },
        { id: "1157", name: "NVIDIA L40S-4Q", framebufferMiB: 4096 },
        { id: "1160", name: "NVIDIA L40S-24Q", framebufferMiB: 24576 },
        { id: "1161", name: "NVIDIA L40S-48Q", framebufferMiB: 49152 },
    ];
    s.drivers.nvidia = { name: "nvidia", module: "nvidia", ids: ["10de:26b9"], dynamicIds: [], sriov: true };
    s.drivers.nvidia_vgpu_vfio = { name: "nvidia_vgpu_vfio", module: "nvidia_vgpu_vfio", ids: ["10de:26ba"], dynamicIds: [] };
    for (const m of ["nvidia", "nvidia_vgpu_vfio"]) if (!s.loaded.includes(m)) s.loaded.push(m);
    const base: Omit<FakePciDevice, "address" | "group"> = {
        vendor: "0x10de",
        device: "0x26b9",
        subsystemVendor: "0x10de",
        subsystemDevice: "0x1851",
        class: "0x030200",
        driver: "nvidia",
        override: null,
        resetMethods: ["bus"],
        numaNode: 0,
    };
    s.devices[pf] = { ...base, address: pf, group: s.nextGroup++, sriov: { totalVfs: 32, numVfs: n, autoprobe: true, vfDevice: "0x26ba", offset: 4, stride: 1 } };
    const [dom, bus] = pf.split(":");
    const vfs: string[] = [];
    for (let i = 0; i < n; i++) {
        const fn = 4 + i;
        const addr = `${dom}:${bus}:${(fn >> 3).toString(16).padStart(2, "0")}.${fn & 7}`;
        s.devices[addr] = { ...base, address: addr, device: "0x26ba", driver: "nvidia_vgpu_vfio", group: s.nextGroup++, resetMethods: ["flr"], physfn: pf };
        vfs.push(addr);
    }
    mdev(k).vgpu[pf] = { pf, framebufferMiB: o.framebufferMiB ?? 49152, types, current: Object.fromEntries(vfs.map((v) => [v, "0"])) };
    return { pf, vfs };
}

/**
 * A reboot as far as mdevs go: the kernel forgets every mdev and vGPU; then, for each parent that has a directory
 * in /etc/mdevctl.d, udev runs the mdevctl that the effective 60-mdevctl.rules names — and when that program does
 * not exist (Debian 12), nothing starts. mdevctl creates each `start: auto` device and writes its attrs in order.
 * Returns the UUIDs started.
 */
export function rebootMdevs(k: FakeKernel): string[] {
    const s = mdev(k);
    s.devices = {};
    for (const g of Object.values(s.vgpu)) for (const v of Object.keys(g.current)) g.current[v] = "0";
    for (const p of Object.keys(k.state.openers)) if (p.startsWith("/dev/vfio/")) delete k.state.openers[p];
    const rule = ["/etc/udev/rules.d", "/run/udev/rules.d", "/usr/lib/udev/rules.d", "/lib/udev/rules.d"].map((d) => k.state.files[`${d}/60-mdevctl.rules`]).find(Boolean);
    const calls = rule ? /(\/[^\s'"]*\/mdevctl)\s+start-parent-mdevs/.exec(rule.data)?.[1] : undefined;
    if (!calls || !k.state.files[calls]) return [];
    const started: string[] = [];
    for (const parent of Object.keys(s.parents).sort()) {
        const prefix = `/etc/mdevctl.d/${parent}/`;
        for (const [path, f] of Object.entries(k.state.files).sort(([a], [b]) => a.localeCompare(b))) {
            if (!path.startsWith(prefix) || path.slice(prefix.length).includes("/")) continue;
            let cfg: { mdev_type?: string; start?: string; attrs?: Record<string, string>[] };
            try {
                cfg = JSON.parse(f.data);
            } catch {
                continue;
            }
            if (cfg.start !== "auto" || !cfg.mdev_type) continue;
            try {
                const d = createMdev(k, parent, cfg.mdev_type, path.slice(prefix.length));
                for (const a of cfg.attrs ?? []) for (const [name, value] of Object.entries(a)) if (d.attrs[name] !== undefined) d.attrs[name] = String(value);
                started.push(d.uuid);
            } catch {
                /* mdevctl logs and goes on with the next device */
            }
        }
    }
    return started;
}
