/**
 * The NVIDIA vGPU 17+ backend of MdevInstance: no mdev bus; after the PF's VFs are enabled, a vGPU is a type id
 * written to a VF's `nvidia/current_vgpu_type` (`0` clears it), the choices listed in its `creatable_vgpu_types`.
 * The VF itself is what a VM opens (`-device vfio-pci,host=<VF>`).
 */
import { PlanError, SysfsError } from "../errors";
import { BatchQuery, Part } from "../host/query";
import { Host, Op, OpResult } from "../host/types";
import { describeHolders } from "../sysfs/proc";
import { MdevType, NVIDIA_CURRENT, VgpuVf, listLines, vgpuFilesQuery, vgpuVf, vramOf } from "../sysfs/mdev";
import { PCI_DEVICES } from "../sysfs/pci";
import { mdevError, outputsOf } from "./apply";
import { MdevFacts, MdevInputsWithUuid, MdevInstanceOutputs, MdevPlan } from "./types";

const basename = (p: string) => p.slice(p.lastIndexOf("/") + 1);

// ------------------------------------------------------------------------------------------------ reading

/** What a PCI parent offers for vGPU 17+ (see {@link vgpuParentQuery}). */
export interface VgpuParent {
    /** The PCI device exists. */
    exists: boolean;
    /** Its `virtfnN` entries, in VF order. */
    virtfns: string[];
    /** The parent is itself a vGPU VF (it has `creatable_vgpu_types`): the one VF considered. */
    self: VgpuVf | null;
}

/** A PCI parent's directory listing and its own vGPU files, as a part of `q`. */
export function vgpuParentQuery(q: BatchQuery, address: string): Part<VgpuParent> {
    const dir = `${PCI_DEVICES}/${address}`;
    const listing = q.one({ op: "list", path: dir }, (r) => (r.ok ? listLines(r) : null));
    const own = vgpuFilesQuery(q, dir);
    return (r) => {
        const names = listing(r);
        const files = own(r);
        const virtfns = (names ?? []).filter((n) => /^virtfn\d+$/.test(n)).sort((a, b) => Number(a.slice(6)) - Number(b.slice(6)));
        return { exists: names !== null, virtfns, self: files.hasCreatable ? vgpuVf(0, address, files) : null };
    };
}

/** The PF's VFs that are vGPU VFs (a link and `creatable_vgpu_types`), as a part of `q`. */
export function vgpuVfsQuery(q: BatchQuery, pf: string, virtfns: string[]): Part<VgpuVf[]> {
    const dir = `${PCI_DEVICES}/${pf}`;
    const each = virtfns.map((v) => {
        const link = q.one({ op: "readlink", path: `${dir}/${v}` }, (r) => (r.ok ? basename(r.data.trim()) : null));
        const files = vgpuFilesQuery(q, `${dir}/${v}`);
        return (r: OpResult[]): VgpuVf | null => {
            const address = link(r);
            const f = files(r);
            return address !== null && f.hasCreatable ? vgpuVf(Number(v.slice(6)), address, f) : null;
        };
    });
    return (r) => each.map((p) => p(r)).filter((v): v is VgpuVf => v !== null);
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

// ------------------------------------------------------------------------------------------------ apply

/**
 * Write `value` to a VF's `current_vgpu_type` and read back what it says, in one round trip; `refused` is the
 * kernel's error when the write failed (the read-back then did not run).
 */
async function setCurrentType(host: Host, address: string, value: string): Promise<{ refused: SysfsError | null; now: string }> {
    const path = `${PCI_DEVICES}/${address}/${NVIDIA_CURRENT}`;
    const q = new BatchQuery();
    const write: Op = { op: "write", path, data: value };
    const refused = q.one(write, (r) => (r.ok ? null : mdevError(write, r)));
    const now = q.one({ op: "read", path }, (r) => r.data.trim());
    const r = await q.run(host, { stopOnError: true });
    return { refused: refused(r), now: now(r) };
}

/**
 * Clear the VF of a vGPU we recreate, write the type to the chosen VF's `current_vgpu_type` and read it back, then
 * observe the parent again (`reobserve`) for the VF's group and the capacity left.
 */
export async function applyVgpu(host: Host, inputs: MdevInputsWithUuid, plan: MdevPlan, olds: Partial<MdevInstanceOutputs> | undefined, reobserve: () => Promise<MdevFacts>): Promise<MdevInstanceOutputs> {
    const t = plan.type!;
    let vf = plan.vf!;
    if (plan.action === "recreate" && olds?.address) {
        const q = new BatchQuery();
        const clear: Op = { op: "write", path: `${PCI_DEVICES}/${olds.address}/${NVIDIA_CURRENT}`, data: "0" };
        const refused = q.one(clear, (r) => (r.ok ? null : mdevError(clear, r)));
        const error = refused(await q.run(host));
        if (error) throw new Error(`clearing the vGPU on ${olds.address} failed: ${error.message}`);
    }
    if (plan.action !== "keep") {
        if (!vf) throw new PlanError("type", `no free VF of ${plan.parent} can create vGPU type ${t.id}`);
        const { refused, now } = await setCurrentType(host, vf.address, t.id);
        if (refused) throw new Error(`creating vGPU ${t.id} (${t.name}) on ${vf.address} failed: ${refused.message}`);
        if (now !== t.id) throw new Error(`${vf.address}/${NVIDIA_CURRENT} reads ${now || "nothing"} after writing ${t.id}; check dmesg`);
    }
    const facts = await reobserve();
    vf = facts.vfs.find((v) => v.address === vf.address) ?? vf;
    const available = vgpuTypes(facts.vfs).find((x) => x.id === t.id)?.available ?? 0;
    return outputsOf(inputs, { ...plan, vf }, { group: vf.group ?? -1, available, typeName: t.name }, false);
}

// ------------------------------------------------------------------------------------------------ read / delete

/** The VF's vGPU now, in one round trip: gone when the VF or its vGPU is gone, the type it has otherwise. */
export async function readVgpu(host: Host, id: string, props: MdevInstanceOutputs): Promise<{ id: string; props?: MdevInstanceOutputs }> {
    const q = new BatchQuery();
    const files = vgpuFilesQuery(q, `${PCI_DEVICES}/${props.address}`);
    const now = files(await q.run(host));
    if (!now.hasCurrent || now.current === "0") return { id: "" };
    const changed = now.current !== props.typeId;
    const group = now.group ?? props.iommuGroup;
    return { id, props: { ...props, typeId: now.current, typeName: changed ? now.current : props.typeName, iommuGroup: group, vfioDevice: `/dev/vfio/${group}` } };
}

/** Clear the VF's vGPU (`0`): nothing when it is gone or holds another type; refused while a VM holds the VF. */
export async function removeVgpu(host: Host, props: MdevInstanceOutputs): Promise<void> {
    const vf = `${PCI_DEVICES}/${props.address}`;
    const q = new BatchQuery();
    const files = vgpuFilesQuery(q, vf);
    const openers = q.one({ op: "openers", path: `/dev/vfio/${props.iommuGroup}` }, (r) => listLines(r).map(Number));
    const r1 = await q.run(host);
    const now = files(r1);
    if (!now.hasCurrent || now.current === "0" || now.current !== props.typeId) return;
    const held = openers(r1);
    if (held.length) throw new Error(`refusing to remove the vGPU on ${props.address}: /dev/vfio/${props.iommuGroup} is held open by ${await describeHolders(host, held)}. Stop the VM first`);
    const { refused, now: after } = await setCurrentType(host, props.address!, "0");
    if (refused) throw new Error(`removing the vGPU on ${props.address} failed: ${refused.message}`);
    if (after !== "0") throw new Error(`${vf}/${NVIDIA_CURRENT} reads ${after} after writing 0; check dmesg`);
}
