/**
 * What both MdevInstance backends share when they apply a plan: the mdev files' errors with what the kernel means by
 * them, the first refused write of a batch, and the outputs of a converged instance.
 */
import { withoutProvider } from "../check";
import { SysfsError } from "../errors";
import { Op, OpResult } from "../host/types";
import { MDEV_DEVICES, mdevctlConfigPath } from "../sysfs/mdev";
import { PCI_DEVICES } from "../sysfs/pci";
import { MdevInputsWithUuid, MdevInstanceOutputs, MdevPlan, defaults } from "./types";

const basename = (p: string) => p.slice(p.lastIndexOf("/") + 1);

/** Errors of the mdev files, with what the kernel means by them (LAB.md, observed on 6.1). */
export function mdevError(op: Op, r: OpResult): SysfsError {
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

/** The first write, put, mkdir, remove or exec of `ops` that failed (optional ones and skipped ones aside). */
export function firstError(ops: Op[], r: OpResult[]): SysfsError | undefined {
    for (let i = 0; i < ops.length; i++) {
        const op = ops[i];
        if (!r[i] || r[i].skipped || r[i].ok || ("optional" in op && op.optional)) continue;
        if (op.op === "write" || op.op === "put" || op.op === "mkdir" || op.op === "remove" || op.op === "exec") return mdevError(op, r[i]);
    }
    return undefined;
}

export function outputsOf(inputs: MdevInputsWithUuid, plan: MdevPlan, dev: { group: number; available: number; typeId?: string; typeName?: string }, persistent: boolean): MdevInstanceOutputs {
    const { attrs } = defaults(inputs);
    const t = plan.type!;
    const nvidia = plan.backend === "nvidia-vgpu";
    const cfg = mdevctlConfigPath(plan.parent!, inputs.uuid);
    return {
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
}
