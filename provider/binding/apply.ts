/**
 * Running an IommuBinding's plans (binding/plan.ts) on a host: a change's one batch behind its guards, the
 * read-back that verifies it, one retry for a member `drivers_probe` left unbound, and the rollback of a change that
 * failed; delete's batch, and the restore that follows one that did not bring every member back.
 */
import { SysfsError } from "../errors";
import { BatchQuery } from "../host/query";
import { Host, Op, OpResult } from "../host/types";
import { describeHolders, pidsOf } from "../sysfs/proc";
import { arrivedGuards, reached } from "../sysfs/journal";
import { PCI_DRIVERS, driverFromLink, driverLinkOp, failedGuard, firstFailure, overrideOf } from "../sysfs/pci";
import { BindingChange, BindingRelease, MemberPlan, RestoreEntry, failedResets, restoreEntryOps, stateReadOps } from "./plan";
import { consoleReadBack, describeFailedRestores } from "../console/handover";

/** Driver and override per member address, as a batch left them. */
export type MemberStates = Map<string, { driver: string | null; override: string | null }>;

/** A change that ran: each member's driver as read back, and driver and override as the change left them. */
export interface Applied {
    kind: "applied";
    drivers: Map<string, string | null>;
    states: MemberStates;
}

/** A guard stopped the batch before its first write: the group is not as read, and nothing changed. */
export interface Stale {
    kind: "stale";
}

/**
 * Apply a change planned from an earlier read behind `guards` (reads with `expect` that hold while the group is as
 * read, see sysfs/iommu.ts): they go first in the batch, so a group changed since stops it before its first write.
 * @throws as {@link applyChange}.
 */
export function applyGuarded(host: Host, address: string, change: BindingChange, guards: Op[]): Promise<Applied | Stale> {
    return run(host, address, change, guards);
}

/**
 * Apply a change planned from a read made under the same lock: one `stopOnError` batch of the change's writes, the
 * read-back of every member's `driver` link and the driverctl files; then one retry batch for a member left unbound.
 * @throws Error `binding <address> to <driver> failed: <the file, errno and hint>` after every changed member was
 * restored (or saying which were not), when a write failed or a member did not arrive.
 */
export async function applyChange(host: Host, address: string, change: BindingChange): Promise<Applied> {
    return (await run(host, address, change, [])) as Applied;
}

async function run(host: Host, address: string, change: BindingChange, guards: Op[]): Promise<Applied | Stale> {
    const { driver, changing } = change;
    const q = new BatchQuery();
    const held = q.add(guards, (r) => r.every((x) => x.ok));
    const wrote = q.add(change.ops, (r) => firstFailure(change.ops, r) ?? failedGuard(change.ops, r));
    const links = q.add(change.readBack, (r) => r.map(driverFromLink));
    const persisted = q.add(change.persistence, (r) => firstFailure(change.persistence, r));
    const r = await q.run(host, { stopOnError: true });
    if (!held(r)) return { kind: "stale" };

    let failure: Error | undefined = wrote(r) ?? persisted(r);
    const read = links(r);
    const drivers = new Map(change.members.map((m, i) => [m.device.address, read[i]]));
    if (!failure) failure = (await retryStray(host, change, drivers)) ?? notReturned(change, drivers);
    if (failure) {
        const left = await restore(host, change.rollback.members, [], change.rollback.last);
        const restoredNote = left.length
            ? ` Rollback incomplete: ${left.join("; ")}.`
            : ` Every changed device was restored (${change.rollback.members.map((u) => `${u.address} → ${u.state.driver ?? "no driver"}`).join(", ") || "nothing had changed"}).`;
        if (change.rollback.files.length) await host.run(change.rollback.files);
        throw new Error(`binding ${address} to ${driver} failed: ${failure.message}.${restoredNote}`);
    }
    // Every override write succeeded (a failed one stops the batch), so each member's override is the one written.
    const overrideNow = (m: MemberPlan) => (!changing.includes(m) ? m.device.override : m.target === driver ? driver : m.previous.override);
    const states: MemberStates = new Map(change.members.map((m) => [m.device.address, { driver: drivers.get(m.device.address) ?? null, override: overrideNow(m) }]));
    return { kind: "applied", drivers, states };
}

/** drivers_probe can leave a device unbound (lxd#12128): bind a member still off the driver explicitly, once. */
async function retryStray(host: Host, { changing, driver }: BindingChange, drivers: Map<string, string | null>): Promise<Error | undefined> {
    const stray = changing.filter((m) => m.target === driver && drivers.get(m.device.address) !== driver);
    if (!stray.length) return undefined;
    const q = new BatchQuery();
    const bind = q.add(
        stray.map((m): Op => ({ op: "write", path: `${PCI_DRIVERS}/${driver}/bind`, data: m.device.address, optional: true })),
        (r) => r.find((x) => !x.ok),
    );
    const links = q.each(stray, (m) => [driverLinkOp(m.device.address)], (m, [l]) => drivers.set(m.device.address, driverFromLink(l)));
    const r = await q.run(host);
    links(r);
    const still = stray.filter((m) => drivers.get(m.device.address) !== driver);
    if (!still.length) return undefined;
    return new SysfsError(
        `${PCI_DRIVERS}/${driver}/bind`,
        bind(r)?.errno,
        `${still.map((m) => m.device.address).join(", ")} did not bind to ${driver} (driver link reads ${still.map((m) => drivers.get(m.device.address) ?? "nothing").join(", ")})`,
        "another driver may have claimed it first, or the driver refused it; check dmesg",
    );
}

/** A member given back that is not on what it had before us. */
function notReturned({ changing, driver }: BindingChange, drivers: Map<string, string | null>): Error | undefined {
    const wrong = changing.filter((m) => m.target !== driver && !reached(m.previous, drivers.get(m.device.address) ?? null, null) && !m.previous.probe);
    return wrong.length ? new Error(wrong.map((m) => `${m.device.address} did not return to ${m.target}`).join(", ")) : undefined;
}

/**
 * Put every member back as it was in `before`, from whatever it is now (read first unless the caller knows it),
 * with `extra` ops (persistence cleanup) in the same batch, and `last` (the journal's removal) behind guards that
 * hold only once every member is back. Returns the members that did not come back.
 */
export async function restore(host: Host, before: RestoreEntry[], extra: Op[] = [], last: Op[] = []): Promise<string[]> {
    if (before.length === 0 && extra.length === 0 && last.length === 0) return [];
    const unknown = before.filter((b) => !b.now);
    if (unknown.length) {
        const q = new BatchQuery();
        const now = q.each(unknown, (b) => stateReadOps(b.address), (b, r) => (b.now = stateFrom(r)));
        now(await q.run(host));
    }
    const known = before as (RestoreEntry & { now: NonNullable<RestoreEntry["now"]> })[];
    const q = new BatchQuery();
    q.add(known.flatMap((b) => restoreEntryOps(b)), () => undefined);
    // Only the guards may stop this batch: a restore goes as far as it can.
    q.add(extra.map((o): Op => (o.op === "write" || o.op === "put" || o.op === "mkdir" || o.op === "remove" || o.op === "exec" ? { ...o, optional: true } : o)), () => undefined);
    const left = q.each(known, (b) => stateReadOps(b.address), (b, [link, ov]) => {
        const d = driverFromLink(link);
        const ok = ov?.ok && reached(b.state, d, overrideFrom(ov), b.now.driver ?? undefined);
        return ok ? null : `${b.address} is on ${d ?? "no driver"}, not ${b.state.probe ? "back on the kernel's choice without an override" : b.state.driver ?? "no driver"}`;
    });
    const guarded = last.length ? [...arrivedGuards(known.map((b) => ({ address: b.address, to: b.state }))), ...last] : [];
    q.add(guarded, () => undefined);
    const r = await q.run(host, { stopOnError: guarded.length > 0 });
    return left(r).filter((x): x is string => x !== null);
}

/**
 * Delete's first batch ({@link BindingRelease}). A group held open throws (naming the holders, one more round trip
 * to describe them); `released` when the journal's removal ran (every member is back), else `incomplete`: the caller
 * reads the group and restores from what it finds.
 */
export async function applyRelease(
    host: Host,
    release: BindingRelease,
    group: number | null,
    driver = "vfio-pci",
): Promise<{ kind: "released"; states: MemberStates; console: string[] } | { kind: "incomplete" } | { kind: "resetFailed"; error: Error }> {
    const q = new BatchQuery();
    const guard = q.one(release.guard, (x) => x);
    const ops = [...release.ops, ...release.cleanup];
    const resets = q.add(ops, (r) => failedResets(ops, r));
    const consoleSteps = q.add(release.consoleOps, (r) => describeFailedRestores(release.consoleOps, r));
    const states = q.each(release.members, (b) => stateReadOps(b.address), (b, r) => [b.address, stateFrom(r)] as const);
    const consoleLeft = release.console ? consoleReadBack(q, release.console) : () => [];
    const done = q.add(release.done, (r) => r.every((x) => x.ok));
    const r = await q.run(host, { stopOnError: true });
    const g = guard(r);
    if (!g.ok && g.errno === "EBUSY") {
        const n = /\/dev\/vfio\/(\d+)/.exec(g.message ?? "")?.[1];
        throw await heldError(host, n === undefined ? group : Number(n), pidsOf(g));
    }
    const [failed] = resets(r);
    if (failed) return { kind: "resetFailed", error: await rebindAfterFailedReset(host, release, failed, driver) };
    return done(r) ? { kind: "released", states: new Map(states(r)), console: [...consoleSteps(r), ...consoleLeft(r)] } : { kind: "incomplete" };
}

/**
 * A reset on release failed: the batch stopped there, that function on no driver (its override still names
 * `driver`) and the members after it untouched. Bind it back to `driver` (never leave a GPU on no driver, where the
 * host's own driver could take it at the next probe) and say what was done and what not.
 */
async function rebindAfterFailedReset(host: Host, release: BindingRelease, failed: ReturnType<typeof failedResets>[number], driver: string): Promise<Error> {
    const a = failed.address;
    const q = new BatchQuery();
    q.one({ op: "write", path: `${PCI_DRIVERS}/${driver}/bind`, data: a, optional: true }, () => undefined);
    const states = q.each(release.members, (b) => stateReadOps(b.address), (b, r) => [b.address, stateFrom(r)] as const);
    const now = new Map(states(await q.run(host)));
    const back = now.get(a)?.driver ?? null;
    const err = SysfsError.from(failed.op, { ok: false, data: "", errno: failed.errno, message: failed.message });
    const given = release.members.filter((m) => m.address !== a && now.get(m.address)?.driver !== m.now.driver).map((m) => `${m.address} → ${now.get(m.address)?.driver ?? "no driver"}`);
    const kept = release.members.filter((m) => now.get(m.address)?.driver === m.now.driver).map((m) => m.address);
    return new Error(
        `releasing IOMMU group ${release.members.map((m) => m.address).join(", ")}: the reset of ${a} failed (${err.message}). ` +
            (back === driver ? `${a} is back on ${driver}, not left without a driver` : `${a} could not be bound back to ${driver} and is on ${back ?? "no driver"}; check dmesg`) +
            `${given.length ? `; given back before it: ${given.join(", ")}` : ""}${kept.length ? `; still on ${driver}: ${kept.join(", ")}` : ""}. ` +
            "A GPU that does not reset may need vendor-reset (resetMethod: device_specific) or a host reboot; set resetOnRelease: false to release it without a reset, then run `pulumi destroy` again",
    );
}

/** The refusal of a release while processes hold the group open. */
export async function heldError(host: Host, group: number | null, pids: number[]): Promise<Error> {
    const who = await describeHolders(host, pids);
    return new Error(`refusing to release IOMMU group ${group}: /dev/vfio/${group} is held open by ${who}. Stop the VM first; unbinding now would block in the kernel until it exits`);
}

function stateFrom([link, ov]: OpResult[]): { driver: string | null; override: string | null } {
    return { driver: driverFromLink(link), override: overrideFrom(ov) };
}

function overrideFrom(r: OpResult | undefined): string | null {
    return r?.ok ? overrideOf(r.data) : null;
}
