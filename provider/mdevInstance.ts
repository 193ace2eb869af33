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
 *
 * Where each step lives: mdev/observe.ts reads the host into a value (`MdevFacts`, the observation); mdev/plan.ts
 * turns inputs and observation into an `MdevPlan` (action, type, config, preview lines, problems); the backends apply
 * it — mdev/busBackend.ts (the mdev bus: `create`, attributes, mdevctl, `remove`) and mdev/nvidiaVgpu.ts (NVIDIA vGPU
 * 17+: `current_vgpu_type` on a VF). Create observes again under the host lock rather than reuse what check read:
 * only check's choice (`typeId`, in the inputs) carries over, and it merely narrows the first read.
 */
import { CheckFailure, CheckResult, containsUnknown, isUnknown, validate, DiffResult } from "./check";
import { PlanError } from "./errors";
import { withHost } from "./host";
import { checkOnHost } from "./checkOnHost";
import { hostIdentity } from "./host/ssh";
import { Host } from "./host/types";
import { assertAttrName, parseParent, parseUuid } from "./sysfs/mdev";
import { applyBus, createDirect, readBus, removeBus } from "./mdev/busBackend";
import { applyVgpu, readVgpu, removeVgpu } from "./mdev/nvidiaVgpu";
import { readMdevFacts } from "./mdev/observe";
import { observeAndPlan } from "./mdev/plan";
import { MdevInputsWithUuid, MdevInstanceInputs, MdevInstanceOutputs, defaults } from "./mdev/types";

export type { MdevAction, MdevBackend, MdevFacts, MdevInstanceInputs, MdevInstanceOutputs, MdevPlan } from "./mdev/types";
export { planMdev, choiceProblems } from "./mdev/plan";
export { readMdevFacts } from "./mdev/observe";
export { vgpuTypes } from "./mdev/nvidiaVgpu";

// ------------------------------------------------------------------------------------------------ check / diff

function message(f: () => unknown): string {
    try {
        f();
        return "";
    } catch (e) {
        return (e as Error).message;
    }
}

/** Fields with a pattern, checked by our parsers, whose messages say what form to use. No host. Pure. */
export function fieldProblems(inputs: Pick<MdevInstanceInputs, "uuid" | "parent" | "attrs">): CheckFailure[] {
    const own: CheckFailure[] = [];
    if (typeof inputs.uuid === "string" && !isUnknown(inputs.uuid)) {
        const m = message(() => parseUuid(inputs.uuid!));
        if (m) own.push({ property: "uuid", reason: `uuid: ${m}` });
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
    return own;
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
    const own = fieldProblems(inputs);
    if (!own.some((f) => f.property === "uuid") && typeof inputs.uuid === "string" && !isUnknown(inputs.uuid)) inputs.uuid = parseUuid(inputs.uuid);
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
    failures.push(
        ...(await checkOnHost(
            inputs.connection,
            onHost,
            async (host) => {
                const prev = olds?.uuid === inputs.uuid && olds?.parent === inputs.parent ? (olds.typeId as string | undefined) : undefined;
                const { plan } = await observeAndPlan(host, inputs as MdevInputsWithUuid, inputs.type ?? prev, olds as Partial<MdevInstanceOutputs>, true);
                if (plan.parent) inputs.parentDevice = plan.parent;
                if (plan.type) inputs.typeId = plan.type.id;
                inputs.plan = plan.lines;
                return plan.problems;
            },
            "parent",
        )),
    );
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

/**
 * Under the host lock: a non-persistent create of the type check chose writes `create` first (one round trip when the
 * kernel takes it); otherwise, or when the kernel refused it, observe → plan → the backend applies the plan.
 */
async function converge(host: Host, inputs: MdevInstanceInputs, olds?: Partial<MdevInstanceOutputs>): Promise<MdevInstanceOutputs> {
    if (!inputs.uuid) throw new PlanError("uuid", "uuid is required (check derives it)");
    const withUuid: MdevInputsWithUuid = { ...inputs, uuid: parseUuid(inputs.uuid) };
    return host.withLock(async (host) => {
        if (!olds && !defaults(inputs).persistent && inputs.typeId) {
            const direct = await createDirect(host, withUuid, inputs.typeId, inputs.plan ?? []);
            if (direct.made) return direct.outs;
        }
        const { facts, plan } = await observeAndPlan(host, withUuid, inputs.typeId ?? inputs.type, olds);
        if (plan.problems.length) throw new PlanError(plan.problems[0].property, plan.problems.map((p) => p.reason).join("; "));
        if (plan.backend === "nvidia-vgpu") return applyVgpu(host, withUuid, plan, olds, () => readMdevFacts(host, withUuid.parent, withUuid.uuid));
        return applyBus(host, withUuid, plan, facts);
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
    return withHost(props.connection, (host) => (props.backend === "nvidia-vgpu" ? readVgpu(host, id, props) : readBus(host, id, props)), onHost);
}

/** Remove the mdev: refuse while a VM holds its group; otherwise `remove`, verify, and delete mdevctl's config. */
export async function remove(id: string, props: MdevInstanceOutputs, onHost?: Host): Promise<void> {
    await withHost(props.connection, (host) => host.withLock((host) => (props.backend === "nvidia-vgpu" ? removeVgpu(host, props) : removeBus(host, id, props))), onHost);
}

export const mdevInstance = { check, diff, create, read, update, delete: remove };
