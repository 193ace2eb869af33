/**
 * The NVIDIA vGPU 17+ backend of MdevInstance: no mdev bus; after the PF's VFs are enabled, a vGPU is a type id
 * written to a VF's `nvidia/current_vgpu_type` (`0` clears it), the choices listed in its `creatable_vgpu_types`.
 * The VF itself is what a VM opens (`-device vfio-pci,host=<VF>`).
 */
import { PlanError } from "../errors";
import { BatchQuery, Part } from "../host/query";
import { Host, Op } from "../host/types";
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
        return (r: Parameters<Part<unknown>>[0]): VgpuVf | null => {
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
 * Clear the VF of a vGPU we recreate, write the type to the chosen VF's `current_vgpu_type` and read it back, then
 * observe the parent again (`reobserve`) for the VF's group and the capacity left.
 */
export async function applyVgpu(host: Host, inputs: MdevInputsWithUuid, plan: MdevPlan, olds: Partial<MdevInstanceOutputs> | undefined, reobserve: () => Promise<MdevFacts>): Promise<MdevInstanceOutputs> {
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
    const clear: Op = { op: "write", path: `${vf}/${NVIDIA_CURRENT}`, data: "0" };
    const r2 = await host.run([clear, { op: "read", path: `${vf}/${NVIDIA_CURRENT}` }], { stopOnError: true });
    if (!r2[0].ok) throw new Error(`removing the vGPU on ${props.address} failed: ${mdevError(clear, r2[0]).message}`);
    if (r2[1]?.data.trim() !== "0") throw new Error(`${vf}/${NVIDIA_CURRENT} reads ${r2[1]?.data.trim()} after writing 0; check dmesg`);
}
