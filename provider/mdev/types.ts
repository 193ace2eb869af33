/**
 * MdevInstance's shapes: its inputs and outputs, what is read from the host (the observation, {@link MdevFacts}) and
 * what the planner decides from it ({@link MdevPlan}). Shared by the resource file, the planner and both backends.
 */
import { CheckFailure, schemaDefault } from "../check";
import { Connection } from "../host/ssh";
import { BootHook, MdevAttr, MdevDevice, MdevType, MdevctlConfig, VgpuVf, VramBounds } from "../sysfs/mdev";
import type { MdevInstanceSchemaInputs } from "../generated/inputs";

/** The schema's inputs (provider/generated/inputs.ts, from schema/mdev-instance.schema.json) and what check adds. */
export interface MdevInstanceInputs extends MdevInstanceSchemaInputs {
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

/** The schema's defaults for inputs validate() did not fill (an older state, diff, read). */
export const defaults = (i: MdevInstanceInputs) => ({
    persistent: i.persistent ?? schemaDefault<boolean>("mdev-instance.schema.json", "persistent"),
    attrs: i.attrs ?? schemaDefault<MdevAttr[]>("mdev-instance.schema.json", "attrs"),
});

/** Inputs once check has settled the UUID (given, kept from the state, or derived by the SDK). */
export type MdevInputsWithUuid = MdevInstanceInputs & { uuid: string };

// ------------------------------------------------------------------------------------------------ the observation

/**
 * What was read from the host, as a value: check plans from it, and create reads it again under the host lock and
 * plans from that (nothing read at check reaches create except through the inputs check returned: `typeId`).
 */
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

// ------------------------------------------------------------------------------------------------ the plan

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

