/**
 * The mdev-bus backend of MdevInstance (Documentation/driver-api/vfio-mediated-device.rst): a UUID written to
 * `/sys/class/mdev_bus/<parent>/mdev_supported_types/<type>/create` makes the device, attributes follow, mdevctl's
 * config makes it persistent; `1` to `/sys/bus/mdev/devices/<uuid>/remove` removes it.
 */
import { SysfsError } from "../errors";
import { BatchQuery, Part } from "../host/query";
import { Host, Op } from "../host/types";
import { describeHolders, pidsOf } from "../sysfs/proc";
import {
    MDEV_BUS,
    MDEV_DEVICES,
    MdevctlConfig,
    attrOps,
    createOp,
    groupOf,
    listLines,
    mdevctlConfigPath,
    parseMdevctlConfig,
    parseParent,
    removeOp,
    typeDevicesQuery,
    typeQuery,
    typesDir,
} from "../sysfs/mdev";
import { firstError, mdevError, outputsOf } from "./apply";
import { MdevFacts, MdevInputsWithUuid, MdevInstanceOutputs, MdevPlan, defaults } from "./types";

// ------------------------------------------------------------------------------------------------ read-back

/** What apply and read look at after a change (see {@link readBackQuery}). */
export interface ReadBack {
    /** The device is under its parent (`uevent`). */
    exists: boolean;
    /** The type's `devices/` lists it. */
    ofType: boolean;
    group: number | null;
    /** The type's `available_instances`, null when unreadable. */
    available: number | null;
    /** mdevctl's config for the UUID under the parent, as found. */
    config: MdevctlConfig | null;
}

/**
 * The device under its parent, whether the type lists it, its group (the one `readlink`), the type's capacity and
 * mdevctl's config, as a part of `q`: no process on the host, so it rides along with the writes for free.
 */
export function readBackQuery(q: BatchQuery, parent: string, typeId: string, uuid: string): Part<ReadBack> {
    const dev = `${MDEV_BUS}/${parent}/${uuid}`;
    const exists = q.one({ op: "read", path: `${dev}/uevent` }, (r) => r.ok);
    const devices = typeDevicesQuery(q, parent, typeId);
    const group = q.one({ op: "readlink", path: `${dev}/iommu_group` }, groupOf);
    const available = q.one({ op: "read", path: `${typesDir(parent)}/${typeId}/available_instances` }, (r) => (r.ok ? Number(r.data.trim()) : null));
    const config = q.one({ op: "read", path: mdevctlConfigPath(parent, uuid) }, (r) => (r.ok ? parseMdevctlConfig(r.data) : null));
    return (r) => ({ exists: exists(r), ofType: (devices(r) ?? []).includes(uuid), group: group(r), available: available(r), config: config(r) });
}

const notThere = (uuid: string, typeId: string, parent: string, back: ReadBack) =>
    `mdev ${uuid} is not there as type ${typeId} after writing ${MDEV_BUS}/${parent}/mdev_supported_types/${typeId}/create (${back.exists ? "it has another type" : "no such device"}); check dmesg.`;

/** Remove the mdev we just made; returns a note for the error message. */
async function rollback(host: Host, uuid: string): Promise<string> {
    const q = new BatchQuery();
    const removed = q.one(removeOp(uuid, true), (r) => r.errno);
    const still = q.one({ op: "read", path: `${MDEV_DEVICES}/${uuid}/uevent` }, (r) => r.ok);
    const r = await q.run(host);
    return still(r) ? ` Rollback failed: ${MDEV_DEVICES}/${uuid} still exists (${removed(r) ?? "remove did not take"}); remove it by hand.` : ` The mdev ${uuid} was removed again.`;
}

// ------------------------------------------------------------------------------------------------ apply

/**
 * Apply a plan: remove the device first when it is recreated with another type; then, in one batch, create, the
 * attributes, mdevctl's config (and the boot hook's override), and the read-back. A refused step removes an mdev this
 * batch created, and its config when there was none before.
 */
export async function applyBus(host: Host, inputs: MdevInputsWithUuid, plan: MdevPlan, facts: MdevFacts): Promise<MdevInstanceOutputs> {
    const { attrs, persistent } = defaults(inputs);
    const uuid = inputs.uuid;
    const parent = plan.parent!;
    const t = plan.type!;
    if (plan.action === "recreate") {
        const q = new BatchQuery();
        const remove = removeOp(uuid);
        const refused = q.one(remove, (r) => (r.ok ? null : mdevError(remove, r)));
        const error = refused(await q.run(host));
        if (error) throw new Error(`removing mdev ${uuid} (type ${facts.existing?.typeId}) to recreate it as ${t.id} failed: ${error.message}`);
    }
    const creating = plan.action === "create" || plan.action === "recreate";
    const q = new BatchQuery();
    const createWrite = creating ? createOp(parent, t.id, uuid) : null;
    const created = createWrite ? q.one(createWrite, (r) => ({ ok: r.ok, failure: r.ok ? undefined : mdevError(createWrite, r) })) : () => ({ ok: false, failure: undefined });
    const ops: Op[] = [];
    if (creating || plan.action === "adopt") ops.push(...attrOps(uuid, attrs));
    if (plan.writeConfig !== null) {
        ops.push({ op: "mkdir", path: `/etc/mdevctl.d/${parent}`, mode: 0o755 });
        ops.push({ op: "put", path: mdevctlConfigPath(parent, uuid), data: plan.writeConfig, mode: 0o644 });
    }
    if (plan.fixBootHook) ops.push({ op: "put", path: plan.fixBootHook.path, data: plan.fixBootHook.text, mode: 0o644 });
    if (plan.removeConfig) ops.push({ op: "remove", path: mdevctlConfigPath(parent, uuid) });
    const applied = q.add(ops, (r) => firstError(ops, r));
    const readBack = readBackQuery(q, parent, t.id, uuid);
    const r = await q.run(host, { stopOnError: true });
    const failure = created(r).failure ?? applied(r);
    if (failure) {
        const createdNow = created(r).ok;
        const note = createdNow ? await rollback(host, uuid) : "";
        if (createdNow && plan.writeConfig !== null && facts.configText === null) await host.run([{ op: "remove", path: mdevctlConfigPath(parent, uuid) }]);
        throw new Error(`${creating ? "creating" : "configuring"} mdev ${uuid} (type ${t.id} on ${parent}) failed: ${failure.message}.${note}`);
    }
    const back = readBack(r);
    if (!back.exists || !back.ofType || back.group === null) {
        const note = creating ? await rollback(host, uuid) : "";
        throw new Error(`${notThere(uuid, t.id, parent, back)}${note}`);
    }
    const isPersistent = back.config?.type === t.id;
    return outputsOf(inputs, plan, { group: back.group, available: back.available ?? 0 }, isPersistent && persistent);
}

/** How a direct create ended: made, or refused by the kernel before anything changed (see {@link createDirect}). */
export type DirectCreate = { made: true; outs: MdevInstanceOutputs } | { made: false; refused: SysfsError };

/**
 * Create a non-persistent mdev of the type check chose by writing `create` first and letting the kernel judge: one
 * batch with the read-back. A refused create changed nothing (EEXIST: the UUID exists, to adopt; ENOSPC: no room;
 * ENOENT: no such mdev parent or type, e.g. an NVIDIA vGPU parent), which sends the caller down the full
 * observe-then-plan path, which adopts or explains. A refused attribute removes the mdev again, as in the full path.
 */
export async function createDirect(host: Host, inputs: MdevInputsWithUuid, typeId: string, lines: string[]): Promise<DirectCreate> {
    const { attrs } = defaults(inputs);
    const uuid = inputs.uuid;
    const parent = parseParent(inputs.parent).name;
    const q = new BatchQuery();
    const create = createOp(parent, typeId, uuid);
    const created = q.one(create, (r) => (r.ok ? null : mdevError(create, r)));
    const attrWrites = attrOps(uuid, attrs);
    const applied = q.add(attrWrites, (r) => firstError(attrWrites, r));
    const readBack = readBackQuery(q, parent, typeId, uuid);
    const typePart = typeQuery(q, parent, typeId);
    const r = await q.run(host, { stopOnError: true });
    const refused = created(r);
    if (refused) return { made: false, refused };
    const type = typePart(r);
    const failure = applied(r);
    if (failure) throw new Error(`creating mdev ${uuid} (type ${typeId} on ${parent}) failed: ${failure.message}.${await rollback(host, uuid)}`);
    const back = readBack(r);
    if (!back.exists || !back.ofType || back.group === null) throw new Error(`${notThere(uuid, typeId, parent, back)}${await rollback(host, uuid)}`);
    const plan: MdevPlan = { problems: [], lines, backend: "mdev", parent, type, action: "create", vf: null, writeConfig: null, removeConfig: false, fixBootHook: null };
    return { made: true, outs: outputsOf(inputs, plan, { group: back.group, available: back.available ?? type.available }, false) };
}

// ------------------------------------------------------------------------------------------------ read / delete

/** The mdev now, in one round trip (two when the type changed underneath us): gone, or its real type, group, config. */
export async function readBus(host: Host, id: string, props: MdevInstanceOutputs): Promise<{ id: string; props?: MdevInstanceOutputs }> {
    const uuid = props.uuid ?? id;
    const parent = props.parentDevice;
    const q = new BatchQuery();
    const readBack = readBackQuery(q, parent, props.typeId, uuid);
    const back = readBack(await q.run(host));
    if (!back.exists) return { id: "" };
    let { typeId, typeName, vramMiB } = props;
    let available = back.available ?? props.availableInstances;
    if (!back.ofType) {
        // Recreated with another type: find which type lists it now (every type's devices and attributes).
        const ids = listLines((await host.run([{ op: "list", path: typesDir(parent) }]))[0]);
        const qt = new BatchQuery();
        const types = ids.map((t) => ({ devices: typeDevicesQuery(qt, parent, t), type: typeQuery(qt, parent, t) }));
        const r = await qt.run(host);
        const now = types.find((t) => (t.devices(r) ?? []).includes(uuid));
        if (!now) return { id: "" };
        ({ id: typeId, name: typeName, vramMiB, available } = now.type(r));
    }
    const persistent = !!back.config && back.config.type === typeId && back.config.start === "auto";
    const group = back.group ?? props.iommuGroup;
    return {
        id,
        props: { ...props, typeId, typeName, vramMiB, iommuGroup: group, vfioDevice: `/dev/vfio/${group}`, availableInstances: available, persistent, mdevctlConfig: persistent ? mdevctlConfigPath(parent, uuid) : null },
    };
}

/**
 * Remove the mdev in one batch: a guard stops it while a process holds the mdev's group (the kernel's remove would
 * block until that process exits); mdevctl's config goes first, so a refused removal leaves both in place.
 */
export async function removeBus(host: Host, id: string, props: MdevInstanceOutputs): Promise<void> {
    const uuid = props.uuid ?? id;
    const dev = `${MDEV_BUS}/${props.parentDevice}/${uuid}`;
    const q = new BatchQuery();
    const guardOp: Op = { op: "groupHolders", path: dev, guard: true };
    const guard = q.one(guardOp, (r) => r);
    if (props.persistent || props.mdevctlConfig) q.one({ op: "remove", path: mdevctlConfigPath(props.parentDevice, uuid) }, () => undefined);
    const removeWrite: Op = { op: "write", path: `${dev}/remove`, data: "1", optional: true };
    const removed = q.one(removeWrite, (r) => (r.ok || r.errno === "ENOENT" ? null : mdevError(removeWrite, r)));
    const still = q.one({ op: "read", path: `${dev}/uevent` }, (r) => r.ok);
    const r = await q.run(host, { stopOnError: true });
    const g = guard(r);
    if (!g.ok && g.errno === "EBUSY") {
        const node = /\/dev\/vfio\/\d+/.exec(g.message ?? "")?.[0] ?? `/dev/vfio/${props.iommuGroup}`;
        throw new Error(`refusing to remove mdev ${uuid}: ${node} is held open by ${await describeHolders(host, pidsOf(g))}. Stop the VM first; the kernel's remove would block until it exits`);
    }
    if (!g.ok) throw new Error(`checking who holds mdev ${uuid} failed: ${SysfsError.from(guardOp, g).message}`);
    const refused = removed(r);
    if (refused) throw new Error(`removing mdev ${uuid} failed: ${refused.message}`);
    if (still(r)) throw new Error(`mdev ${uuid} is still there after writing 1 to ${dev}/remove; check dmesg, then run \`pulumi destroy\` again`);
}
