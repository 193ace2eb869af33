/**
 * Reading what the host has for an MdevInstance, as a value ({@link MdevFacts}) for the planner: the mdev bus, the
 * parent's types, our UUID and mdevctl's config, and for a PCI parent the NVIDIA vGPU 17+ files of it and its VFs.
 */
import { BatchQuery } from "../host/query";
import { Host } from "../host/types";
import {
    MDEV_BUS,
    MDEV_DEVICES,
    MdevType,
    VgpuVf,
    bootHookQuery,
    listLines,
    mdevDeviceQuery,
    mdevctlConfigPath,
    parseBootHook,
    parseMdevctlConfig,
    parseParent,
    typeDevicesQuery,
    typeQuery,
    typesDir,
} from "../sysfs/mdev";
import { vgpuParentQuery, vgpuTypes, vgpuVfsQuery } from "./nvidiaVgpu";
import { MdevBackend, MdevFacts } from "./types";

const TYPE_ID = /^[A-Za-z0-9_][A-Za-z0-9_.:+-]{0,127}$/;

/**
 * Everything check and apply need, in at most two round trips (three only for a UUID found on another parent or
 * type, to name it and who holds it). Round trip 1 reads the parent list, the parent's type list, whether our UUID
 * exists (its `uevent`, anywhere and under this parent), mdevctl's config (and boot hook when persistent), the PCI
 * device for vGPU 17+, and — given the type already chosen (`typeHint`: check's `typeId`) — that type's attributes
 * and devices. When that settles it (the parent and type exist; the UUID is free or already ours with that type),
 * there is no second trip and the facts are `partial`. Otherwise trip 2 reads every type (or every VF's vGPU files)
 * and the UUID's links.
 *
 * `stat` is avoided: it starts a program per operation in the batch interpreter, and on a slow host (the lab under
 * TCG) that costs more than the sysfs write itself.
 */
export async function readMdevFacts(host: Host, parentInput: string, uuid: string, opts: { typeHint?: string; persistent?: boolean } = {}): Promise<MdevFacts> {
    const parent = parseParent(parentInput);
    const hint = opts.typeHint && TYPE_ID.test(opts.typeHint) ? opts.typeHint : undefined;

    // ---- round trip 1
    const q1 = new BatchQuery();
    const parentsPart = q1.one({ op: "list", path: MDEV_BUS }, listLines);
    const typeIdsPart = q1.one({ op: "list", path: typesDir(parent.name) }, listLines);
    const anywherePart = q1.one({ op: "read", path: `${MDEV_DEVICES}/${uuid}/uevent` }, (r) => r.ok);
    const herePart = q1.one({ op: "read", path: `${MDEV_BUS}/${parent.name}/${uuid}/uevent` }, (r) => r.ok);
    const configPart = q1.one({ op: "read", path: mdevctlConfigPath(parent.name, uuid) }, (r) => (r.ok ? r.data : null));
    const hinted = hint ? { type: typeQuery(q1, parent.name, hint), devices: typeDevicesQuery(q1, parent.name, hint) } : null;
    const bootHookPart = opts.persistent ? bootHookQuery(q1) : () => parseBootHook([]);
    const vgpuPart = parent.pci ? vgpuParentQuery(q1, parent.name) : null;
    const r1 = await q1.run(host);

    const parents = parentsPart(r1);
    const existsAnywhere = anywherePart(r1);
    const configText = configPart(r1);
    const config = configText !== null ? parseMdevctlConfig(configText) : null;
    const vgpu = vgpuPart?.(r1) ?? null;
    let backend: MdevBackend | null = null;
    if (parents.includes(parent.name)) backend = "mdev";
    else if (vgpu && (vgpu.self || vgpu.virtfns.length)) backend = "nvidia-vgpu"; // VFs: confirmed below by their nvidia/ files
    const onBus = backend === "mdev";
    const base = { parents, pciDeviceExists: !!vgpu?.exists || parents.includes(parent.name), bootHook: bootHookPart(r1), config, configText };

    // The fast path: the type chosen at preview still exists, and our UUID is free or already that type here.
    const hintDevices = hinted?.devices(r1) ?? null;
    if (onBus && hinted && hintDevices !== null && (!existsAnywhere || (herePart(r1) && hintDevices.includes(uuid)))) {
        const existing = existsAnywhere ? { uuid, parent: parent.name, typeId: hint!, group: null } : null;
        return { ...base, backend, parent: parent.name, types: [hinted.type(r1)], existing, openers: [], vfs: [], partial: true };
    }

    // ---- round trip 2
    const q2 = new BatchQuery();
    const typesPart = onBus ? typeIdsPart(r1).map((t) => typeQuery(q2, parent.name, t)) : [];
    const vfsPart = backend === "nvidia-vgpu" && !vgpu!.self ? vgpuVfsQuery(q2, parent.name, vgpu!.virtfns) : null;
    const devicePart = existsAnywhere ? mdevDeviceQuery(q2, uuid) : null;
    const r2 = await q2.runIfAny(host);

    let types: MdevType[] = typesPart.map((p) => p(r2));
    let vfs: VgpuVf[] = [];
    if (backend === "nvidia-vgpu") {
        vfs = vgpu!.self ? [vgpu!.self] : vfsPart!(r2);
        if (vfs.length === 0) backend = null; // VFs without nvidia/ files: SR-IOV, but not vGPU
        types = vgpuTypes(vfs);
    }
    const existing = devicePart?.(r2) ?? null;

    // ---- round trip 3, rarely: who holds our UUID's group under this parent
    let openers: number[] = [];
    if (existing && existing.group !== null && existing.parent === parent.name) {
        const q3 = new BatchQuery();
        const held = q3.one({ op: "openers", path: `/dev/vfio/${existing.group}` }, (r) => listLines(r).map(Number));
        openers = held(await q3.run(host));
    }
    return { ...base, backend, parent: backend ? parent.name : null, types, existing, openers, vfs, partial: false };
}
