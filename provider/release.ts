/**
 * `pulumi-vfio release`: give a device (or its whole IOMMU group) back to the host's drivers when no Pulumi state
 * remembers it (a lost stack, a hand-made binding, a crash). The inverse of driverctl's `set-override`, as
 * driverctl's `unset-override` does it: clear `driver_override`, unbind from vfio-pci (or pci-stub), and write the
 * address to `drivers_probe` so the kernel's own matching picks the host driver; then read the `driver` link back
 * and say where each device went. Refused while a process holds `/dev/vfio/<group>` open (the unbind would block in
 * the kernel until it exits, LAB.md), naming the PIDs, as IommuBinding's delete does.
 *
 * The driverctl file of a released device (`/etc/driverctl.d/pci-<address>`) is removed with it: it would bind the
 * device away again at the next boot.
 */
import { Host, Op } from "./host/types";
import { BatchQuery } from "./host/query";
import { heldError } from "./binding/apply";
import { driverctlFile, groupObservations } from "./iommuBinding";
import { pidsOf } from "./sysfs/proc";
import { afterChange, isVfioDriver, readGroup } from "./sysfs/iommu";
import { DeviceState, PCI_DEVICES, PciDevice, classLabel, driverFromLink, driverLinkOp, overrideOf, parseAddress, restoreOps } from "./sysfs/pci";

export interface ReleaseOptions {
    /** Release every member of the device's IOMMU group, not only the device. Default false. */
    group?: boolean;
    /** Read and plan only: nothing is written. Default false. */
    dryRun?: boolean;
}

export interface ReleaseMember {
    address: string;
    /** `VGA controller [1234:1111]`. */
    what: string;
    before: DeviceState;
    /** False when the device is on a host driver with no override: nothing to give back. */
    released: boolean;
    /** The driver after the release (read back), or before it when not released or in a dry run. */
    after: DeviceState;
}

export interface ReleaseReport {
    address: string;
    group: number | null;
    members: ReleaseMember[];
    /** Every step, in order, as a shell user would write it (`echo 0000:01:00.0 > /sys/bus/pci/drivers/vfio-pci/unbind`). */
    steps: string[];
    dryRun: boolean;
}

/** Taken from the host's drivers: an override is set, or a vfio driver or pci-stub holds it. */
export function isHeld(d: Pick<PciDevice, "driver" | "override">): boolean {
    return d.override !== null || isVfioDriver(d.driver) || d.driver === "pci-stub";
}

/**
 * The ops that give one device back: {@link restoreOps} to "no override" (unbinding only from a vfio driver or
 * pci-stub, never from a host driver it is already on), then `drivers_probe` when the device is left without a
 * driver, and the removal of its driverctl file when there is one. Every write is optional: the read-back decides.
 */
export function releaseOps(d: Pick<PciDevice, "address" | "driver" | "override">, hasDriverctlFile: boolean): Op[] {
    const unbind = isVfioDriver(d.driver) || d.driver === "pci-stub";
    const to: DeviceState = { driver: unbind ? null : d.driver, override: null };
    const ops = restoreOps(d.address, { driver: d.driver, override: d.override }, to);
    // drivers_probe can fail with EINVAL and still leave the device bound (canonical/lxd#12128): the read-back is the verdict.
    if (to.driver === null) ops.push({ op: "write", path: "/sys/bus/pci/drivers_probe", data: d.address, optional: true });
    if (hasDriverctlFile) ops.push({ op: "remove", path: driverctlFile(d.address), optional: true });
    return ops;
}

/** An op as the shell command a user would type for it. */
export function describeOp(op: Op): string {
    switch (op.op) {
        case "write":
            return op.data.trim() === "" ? `echo > ${op.path}` : `echo ${op.data} > ${op.path}`;
        case "remove":
            return `rm -f ${op.path}`;
        default:
            return `${op.op} ${"path" in op ? op.path : op.argv.join(" ")}`;
    }
}

/**
 * Release `input` (a PCI address, validated before it becomes a path) on `host`: under the host lock, behind a
 * guard that stops the batch while anyone holds the group's `/dev/vfio` node. Two round trips to read the group
 * (one when this program read it before), one to release and read back.
 * @throws Error for a malformed address (before anything is read), a device the host does not have, or a group held open.
 */
export async function releaseDevice(host: Host, input: string, opts: ReleaseOptions = {}): Promise<ReleaseReport> {
    const address = parseAddress(input);
    const work = async (host: Host): Promise<ReleaseReport> => {
        const cache = groupObservations(host);
        const view = await readGroup(host, address, cache.get(address));
        if (view.observation) cache.set(address, view.observation);
        else cache.delete(address);
        if (!view.device) throw new Error(`no PCI device ${address} on this host; \`pulumi-vfio inventory\` lists the devices`);
        const persisted = new Set(view.savedOverrides ?? []);
        const scope = opts.group ? view.members : [view.device];
        if (view.openers.length && scope.some(isHeld)) throw await heldError(host, view.group, view.openers);

        const plans = scope.map((d) => ({ d, ops: isHeld(d) ? releaseOps(d, persisted.has(d.address)) : [] }));
        const ops = plans.flatMap((p) => p.ops);
        const member = (d: PciDevice, released: boolean, after: DeviceState): ReleaseMember => ({
            address: d.address,
            what: `${classLabel(d.class)} [${d.vendor}:${d.device}]`,
            before: { driver: d.driver, override: d.override },
            released,
            after,
        });
        const report = (members: ReleaseMember[]): ReleaseReport => ({ address, group: view.group, members, steps: ops.map(describeOp), dryRun: !!opts.dryRun });
        if (opts.dryRun || ops.length === 0) return report(plans.map((p) => member(p.d, p.ops.length > 0, { driver: p.d.driver, override: p.d.override })));

        const q = new BatchQuery();
        const guard = q.one({ op: "groupHolders", path: `${PCI_DEVICES}/${address}`, guard: true }, (r) => r);
        q.add(ops, () => undefined);
        const released = q.each(
            plans.filter((p) => p.ops.length),
            (p) => [driverLinkOp(p.d.address), { op: "read", path: `${PCI_DEVICES}/${p.d.address}/driver_override` }],
            (p, [link, ov]) => [p.d.address, { driver: driverFromLink(link), override: ov?.ok ? overrideOf(ov.data) : null }] as const,
        );
        const r = await q.run(host, { stopOnError: true });
        // What the group is now is the read-back's to say: the next change on it reads it again.
        const left = afterChange(cache.get(address), address, undefined);
        if (left) cache.set(address, left);
        const held = guard(r);
        if (!held.ok && held.errno === "EBUSY") throw await heldError(host, view.group, pidsOf(held));
        const after = new Map(released(r));
        return report(plans.map((p) => member(p.d, p.ops.length > 0, after.get(p.d.address) ?? { driver: p.d.driver, override: p.d.override })));
    };
    return opts.dryRun ? work(host) : host.withLock(work);
}

/** Members still taken after a release (on a vfio driver or pci-stub, or with an override left). */
export function stillHeld(r: ReleaseReport): ReleaseMember[] {
    return r.dryRun ? [] : r.members.filter((m) => m.released && isHeld(m.after));
}

/** What `release` prints on stdout: the steps in a dry run, else one line per device with where it went. */
export function formatRelease(r: ReleaseReport): string {
    const out: string[] = [];
    if (r.dryRun) {
        out.push(r.steps.length ? `would run, under the host lock:` : "nothing to release", ...r.steps.map((s) => `  ${s}`));
        for (const m of r.members.filter((x) => !x.released)) out.push(`${m.address} (${m.what}): ${m.before.driver ?? "no driver"}, no override: left as is`);
        return out.join("\n") + "\n";
    }
    for (const m of r.members) {
        const from = `${m.before.driver ?? "no driver"}${m.before.override ? ` (override ${m.before.override})` : ""}`;
        if (!m.released) out.push(`${m.address} (${m.what}): ${from}, no override: left as is`);
        else out.push(`${m.address} (${m.what}): ${from} → ${m.after.driver ?? "no driver"}${m.after.override ? ` (override ${m.after.override} left)` : ""}`);
    }
    return out.join("\n") + "\n";
}
