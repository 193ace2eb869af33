/**
 * Planning an MdevInstance: from the inputs and what was read ({@link MdevFacts}) to what `up` does ({@link MdevPlan}:
 * the action, the type, mdevctl's config, the preview lines, the problems). Pure, so check, create, update and the
 * unit tests share it. The steps run in order, each named after what it decides; a step that refuses stops the plan
 * when what follows would only repeat its refusal.
 */
import type { CheckFailure } from "../check";
import { Host } from "../host/types";
import { MDEVCTL_RULE_NAME, MDEV_DEVICES, MdevType, NVIDIA_CURRENT, VgpuVf, VramBounds, describeType, fitsVram, mdevctlConfig, mdevctlConfigPath, parseParent, typesByVram } from "../sysfs/mdev";
import { PCI_DEVICES } from "../sysfs/pci";
import { readMdevFacts } from "./observe";
import { MdevFacts, MdevInputsWithUuid, MdevInstanceInputs, MdevInstanceOutputs, MdevPlan, defaults } from "./types";

const fmtBounds = (b: VramBounds) => `{${[b.min !== undefined ? `min: ${b.min}` : "", b.max !== undefined ? `max: ${b.max}` : ""].filter(Boolean).join(", ")}}`;

function parentList(parents: string[]): string {
    return parents.length
        ? `mdev parents on this host (/sys/class/mdev_bus): ${parents.join(", ")}`
        : "this host has no mdev parent at all (/sys/class/mdev_bus is empty): load the vendor's mdev driver (NVIDIA vGPU manager, i915 with GVT-g, or `modprobe mtty` for the kernel sample)";
}

/** What every step sees: the inputs, the observation, the state's outputs, and the plan being filled in. */
interface Planning {
    inputs: MdevInputsWithUuid;
    facts: MdevFacts;
    olds?: Partial<MdevInstanceOutputs>;
    atCheck: boolean;
    plan: MdevPlan;
    fail(property: string, reason: string): void;
}

/** A step's verdict: go on to the next step, or stop here (the plan is as far as it goes, with its problems). */
type Verdict = "next" | "stop";

/** The instance the state says is ours (or the mdev that has our UUID): its type, and its VF for vGPU 17+. */
type Current = { typeId: string; vf: VgpuVf | null } | null;

/**
 * Decide what an MdevInstance does on this host, and what makes it impossible. `olds` are the outputs in the state
 * (absent on create), which is how an instance we made is told apart from someone else's with the same UUID.
 *
 * `atCheck`: planning for `pulumi preview`. A type change is a replacement, and Pulumi stops the VM that holds the mdev
 * first (VMs declare `replaceWith` on their mdevs), so a held mdev is only a refusal when the apply itself would
 * remove it (the kernel's remove would block until the VM lets go).
 */
export function planMdev(inputs: MdevInputsWithUuid, facts: MdevFacts, olds?: Partial<MdevInstanceOutputs>, atCheck = false): MdevPlan {
    const plan: MdevPlan = { problems: [], lines: [], backend: facts.backend, parent: facts.parent, type: null, action: null, vf: null, writeConfig: null, removeConfig: false, fixBootHook: null };
    const p: Planning = { inputs, facts, olds, atCheck, plan, fail: (property, reason) => plan.problems.push({ property, reason }) };
    if (parentAndInputs(p) === "stop") return plan;
    const current = ourInstance(p);
    if (current === "stop") return plan;
    if (theType(p, current) === "stop") return plan;
    if (whatToDo(p, current) === "stop") return plan;
    persistence(p);
    preview(p);
    return plan;
}

// ---- the parent, and inputs that cannot work on its backend
function parentAndInputs({ inputs, facts, fail, plan }: Planning): Verdict {
    const { persistent, attrs } = defaults(inputs);
    if (!facts.backend || !facts.parent) {
        const parentName = parseParent(inputs.parent).name;
        if (facts.pciDeviceExists) {
            fail("parent", `${parentName} is not an mdev parent (it is not under /sys/class/mdev_bus) and has no NVIDIA vGPU VFs (nvidia/creatable_vgpu_types); for NVIDIA vGPU 17+ enable its VFs first (a VirtualFunctions resource, or /usr/lib/nvidia/sriov-manage -e). ${parentList(facts.parents)}`);
        } else {
            fail("parent", `no mdev parent ${JSON.stringify(inputs.parent)} on this host; ${parentList(facts.parents)}`);
        }
        return "stop";
    }
    for (const p of choiceProblems(inputs, `types of ${facts.parent}: ${facts.types.map(describeType).join("; ") || "none"}`)) fail(p.property, p.reason);
    if (facts.backend === "nvidia-vgpu") {
        if (persistent) fail("persistent", "NVIDIA vGPU 17+ vGPUs are not mdevs: mdevctl cannot recreate them at boot. Set persistent: false and let the program (pulumi up) recreate it after a reboot");
        if (attrs.length) fail("attrs", "NVIDIA vGPU 17+ vGPUs have no mdev attributes; remove attrs");
    }
    return plan.problems.length ? "stop" : "next";
}

// ---- our instance, or someone else's with our UUID
function ourInstance({ inputs, facts, olds, fail }: Planning): Current | "stop" {
    const uuid = inputs.uuid;
    if (facts.backend === "mdev") {
        const e = facts.existing;
        if (e && e.parent !== facts.parent) {
            fail("uuid", `UUID ${uuid} is already an mdev of type ${e.typeId} on parent ${e.parent}; UUIDs are unique across parents: choose another uuid, or remove that mdev (echo 1 > ${MDEV_DEVICES}/${uuid}/remove)`);
            return "stop";
        }
        return e ? { typeId: e.typeId, vf: null } : null;
    }
    const ours = !!olds?.uuid && olds.uuid === uuid;
    const vf = olds?.address ? facts.vfs.find((v) => v.address === olds.address && v.current !== "0") : undefined;
    return ours && vf ? { typeId: vf.current, vf } : null;
}

// ---- the type
function theType({ inputs, facts, olds, fail, plan }: Planning, current: Current): Verdict {
    const types = facts.types;
    const byId = (id: string) => types.find((t) => t.id === id || (facts.backend === "nvidia-vgpu" && t.name === id));
    let chosen: MdevType | undefined;
    if (inputs.type !== undefined) {
        chosen = byId(inputs.type);
        if (!chosen && current && (current.typeId === inputs.type || (olds?.typeId === current.typeId && olds?.typeName === inputs.type))) {
            chosen = { id: current.typeId, name: olds?.typeName ?? current.typeId, description: "", deviceApi: "vfio-pci", available: 0, vramMiB: olds?.vramMiB ?? null };
        }
        if (!chosen) {
            const what = facts.backend === "nvidia-vgpu" ? `no free VF of ${facts.parent} can create vGPU type ${JSON.stringify(inputs.type)}; creatable now` : `parent ${facts.parent} has no mdev type ${JSON.stringify(inputs.type)}; its types`;
            fail("type", `${what}: ${types.map(describeType).join("; ") || "none"}`);
            return "stop";
        }
    } else {
        const bounds = inputs.vram!;
        const fit = typesByVram(types, bounds);
        const keep = current ? fit.find((t) => t.id === current.typeId) ?? (olds?.typeId === current.typeId && olds.vramMiB !== null && olds.vramMiB !== undefined && fitsVram({ ...byId(current.typeId)!, vramMiB: olds.vramMiB }, bounds) ? byId(current.typeId) : undefined) : undefined;
        if (fit.length === 0 && !keep) {
            const sized = [...types].sort((a, b) => (a.vramMiB ?? -1) - (b.vramMiB ?? -1) || a.id.localeCompare(b.id));
            const list = sized.map((t) => (t.vramMiB !== null ? `${t.id} ${t.vramMiB} MiB` : `${t.id} (no video memory stated)`)).join(", ");
            fail("vram", `vram ${fmtBounds(bounds)} MiB matches no type of ${facts.parent}; types and their video memory: ${list || "none"}`);
            return "stop";
        }
        chosen = keep ?? fit.find((t) => t.available > 0) ?? fit[0];
    }
    plan.type = chosen;
    return "next";
}

// ---- what to do with the device
function whatToDo({ inputs, facts, olds, atCheck, fail, plan }: Planning, current: Current): Verdict {
    const uuid = inputs.uuid;
    const chosen = plan.type!;
    const ours = !!olds?.uuid && olds.uuid === uuid;
    if (facts.backend === "mdev") {
        const e = facts.existing;
        if (!e) plan.action = "create";
        else if (e.typeId === chosen.id) plan.action = ours ? "keep" : "adopt";
        else if (ours) plan.action = "recreate";
        else {
            fail("uuid", `UUID ${uuid} is already an mdev of type ${e.typeId} on ${facts.parent}, not ${chosen.id}; choose another uuid, or remove that mdev first`);
            return "stop";
        }
        if (plan.action === "recreate" && facts.openers.length && !atCheck) {
            fail("type", `the mdev ${uuid} must be recreated as ${chosen.id} (it is ${e!.typeId} now), but /dev/vfio/${e!.group} is held open by PID ${facts.openers.join(", ")}; stop the VM first`);
        }
    } else if (current && current.typeId === chosen.id) {
        plan.action = "keep";
        plan.vf = current.vf;
    } else {
        plan.action = current ? "recreate" : "create";
        plan.vf = facts.vfs.find((v) => v.current === "0" && v.creatable.some((c) => c.id === chosen.id)) ?? null;
    }
    const needsRoom = plan.action === "create" || (plan.action === "recreate" && facts.backend === "nvidia-vgpu");
    if (needsRoom && chosen.available < 1) {
        const room = facts.types.filter((t) => t.available > 0 && t.id !== chosen.id);
        const where = facts.backend === "nvidia-vgpu" ? `no free VF of ${facts.parent} can create it` : `available_instances is 0`;
        fail(
            inputs.type !== undefined ? "type" : "vram",
            `mdev type ${chosen.id}${chosen.name !== chosen.id ? ` (${chosen.name})` : ""} on ${facts.parent} has no instance left (${where}); ${room.length ? `types of ${facts.parent} with room: ${room.map(describeType).join("; ")}` : `no type of ${facts.parent} has room now: remove an instance first`}`,
        );
        return "stop";
    }
    return "next";
}

// ---- persistence (mdevctl)
function persistence({ inputs, facts, olds, fail, plan }: Planning): void {
    const { persistent, attrs } = defaults(inputs);
    const chosen = plan.type!;
    if (persistent && facts.backend === "mdev") {
        if (!facts.bootHook.mdevctl) {
            fail("persistent", "persistent: true needs mdevctl on the host (apt install mdevctl / dnf install mdevctl): it starts the devices defined in /etc/mdevctl.d at boot. Install it, or set persistent: false");
        } else if (!facts.bootHook.works && !facts.bootHook.fix) {
            fail("persistent", `mdevctl is installed (${facts.bootHook.mdevctl}) but ${facts.bootHook.rulePath ? `its udev rule ${facts.bootHook.rulePath} does not run it` : `its udev rule ${MDEVCTL_RULE_NAME} is missing`}, so nothing would start the device at boot; reinstall mdevctl, or set persistent: false`);
        }
        plan.fixBootHook = facts.bootHook.works ? null : facts.bootHook.fix;
        if (facts.configText === null || facts.config?.type !== chosen.id || facts.config.start !== "auto" || JSON.stringify(facts.config.attrs) !== JSON.stringify(attrs)) plan.writeConfig = mdevctlConfig(chosen.id, attrs);
    } else if (!persistent && facts.configText !== null && olds?.persistent) {
        plan.removeConfig = true;
    }
}

// ---- the preview
function preview({ inputs, facts, plan }: Planning): void {
    const { attrs } = defaults(inputs);
    const uuid = inputs.uuid;
    const chosen = plan.type!;
    const lines = plan.lines;
    const cfgPath = mdevctlConfigPath(facts.parent!, uuid);
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
        lines.push(`write ${plan.fixBootHook.path}: the installed ${facts.bootHook.rulePath} runs ${plan.fixBootHook.from}, which does not exist (mdevctl is ${plan.fixBootHook.to}), so mdevctl would start nothing at boot`);
    }
    if (plan.writeConfig) lines.push(`write ${cfgPath} (mdevctl, start: auto) so the mdev comes back at boot`);
    if (plan.removeConfig) lines.push(`remove ${cfgPath} (no longer persistent)`);
}

/**
 * Observe and plan; a refusal planned on the fast path's partial facts is planned again on full facts, for its
 * message. `typeHint` is the type check chose (its `typeId`, carried in the inputs), which lets the first round trip
 * read that type alone.
 */
export async function observeAndPlan(host: Host, inputs: MdevInputsWithUuid, typeHint: string | undefined, olds?: Partial<MdevInstanceOutputs>, atCheck = false): Promise<{ facts: MdevFacts; plan: MdevPlan }> {
    const persistent = defaults(inputs).persistent;
    let facts = await readMdevFacts(host, inputs.parent, inputs.uuid, { typeHint, persistent });
    let plan = planMdev(inputs, facts, olds, atCheck);
    if (plan.problems.length && facts.partial) {
        facts = await readMdevFacts(host, inputs.parent, inputs.uuid, { persistent });
        plan = planMdev(inputs, facts, olds, atCheck);
    }
    return { facts, plan };
}

/**
 * type or vram, exactly one, with sane bounds. No host: `typesHint` (the parent's types, when they were read) only
 * makes the "neither" message more helpful; the host file runs this at load time without it. Pure.
 */
export function choiceProblems(inputs: Pick<MdevInstanceInputs, "type" | "vram"> | Pick<MdevInputsWithUuid, "type" | "vram">, typesHint = "`pulumi-vfio inventory` lists each parent's types"): CheckFailure[] {
    const out: CheckFailure[] = [];
    if (inputs.type !== undefined && inputs.vram !== undefined) out.push({ property: "vram", reason: "give either type (an exact type id) or vram (bounds in MiB), not both" });
    if (inputs.type === undefined && inputs.vram === undefined) out.push({ property: "type", reason: `give type (an exact type id) or vram (bounds in MiB); ${typesHint}` });
    if (inputs.vram && inputs.vram.min !== undefined && inputs.vram.max !== undefined && inputs.vram.min > inputs.vram.max) {
        out.push({ property: "vram", reason: `vram.min (${inputs.vram.min}) is above vram.max (${inputs.vram.max})` });
    }
    return out;
}
