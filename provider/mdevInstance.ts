/**
 * MdevInstance: what happens on `pulumi preview` / `up` / `refresh` / `destroy` for "one mediated device (a slice
 * of a GPU, or a sample mdev) of this type on this parent, with this UUID".
 *
 * - check: validate the inputs, then read the host (nothing changes): resolve the parent (a name under
 *   /sys/class/mdev_bus, a PCI address, or an NVIDIA vGPU 17+ PF/VF), choose the type (exact, or the first fit of
 *   `vram` bounds, smallest first), and refuse what cannot work — unknown parent or type, no instance left (listing
 *   the types that have room), a UUID used by another mdev, persistence without mdevctl — naming the fix. The plan
 *   (`plan`) says what `up` will do, and `typeId`/`parentDevice` show the resolved choice in the preview.
 * - create/update: under the host lock, write the UUID to the type's `create`, then the attrs, then mdevctl's
 *   config when persistent, in one batch, and read the device back; on any failure remove the mdev again.
 *   A UUID that already names an mdev of the same type on the same parent is adopted (a retried create).
 * - read: gone when the mdev is gone; its real type, group and persistence otherwise (a changed type is drift,
 *   which diff turns into a replacement).
 * - delete: refuse while a process holds /dev/vfio/<group> (the kernel's `remove` would block until it exits);
 *   otherwise write `remove`, check it is gone, and delete the mdevctl config.
 */
import { CheckFailure, CheckResult, containsUnknown, isUnknown, validate, withoutProvider, DiffResult } from "./check";
import { PlanError, SysfsError } from "./errors";
import { withHost } from "./host";
import { describeHolders, pidsOf } from "./sysfs/proc";
import { Connection, hostIdentity } from "./host/ssh";
import { Host, Op, OpResult } from "./host/types";
import {
    BOOT_HOOK_OPS,
    BootHook,
    MDEV_BUS,
    MDEV_DEVICES,
    MDEV_READ_OPS,
    MdevAttr,
    MdevDevice,
    MdevType,
    MdevctlConfig,
    NVIDIA_CREATABLE,
    NVIDIA_CURRENT,
    TYPE_READ_OPS,
    VgpuVf,
    VramBounds,
    assertAttrName,
    attrOps,
    bootHookOps,
    createOp,
    describeType,
    fitsVram,
    listLines,
    mdevReadOps,
    mdevctlConfig,
    mdevctlConfigPath,
    parseBootHook,
    parseCreatableVgpuTypes,
    parseMdevDevice,
    parseMdevctlConfig,
    parseParent,
    parseType,
    parseUuid,
    removeOp,
    typeReadOps,
    typesByVram,
    vramOf,
} from "./sysfs/mdev";
import { PCI_DEVICES } from "./sysfs/pci";

export interface MdevInstanceInputs {
    /** A PCI address (`0000:00:02.0`) or a parent's name under /sys/class/mdev_bus (`mtty`); for NVIDIA vGPU 17+ the PF (or one VF). */
    parent: string;
    /** The exact mdev type id (`nvidia-63`, `mtty-2`); for vGPU 17+ the numeric id or the profile name. */
    type?: string;
    /** Choose the type by video memory instead, in MiB: the smallest type within the bounds that has room. */
    vram?: VramBounds;
    /** The mdev's UUID. The SDK class derives one from project, stack and resource name when absent. */
    uuid?: string;
    /** Attributes written, in order, right after create (mdevctl's `attrs`). */
    attrs?: MdevAttr[];
    /** Survive reboots: mdevctl's config in /etc/mdevctl.d/<parent>/<uuid> with `start: auto`. Default false. */
    persistent?: boolean;
    connection?: Connection;
    /** Set by check: the parent as the kernel names it. */
    parentDevice?: string;
    /** Set by check: the chosen type id. */
    typeId?: string;
    /** Set by check: what `up` will do. */
    plan?: string[];
}

export type MdevBackend = "mdev" | "nvidia-vgpu";

export interface MdevInstanceOutputs extends MdevInstanceInputs {
    uuid: string;
    parentDevice: string;
    typeId: string;
    /** The type's `name` (`Dual port serial`, `GRID P40-2Q`). */
    typeName: string;
    backend: MdevBackend;
    /** For vGPU 17+: the VF that carries the vGPU (QEMU: `-device vfio-pci,host=<address>`); null for an mdev. */
    address: string | null;
    /** `/sys/bus/mdev/devices/<uuid>` (QEMU: `-device vfio-pci,sysfsdev=...`), or the VF's directory for vGPU 17+. */
    sysfsPath: string;
    iommuGroup: number;
    /** `/dev/vfio/<group>`, what a VM opens. */
    vfioDevice: string;
    /** Instances of this type that can still be created on the parent. */
    availableInstances: number;
    /** Video memory of the type in MiB, when its description or name says. */
    vramMiB: number | null;
    attrs: MdevAttr[];
    persistent: boolean;
    /** mdevctl's config file when persistent, else null. */
    mdevctlConfig: string | null;
}

const defaults = (i: MdevInstanceInputs) => ({ persistent: i.persistent ?? false, attrs: i.attrs ?? [] });

// ------------------------------------------------------------------------------------------------ host facts

export interface MdevFacts {
    /** Names under /sys/class/mdev_bus. */
    parents: string[];
    backend: MdevBackend | null;
    /** The parent's name as the kernel knows it (mdev_bus entry or PCI address), when it exists. */
    parent: string | null;
    /** The input named a PCI device that exists (used for messages). */
    pciDeviceExists: boolean;
    types: MdevType[];
    /** The mdev that has our UUID now (any parent), or null. */
    existing: MdevDevice | null;
    /** PIDs holding the existing device's group. */
    openers: number[];
    /** vGPU 17+: the VFs considered (the PF's, or the one VF named). */
    vfs: VgpuVf[];
    bootHook: BootHook;
    /** mdevctl's config for our UUID under the parent, as found. */
    config: MdevctlConfig | null;
    configText: string | null;
    /** Only the hinted type was read (the fast path): a refusal is re-planned on full facts for its message. */
    partial?: boolean;
}

const dirOf = (p: string) => `${MDEV_BUS}/${p}/mdev_supported_types`;
const basename = (p: string) => p.slice(p.lastIndexOf("/") + 1);
const nvidiaOps = (dev: string): Op[] => [
    { op: "read", path: `${dev}/${NVIDIA_CURRENT}` },
    { op: "read", path: `${dev}/${NVIDIA_CREATABLE}` },
    { op: "readlink", path: `${dev}/iommu_group` },
];
const parseVf = (index: number, address: string, r: OpResult[]): VgpuVf => ({
    index,
    address,
    current: r[0]?.ok ? r[0].data.trim() || "0" : "0",
    creatable: r[1]?.ok ? parseCreatableVgpuTypes(r[1].data) : [],
    group: r[2]?.ok && r[2].data.trim() ? Number(basename(r[2].data.trim())) : null,
});

/**
 * Everything check and apply need, in at most two round trips (three only for a UUID found on another parent or
 * type, to name it and who holds it). Round trip 1 reads the parent list, the parent's type list, whether our UUID
 * exists (its `uevent`, anywhere and under this parent), mdevctl's config (and boot hook when persistent), the PCI
 * device for vGPU 17+, and — given the type already chosen (`typeHint`: check's `typeId`) — that type's attributes
 * and devices. When that settles it (the parent and type exist; the UUID is free or already ours with that type),
 * there is no second trip. Otherwise trip 2 reads every type (or every VF's vGPU files) and the UUID's links.
 *
 * `stat` is avoided: it starts a program per operation in the batch interpreter, and on a slow host (the lab under
 * TCG) that costs more than the sysfs write itself.
 */
export async function readMdevFacts(host: Host, parentInput: string, uuid: string, opts: { typeHint?: string; persistent?: boolean } = {}): Promise<MdevFacts> {
    const parent = parseParent(parentInput);
    const pciDir = `${PCI_DEVICES}/${parent.name}`;
    const hint = opts.typeHint && /^[A-Za-z0-9_][A-Za-z0-9_.:+-]{0,127}$/.test(opts.typeHint) ? opts.typeHint : undefined;
    const first: Op[] = [
        { op: "list", path: MDEV_BUS },
        { op: "list", path: dirOf(parent.name) },
        { op: "read", path: `${MDEV_DEVICES}/${uuid}/uevent` },
        { op: "read", path: `${MDEV_BUS}/${parent.name}/${uuid}/uevent` },
        { op: "read", path: mdevctlConfigPath(parent.name, uuid) },
    ];
    const hintAt = first.length;
    if (hint) first.push(...typeReadOps(parent.name, hint), { op: "list", path: `${dirOf(parent.name)}/${hint}/devices` });
    const hookAt = first.length;
    if (opts.persistent) first.push(...bootHookOps());
    const pciAt = first.length;
    if (parent.pci) first.push({ op: "list", path: pciDir }, ...nvidiaOps(pciDir));
    const r1 = await host.run(first);
    const parents = listLines(r1[0]);
    const typeIds = listLines(r1[1]);
    const existsAnywhere = !!r1[2]?.ok;
    const existsHere = !!r1[3]?.ok;
    const configText = r1[4]?.ok ? r1[4].data : null;
    const config = configText !== null ? parseMdevctlConfig(configText) : null;
    const bootHook = parseBootHook(opts.persistent ? r1.slice(hookAt, hookAt + BOOT_HOOK_OPS) : []);

    let backend: MdevBackend | null = null;
    let pciDeviceExists = false;
    let virtfns: string[] = [];
    let selfVf: VgpuVf | null = null;
    if (parents.includes(parent.name)) backend = "mdev";
    else if (parent.pci) {
        const listing = listLines(r1[pciAt]);
        pciDeviceExists = r1[pciAt].ok;
        virtfns = listing.filter((n) => /^virtfn\d+$/.test(n)).sort((a, b) => Number(a.slice(6)) - Number(b.slice(6)));
        if (r1[pciAt + 2]?.ok) {
            backend = "nvidia-vgpu";
            selfVf = parseVf(0, parent.name, r1.slice(pciAt + 1, pciAt + 4));
        } else if (virtfns.length) backend = "nvidia-vgpu"; // confirmed below by the VFs' nvidia/ files
    }
    const base = { parents, pciDeviceExists: pciDeviceExists || parents.includes(parent.name), bootHook, config, configText };

    // The fast path: the type chosen at preview still exists, and our UUID is free or already that type here.
    if (backend === "mdev" && hint && r1[hintAt]?.ok) {
        const hinted = parseType(hint, r1.slice(hintAt, hintAt + TYPE_READ_OPS));
        const inHint = listLines(r1[hintAt + TYPE_READ_OPS]).includes(uuid);
        if (!existsAnywhere || (existsHere && inHint)) {
            const existing = existsAnywhere ? { uuid, parent: parent.name, typeId: hint, group: null } : null;
            return { ...base, backend, parent: parent.name, types: [hinted], existing, openers: [], vfs: [], partial: true };
        }
    }

    const second: Op[] = [];
    if (backend === "mdev") for (const t of typeIds) second.push(...typeReadOps(parent.name, t));
    const vfAt = second.length;
    if (backend === "nvidia-vgpu" && !selfVf) for (const v of virtfns) second.push({ op: "readlink", path: `${pciDir}/${v}` }, ...nvidiaOps(`${pciDir}/${v}`));
    const devAt = second.length;
    if (existsAnywhere) second.push(...mdevReadOps(uuid));
    const r2 = second.length ? await host.run(second) : [];

    let types: MdevType[] = [];
    let vfs: VgpuVf[] = [];
    if (backend === "mdev") types = typeIds.map((t, i) => parseType(t, r2.slice(i * TYPE_READ_OPS, (i + 1) * TYPE_READ_OPS)));
    if (backend === "nvidia-vgpu") {
        if (selfVf) vfs = [selfVf];
        else {
            vfs = virtfns
                .map((v, i) => {
                    const r = r2.slice(vfAt + i * 4, vfAt + (i + 1) * 4);
                    return r[0]?.ok && r[2]?.ok ? parseVf(Number(v.slice(6)), basename(r[0].data.trim()), r.slice(1)) : null;
                })
                .filter((v): v is VgpuVf => v !== null);
            if (vfs.length === 0) backend = null; // VFs without nvidia/ files: SR-IOV, but not vGPU
        }
        types = vgpuTypes(vfs);
    }
    const existing = existsAnywhere ? parseMdevDevice(uuid, r2.slice(devAt, devAt + MDEV_READ_OPS)) : null;
    let openers: number[] = [];
    if (existing && existing.group !== null && existing.parent === parent.name) {
        openers = listLines((await host.run([{ op: "openers", path: `/dev/vfio/${existing.group}` }]))[0]).map(Number);
    }
    return { ...base, backend, parent: backend ? parent.name : null, types, existing, openers, vfs, partial: false };
}

/** vGPU 17+ types: every type some free VF can create, with the number of free VFs offering it as capacity. */
export function vgpuTypes(vfs: VgpuVf[]): MdevType[] {
    const by = new Map<string, MdevType>();
    for (const vf of vfs) {
        if (vf.current !== "0") continue;
        for (const c of vf.creatable) {
            const t = by.get(c.id) ?? { id: c.id, name: c.name, description: "", deviceApi: "vfio-pci", available: 0, vramMiB: vramOf({ name: c.name, description: "" }) };
            t.available++;
            by.set(c.id, t);
        }
    }
    return [...by.values()].sort((a, b) => Number(a.id) - Number(b.id));
}

// ------------------------------------------------------------------------------------------------ planning

export type MdevAction = "create" | "adopt" | "keep" | "recreate";

export interface MdevPlan {
    problems: CheckFailure[];
    lines: string[];
    backend: MdevBackend | null;
    parent: string | null;
    type: MdevType | null;
    action: MdevAction | null;
    /** vGPU 17+: the VF the vGPU is (or will be) on. */
    vf: VgpuVf | null;
    /** mdevctl config text to write, or null to leave it; `removeConfig` deletes ours. */
    writeConfig: string | null;
    removeConfig: boolean;
    fixBootHook: BootHook["fix"];
}

const fmtBounds = (b: VramBounds) => `{${[b.min !== undefined ? `min: ${b.min}` : "", b.max !== undefined ? `max: ${b.max}` : ""].filter(Boolean).join(", ")}}`;

function parentList(parents: string[]): string {
    return parents.length
        ? `mdev parents on this host (/sys/class/mdev_bus): ${parents.join(", ")}`
        : "this host has no mdev parent at all (/sys/class/mdev_bus is empty): load the vendor's mdev driver (NVIDIA vGPU manager, i915 with GVT-g, or `modprobe mtty` for the kernel sample)";
}

/**
 * Decide what an MdevInstance does on this host, and what makes it impossible. Pure: the host facts are read
 * beforehand, so check, create, update and the unit tests share it. `olds` are the outputs in the state (absent on
 * create), which is how an instance we made is told apart from someone else's with the same UUID.
 */
/**
 * `atCheck`: planning for `pulumi preview`. A type change is a replacement, and Pulumi stops the VM that holds the mdev
 * first (VMs declare `replaceWith` on their mdevs), so a held mdev is only a refusal when the apply itself would
 * remove it (the kernel's remove would block until the VM lets go).
 */
export function planMdev(inputs: MdevInstanceInputs & { uuid: string }, facts: MdevFacts, olds?: Partial<MdevInstanceOutputs>, atCheck = false): MdevPlan {
    const { persistent, attrs } = defaults(inputs);
    const problems: CheckFailure[] = [];
    const fail = (property: string, reason: string) => problems.push({ property, reason });
    const lines: string[] = [];
    const plan: MdevPlan = { problems, lines, backend: facts.backend, parent: facts.parent, type: null, action: null, vf: null, writeConfig: null, removeConfig: false, fixBootHook: null };
    const uuid = inputs.uuid;
    const parentName = parseParent(inputs.parent).name;

    if (!facts.backend || !facts.parent) {
        if (facts.pciDeviceExists) {
            fail("parent", `${parentName} is not an mdev parent (it is not under /sys/class/mdev_bus) and has no NVIDIA vGPU VFs (nvidia/creatable_vgpu_types); for NVIDIA vGPU 17+ enable its VFs first (a VirtualFunctions resource, or /usr/lib/nvidia/sriov-manage -e). ${parentList(facts.parents)}`);
        } else {
            fail("parent", `no mdev parent ${JSON.stringify(inputs.parent)} on this host; ${parentList(facts.parents)}`);
        }
        return plan;
    }
    if (inputs.type !== undefined && inputs.vram !== undefined) fail("vram", "give either type (an exact type id) or vram (bounds in MiB), not both");
    if (inputs.type === undefined && inputs.vram === undefined) {
        fail("type", `give type (an exact type id) or vram (bounds in MiB); types of ${facts.parent}: ${facts.types.map(describeType).join("; ") || "none"}`);
    }
    if (inputs.vram && inputs.vram.min !== undefined && inputs.vram.max !== undefined && inputs.vram.min > inputs.vram.max) {
        fail("vram", `vram.min (${inputs.vram.min}) is above vram.max (${inputs.vram.max})`);
    }
    if (facts.backend === "nvidia-vgpu") {
        if (persistent) fail("persistent", "NVIDIA vGPU 17+ vGPUs are not mdevs: mdevctl cannot recreate them at boot. Set persistent: false and let the program (pulumi up) recreate it after a reboot");
        if (attrs.length) fail("attrs", "NVIDIA vGPU 17+ vGPUs have no mdev attributes; remove attrs");
    }
    if (problems.length) return plan;

    // ---- our instance, or someone else's with our UUID
    const ours = !!olds?.uuid && olds.uuid === uuid;
    let current: { typeId: string; vf: VgpuVf | null } | null = null;
    if (facts.backend === "mdev") {
        const e = facts.existing;
        if (e && e.parent !== facts.parent) {
            fail("uuid", `UUID ${uuid} is already an mdev of type ${e.typeId} on parent ${e.parent}; UUIDs are unique across parents: choose another uuid, or remove that mdev (echo 1 > ${MDEV_DEVICES}/${uuid}/remove)`);
            return plan;
        }
        if (e) current = { typeId: e.typeId, vf: null };
    } else {
        const vf = olds?.address ? facts.vfs.find((v) => v.address === olds.address && v.current !== "0") : undefined;
        if (ours && vf) current = { typeId: vf.current, vf };
    }

    // ---- the type
    const types = facts.types;
    const byId = (id: string) => types.find((t) => t.id === id || (facts.backend === "nvidia-vgpu" && t.name === id));
    let chosen: MdevType | undefined;
    const property = inputs.type !== undefined ? "type" : "vram";
    if (inputs.type !== undefined) {
        chosen = byId(inputs.type);
        if (!chosen && current && (current.typeId === inputs.type || (olds?.typeId === current.typeId && olds?.typeName === inputs.type))) {
            chosen = { id: current.typeId, name: olds?.typeName ?? current.typeId, description: "", deviceApi: "vfio-pci", available: 0, vramMiB: olds?.vramMiB ?? null };
        }
        if (!chosen) {
            const what = facts.backend === "nvidia-vgpu" ? `no free VF of ${facts.parent} can create vGPU type ${JSON.stringify(inputs.type)}; creatable now` : `parent ${facts.parent} has no mdev type ${JSON.stringify(inputs.type)}; its types`;
            fail("type", `${what}: ${types.map(describeType).join("; ") || "none"}`);
            return plan;
        }
    } else {
        const bounds = inputs.vram!;
        const fit = typesByVram(types, bounds);
        const keep = current ? fit.find((t) => t.id === current!.typeId) ?? (olds?.typeId === current.typeId && olds.vramMiB !== null && olds.vramMiB !== undefined && fitsVram({ ...byId(current.typeId)!, vramMiB: olds.vramMiB }, bounds) ? byId(current.typeId) : undefined) : undefined;
        if (fit.length === 0 && !keep) {
            const sized = [...types].sort((a, b) => (a.vramMiB ?? -1) - (b.vramMiB ?? -1) || a.id.localeCompare(b.id));
            const list = sized.map((t) => (t.vramMiB !== null ? `${t.id} ${t.vramMiB} MiB` : `${t.id} (no video memory stated)`)).join(", ");
            fail("vram", `vram ${fmtBounds(bounds)} MiB matches no type of ${facts.parent}; types and their video memory: ${list || "none"}`);
            return plan;
        }
        chosen = keep ?? fit.find((t) => t.available > 0) ?? fit[0];
    }
    plan.type = chosen;

    // ---- what to do with the device
    if (facts.backend === "mdev") {
        const e = facts.existing;
        if (!e) plan.action = "create";
        else if (e.typeId === chosen.id) plan.action = ours ? "keep" : "adopt";
        else if (ours) plan.action = "recreate";
        else {
            fail("uuid", `UUID ${uuid} is already an mdev of type ${e.typeId} on ${facts.parent}, not ${chosen.id}; choose another uuid, or remove that mdev first`);
            return plan;
        }
        if (plan.action === "recreate" && facts.openers.length && !atCheck) {
            fail("type", `the mdev ${uuid} must be recreated as ${chosen.id} (it is ${e!.typeId} now), but /dev/vfio/${e!.group} is held open by PID ${facts.openers.join(", ")}; stop the VM first`);
        }
    } else {
        if (current && current.typeId === chosen.id) {
            plan.action = "keep";
            plan.vf = current.vf;
        } else {
            plan.action = current ? "recreate" : "create";
            plan.vf = facts.vfs.find((v) => v.current === "0" && v.creatable.some((c) => c.id === chosen!.id)) ?? null;
        }
    }
    const needsRoom = plan.action === "create" || (plan.action === "recreate" && facts.backend === "nvidia-vgpu");
    if (needsRoom && chosen.available < 1) {
        const room = types.filter((t) => t.available > 0 && t.id !== chosen!.id);
        const where = facts.backend === "nvidia-vgpu" ? `no free VF of ${facts.parent} can create it` : `available_instances is 0`;
        fail(
            property,
            `mdev type ${chosen.id}${chosen.name !== chosen.id ? ` (${chosen.name})` : ""} on ${facts.parent} has no instance left (${where}); ${room.length ? `types of ${facts.parent} with room: ${room.map(describeType).join("; ")}` : `no type of ${facts.parent} has room now: remove an instance first`}`,
        );
        return plan;
    }

    // ---- persistence (mdevctl)
    const want = mdevctlConfig(chosen.id, attrs);
    const cfgPath = mdevctlConfigPath(facts.parent, uuid);
    if (persistent && facts.backend === "mdev") {
        if (!facts.bootHook.mdevctl) {
            fail("persistent", "persistent: true needs mdevctl on the host (apt install mdevctl / dnf install mdevctl): it starts the devices defined in /etc/mdevctl.d at boot. Install it, or set persistent: false");
        } else if (!facts.bootHook.works && !facts.bootHook.fix) {
            fail("persistent", `mdevctl is installed (${facts.bootHook.mdevctl}) but ${facts.bootHook.rulePath ? `its udev rule ${facts.bootHook.rulePath} does not run it` : `its udev rule ${"60-mdevctl.rules"} is missing`}, so nothing would start the device at boot; reinstall mdevctl, or set persistent: false`);
        }
        plan.fixBootHook = facts.bootHook.works ? null : facts.bootHook.fix;
        if (facts.configText === null || facts.config?.type !== chosen.id || facts.config.start !== "auto" || JSON.stringify(facts.config.attrs) !== JSON.stringify(attrs)) plan.writeConfig = want;
    } else if (!persistent && facts.configText !== null && olds?.persistent) {
        plan.removeConfig = true;
    }

    // ---- the preview
    const typeLabel = `${chosen.id}${chosen.name !== chosen.id ? ` (${chosen.name})` : ""}`;
    if (facts.backend === "mdev") {
        const after = chosen.available - (plan.action === "create" ? 1 : 0);
        if (plan.action === "create") lines.push(`create mdev ${uuid} of type ${typeLabel} on ${facts.parent}; ${after} more can be created after it`);
        if (plan.action === "adopt") lines.push(`adopt the existing mdev ${uuid} (type ${typeLabel} on ${facts.parent})`);
        if (plan.action === "keep") lines.push(`mdev ${uuid} (type ${typeLabel} on ${facts.parent}) exists, no change`);
        if (plan.action === "recreate") lines.push(`mdev ${uuid} is ${facts.existing!.typeId} now: remove it and create it as ${typeLabel}`);
        if ((plan.action === "create" || plan.action === "adopt" || plan.action === "recreate") && attrs.length) {
            lines.push(`write ${attrs.map((a) => `${a.name}=${JSON.stringify(a.value)}`).join(", ")} under ${MDEV_DEVICES}/${uuid}`);
        }
    } else {
        if (plan.action === "keep") lines.push(`vGPU ${typeLabel} on VF ${plan.vf!.address} exists, no change`);
        else lines.push(`set ${PCI_DEVICES}/${plan.vf?.address}/${NVIDIA_CURRENT} to ${chosen.id} (${chosen.name}); ${chosen.available - 1} more VFs can take it after that`);
    }
    if (plan.fixBootHook) {
        lines.push(
            `write ${plan.fixBootHook.path}: the installed ${facts.bootHook.rulePath} runs ${plan.fixBootHook.from}, which does not exist (mdevctl is ${plan.fixBootHook.to}), so mdevctl would start nothing at boot`,
        );
    }
    if (plan.writeConfig) lines.push(`write ${cfgPath} (mdevctl, start: auto) so the mdev comes back at boot`);
    if (plan.removeConfig) lines.push(`remove ${cfgPath} (no longer persistent)`);
    return plan;
}

/** Read and plan; a refusal planned on the fast path's partial facts is planned again on full facts, for its message. */
async function factsAndPlan(host: Host, inputs: MdevInstanceInputs & { uuid: string }, typeHint: string | undefined, olds?: Partial<MdevInstanceOutputs>, atCheck = false): Promise<{ facts: MdevFacts; plan: MdevPlan }> {
    const persistent = defaults(inputs).persistent;
    let facts = await readMdevFacts(host, inputs.parent, inputs.uuid, { typeHint, persistent });
    let plan = planMdev(inputs, facts, olds, atCheck);
    if (plan.problems.length && facts.partial) {
        facts = await readMdevFacts(host, inputs.parent, inputs.uuid, { persistent });
        plan = planMdev(inputs, facts, olds, atCheck);
    }
    return { facts, plan };
}

// ------------------------------------------------------------------------------------------------ check / diff

function message(f: () => unknown): string {
    try {
        f();
        return "";
    } catch (e) {
        return (e as Error).message;
    }
}

/**
 * Validate and normalize inputs (UUID in lower case). Reads the host (never writes) unless something it needs is
 * unknown in preview, and returns `parentDevice`, `typeId` and `plan` in the inputs so `pulumi preview` shows them.
 */
export async function check(olds: Record<string, any>, news: Record<string, any>, onHost?: Host): Promise<CheckResult<MdevInstanceInputs>> {
    const { inputs, failures: schemaFailures } = validate<MdevInstanceInputs>("mdev-instance.schema.json", news);
    delete inputs.parentDevice;
    delete inputs.typeId;
    delete inputs.plan;
    // Fields with a pattern get our parsers' messages, which say what form to use.
    const own: CheckFailure[] = [];
    if (typeof inputs.uuid === "string" && !isUnknown(inputs.uuid)) {
        const m = message(() => parseUuid(inputs.uuid!));
        if (m) own.push({ property: "uuid", reason: `uuid: ${m}` });
        else inputs.uuid = parseUuid(inputs.uuid);
    }
    if (typeof inputs.parent === "string" && !isUnknown(inputs.parent)) {
        const m = message(() => parseParent(inputs.parent));
        if (m) own.push({ property: "parent", reason: `parent: ${m}` });
    }
    (Array.isArray(inputs.attrs) ? inputs.attrs : []).forEach((a, i) => {
        if (a && typeof a.name === "string" && !isUnknown(a.name)) {
            const m = message(() => assertAttrName(a.name));
            if (m) own.push({ property: `attrs[${i}].name`, reason: `attrs[${i}].name: ${m}` });
        }
    });
    const covered = new Set(own.map((f) => f.property));
    const failures = [...own, ...schemaFailures.filter((f) => !covered.has(f.property))];
    if (failures.length) return { inputs, failures };
    if (inputs.uuid === undefined) {
        if (typeof olds?.uuid === "string") inputs.uuid = olds.uuid;
        else {
            failures.push({ property: "uuid", reason: "uuid is missing and there is no previous one to keep: the MdevInstance class derives it from the project, stack and resource name; give it explicitly when calling the provider directly" });
            return { inputs, failures };
        }
    }
    if ([inputs.parent, inputs.type, inputs.vram, inputs.uuid, inputs.connection, inputs.attrs, inputs.persistent].some(containsUnknown)) {
        // Preview of a value computed later: the host is checked again when it is known.
        return { inputs, failures: [] };
    }
    try {
        await withHost(
            inputs.connection,
            async (host) => {
                const prev = olds?.uuid === inputs.uuid && olds?.parent === inputs.parent ? (olds.typeId as string | undefined) : undefined;
                const { plan } = await factsAndPlan(host, inputs as MdevInstanceInputs & { uuid: string }, inputs.type ?? prev, olds as Partial<MdevInstanceOutputs>, true);
                failures.push(...plan.problems);
                if (plan.parent) inputs.parentDevice = plan.parent;
                if (plan.type) inputs.typeId = plan.type.id;
                inputs.plan = plan.lines;
            },
            onHost,
        );
    } catch (e) {
        const err = e as Error;
        failures.push({ property: err.name === "ConnectionError" ? "connection" : "parent", reason: err.message });
    }
    return { inputs, failures };
}


export type { DiffResult };

/**
 * Another parent, type, UUID, attrs or host → replace, the old mdev removed first (the same UUID is reused);
 * persistence → update in place; a type changed underneath us (seen by refresh) → replace.
 */
export function diff(_id: string, olds: MdevInstanceOutputs, news: MdevInstanceInputs): DiffResult {
    const replaces: string[] = [];
    const newParent = news.parentDevice ?? (typeof news.parent === "string" && !isUnknown(news.parent) ? message(() => parseParent(news.parent)) === "" ? parseParent(news.parent).name : undefined : undefined);
    if (containsUnknown(news.parent) || newParent === undefined || newParent !== olds.parentDevice) replaces.push("parent");
    if (containsUnknown(news.uuid) || (news.uuid !== undefined && news.uuid.toLowerCase() !== olds.uuid)) replaces.push("uuid");
    if (news.typeId !== undefined) {
        if (news.typeId !== olds.typeId) replaces.push(news.type !== undefined ? "type" : "vram");
    } else if (containsUnknown(news.type) || containsUnknown(news.vram)) {
        replaces.push(news.type !== undefined ? "type" : "vram");
    } else if (news.type !== undefined && news.type !== olds.typeId && news.type !== olds.typeName) {
        replaces.push("type");
    }
    if (containsUnknown(news.attrs) || JSON.stringify(news.attrs ?? []) !== JSON.stringify(olds.attrs ?? [])) replaces.push("attrs");
    if (containsUnknown(news.connection) || hostIdentity(news.connection) !== hostIdentity(olds.connection)) replaces.push("connection");
    let changes = replaces.length > 0;
    if (defaults(news).persistent !== olds.persistent) changes = true;
    if (JSON.stringify(news.type) !== JSON.stringify(olds.type) || JSON.stringify(news.vram) !== JSON.stringify(olds.vram)) changes = true;
    return { changes, replaces: [...new Set(replaces)], deleteBeforeReplace: true };
}

// ------------------------------------------------------------------------------------------------ apply

/** Errors of the mdev files, with what the kernel means by them (LAB.md, observed on 6.1). */
function mdevError(op: Op, r: OpResult): SysfsError {
    const e = SysfsError.from(op, r);
    if (op.op !== "write") return e;
    const leaf = basename(op.path);
    const hints: Record<string, string> = {
        "create:EEXIST": "another mdev already has this UUID (on some parent)",
        "create:ENOSPC": "the parent has no instance of this type left (available_instances is 0)",
        "create:EUSERS": "the parent has no instance of this type left",
        "create:EINVAL": "the kernel did not take the value as a UUID",
        "remove:ENOENT": "the mdev is already gone",
        "current_vgpu_type:EBUSY": "the VF already has a vGPU, or a VM uses it",
        "current_vgpu_type:EINVAL": "the VF cannot create that vGPU type now (see nvidia/creatable_vgpu_types)",
    };
    const hint = hints[`${leaf}:${r.errno}`] ?? (leaf !== "create" && leaf !== "remove" && r.errno === "EACCES" ? "the attribute is read-only (the vendor driver has no store method for it)" : undefined);
    return hint ? new SysfsError(e.path, e.errno, e.detail, hint) : e;
}

function firstError(ops: Op[], r: OpResult[]): SysfsError | undefined {
    for (let i = 0; i < ops.length; i++) {
        const op = ops[i];
        if (!r[i] || r[i].skipped || r[i].ok || ("optional" in op && op.optional)) continue;
        if (op.op === "write" || op.op === "put" || op.op === "mkdir" || op.op === "remove" || op.op === "exec") return mdevError(op, r[i]);
    }
    return undefined;
}

function outputsOf(inputs: MdevInstanceInputs & { uuid: string }, plan: MdevPlan, dev: { group: number; available: number; typeId?: string; typeName?: string }, persistent: boolean): MdevInstanceOutputs {
    const { attrs } = defaults(inputs);
    const t = plan.type!;
    const nvidia = plan.backend === "nvidia-vgpu";
    const cfg = mdevctlConfigPath(plan.parent!, inputs.uuid);
    const out: MdevInstanceOutputs = {
        ...withoutProvider(inputs),
        uuid: inputs.uuid,
        parentDevice: plan.parent!,
        typeId: dev.typeId ?? t.id,
        typeName: dev.typeName ?? t.name,
        backend: plan.backend!,
        address: nvidia ? plan.vf!.address : null,
        sysfsPath: nvidia ? `${PCI_DEVICES}/${plan.vf!.address}` : `${MDEV_DEVICES}/${inputs.uuid}`,
        iommuGroup: dev.group,
        vfioDevice: `/dev/vfio/${dev.group}`,
        availableInstances: dev.available,
        vramMiB: t.vramMiB,
        attrs,
        persistent,
        mdevctlConfig: persistent ? cfg : null,
        plan: plan.lines,
    };
    return out;
}

/** Remove the mdev we just made; returns a note for the error message. */
async function rollback(host: Host, uuid: string): Promise<string> {
    const r = await host.run([removeOp(uuid, true), { op: "read", path: `${MDEV_DEVICES}/${uuid}/uevent` }]);
    return r[1]?.ok ? ` Rollback failed: ${MDEV_DEVICES}/${uuid} still exists (${r[0].errno ?? "remove did not take"}); remove it by hand.` : ` The mdev ${uuid} was removed again.`;
}

/**
 * What apply and read look at afterwards, in one round trip and no process: the device under its parent (`uevent`),
 * whether the type's `devices/` lists it, its group (the one `readlink`), the type's capacity, mdevctl's config.
 */
function readBackOps(parent: string, typeId: string, uuid: string): Op[] {
    const dev = `${MDEV_BUS}/${parent}/${uuid}`;
    return [
        { op: "read", path: `${dev}/uevent` },
        { op: "list", path: `${dirOf(parent)}/${typeId}/devices` },
        { op: "readlink", path: `${dev}/iommu_group` },
        { op: "read", path: `${dirOf(parent)}/${typeId}/available_instances` },
        { op: "read", path: mdevctlConfigPath(parent, uuid) },
    ];
}

const READ_BACK_OPS = 5;

function parseReadBack(uuid: string, r: OpResult[]): { exists: boolean; ofType: boolean; group: number | null; available: number | null; config: MdevctlConfig | null } {
    return {
        exists: !!r[0]?.ok,
        ofType: listLines(r[1]).includes(uuid),
        group: r[2]?.ok && r[2].data.trim() ? Number(basename(r[2].data.trim())) : null,
        available: r[3]?.ok ? Number(r[3].data.trim()) : null,
        config: r[4]?.ok ? parseMdevctlConfig(r[4].data) : null,
    };
}

async function convergeMdev(host: Host, inputs: MdevInstanceInputs & { uuid: string }, plan: MdevPlan, facts: MdevFacts): Promise<MdevInstanceOutputs> {
    const { attrs, persistent } = defaults(inputs);
    const uuid = inputs.uuid;
    const parent = plan.parent!;
    const t = plan.type!;
    if (plan.action === "recreate") {
        const r = await host.run([removeOp(uuid)]);
        if (!r[0].ok) throw new Error(`removing mdev ${uuid} (type ${facts.existing?.typeId}) to recreate it as ${t.id} failed: ${mdevError(removeOp(uuid), r[0]).message}`);
    }
    const creating = plan.action === "create" || plan.action === "recreate";
    const ops: Op[] = [];
    if (creating) ops.push(createOp(parent, t.id, uuid));
    if (creating || plan.action === "adopt") ops.push(...attrOps(uuid, attrs));
    if (plan.writeConfig !== null) {
        ops.push({ op: "mkdir", path: `/etc/mdevctl.d/${parent}`, mode: 0o755 });
        ops.push({ op: "put", path: mdevctlConfigPath(parent, uuid), data: plan.writeConfig, mode: 0o644 });
    }
    if (plan.fixBootHook) ops.push({ op: "put", path: plan.fixBootHook.path, data: plan.fixBootHook.text, mode: 0o644 });
    if (plan.removeConfig) ops.push({ op: "remove", path: mdevctlConfigPath(parent, uuid) });
    const applied = ops.length;
    ops.push(...readBackOps(parent, t.id, uuid));
    const r = await host.run(ops, { stopOnError: true });
    const failure = firstError(ops.slice(0, applied), r);
    if (failure) {
        const createdNow = creating && r[0]?.ok;
        const note = createdNow ? await rollback(host, uuid) : "";
        if (createdNow && plan.writeConfig !== null && facts.configText === null) await host.run([{ op: "remove", path: mdevctlConfigPath(parent, uuid) }]);
        throw new Error(`${creating ? "creating" : "configuring"} mdev ${uuid} (type ${t.id} on ${parent}) failed: ${failure.message}.${note}`);
    }
    const back = parseReadBack(uuid, r.slice(applied));
    if (!back.exists || !back.ofType || back.group === null) {
        const note = creating ? await rollback(host, uuid) : "";
        throw new Error(`mdev ${uuid} is not there as type ${t.id} after writing ${MDEV_BUS}/${parent}/mdev_supported_types/${t.id}/create (${back.exists ? "it has another type" : "no such device"}); check dmesg.${note}`);
    }
    const isPersistent = back.config?.type === t.id;
    return outputsOf(inputs, plan, { group: back.group, available: back.available ?? 0 }, isPersistent && persistent);
}

async function convergeVgpu(host: Host, inputs: MdevInstanceInputs & { uuid: string }, plan: MdevPlan, olds?: Partial<MdevInstanceOutputs>): Promise<MdevInstanceOutputs> {
    const t = plan.type!;
    let vf = plan.vf!;
    if (plan.action === "recreate" && olds?.address) {
        const clear: Op = { op: "write", path: `${PCI_DEVICES}/${olds.address}/${NVIDIA_CURRENT}`, data: "0" };
        const r = await host.run([clear]);
        if (!r[0].ok) throw new Error(`clearing the vGPU on ${olds.address} failed: ${mdevError(clear, r[0]).message}`);
    }
    if (plan.action !== "keep") {
        if (!vf) throw new PlanError("type", `no free VF of ${plan.parent} can create vGPU type ${t.id}`);
        const set: Op = { op: "write", path: `${PCI_DEVICES}/${vf.address}/${NVIDIA_CURRENT}`, data: t.id };
        const r = await host.run([set, { op: "read", path: `${PCI_DEVICES}/${vf.address}/${NVIDIA_CURRENT}` }], { stopOnError: true });
        if (!r[0].ok) throw new Error(`creating vGPU ${t.id} (${t.name}) on ${vf.address} failed: ${mdevError(set, r[0]).message}`);
        if (r[1]?.data.trim() !== t.id) throw new Error(`${vf.address}/${NVIDIA_CURRENT} reads ${r[1]?.data.trim() || "nothing"} after writing ${t.id}; check dmesg`);
    }
    const facts = await readMdevFacts(host, inputs.parent, inputs.uuid);
    vf = facts.vfs.find((v) => v.address === vf.address) ?? vf;
    const available = vgpuTypes(facts.vfs).find((x) => x.id === t.id)?.available ?? 0;
    return outputsOf(inputs, { ...plan, vf }, { group: vf.group ?? -1, available, typeName: t.name }, false);
}

/**
 * Create a non-persistent mdev of the type check chose by writing `create` first and letting the kernel judge: one
 * batch with the read-back. A refused create changed nothing (EEXIST: the UUID exists, to adopt; ENOSPC: no room;
 * ENOENT: no such mdev parent or type, e.g. an NVIDIA vGPU parent), so null sends the caller down the full
 * read-then-plan path, which adopts or explains. A refused attribute removes the mdev again, as in the full path.
 */
async function createDirect(host: Host, inputs: MdevInstanceInputs & { uuid: string }, typeId: string): Promise<MdevInstanceOutputs | null> {
    const { attrs } = defaults(inputs);
    const uuid = inputs.uuid;
    const parent = parseParent(inputs.parent).name;
    const ops: Op[] = [createOp(parent, typeId, uuid), ...attrOps(uuid, attrs)];
    const applied = ops.length;
    ops.push(...readBackOps(parent, typeId, uuid), ...typeReadOps(parent, typeId));
    const r = await host.run(ops, { stopOnError: true });
    if (!r[0].ok) return null;
    const type = parseType(typeId, r.slice(applied + READ_BACK_OPS));
    const failure = firstError(ops.slice(0, applied), r);
    if (failure) throw new Error(`creating mdev ${uuid} (type ${typeId} on ${parent}) failed: ${failure.message}.${await rollback(host, uuid)}`);
    const back = parseReadBack(uuid, r.slice(applied, applied + READ_BACK_OPS));
    if (!back.exists || !back.ofType || back.group === null) {
        throw new Error(`mdev ${uuid} is not there as type ${typeId} after writing ${MDEV_BUS}/${parent}/mdev_supported_types/${typeId}/create (${back.exists ? "it has another type" : "no such device"}); check dmesg.${await rollback(host, uuid)}`);
    }
    const plan: MdevPlan = { problems: [], lines: inputs.plan ?? [], backend: "mdev", parent, type, action: "create", vf: null, writeConfig: null, removeConfig: false, fixBootHook: null };
    return outputsOf(inputs, plan, { group: back.group, available: back.available ?? type.available }, false);
}

async function converge(host: Host, inputs: MdevInstanceInputs, olds?: Partial<MdevInstanceOutputs>): Promise<MdevInstanceOutputs> {
    if (!inputs.uuid) throw new PlanError("uuid", "uuid is required (check derives it)");
    const withUuid = { ...inputs, uuid: parseUuid(inputs.uuid) };
    return host.withLock(async (host) => {
        if (!olds && !defaults(inputs).persistent && inputs.typeId) {
            const made = await createDirect(host, withUuid, inputs.typeId);
            if (made) return made;
        }
        const { facts, plan } = await factsAndPlan(host, withUuid, inputs.typeId ?? inputs.type, olds);
        if (plan.problems.length) throw new PlanError(plan.problems[0].property, plan.problems.map((p) => p.reason).join("; "));
        return plan.backend === "nvidia-vgpu" ? convergeVgpu(host, withUuid, plan, olds) : convergeMdev(host, withUuid, plan, facts);
    });
}

export async function create(inputs: MdevInstanceInputs, onHost?: Host): Promise<{ id: string; outs: MdevInstanceOutputs }> {
    const outs = await withHost(inputs.connection, (host) => converge(host, inputs), onHost);
    return { id: outs.uuid, outs };
}

export async function update(_id: string, olds: MdevInstanceOutputs, news: MdevInstanceInputs, onHost?: Host): Promise<{ outs: MdevInstanceOutputs }> {
    const outs = await withHost(news.connection, (host) => converge(host, { ...news, uuid: news.uuid ?? olds.uuid }, olds), onHost);
    return { outs };
}

/** The host's truth in one round trip (two when the type changed underneath us): gone, or the real type and group. */
export async function read(id: string, props: MdevInstanceOutputs, onHost?: Host): Promise<{ id: string; props?: MdevInstanceOutputs }> {
    return withHost(
        props.connection,
        async (host) => {
            const uuid = props.uuid ?? id;
            if (props.backend === "nvidia-vgpu") {
                const vf = `${PCI_DEVICES}/${props.address}`;
                const r = await host.run(nvidiaOps(vf));
                const now = parseVf(0, props.address!, r);
                if (!r[0].ok || now.current === "0") return { id: "" };
                const changed = now.current !== props.typeId;
                return { id, props: { ...props, typeId: now.current, typeName: changed ? now.current : props.typeName, iommuGroup: now.group ?? props.iommuGroup, vfioDevice: `/dev/vfio/${now.group ?? props.iommuGroup}` } };
            }
            const parent = props.parentDevice;
            const back = parseReadBack(uuid, await host.run(readBackOps(parent, props.typeId, uuid)));
            if (!back.exists) return { id: "" };
            let { typeId, typeName, vramMiB } = props;
            let available = back.available ?? props.availableInstances;
            if (!back.ofType) {
                // Recreated with another type: find which type lists it now (every type's devices and attributes).
                const ids = listLines((await host.run([{ op: "list", path: dirOf(parent) }]))[0]);
                const r = await host.run(ids.flatMap((t) => [{ op: "list", path: `${dirOf(parent)}/${t}/devices` } as Op, ...typeReadOps(parent, t)]));
                const i = ids.findIndex((_, j) => listLines(r[j * (1 + TYPE_READ_OPS)]).includes(uuid));
                if (i < 0) return { id: "" };
                const t = parseType(ids[i], r.slice(i * (1 + TYPE_READ_OPS) + 1, (i + 1) * (1 + TYPE_READ_OPS)));
                ({ id: typeId, name: typeName, vramMiB, available } = t);
            }
            const persistent = !!back.config && back.config.type === typeId && back.config.start === "auto";
            const group = back.group ?? props.iommuGroup;
            return {
                id,
                props: { ...props, typeId, typeName, vramMiB, iommuGroup: group, vfioDevice: `/dev/vfio/${group}`, availableInstances: available, persistent, mdevctlConfig: persistent ? mdevctlConfigPath(parent, uuid) : null },
            };
        },
        onHost,
    );
}

/** Remove the mdev: refuse while a VM holds its group; otherwise `remove`, verify, and delete mdevctl's config. */
export async function remove(id: string, props: MdevInstanceOutputs, onHost?: Host): Promise<void> {
    await withHost(
        props.connection,
        (host) =>
            host.withLock(async (host) => {
                const uuid = props.uuid ?? id;
                if (props.backend === "nvidia-vgpu") return removeVgpu(host, props);
                // One batch: the guard stops it while a VM holds the group; mdevctl's config goes first, so a refused
                // removal leaves both in place.
                const dev = `${MDEV_BUS}/${props.parentDevice}/${uuid}`;
                const cfg: Op[] = props.persistent || props.mdevctlConfig ? [{ op: "remove", path: mdevctlConfigPath(props.parentDevice, uuid) }] : [];
                // The guard stops the batch while a process holds the mdev's group (the write would block in the kernel
                // until that process exits).
                const ops: Op[] = [{ op: "groupHolders", path: dev, guard: true }, ...cfg, { op: "write", path: `${dev}/remove`, data: "1", optional: true }, { op: "read", path: `${dev}/uevent` }];
                const r = await host.run(ops, { stopOnError: true });
                if (!r[0].ok && r[0].errno === "EBUSY") {
                    const pids = pidsOf(r[0]);
                    const node = /\/dev\/vfio\/\d+/.exec(r[0].message ?? "")?.[0] ?? `/dev/vfio/${props.iommuGroup}`;
                    throw new Error(`refusing to remove mdev ${uuid}: ${node} is held open by ${await describeHolders(host, pids)}. Stop the VM first; the kernel's remove would block until it exits`);
                }
                if (!r[0].ok) throw new Error(`checking who holds mdev ${uuid} failed: ${SysfsError.from(ops[0], r[0]).message}`);
                const w = r[1 + cfg.length];
                if (w && !w.ok && w.errno !== "ENOENT") throw new Error(`removing mdev ${uuid} failed: ${mdevError(ops[1 + cfg.length], w).message}`);
                if (r[ops.length - 1]?.ok) throw new Error(`mdev ${uuid} is still there after writing 1 to ${dev}/remove; check dmesg, then run \`pulumi destroy\` again`);
            }),
        onHost,
    );
}

async function removeVgpu(host: Host, props: MdevInstanceOutputs): Promise<void> {
    const vf = `${PCI_DEVICES}/${props.address}`;
    const r1 = await host.run([...nvidiaOps(vf), { op: "openers", path: `/dev/vfio/${props.iommuGroup}` }]);
    const now = parseVf(0, props.address!, r1);
    if (!r1[0].ok || now.current === "0" || now.current !== props.typeId) return;
    const openers = listLines(r1[3]).map(Number);
    if (openers.length) throw new Error(`refusing to remove the vGPU on ${props.address}: /dev/vfio/${props.iommuGroup} is held open by ${await describeHolders(host, openers)}. Stop the VM first`);
    const clear: Op = { op: "write", path: `${vf}/${NVIDIA_CURRENT}`, data: "0" };
    const r2 = await host.run([clear, { op: "read", path: `${vf}/${NVIDIA_CURRENT}` }], { stopOnError: true });
    if (!r2[0].ok) throw new Error(`removing the vGPU on ${props.address} failed: ${mdevError(clear, r2[0]).message}`);
    if (r2[1]?.data.trim() !== "0") throw new Error(`${vf}/${NVIDIA_CURRENT} reads ${r2[1]?.data.trim()} after writing 0; check dmesg`);
}

export const mdevInstance = { check, diff, create, read, update, delete: remove };
