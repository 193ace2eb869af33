/**
 * KvmfrDevice: what happens on `pulumi preview` / `up` / `refresh` / `destroy` for "/dev/kvmfrN exists, this big,
 * with these permissions" — Looking Glass's shared memory through its kvmfr module.
 *
 * - check: validate (size as a power of two, or from a resolution with the B7 or the current formula; a mode with no
 *   permission for others: other-readable would show the guest's screen to every local user), then read the host:
 *   the module must be installed (no distribution ships it: the error says how to install the DKMS module), the
 *   owner and group must exist, and the planned module reload is named.
 * - create/update: under the host lock, merge this device's size into the one `static_size_mb` array every
 *   KvmfrDevice shares (/etc/modprobe.d/kvmfr.conf), write modules-load.d and this device's udev rule, load the
 *   module (or reload it — refused while any /dev/kvmfr* is open), set owner/group/mode, and read it all back:
 *   /dev/kvmfrN must be a character device (a regular file there is a QEMU that started before the module).
 * - read: the device as it is; a missing, resized or re-permissioned device is drift the next `up` repairs.
 * - delete: refuse while the device is open; drop its size (the last entry only: kvmfr numbers devices by position)
 *   and its rule; unload the module when no device is left.
 * - `libvirt: true` also lets libvirt's QEMU open the device (qemu.conf's cgroup_device_acl, AppArmor), in the same
 *   batch and restored with the rest on failure: provider/libvirt/qemuConf.ts.
 */
import { checkOnHost } from "./checkOnHost";
import { CheckFailure, CheckResult, containsUnknown, isUnknown, schemaDefault, validate, withoutProvider } from "./check";
import { PlanError, SysfsError } from "./errors";
import { withHost } from "./host";
import { describeHolders } from "./sysfs/proc";
import { hostIdentity } from "./host/ssh";
import { Host, Op } from "./host/types";
import { firstFailure } from "./sysfs/pci";
import {
    KVMFR_CLASS,
    KvmfrAccess,
    KvmfrFormula,
    KvmfrNode,
    LOADED_SIZES,
    MODPROBE_CONF,
    MODULES_LOAD_CONF,
    MODULES_LOAD_TEXT,
    UDEV_RULES,
    isPowerOfTwo,
    kvmfrPath,
    kvmfrQemuArgs,
    kvmfrSizeMb,
    mergeSize,
    mergeUdevRules,
    missingModuleMessage,
    modeProblem,
    normalizeMode,
    removeSize,
    renderModprobeConf,
} from "./sysfs/kvmfr";
import type { KvmfrDeviceSchemaInputs } from "./generated/inputs";
import { LibvirtAdded, LibvirtPlan, libvirtOps, libvirtPresent, libvirtUndoOps, planLibvirt } from "./libvirt/qemuConf";
import { KvmfrFacts, readKvmfrFacts } from "./kvmfr/facts";

export { readKvmfrFacts };
export type { KvmfrFacts };

/**
 * The schema's inputs (provider/generated/inputs.ts, from schema/kvmfr-device.schema.json); check sets `sizeMb` from
 * the resolution when that is given instead.
 */
export type KvmfrDeviceInputs = KvmfrDeviceSchemaInputs;

/** What the host has at /dev/kvmfrN now, for drift. */
export interface KvmfrActual {
    moduleLoaded: boolean;
    /** `char` as it should be; `file` when QEMU created it before the module loaded; `absent`. */
    kind: KvmfrNode["kind"];
    /** The size the loaded module gave this device, or null when unknown/absent. */
    sizeMb: number | null;
    uid: number | null;
    gid: number | null;
    mode: string | null;
    /** With `libvirt`: the lines it added to qemu.conf and AppArmor are still there. */
    libvirt?: boolean;
}

export interface KvmfrDeviceOutputs extends KvmfrDeviceInputs {
    index: number;
    sizeMb: number;
    owner: string;
    group: string;
    mode: string;
    path: string;
    sizeBytes: number;
    /** `-object memory-backend-file,...,mem-path=/dev/kvmfrN,size=...M,share=yes -device ivshmem-plain,...`. */
    qemuArgs: string[];
    /** Numeric ids of owner and group on the host. */
    uid: number;
    gid: number;
    actual: KvmfrActual;
    /** What `libvirt` added (for delete to take exactly that back). */
    libvirtAdded?: LibvirtAdded;
}

const SCHEMA = "kvmfr-device.schema.json";
/** The schema's defaults for inputs validate() did not fill (an older state, diff, read). */
const defaults = (i: KvmfrDeviceInputs) => ({
    owner: i.owner ?? schemaDefault<string>(SCHEMA, "owner"),
    group: i.group ?? schemaDefault<string>(SCHEMA, "group"),
    mode: normalizeMode(i.mode ?? schemaDefault<string>(SCHEMA, "mode")),
    libvirt: i.libvirt ?? schemaDefault<boolean>(SCHEMA, "libvirt"),
});
/** Whether libvirt's files must be read: wanted now, or something added before to take back. */
const libvirtInvolved = (want: boolean, had?: LibvirtAdded) => want || !!had?.acl || !!had?.apparmor;

const NAME = /^[a-z_][a-z0-9_-]{0,31}\$?$/;

/** Field checks the schema cannot express. Pure. */
export function inputProblems(i: KvmfrDeviceInputs, userGaveSize: boolean): CheckFailure[] {
    const out: CheckFailure[] = [];
    const resolution = i.width !== undefined || i.height !== undefined;
    if (userGaveSize && resolution) out.push({ property: "sizeMb", reason: "give either sizeMb or width/height (the size is computed from the resolution), not both" });
    if (!userGaveSize && !resolution) out.push({ property: "sizeMb", reason: "sizeMb is required, or width and height to compute it (Looking Glass's formula: 1920×1080 → 32 MiB)" });
    if (resolution && (i.width === undefined || i.height === undefined)) out.push({ property: i.width === undefined ? "width" : "height", reason: "width and height go together" });
    if (userGaveSize && typeof i.sizeMb === "number" && !isUnknown(i.sizeMb) && !isPowerOfTwo(i.sizeMb)) {
        out.push({ property: "sizeMb", reason: `sizeMb ${i.sizeMb} is not a power of two (kvmfr and Looking Glass expect 32, 64, 128, ...)` });
    }
    for (const f of ["owner", "group"] as const) {
        const v = i[f];
        if (typeof v === "string" && !isUnknown(v) && !NAME.test(v)) out.push({ property: f, reason: `${f} ${JSON.stringify(v)} is not a user/group name ([a-z_][a-z0-9_-]*)` });
    }
    if (typeof i.mode === "string" && !isUnknown(i.mode)) {
        const p = modeProblem(i.mode);
        if (p) out.push({ property: "mode", reason: p });
    }
    return out;
}

// ------------------------------------------------------------------------------------------------ planning

export interface KvmfrPlan {
    problems: CheckFailure[];
    sizes: number[];
    confText: string;
    udevText: string;
    writeConf: boolean;
    writeUdev: boolean;
    writeModulesLoad: boolean;
    load: boolean;
    reload: boolean;
    /** /dev/kvmfrI paths open when a reload is planned: the reason it is refused. */
    blockers: { path: string; pids: number[] }[];
    /** For the preview: what will happen, one line each. */
    lines: string[];
    libvirt?: LibvirtPlan;
}

/**
 * Decide the shared files and the module action for one device. Pure, so the same logic serves check, create,
 * update and the unit tests.
 */
export function planKvmfr(inputs: KvmfrDeviceInputs & { sizeMb: number }, facts: KvmfrFacts, host = "this host", preview = false, had?: LibvirtAdded): KvmfrPlan {
    const { owner, group, mode, libvirt } = defaults(inputs);
    const problems: CheckFailure[] = [];
    const index = inputs.index;
    const path = kvmfrPath(index);
    if (!facts.installed) problems.push({ property: "connection", reason: missingModuleMessage(host, facts.kernelRelease) });
    if (facts.uid === null) problems.push({ property: "owner", reason: `user ${JSON.stringify(owner)} does not exist on ${host}` });
    if (facts.gid === null) problems.push({ property: "group", reason: `group ${JSON.stringify(group)} does not exist on ${host} (distributions with KVM create "kvm"; or name another group)` });
    const merged = mergeSize(facts.confSizes, index, inputs.sizeMb);
    // In a preview the lower devices may be declared in the same program and created first (dependsOn): only
    // the apply, under the lock, can tell.
    if (merged.gap && !preview) problems.push({ property: "index", reason: merged.gap });
    if (facts.node.kind === "file") {
        const holders = facts.openers.get(index) ?? [];
        problems.push({
            property: "index",
            reason:
                `${path} is a regular file${facts.node.size ? ` of ${facts.node.size} bytes` : ""}, not kvmfr's character device: a QEMU started before the kvmfr module was loaded ` +
                `created it as its shared-memory file${holders.length ? ` (still held by PID ${holders.join(", ")})` : ""}. Stop that VM, delete ${path}, and run \`pulumi up\` again`,
        });
    } else if (facts.node.kind === "other") {
        problems.push({ property: "index", reason: `${path} exists but is neither kvmfr's character device nor a file; remove it` });
    }
    const sizes = merged.sizes;
    const access: KvmfrAccess = { owner, group, mode };
    const confText = renderModprobeConf(sizes);
    const udevText = mergeUdevRules(facts.udevText, index, access);
    const writeConf = sizes.join(",") !== facts.confSizes.join(",") || facts.confText !== confText;
    const writeUdev = (facts.udevText ?? "") !== udevText;
    const writeModulesLoad = (facts.modulesLoadText ?? "").split("\n").every((l) => l.trim() !== "kvmfr");
    const load = !facts.loaded;
    const reload = facts.loaded && (facts.loadedSizes === null || facts.loadedSizes.join(",") !== sizes.join(","));
    const blockers: KvmfrPlan["blockers"] = [];
    if (reload) {
        for (const [i, pids] of facts.openers) if (pids.length) blockers.push({ path: kvmfrPath(i), pids });
        if (blockers.length) {
            problems.push({
                property: "sizeMb",
                reason:
                    `kvmfr must be reloaded to make ${sizes.map((s, i) => `kvmfr${i}=${s} MiB`).join(", ")} (it is loaded with ${facts.loadedSizes?.join(",") ?? "unknown sizes"}), ` +
                    `and a reload removes every /dev/kvmfr* device, but ${blockers.map((b) => `${b.path} is held open by PID ${b.pids.join(", ")}`).join("; ")}. Stop the VMs that use Looking Glass first`,
            });
        }
    }
    const out: string[] = [];
    if (merged.gap) out.push(`kvmfr${index} needs the devices below it first (another KvmfrDevice this one dependsOn): ${MODPROBE_CONF} has ${facts.confSizes.length} size(s) now`);
    if (writeConf) out.push(`${MODPROBE_CONF}: static_size_mb=${facts.confSizes.join(",") || "(none)"} → ${sizes.join(",")}`);
    if (writeUdev) out.push(`${UDEV_RULES}: kvmfr${index} ${owner}:${group} ${mode}`);
    if (load) out.push(`modprobe kvmfr (creates /dev/kvmfr0..${sizes.length - 1})`);
    if (reload) out.push(`reload kvmfr (modprobe -r kvmfr; modprobe kvmfr): every /dev/kvmfr* is recreated`);
    const lv = facts.libvirt && planLibvirt(facts.libvirt, path, libvirt, had);
    if (lv) problems.push(...lv.problems.map((reason) => ({ property: "libvirt", reason })));
    if (lv) out.push(...lv.lines);
    return { problems, sizes, confText, udevText, writeConf, writeUdev, writeModulesLoad, load, reload, blockers, lines: out, libvirt: lv || undefined };
}

// ------------------------------------------------------------------------------------------------ check / diff

function resolveSize(i: KvmfrDeviceInputs): number | undefined {
    if (i.sizeMb !== undefined) return i.sizeMb;
    if (i.width !== undefined && i.height !== undefined && !isUnknown(i.width) && !isUnknown(i.height) && !isUnknown(i.hdr) && !isUnknown(i.formula)) {
        return kvmfrSizeMb(i.width, i.height, i.hdr ?? schemaDefault<boolean>(SCHEMA, "hdr"), i.formula ?? schemaDefault<KvmfrFormula>(SCHEMA, "formula"));
    }
    return undefined;
}

export async function check(olds: Record<string, any>, news: Record<string, any>, onHost?: Host): Promise<CheckResult<KvmfrDeviceInputs & { plan?: string[] }>> {
    const { inputs, failures } = validate<KvmfrDeviceInputs & { plan?: string[] }>("kvmfr-device.schema.json", news);
    failures.push(...inputProblems(inputs, news?.sizeMb !== undefined));
    if (failures.length) return { inputs, failures };
    const size = resolveSize(inputs);
    if (size !== undefined && !isUnknown(size)) inputs.sizeMb = size;
    if (isUnknown(inputs.index) || size === undefined || isUnknown(size) || containsUnknown(inputs.connection) || isUnknown(inputs.owner) || isUnknown(inputs.group)) {
        return { inputs, failures };
    }
    const { owner, group, libvirt } = defaults(inputs);
    // Another index is another device (replace): what the old one added is its delete's to take back.
    const had: LibvirtAdded | undefined = olds?.index === inputs.index ? olds?.libvirtAdded : undefined;
    failures.push(
        ...(await checkOnHost(inputs.connection, onHost, async (host) => {
            const facts = await readKvmfrFacts(host, inputs.index, owner, group, libvirtInvolved(libvirt, had));
            const plan = planKvmfr({ ...inputs, sizeMb: size }, facts, host.name, true, had);
            inputs.plan = plan.lines;
            return plan.problems;
        })),
    );
    return { inputs, failures };
}


/** Another index or host → replace; size and permissions → update in place; drift found by refresh → update. */
export function diff(_id: string, olds: KvmfrDeviceOutputs, news: KvmfrDeviceInputs): { changes: boolean; replaces: string[]; deleteBeforeReplace: boolean } {
    const replaces: string[] = [];
    if (isUnknown(news.index) || news.index !== olds.index) replaces.push("index");
    if (containsUnknown(news.connection) || hostIdentity(news.connection) !== hostIdentity(olds.connection)) replaces.push("connection");
    const n = defaults(news);
    let changes = replaces.length > 0;
    if (isUnknown(news.sizeMb) || news.sizeMb !== olds.sizeMb) changes = true;
    if (n.owner !== olds.owner || n.group !== olds.group || n.mode !== olds.mode || n.libvirt !== (olds.libvirt ?? false)) changes = true;
    for (const k of ["width", "height", "hdr", "formula"] as const) if (news[k] !== olds[k]) changes = true;
    const a = olds.actual;
    if (a && (a.kind !== "char" || a.sizeMb !== olds.sizeMb || a.uid !== olds.uid || a.gid !== olds.gid || a.mode !== olds.mode || a.libvirt === false)) changes = true;
    return { changes, replaces, deleteBeforeReplace: true };
}

// ------------------------------------------------------------------------------------------------ apply

function actualFrom(facts: KvmfrFacts, index: number, added?: LibvirtAdded): KvmfrActual {
    const n = facts.node;
    return {
        ...(facts.libvirt && added ? { libvirt: libvirtPresent(facts.libvirt, kvmfrPath(index), added) } : {}),
        moduleLoaded: facts.loaded,
        kind: n.kind,
        sizeMb: facts.loaded && n.kind === "char" && facts.loadedSizes ? facts.loadedSizes[index] ?? null : null,
        uid: n.uid ?? null,
        gid: n.gid ?? null,
        mode: n.mode ?? null,
    };
}

function outputs(inputs: KvmfrDeviceInputs & { plan?: string[] }, sizeMb: number, facts: KvmfrFacts, plan: string[], libvirtAdded?: LibvirtAdded): KvmfrDeviceOutputs & { plan: string[] } {
    const { owner, group, mode } = defaults(inputs);
    return {
        ...withoutProvider(inputs),
        index: inputs.index,
        sizeMb,
        owner,
        group,
        mode,
        path: kvmfrPath(inputs.index),
        sizeBytes: sizeMb * 1024 * 1024,
        qemuArgs: kvmfrQemuArgs(inputs.index, sizeMb),
        uid: facts.uid ?? -1,
        gid: facts.gid ?? -1,
        actual: actualFrom(facts, inputs.index, libvirtAdded),
        // Only when set: an undefined field is not a value the engine's Struct can carry.
        ...(libvirtAdded ? { libvirtAdded } : {}),
        plan,
    };
}

/** Put the shared files back as they were (after a failed apply). */
function restoreFileOps(facts: KvmfrFacts): Op[] {
    const back = (path: string, text: string | undefined): Op => (text === undefined ? { op: "remove", path, optional: true } : { op: "put", path, data: text, mode: 0o644, optional: true });
    return [back(MODPROBE_CONF, facts.confText), back(UDEV_RULES, facts.udevText), back(MODULES_LOAD_CONF, facts.modulesLoadText)];
}

async function converge(host: Host, inputs: KvmfrDeviceInputs, had?: LibvirtAdded): Promise<KvmfrDeviceOutputs> {
    const sizeMb = resolveSize(inputs);
    const problems = inputProblems(inputs, inputs.width === undefined);
    if (problems.length || sizeMb === undefined) throw new PlanError(problems[0]?.property ?? "sizeMb", problems.map((p) => p.reason).join("; ") || "no size");
    const { owner, group, mode, libvirt } = defaults(inputs);
    const index = inputs.index;
    const path = kvmfrPath(index);
    return host.withLock(async (host) => {
        const involved = libvirtInvolved(libvirt, had);
        const facts = await readKvmfrFacts(host, index, owner, group, involved);
        const plan = planKvmfr({ ...inputs, sizeMb }, facts, host.name, false, had);
        if (plan.problems.length) {
            let msg = plan.problems.map((p) => p.reason).join("; ");
            if (plan.blockers.length) {
                const who = await describeHolders(host, [...new Set(plan.blockers.flatMap((b) => b.pids))]);
                msg += ` (${who})`;
            }
            throw new PlanError(plan.problems[0].property, msg);
        }
        const ops: Op[] = [];
        if (plan.writeConf) ops.push({ op: "put", path: MODPROBE_CONF, data: plan.confText, mode: 0o644 });
        if (plan.writeModulesLoad) ops.push({ op: "put", path: MODULES_LOAD_CONF, data: MODULES_LOAD_TEXT, mode: 0o644 });
        if (plan.writeUdev) {
            ops.push({ op: "put", path: UDEV_RULES, data: plan.udevText, mode: 0o644 });
            ops.push({ op: "exec", argv: ["udevadm", "control", "--reload"], optional: true });
        }
        if (plan.reload) ops.push({ op: "exec", argv: ["modprobe", "-r", "kvmfr"] });
        if (plan.load || plan.reload) {
            ops.push({ op: "exec", argv: ["modprobe", "kvmfr"] });
            ops.push({ op: "mkdir", path: "/run/pulumi-vfio", mode: 0o755 });
            ops.push({ op: "put", path: LOADED_SIZES, data: plan.sizes.join(",") + "\n", mode: 0o644 });
            ops.push({ op: "exec", argv: ["udevadm", "settle", "--timeout=10"], optional: true });
        }
        if (plan.libvirt) ops.push(...libvirtOps(plan.libvirt));
        const applied = ops.length;
        // udev applies the rule on add; setting them directly also covers a host without a running udev.
        ops.push({ op: "exec", argv: ["chown", `${owner}:${group}`, path] });
        ops.push({ op: "exec", argv: ["chmod", mode, path] });
        const r = await host.run(ops, { stopOnError: true });
        const failure = firstFailure(ops, r);
        const after = await readKvmfrFacts(host, index, owner, group, involved);
        const problem = failure ?? verify(after, index, sizeMb, mode);
        if (problem) {
            if (applied) {
                const undo = [...restoreFileOps(facts), ...(plan.libvirt ? libvirtUndoOps(plan.libvirt) : [])];
                // A reload that got half way leaves the module out: load it again with the old sizes.
                if (facts.loaded && !after.loaded) undo.push({ op: "exec", argv: ["modprobe", "kvmfr"], optional: true });
                if (!facts.loaded && after.loaded) undo.push({ op: "exec", argv: ["modprobe", "-r", "kvmfr"], optional: true });
                await host.run(undo);
            }
            throw problem instanceof Error ? new Error(`${path}: ${problem.message}. The kvmfr files were restored`) : new Error(`${path}: ${problem}. The kvmfr files were restored`);
        }
        return outputs(inputs, sizeMb, after, plan.lines, plan.libvirt?.added);
    });
}

/** What is wrong with /dev/kvmfrN after applying, or undefined. */
function verify(f: KvmfrFacts, index: number, sizeMb: number, mode: string): string | undefined {
    const path = kvmfrPath(index);
    if (!f.loaded) return "the kvmfr module is not loaded after modprobe; check dmesg";
    if (f.node.kind === "file") return `${path} is a regular file, not kvmfr's character device: a QEMU started before the module created it; stop it, delete ${path}, and apply again`;
    if (f.node.kind !== "char") return `${path} did not appear after loading kvmfr (${f.classCount} device(s) under ${KVMFR_CLASS}); check dmesg for "kvmfr: creating"`;
    const have = f.loadedSizes?.[index];
    if (have !== sizeMb) return `${path} is ${have ?? "of unknown size"} MiB, not ${sizeMb} MiB`;
    if (f.node.mode !== mode || f.node.uid !== f.uid || f.node.gid !== f.gid) return `${path} has mode ${f.node.mode} uid ${f.node.uid} gid ${f.node.gid}, not ${mode} ${f.uid} ${f.gid}`;
    return undefined;
}

export async function create(inputs: KvmfrDeviceInputs, onHost?: Host): Promise<{ id: string; outs: KvmfrDeviceOutputs }> {
    const outs = await withHost(inputs.connection, (host) => converge(host, inputs), onHost);
    return { id: `kvmfr${outs.index}`, outs };
}

export async function update(_id: string, olds: KvmfrDeviceOutputs, news: KvmfrDeviceInputs, onHost?: Host): Promise<{ outs: KvmfrDeviceOutputs }> {
    return { outs: await withHost(news.connection, (host) => converge(host, news, olds.libvirtAdded), onHost) };
}

/** The device as it is: gone from the conf and from /dev → gone; otherwise its real kind, size and permissions. */
export async function read(id: string, props: KvmfrDeviceOutputs, onHost?: Host): Promise<{ id: string; props?: KvmfrDeviceOutputs }> {
    return withHost(
        props.connection,
        async (host) => {
            const { owner, group } = defaults(props);
            const facts = await readKvmfrFacts(host, props.index, owner, group, libvirtInvolved(false, props.libvirtAdded));
            if (facts.confSizes.length <= props.index && facts.node.kind === "absent") return { id: "" };
            return { id, props: { ...props, uid: facts.uid ?? props.uid, gid: facts.gid ?? props.gid, actual: actualFrom(facts, props.index, props.libvirtAdded) } };
        },
        onHost,
    );
}

/** Refuse while the device is open; drop its size and rule; unload or reload the module when nothing holds it. */
export async function remove(_id: string, props: KvmfrDeviceOutputs, onHost?: Host): Promise<void> {
    await withHost(
        props.connection,
        (host) =>
            host.withLock(async (host) => {
                const index = props.index;
                const path = kvmfrPath(index);
                const { owner, group } = defaults(props);
                const facts = await readKvmfrFacts(host, index, owner, group, libvirtInvolved(false, props.libvirtAdded));
                const mine = facts.openers.get(index) ?? [];
                if (mine.length) {
                    throw new Error(`refusing to remove ${path}: it is held open by ${await describeHolders(host, mine)}. Stop the VM that uses it first`);
                }
                const sizes = removeSize(facts.confSizes, index);
                const udevText = mergeUdevRules(facts.udevText, index, undefined);
                const ops: Op[] = [];
                if (sizes.length === 0) {
                    ops.push({ op: "remove", path: MODPROBE_CONF }, { op: "remove", path: MODULES_LOAD_CONF });
                } else if (sizes.join(",") !== facts.confSizes.join(",")) {
                    ops.push({ op: "put", path: MODPROBE_CONF, data: renderModprobeConf(sizes), mode: 0o644 });
                }
                if (udevText === "") ops.push({ op: "remove", path: UDEV_RULES });
                else if (udevText !== (facts.udevText ?? "")) ops.push({ op: "put", path: UDEV_RULES, data: udevText, mode: 0o644 });
                const anyOpen = [...facts.openers.values()].some((p) => p.length);
                const resize = facts.loaded && (facts.loadedSizes ?? []).join(",") !== sizes.join(",");
                // Only without holders: a reload would pull the other devices from under their VMs. Otherwise the
                // smaller array takes effect at the next load (reboot).
                if (resize && !anyOpen) {
                    ops.push({ op: "exec", argv: ["modprobe", "-r", "kvmfr"] });
                    if (sizes.length) {
                        ops.push({ op: "exec", argv: ["modprobe", "kvmfr"] });
                        ops.push({ op: "put", path: LOADED_SIZES, data: sizes.join(",") + "\n", mode: 0o644 });
                    } else ops.push({ op: "remove", path: LOADED_SIZES });
                }
                if (facts.libvirt) ops.push(...libvirtOps(planLibvirt(facts.libvirt, path, false, props.libvirtAdded)));
                const r = await host.run(ops, { stopOnError: true });
                const failure = firstFailure(ops, r);
                if (failure) throw new SysfsError(failure.path, failure.errno, `removing ${path}: ${failure.detail}`, failure.hint);
            }),
        onHost,
    );
}

export const kvmfrDevice = { check, diff, create, read, update, delete: remove };
