/**
 * What a schema cannot see in a host definition: references by name that point nowhere, devices two entries would
 * fight over, names used twice, and every check of a resource's inputs that needs no host (kvmfr mode and size,
 * mdev type/vram, VM topology...), run here so it is reported with file:line:column instead of at the resource's
 * check. The resource checks are the resources' own functions (provider/), not copies.
 */
import { CheckFailure, schemaDefault } from "../../provider/check";
import { inputProblems as kvmfrProblems } from "../../provider/kvmfrDevice";
import { choiceProblems as mdevChoiceProblems, fieldProblems as mdevFieldProblems } from "../../provider/mdevInstance";
import { inputProblems as vmProblems, normalize as normalizeVm } from "../../provider/passthroughVm";
import { Segment, closest, dotted, segmentsOfProperty } from "../../provider/schemaErrors";
import { parseAddress } from "../../provider/sysfs/pci";
import { Locate, position } from "./positions";
import { HostDefinition, HostProblem, SECTIONS, Section, VmDeviceRef, VmEntry, VmMdevRef, VmVirtualFunctionRef } from "./types";

function normalizedAddress(a: unknown): string | undefined {
    try {
        return typeof a === "string" ? parseAddress(a) : undefined;
    } catch {
        return undefined;
    }
}

/** The QEMU name of a VM entry. */
export function vmName(key: string, vm: VmEntry): string {
    return vm.name ?? key;
}

/** The name VfioHost gives the binding it makes for a VF a VM uses (entry names cannot contain '.', so no clash). */
export function vfBindingKey(from: string, index: number): string {
    return `${from}.vf${index}`;
}

export function semanticProblems(def: HostDefinition, locate: Locate): HostProblem[] {
    const out: HostProblem[] = [];
    const problem = (segs: Segment[], message: string, where: "key" | "value" = "value") => out.push({ path: dotted(segs), ...position(locate(segs, where)), message });
    const where = (segs: Segment[], where: "key" | "value" = "value") => {
        const p = locate(segs, where);
        return p ? `${dotted(segs)} (line ${p.line})` : dotted(segs);
    };
    const entries = <S extends Section>(s: S) => Object.entries((def[s] ?? {}) as Record<string, any>);

    // Names: one name, one thing (resource names are <host>-<entry>, and a reader should not have to ask which).
    const firstUse = new Map<string, Segment[]>();
    // The boot configuration's resource is `<host>-boot`: an entry of that name would share it.
    if (def.bootConfig) firstUse.set("boot", ["bootConfig"]);
    for (const s of SECTIONS) {
        for (const [key] of entries(s)) {
            const prev = firstUse.get(key);
            if (prev) problem([s, key], `the name ${JSON.stringify(key)} is already used by ${where(prev, "key")}; give every entry its own name`, "key");
            else firstUse.set(key, [s, key]);
        }
    }
    const qemuNames = new Map<string, Segment[]>();
    for (const [key, vm] of entries("vms")) {
        const n = vmName(key, vm);
        const segs: Segment[] = vm.name !== undefined ? ["vms", key, "name"] : ["vms", key];
        const prev = qemuNames.get(n);
        if (prev) problem(segs, `VM name ${JSON.stringify(n)} is also the name of ${where(prev, "key")}: QEMU's -name and /run/pulumi-vfio/vm/<name> must be unique`, vm.name !== undefined ? "value" : "key");
        else qemuNames.set(n, segs);
    }

    // Devices that two entries would fight over.
    const boundAt = new Map<string, Segment[]>();
    for (const [key, b] of entries("bindings")) {
        const addr = normalizedAddress(b.device);
        const id = addr ?? (typeof b.device === "object" ? JSON.stringify(b.device) : undefined);
        if (!id) continue;
        const prev = boundAt.get(id);
        if (prev) problem(["bindings", key, "device"], `${addr ?? "this selector"} is already bound by ${where(prev, "key")}; one binding per device`);
        else boundAt.set(id, ["bindings", key]);
    }
    const pfAt = new Map<string, Segment[]>();
    for (const [key, v] of entries("virtualFunctions")) {
        const pf = normalizedAddress(v.physicalFunction);
        if (!pf) continue;
        const prev = pfAt.get(pf);
        if (prev) problem(["virtualFunctions", key, "physicalFunction"], `${pf} already has its VFs in ${where(prev, "key")}: sriov_numvfs is one number per physical function`);
        else pfAt.set(pf, ["virtualFunctions", key]);
        const bound = boundAt.get(pf);
        const binding = bound ? (def.bindings ?? {})[String(bound[1])] : undefined;
        if (binding && (binding.driver ?? schemaDefault<string>("iommu-binding.schema.json", "driver")) === "vfio-pci") {
            problem(["bindings", String(bound![1]), "device"], `${pf} is the physical function of virtualFunctions.${key}: bound to vfio-pci it can no longer create VFs (sriov_numvfs fails with ENOENT); pass its VFs instead`);
        }
    }
    const uuidAt = new Map<string, Segment[]>();
    for (const [key, m] of entries("mdevs")) {
        if (typeof m.uuid !== "string") continue;
        const u = m.uuid.toLowerCase();
        const prev = uuidAt.get(u);
        if (prev) problem(["mdevs", key, "uuid"], `UUID ${u} is already the UUID of ${where(prev, "key")}; mdev UUIDs are unique on a host (the kernel answers EEXIST)`);
        else uuidAt.set(u, ["mdevs", key]);
    }
    const indexAt = new Map<number, Segment[]>();
    for (const [key, k] of entries("kvmfr")) {
        const prev = indexAt.get(k.index);
        if (prev) problem(["kvmfr", key, "index"], `/dev/kvmfr${k.index} is already ${where(prev, "key")}; each kvmfr device needs its own index`);
        else indexAt.set(k.index, ["kvmfr", key]);
    }

    // What each VM takes, by name; a device goes to one VM.
    const claims = new Map<string, Segment[]>();
    const claim = (id: string, what: string, segs: Segment[], vm: string) => {
        const prev = claims.get(id);
        if (!prev) {
            claims.set(id, segs);
            return;
        }
        if (prev[1] === vm) problem(segs, `${what} is listed twice in this VM`);
        else problem(segs, `${what} is already claimed by VM ${JSON.stringify(prev[1])} at ${where(prev)}; a device can be passed to one VM only`);
    };
    const missing = (segs: Segment[], kind: string, name: string, section: Section) => {
        const names = entries(section).map(([k]) => k);
        const guess = closest(name, names);
        problem(segs, `no ${kind} named ${JSON.stringify(name)} under \`${section}\`${guess ? `; did you mean ${JSON.stringify(guess)}?` : names.length ? ` (there: ${names.join(", ")})` : ` (\`${section}\` is empty)`}`);
    };
    for (const [vmKey, vm] of entries("vms")) {
        (vm.devices ?? []).forEach((d: VmDeviceRef, i: number) => {
            const name = typeof d === "string" ? d : d.binding;
            const segs: Segment[] = typeof d === "string" ? ["vms", vmKey, "devices", i] : ["vms", vmKey, "devices", i, "binding"];
            if (!def.bindings?.[name]) return missing(segs, "binding", name, "bindings");
            claim(`binding:${name}`, `binding ${JSON.stringify(name)}`, segs, vmKey);
        });
        (vm.virtualFunctions ?? []).forEach((v: VmVirtualFunctionRef, i: number) => {
            const segs: Segment[] = ["vms", vmKey, "virtualFunctions", i];
            const vfs = def.virtualFunctions?.[v.from];
            if (!vfs) return missing([...segs, "from"], "virtualFunctions entry", v.from, "virtualFunctions");
            if (v.index >= vfs.count) {
                return problem([...segs, "index"], `virtualFunctions.${v.from} makes ${vfs.count} VF${vfs.count === 1 ? "" : "s"}: index ${v.index} does not exist${vfs.count ? ` (0–${vfs.count - 1})` : ""}`);
            }
            claim(`vf:${v.from}:${v.index}`, `VF ${v.index} of ${JSON.stringify(v.from)}`, segs, vmKey);
        });
        (vm.mdevs ?? []).forEach((m: VmMdevRef, i: number) => {
            const name = typeof m === "string" ? m : m.mdev;
            const segs: Segment[] = typeof m === "string" ? ["vms", vmKey, "mdevs", i] : ["vms", vmKey, "mdevs", i, "mdev"];
            if (!def.mdevs?.[name]) return missing(segs, "mdev", name, "mdevs");
            claim(`mdev:${name}`, `mdev ${JSON.stringify(name)}`, segs, vmKey);
        });
        const sm = vm.sharedMemory;
        if (typeof sm === "string") {
            const segs: Segment[] = ["vms", vmKey, "sharedMemory"];
            const k = def.kvmfr?.[sm];
            if (!k) missing(segs, "kvmfr device", sm, "kvmfr");
            else claim(`shm:/dev/kvmfr${k.index}`, `kvmfr device ${JSON.stringify(sm)} (/dev/kvmfr${k.index})`, segs, vmKey);
        } else if (sm && typeof sm === "object") {
            const segs: Segment[] = ["vms", vmKey, "sharedMemory", "path"];
            const idx = /^\/dev\/kvmfr(\d)$/.exec(sm.path);
            const named = idx ? entries("kvmfr").find(([, k]) => k.index === Number(idx[1])) : undefined;
            claim(`shm:${sm.path}`, named ? `${sm.path} (kvmfr.${named[0]})` : sm.path, segs, vmKey);
        }
    }
    return out;
}

/**
 * The checks each resource runs on its own inputs before it reads the host, run on every entry at load time. A
 * problem names the entry's field (`kvmfr.lg.mode`); the reason's own `field:` prefix, if any, is dropped.
 */
export function entryProblems(def: HostDefinition, locate: Locate): HostProblem[] {
    const out: HostProblem[] = [];
    const report = (section: Section, key: string, failures: CheckFailure[]) => {
        for (const f of failures) {
            const segs: Segment[] = [section, key, ...segmentsOfProperty(f.property)];
            const message = f.reason.startsWith(`${f.property}: `) ? f.reason.slice(f.property.length + 2) : f.reason;
            out.push({ path: dotted(segs), ...position(locate(segs)), message });
        }
    };
    const entries = <S extends Section>(s: S) => Object.entries((def[s] ?? {}) as Record<string, any>);
    for (const [key, k] of entries("kvmfr")) report("kvmfr", key, kvmfrProblems(k, k.sizeMb !== undefined));
    for (const [key, m] of entries("mdevs")) report("mdevs", key, [...mdevFieldProblems(m), ...mdevChoiceProblems(m)]);
    for (const [key, vm] of entries("vms")) {
        // The device references are names here (checked above); what is left is PassthroughVm's own input.
        const own = { ...(vm as VmEntry), name: vmName(key, vm), devices: undefined, mdevs: undefined, virtualFunctions: undefined, sharedMemory: typeof vm.sharedMemory === "object" ? vm.sharedMemory : undefined };
        report("vms", key, vmProblems(normalizeVm(own)));
    }
    return out;
}
