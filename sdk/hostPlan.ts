/**
 * What VfioHost creates for a host definition, decided without Pulumi: one entry per resource with its inputs, the
 * outputs of other resources it takes (as {@link OutputRef}s), what it depends on and what it must be replaced with.
 * Plain JSON, so the same plan drives the ComponentResource (sdk/vfioHost.ts) and the engine-boundary tests (which
 * replay it through the real dynamic-provider plugin).
 *
 * Order: the boot configuration, bindings, virtual functions, the bindings of VFs that VMs use, mdevs, kvmfr devices (by index), VMs; so
 * VMs come after everything they hold, and a destroy in reverse order stops them first.
 */
import type { ImplementationName } from "./provider";
import { defaultMdevUuid } from "../provider/sysfs/mdev";
import { HostConnection, HostDefinition, VmEntry, vfBindingKey, vmName } from "./hostDefinition";

export type PlannedType = "BootConfig" | "IommuBinding" | "VirtualFunctions" | "MdevInstance" | "KvmfrDevice" | "PassthroughVm";

export const KIND_OF: Record<PlannedType, ImplementationName> = {
    BootConfig: "bootConfig",
    IommuBinding: "iommuBinding",
    VirtualFunctions: "virtualFunctions",
    MdevInstance: "mdevInstance",
    KvmfrDevice: "kvmfrDevice",
    PassthroughVm: "passthroughVm",
};

/**
 * An input taken from another resource's outputs once it exists:
 * - `value`: the output at `path` (`["addresses", 0]`: a VF's address);
 * - `device`: an IommuBinding as a VM device: its address and the functions it bound, plus `extra` (xVga, romfile);
 * - `mdev`: an MdevInstance as a VM mdev: UUID, type, and for NVIDIA vGPU 17+ the VF carrying it, plus `extra`;
 * - `sharedMemory`: a KvmfrDevice as a VM's shared memory: path and size.
 */
export interface OutputRef {
    $ref: string;
    as: "value" | "device" | "mdev" | "sharedMemory";
    path?: (string | number)[];
    extra?: Record<string, unknown>;
}

export interface PlannedResource {
    /** The resource name: `<host>-<entry>` (a VF's binding: `<host>-<entry>.vf<N>`). */
    name: string;
    type: PlannedType;
    /** Where it comes from in the definition, e.g. `vms.win11`. */
    entry: string;
    /** Inputs, without the connection (see {@link HostPlan.connection}); may hold {@link OutputRef}s. */
    inputs: Record<string, unknown>;
    /** Names of planned resources this one needs first (and that a destroy removes after it). */
    dependsOn: string[];
    /** Names of planned resources whose replacement replaces this one: a VM holds its devices open, so it is
     *  stopped before any of them is deleted and started again on the new one. */
    replaceWith: string[];
}

export interface HostPlan {
    host: string;
    /** The connection every resource gets; `privateKeyFile` is read by VfioHost, never put in state as a path. */
    connection?: HostConnection;
    resources: PlannedResource[];
}

export function isOutputRef(v: unknown): v is OutputRef {
    return !!v && typeof v === "object" && typeof (v as OutputRef).$ref === "string" && typeof (v as OutputRef).as === "string";
}

/** The output properties a reference reads (what the SDK has to wait for). */
export function refOutputs(ref: OutputRef): string[] {
    switch (ref.as) {
        case "value":
            return [String(ref.path?.[0])];
        case "device":
            return ["address", "members"];
        case "mdev":
            return ["uuid", "typeId", "backend", "address"];
        case "sharedMemory":
            return ["path", "sizeMb"];
    }
}

/** The input value a reference stands for, given the referenced resource's outputs. */
export function resolveOutputRef(ref: OutputRef, outputs: Record<string, any>): unknown {
    switch (ref.as) {
        case "value": {
            let cur: any = outputs;
            for (const p of ref.path ?? []) cur = cur?.[p];
            return cur;
        }
        case "device":
            return {
                address: outputs.address,
                functions: ((outputs.members ?? []) as { address: string; managed: boolean }[]).filter((m) => m.managed).map((m) => m.address),
                ...ref.extra,
            };
        case "mdev":
            return {
                uuid: outputs.uuid,
                type: outputs.typeId,
                ...(outputs.backend === "nvidia-vgpu" && outputs.address ? { address: outputs.address } : {}),
                ...ref.extra,
            };
        case "sharedMemory":
            return { path: outputs.path, sizeMb: outputs.sizeMb };
    }
}

/** Replace every reference inside `v` (objects and arrays, recursively) with `f(ref)`. */
export function mapRefs<T>(v: unknown, f: (ref: OutputRef) => T): unknown {
    if (isOutputRef(v)) return f(v);
    if (Array.isArray(v)) return v.map((x) => mapRefs(x, f));
    if (v && typeof v === "object") return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, mapRefs(x, f)]));
    return v;
}

/** The names of the resources `v` refers to. */
export function refsIn(v: unknown): string[] {
    const out: string[] = [];
    mapRefs(v, (r) => out.push(r.$ref));
    return [...new Set(out)];
}

const strip = <T extends object>(o: T): Partial<T> => Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;

/**
 * Plan the resources of a (checked) host definition. `project` and `stack` give mdevs their default UUID exactly as
 * the MdevInstance class would (a UUID v5 of project, stack and resource name), so a replay of the plan outside
 * Pulumi creates the same devices.
 */
export function planHost(hostName: string, def: HostDefinition, ctx: { project: string; stack: string }): HostPlan {
    const resources: PlannedResource[] = [];
    const nameOf = (key: string) => `${hostName}-${key}`;
    const add = (r: Omit<PlannedResource, "dependsOn" | "replaceWith"> & Partial<Pick<PlannedResource, "dependsOn" | "replaceWith">>) => {
        const dependsOn = [...new Set([...(r.dependsOn ?? []), ...refsIn(r.inputs)])];
        resources.push({ ...r, dependsOn, replaceWith: r.replaceWith ?? [] });
    };

    // The boot configuration first: with `reboot: ifNeeded` the host reboots before anything else is changed.
    if (def.bootConfig) add({ name: nameOf("boot"), type: "BootConfig", entry: "bootConfig", inputs: strip({ ...def.bootConfig }) });
    for (const [key, b] of Object.entries(def.bindings ?? {})) {
        add({ name: nameOf(key), type: "IommuBinding", entry: `bindings.${key}`, inputs: strip({ ...b }) });
    }
    const pfOwner = new Map<string, string>();
    for (const [key, v] of Object.entries(def.virtualFunctions ?? {})) {
        add({ name: nameOf(key), type: "VirtualFunctions", entry: `virtualFunctions.${key}`, inputs: strip({ ...v }) });
        pfOwner.set(normalize(v.physicalFunction), nameOf(key));
    }
    // A VF goes to a VM through vfio-pci: one binding per VF some VM uses, made once the VFs exist.
    const vfBindings = new Map<string, string>();
    for (const [, vm] of Object.entries(def.vms ?? {})) {
        for (const v of vm.virtualFunctions ?? []) {
            const key = vfBindingKey(v.from, v.index);
            if (vfBindings.has(key)) continue;
            vfBindings.set(key, nameOf(key));
            add({
                name: nameOf(key),
                type: "IommuBinding",
                entry: `virtualFunctions.${v.from}[${v.index}]`,
                inputs: { device: { $ref: nameOf(v.from), as: "value", path: ["addresses", v.index] } satisfies OutputRef, driver: "vfio-pci" },
            });
        }
    }
    for (const [key, m] of Object.entries(def.mdevs ?? {})) {
        // NVIDIA vGPU 17+ puts the vGPU on a VF of the parent: the VFs must exist first.
        const vfsOfParent = pfOwner.get(normalize(m.parent));
        add({
            name: nameOf(key),
            type: "MdevInstance",
            entry: `mdevs.${key}`,
            inputs: strip({ ...m, uuid: m.uuid ?? defaultMdevUuid(ctx.project, ctx.stack, nameOf(key)) }),
            dependsOn: vfsOfParent ? [vfsOfParent] : [],
        });
    }
    const kvmfrs = Object.entries(def.kvmfr ?? {}).sort(([, a], [, b]) => a.index - b.index);
    const kvmfrByIndex = new Map(kvmfrs.map(([key, k]) => [k.index, nameOf(key)]));
    for (const [key, k] of kvmfrs) {
        // kvmfr numbers devices by their position in static_size_mb: device N is written after N-1.
        const lower = kvmfrByIndex.get(k.index - 1);
        add({ name: nameOf(key), type: "KvmfrDevice", entry: `kvmfr.${key}`, inputs: strip({ ...k }), dependsOn: lower ? [lower] : [] });
    }
    for (const [key, vm] of Object.entries(def.vms ?? {})) {
        const inputs = vmInputs(key, vm, nameOf, vfBindings);
        const held = refsIn(inputs);
        add({ name: nameOf(key), type: "PassthroughVm", entry: `vms.${key}`, inputs, replaceWith: held });
    }
    // Everything else comes after the boot configuration (with `reboot: ifNeeded`, after the reboot), and a destroy
    // removes it last.
    if (def.bootConfig) for (const r of resources) if (r.type !== "BootConfig") r.dependsOn.unshift(nameOf("boot"));
    return { host: hostName, ...(def.connection ? { connection: def.connection } : {}), resources };
}

function normalize(a: string): string {
    const s = a.trim().toLowerCase();
    return /^[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$/.test(s) ? `0000:${s}` : s;
}

function vmInputs(key: string, vm: VmEntry, nameOf: (k: string) => string, vfBindings: Map<string, string>): Record<string, unknown> {
    const { devices, virtualFunctions, mdevs, sharedMemory, ...rest } = vm;
    const inputs: Record<string, unknown> = strip({ ...rest, name: vmName(key, vm) });
    const devs: OutputRef[] = [];
    for (const d of devices ?? []) {
        const name = typeof d === "string" ? d : d.binding;
        const extra = typeof d === "string" ? undefined : strip({ xVga: d.xVga, romfile: d.romfile });
        devs.push({ $ref: nameOf(name), as: "device", ...(extra && Object.keys(extra).length ? { extra } : {}) });
    }
    for (const v of virtualFunctions ?? []) devs.push({ $ref: vfBindings.get(vfBindingKey(v.from, v.index))!, as: "device" });
    if (devs.length) inputs.devices = devs;
    if (mdevs?.length) {
        inputs.mdevs = mdevs.map((m): OutputRef => {
            const name = typeof m === "string" ? m : m.mdev;
            const extra = typeof m === "string" || m.display === undefined ? undefined : { display: m.display };
            return { $ref: nameOf(name), as: "mdev", ...(extra ? { extra } : {}) };
        });
    }
    if (typeof sharedMemory === "string") inputs.sharedMemory = { $ref: nameOf(sharedMemory), as: "sharedMemory" } satisfies OutputRef;
    else if (sharedMemory) inputs.sharedMemory = { ...sharedMemory };
    return inputs;
}
