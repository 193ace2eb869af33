/**
 * VirtualFunctions: what happens on `pulumi preview` / `up` / `refresh` / `destroy` for "this PF has N SR-IOV
 * virtual functions".
 *
 * - check: validate the inputs, read the PF (nothing changes), refuse a device without SR-IOV, a count above
 *   `sriov_totalvfs` (naming the maximum), a PF whose driver cannot create VFs, and a change while a VM holds one
 *   of the VFs; the plan (`plan`) lists the writes and the VF addresses that will appear.
 * - create/update: under the host lock, `sriov_drivers_autoprobe` first (0 by default, so no host driver takes the
 *   new VFs and they stay free for vfio-pci), then `sriov_numvfs` through 0 when the count changes (the kernel
 *   answers EBUSY to a direct change), and the `virtfnN` links read back in the same batch; on failure the old
 *   count and autoprobe are put back.
 * - read: gone when the PF is gone; the real count, autoprobe and VFs otherwise (drift for `up` to repair).
 * - delete: refuse while a VM holds a VF; otherwise 0 VFs and autoprobe as it was before us.
 */
import { CheckFailure, CheckResult, containsUnknown, isUnknown, schemaDefault, validate, withoutProvider } from "./check";
import { PlanError, SysfsError } from "./errors";
import { withHost } from "./host";
import { checkOnHost } from "./checkOnHost";
import { BatchQuery } from "./host/query";
import { pidsOf } from "./sysfs/proc";
import { Connection, hostIdentity } from "./host/ssh";
import { Host, Op, OpResult } from "./host/types";
import { isVfioDriver } from "./sysfs/iommu";
import { PCI_DEVICES, PciDevice, classLabel, deviceReadOps, parseAddress, parseDevice } from "./sysfs/pci";
import { SriovState, VfView, numVfsOps, sriovQuery, vfAddress, vfsQuery, virtfnCount } from "./sysfs/sriov";
import type { VirtualFunctionsSchemaInputs } from "./generated/inputs";

/** The schema's inputs (provider/generated/inputs.ts, from schema/virtual-functions.schema.json) and what check adds. */
export interface VirtualFunctionsInputs extends VirtualFunctionsSchemaInputs {
    /** Set by check: what `up` will do. */
    plan?: string[];
}

export interface VirtualFunction {
    /** N of `virtfnN`. */
    index: number;
    address: string;
    driver: string | null;
    group: number | null;
}

export interface VirtualFunctionsOutputs extends VirtualFunctionsInputs {
    /** The PF address, normalized. */
    physicalFunction: string;
    autoprobe: boolean;
    /** `sriov_totalvfs`: the most VFs this PF can have. */
    totalVfs: number;
    /** VF addresses in `virtfnN` order; one can be an IommuBinding's `device`. */
    addresses: string[];
    /** IOMMU group of each VF, in the same order. */
    groups: (number | null)[];
    virtualFunctions: VirtualFunction[];
    /** `sriov_drivers_autoprobe` before the first create, restored by delete. */
    previousAutoprobe: boolean;
}

/** The schema's defaults for inputs validate() did not fill (an older state, diff, read). */
const defaults = (i: VirtualFunctionsInputs) => ({ autoprobe: i.autoprobe ?? schemaDefault<boolean>("virtual-functions.schema.json", "autoprobe") });

// ------------------------------------------------------------------------------------------------ host facts

/**
 * The observation: what {@link readVfFacts} read of a PF, as a value handed to {@link planVfs}. Check plans from one;
 * create and update read a fresh one under the host lock (nothing of check's reaches them but its inputs).
 */
export interface VfFacts {
    pf: PciDevice | null;
    sriov: SriovState | null;
    /** VFs that exist now (`virtfnN`), with driver and group. */
    vfs: VfView[];
    /** PIDs holding each VF's /dev/vfio/<group>, by VF address. */
    openers: Record<string, number[]>;
    /** vfio-pci's `enable_sriov` parameter (a PF on vfio-pci creates VFs only with it). */
    vfioEnableSriov: boolean;
}

/**
 * Two round trips: (1) the PF's attributes, SR-IOV state and directory listing (how many `virtfnN`), and the vfio
 * groups that exist; (2) every VF's link, driver and group, and who holds each vfio group (the group numbers of the
 * VFs are not known before trip 2, so every /dev/vfio/<n> is asked; there are few).
 */
export async function readVfFacts(host: Host, pf: string): Promise<VfFacts> {
    const q1 = new BatchQuery();
    const device = q1.add(deviceReadOps(pf), (r) => parseDevice(pf, r));
    const sriovPart = sriovQuery(q1, pf);
    const virtfns = q1.one({ op: "list", path: `${PCI_DEVICES}/${pf}` }, (r) => (r.ok ? virtfnCount(r.data.split("\n")) : 0));
    const enableSriov = q1.one({ op: "read", path: "/sys/module/vfio_pci/parameters/enable_sriov" }, (r) => r.ok && /^[Y1]/.test(r.data.trim()));
    const vfioGroups = q1.one({ op: "list", path: "/dev/vfio" }, (r) => (r.ok ? r.data.split("\n").map((g) => g.trim()).filter((g) => /^\d+$/.test(g)) : []));
    const r1 = await q1.run(host);
    const dev = device(r1);
    const sriov = dev ? sriovPart(r1) : null;
    const n = virtfns(r1);
    const vfioEnableSriov = enableSriov(r1);
    if (!dev || n === 0) return { pf: dev, sriov, vfs: [], openers: {}, vfioEnableSriov };

    const q2 = new BatchQuery();
    const vfsPart = vfsQuery(q2, pf, n);
    const holders = q2.each(vfioGroups(r1), (g): Op[] => [{ op: "openers", path: `/dev/vfio/${g}` }], (g, [r]) => [Number(g), r?.ok ? pidsOf(r) : []] as const);
    const r2 = await q2.run(host);
    const vfs = vfsPart(r2);
    const byGroup = new Map(holders(r2));
    const openers: Record<string, number[]> = {};
    for (const v of vfs) if (v.group !== null && (byGroup.get(v.group) ?? []).length) openers[v.address] = byGroup.get(v.group)!;
    return { pf: dev, sriov, vfs, openers, vfioEnableSriov };
}

// ------------------------------------------------------------------------------------------------ planning

/**
 * What `up` does to a PF. No rollback list: a batch that fails part-way leaves a state the plan did not foresee, so
 * apply undoes it from what the PF reads afterwards (count back through 0, autoprobe as it was).
 */
export interface VfPlan {
    problems: CheckFailure[];
    lines: string[];
    ops: Op[];
    /** VF addresses expected after the change (from offset and stride). */
    expected: string[];
}

/** Decide the writes for a PF and what makes them impossible. Pure, shared by check, apply and unit tests. */
export function planVfs(inputs: VirtualFunctionsInputs & { physicalFunction: string }, facts: VfFacts): VfPlan {
    const { autoprobe } = defaults(inputs);
    const problems: CheckFailure[] = [];
    const fail = (property: string, reason: string) => problems.push({ property, reason });
    const plan: VfPlan = { problems, lines: [], ops: [], expected: [] };
    const pfAddr = inputs.physicalFunction;
    const { pf, sriov } = facts;
    if (!pf) {
        fail("physicalFunction", `no PCI device ${pfAddr} on this host; \`pulumi-vfio inventory\` lists the devices and which have SR-IOV`);
        return plan;
    }
    const what = `${pfAddr} (${classLabel(pf.class)} ${pf.vendor}:${pf.device})`;
    if (!sriov) {
        fail("physicalFunction", `${what} has no SR-IOV capability (no sriov_totalvfs): it cannot have virtual functions. Use a device that lists sriov_totalvfs, or bind this one whole with an IommuBinding`);
        return plan;
    }
    if (pf.physfn) {
        fail("physicalFunction", `${pfAddr} is itself a virtual function of ${pf.physfn}; give the physical function`);
        return plan;
    }
    if (sriov.totalVfs === 0) {
        fail("physicalFunction", `${what} reports sriov_totalvfs 0: SR-IOV is disabled (enable it in the firmware setup, or in the device's own configuration)`);
        return plan;
    }
    if (inputs.count > sriov.totalVfs) {
        fail("count", `count ${inputs.count} is above sriov_totalvfs of ${pfAddr}: the maximum is ${sriov.totalVfs}`);
        return plan;
    }
    const changing = inputs.count !== sriov.numVfs;
    if (changing && inputs.count > 0) {
        if (!pf.driver) {
            fail("physicalFunction", `${what} has no driver: the kernel creates VFs through the PF's driver (sriov_numvfs answers ENOENT). Bind its driver first (e.g. nvme, ixgbe, nvidia)`);
        } else if (isVfioDriver(pf.driver) && !facts.vfioEnableSriov) {
            fail("physicalFunction", `${what} is bound to ${pf.driver}, which creates VFs only with \`modprobe vfio-pci enable_sriov=1\` (/sys/module/vfio_pci/parameters/enable_sriov is N); set that option, or give the PF back to its own driver`);
        }
    }
    if (changing && sriov.numVfs > 0) {
        const held = facts.vfs.filter((v) => (facts.openers[v.address] ?? []).length > 0);
        if (held.length) {
            fail(
                "count",
                `changing the VFs of ${pfAddr} removes the current ones, but ${held.map((v) => `${v.address} (bound to ${v.driver}) is held open by PID ${facts.openers[v.address].join(", ")}`).join("; ")}; stop the VM first (the kernel would block until it exits)`,
            );
        }
    }
    if (problems.length) return plan;

    plan.ops = numVfsOps(pfAddr, sriov, { count: inputs.count, autoprobe });
    plan.expected = Array.from({ length: inputs.count }, (_, i) => vfAddress(pfAddr, sriov.offset, sriov.stride, i));
    if (sriov.autoprobe !== autoprobe) plan.lines.push(`${pfAddr} sriov_drivers_autoprobe: ${sriov.autoprobe ? 1 : 0} → ${autoprobe ? 1 : 0}${autoprobe ? "" : " (new VFs stay without a host driver)"}`);
    if (changing) {
        const via = sriov.numVfs !== 0 && inputs.count !== 0 ? " → 0" : "";
        const gone = sriov.numVfs !== 0 ? `; removes ${facts.vfs.map((v) => `${v.address}${v.driver ? ` (${v.driver})` : ""}`).join(", ")}` : "";
        const appear = inputs.count ? `; VFs ${plan.expected.join(", ")} appear` : "";
        plan.lines.push(`${pfAddr} sriov_numvfs: ${sriov.numVfs}${via} → ${inputs.count}${gone}${appear}`);
    } else {
        plan.lines.push(`${pfAddr} has ${sriov.numVfs} VF(s)${sriov.numVfs ? `: ${facts.vfs.map((v) => v.address).join(", ")}` : ""}, no change`);
    }
    return plan;
}

// ------------------------------------------------------------------------------------------------ check / diff

export async function check(olds: Record<string, any>, news: Record<string, any>, onHost?: Host): Promise<CheckResult<VirtualFunctionsInputs>> {
    const { inputs, failures: schemaFailures } = validate<VirtualFunctionsInputs>("virtual-functions.schema.json", news);
    delete inputs.plan;
    let addressFailure: string | undefined;
    if (typeof inputs.physicalFunction === "string" && !isUnknown(inputs.physicalFunction)) {
        try {
            inputs.physicalFunction = parseAddress(inputs.physicalFunction);
        } catch (e) {
            addressFailure = (e as Error).message;
        }
    }
    const failures = schemaFailures.filter((f) => !(addressFailure && f.property === "physicalFunction"));
    if (addressFailure) failures.unshift({ property: "physicalFunction", reason: `physicalFunction: ${addressFailure}` });
    if (failures.length) return { inputs, failures };
    if ([inputs.physicalFunction, inputs.count, inputs.autoprobe, inputs.connection].some(containsUnknown)) return { inputs, failures: [] };
    failures.push(
        ...(await checkOnHost(
            inputs.connection,
            onHost,
            async (host) => {
                const plan = planVfs(inputs, await readVfFacts(host, inputs.physicalFunction));
                inputs.plan = plan.lines;
                return plan.problems;
            },
            "physicalFunction",
        )),
    );
    return { inputs, failures };
}


/** Another PF or host → replace; count or autoprobe (asked for, or drifted) → update in place. */
export function diff(_id: string, olds: VirtualFunctionsOutputs, news: VirtualFunctionsInputs): { changes: boolean; replaces: string[]; deleteBeforeReplace: boolean } {
    const replaces: string[] = [];
    let pf: string | undefined;
    try {
        pf = isUnknown(news.physicalFunction) ? undefined : parseAddress(news.physicalFunction);
    } catch {
        pf = undefined;
    }
    if (pf === undefined || pf !== olds.physicalFunction) replaces.push("physicalFunction");
    if (containsUnknown(news.connection) || hostIdentity(news.connection) !== hostIdentity(olds.connection)) replaces.push("connection");
    let changes = replaces.length > 0;
    if (isUnknown(news.count) || news.count !== olds.count || olds.addresses.length !== olds.count) changes = true;
    if (isUnknown(news.autoprobe) || defaults(news).autoprobe !== olds.autoprobe) changes = true;
    return { changes, replaces, deleteBeforeReplace: true };
}

// ------------------------------------------------------------------------------------------------ apply

function firstError(ops: Op[], r: OpResult[]): SysfsError | undefined {
    for (let i = 0; i < ops.length; i++) if (r[i] && !r[i].ok && !r[i].skipped) return SysfsError.from(ops[i], r[i]);
    return undefined;
}

function outputsOf(inputs: VirtualFunctionsInputs & { physicalFunction: string }, sriov: SriovState, vfs: VfView[], previousAutoprobe: boolean, lines: string[]): VirtualFunctionsOutputs {
    const list = vfs.map((v) => ({ index: v.index, address: v.address, driver: v.driver, group: v.group }));
    return {
        ...withoutProvider(inputs),
        count: sriov.numVfs,
        autoprobe: sriov.autoprobe,
        totalVfs: sriov.totalVfs,
        addresses: list.map((v) => v.address),
        groups: list.map((v) => v.group),
        virtualFunctions: list,
        previousAutoprobe,
        plan: lines,
    };
}

async function converge(host: Host, inputs: VirtualFunctionsInputs, previousAutoprobe?: boolean): Promise<VirtualFunctionsOutputs> {
    const pf = parseAddress(inputs.physicalFunction);
    const withPf = { ...inputs, physicalFunction: pf };
    const { autoprobe } = defaults(inputs);
    return host.withLock(async (host) => {
        const facts = await readVfFacts(host, pf);
        const plan = planVfs(withPf, facts);
        if (plan.problems.length) throw new PlanError(plan.problems[0].property, plan.problems.map((p) => p.reason).join("; "));
        const before = facts.sriov!;
        const q = new BatchQuery();
        const applied = q.add(plan.ops, (r) => firstError(plan.ops, r));
        const afterPart = sriovQuery(q, pf);
        const vfsPart = vfsQuery(q, pf, inputs.count);
        const r = await q.run(host, { stopOnError: true });
        const failure = applied(r);
        if (failure) {
            // Put back what the PF had: count (through 0) and autoprobe, from whatever it is now.
            const qNow = new BatchQuery();
            const nowPart = sriovQuery(qNow, pf);
            const now = nowPart(await qNow.run(host)) ?? before;
            const undo = numVfsOps(pf, now, { count: before.numVfs, autoprobe: before.autoprobe });
            const ur = undo.length ? await host.run(undo, { stopOnError: true }) : [];
            const undoFailure = firstError(undo, ur);
            const note = undoFailure ? ` Rollback failed too: ${undoFailure.message}.` : ` ${pf} is back to ${before.numVfs} VF(s), autoprobe ${before.autoprobe ? 1 : 0}.`;
            throw new Error(`setting ${inputs.count} VF(s) on ${pf} failed: ${failure.message}.${note}`);
        }
        const after = afterPart(r)!;
        const vfs = vfsPart(r);
        if (after.numVfs !== inputs.count || vfs.length !== inputs.count || after.autoprobe !== autoprobe) {
            throw new Error(`${pf} reads sriov_numvfs ${after.numVfs} with ${vfs.length} virtfn link(s) and autoprobe ${after.autoprobe ? 1 : 0} after the writes, not ${inputs.count} and ${autoprobe ? 1 : 0}; check dmesg`);
        }
        return outputsOf(withPf, after, vfs, previousAutoprobe ?? before.autoprobe, plan.lines);
    });
}

export async function create(inputs: VirtualFunctionsInputs, onHost?: Host): Promise<{ id: string; outs: VirtualFunctionsOutputs }> {
    const outs = await withHost(inputs.connection, (host) => converge(host, inputs), onHost);
    return { id: outs.physicalFunction, outs };
}

export async function update(_id: string, olds: VirtualFunctionsOutputs, news: VirtualFunctionsInputs, onHost?: Host): Promise<{ outs: VirtualFunctionsOutputs }> {
    const outs = await withHost(news.connection, (host) => converge(host, news, olds.previousAutoprobe), onHost);
    return { outs };
}

/** The PF's real count, autoprobe and VFs in at most two round trips; a vanished PF → gone. */
export async function read(id: string, props: VirtualFunctionsOutputs, onHost?: Host): Promise<{ id: string; props?: VirtualFunctionsOutputs }> {
    return withHost(
        props.connection,
        async (host) => {
            const pf = props.physicalFunction ?? id;
            const q1 = new BatchQuery();
            const sriovPart = sriovQuery(q1, pf);
            const virtfns = q1.one({ op: "list", path: `${PCI_DEVICES}/${pf}` }, (r) => (r.ok ? virtfnCount(r.data.split("\n")) : null));
            const r1 = await q1.run(host);
            const sriov = sriovPart(r1);
            const n = virtfns(r1);
            if (!sriov || n === null) return { id: "" };
            const q2 = new BatchQuery();
            const vfsPart = vfsQuery(q2, pf, n);
            const vfs = vfsPart(await q2.runIfAny(host));
            const outs = outputsOf({ ...props, physicalFunction: pf }, sriov, vfs, props.previousAutoprobe, props.plan ?? []);
            return { id, props: outs };
        },
        onHost,
    );
}

/** 0 VFs and autoprobe as before us; refused while a VM holds one of the VFs. */
export async function remove(id: string, props: VirtualFunctionsOutputs, onHost?: Host): Promise<void> {
    await withHost(
        props.connection,
        (host) =>
            host.withLock(async (host) => {
                const pf = props.physicalFunction ?? id;
                const facts = await readVfFacts(host, pf);
                if (!facts.pf || !facts.sriov) return;
                const held = facts.vfs.filter((v) => (facts.openers[v.address] ?? []).length > 0);
                if (held.length) {
                    throw new Error(
                        `refusing to remove the VFs of ${pf}: ${held.map((v) => `${v.address} (${v.driver}, /dev/vfio/${v.group}) is held open by PID ${facts.openers[v.address].join(", ")}`).join("; ")}. Stop the VM first; removing VFs now would block in the kernel until it exits`,
                    );
                }
                const ops = numVfsOps(pf, facts.sriov, { count: 0, autoprobe: props.previousAutoprobe ?? true });
                const q = new BatchQuery();
                const applied = q.add(ops, (r) => firstError(ops, r));
                const afterPart = sriovQuery(q, pf);
                const r = await q.run(host, { stopOnError: true });
                const failure = applied(r);
                if (failure) throw new Error(`removing the VFs of ${pf} failed: ${failure.message}`);
                const after = afterPart(r);
                if (after && after.numVfs !== 0) throw new Error(`${pf} still has ${after.numVfs} VF(s) after writing 0 to sriov_numvfs; check dmesg`);
            }),
        onHost,
    );
}

export const virtualFunctions = { check, diff, create, read, update, delete: remove };
